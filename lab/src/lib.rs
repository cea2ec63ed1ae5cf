//! meshfed's embedded lab: a scenario's meshes on loopback as real `meshfed` processes — per
//! mesh a control plane with peering, federation gateways per peer, and echo workloads behind
//! sidecars, all joined to their control plane — wired by the scenario's federation resources,
//! with a fault-injectable link between each egress and its peer's ingress. The runner waits
//! until every proxy runs the served configuration and every peering is active, sends the
//! load through the calling workload's sidecar, plays the timeline, prints progress, and
//! writes a JSON and an HTML report; the scenario's expectations decide the outcome.
//!
//! - [`topology`]: addresses, mesh files, who peers with whom.
//! - [`link`]: the fault-injectable relays.
//! - [`load`]: the fixed-rate load generator.
//! - [`report`]: figures, expectations, JSON and HTML.

pub mod link;
pub mod load;
mod procs;
pub mod report;
mod runner;
pub mod topology;

use procs::*;
pub use runner::run;
use runner::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meshfed_crds::scenario::{Action, Component, Expectation, ScenarioPlan};

use crate::link::{Link, Mode};
use crate::load::Samples;
use meshfed_control::server::AdminStatus;
use meshfed_core::session::PeerState;
use meshfed_peering::status::PeerStatus;

use crate::topology::Layout;

/// Why a scenario file cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem is in `diagnostics` (line and field), none skipped.
    #[error("{file}: {} error(s); nothing was started", diagnostics.len())]
    Invalid {
        file: String,
        diagnostics: Vec<meshfed_crds::diag::Diagnostic>,
    },
    #[error("{file}: no Scenario document")]
    NoScenario { file: String },
    #[error("{file}: {count} Scenario documents; one per file")]
    SeveralScenarios { file: String, count: usize },
}

impl PlanError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } => "ReadFailed",
            Self::Invalid { .. } => "InvalidScenario",
            Self::NoScenario { .. } => "NoScenario",
            Self::SeveralScenarios { .. } => "SeveralScenarios",
        }
    }
}

/// Reads and validates a scenario file, which must hold exactly one Scenario; any error
/// refuses it whole.
pub fn load_plan(path: &Path) -> std::result::Result<ScenarioPlan, PlanError> {
    use meshfed_crds::validate::{self, Converted, Input};
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file = path.display().to_string();
    let report = validate::validate(&[Input {
        file: &file,
        text: &text,
    }]);
    if report.has_errors() {
        return Err(PlanError::Invalid {
            file,
            diagnostics: report.diagnostics,
        });
    }
    let plans: Vec<&ScenarioPlan> = report
        .objects
        .iter()
        .filter_map(|o| match &o.converted {
            Some(Converted::Scenario(p)) => Some(p.as_ref()),
            _ => None,
        })
        .collect();
    match plans.as_slice() {
        [p] => Ok((*p).clone()),
        [] => Err(PlanError::NoScenario { file }),
        _ => Err(PlanError::SeveralScenarios {
            file,
            count: plans.len(),
        }),
    }
}

/// Mints the join credential of `workloads` of `namespace` in mesh `mesh` with
/// `meshfed join create`, as an operator would; the bootstrap file's name (in `work`).
fn join(
    exe: &Path,
    work: &Path,
    mesh: &str,
    namespace: &str,
    workloads: &[&str],
) -> Result<String> {
    let out = format!("{mesh}-join-{namespace}-{}.json", workloads.join("-"));
    let mut cmd = std::process::Command::new(exe);
    cmd.current_dir(work).args([
        "join",
        "create",
        "--dir",
        &format!("{mesh}-ca"),
        "--bootstrap",
        &format!("{mesh}-bootstrap.json"),
        "--namespace",
        namespace,
        "--out",
        &out,
    ]);
    for w in workloads {
        cmd.args(["--workload", w]);
    }
    let done = cmd
        .stdin(Stdio::null())
        .output()
        .context("running meshfed join create")?;
    if !done.status.success() {
        bail!(
            "meshfed join create for {mesh} {namespace}/{}: {}",
            workloads.join(","),
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }
    Ok(out)
}

/// How long the lab waits for its meshes to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the lab runs and what it says.
pub struct Options {
    /// The `meshfed` binary to start the components with.
    pub exe: PathBuf,
    /// Working folder: mesh files, CAs, logs.
    pub work: PathBuf,
    /// Where the reports go.
    pub out: PathBuf,
    /// Progress lines.
    pub say: Arc<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("exe", &self.exe)
            .field("work", &self.work)
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Outcome {
    pub report: report::Report,
    pub json: PathBuf,
    pub html: PathBuf,
}

/// A running lab.
pub struct Lab {
    pub layout: Layout,
    procs: Procs,
    links: Vec<Link>,
    exe: PathBuf,
    work: PathBuf,
    plan: ScenarioPlan,
    /// Each mesh's federation resources as the steps left them.
    resources: BTreeMap<String, Vec<serde_json::Value>>,
    /// Workloads draining after a scale-down.
    draining: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("base", &self.layout.base)
            .field("processes", &self.procs.running.len())
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Builds and starts every mesh of `plan`, and waits until all are ready.
    pub async fn up(plan: &ScenarioPlan, opts: &Options) -> Result<Self> {
        let work = opts.work.clone();
        // Logs are appended to across restarts: an earlier run's go first.
        let _ = std::fs::remove_dir_all(work.join("logs"));
        std::fs::create_dir_all(work.join("logs"))
            .with_context(|| format!("creating {}", work.display()))?;
        let layout = topology::layout(plan, pick_base(plan.meshes.len())?)?;
        let exe = opts.exe.clone();
        (opts.say)(&format!(
            "lab on 127.{}.0.0/16: {} mesh(es), {} link(s)",
            layout.base,
            layout.meshes.len(),
            layout.links.len()
        ));
        // Trust: a CA per mesh; peers hold each other's bundles.
        for m in &layout.meshes {
            std::fs::write(work.join(format!("{}.yaml", m.name)), &m.file)?;
            // Nothing of an earlier run may be picked up: its CA, its bootstrap file, its store.
            let _ = std::fs::remove_dir_all(work.join(format!("{}-ca", m.name)));
            let _ = std::fs::remove_file(work.join(format!("{}-bootstrap.json", m.name)));
            let _ = std::fs::remove_dir_all(work.join(format!("{}-store", m.name)));
            meshfed(
                &exe,
                &work,
                &[
                    "trust",
                    "init",
                    "--dir",
                    &format!("{}-ca", m.name),
                    "--trust-domain",
                    &format!("{}.local", m.name),
                ],
            )
            .await?;
        }
        for l in &layout.links {
            let bundle = meshfed(
                &exe,
                &work,
                &[
                    "trust",
                    "bundle",
                    "export",
                    "--dir",
                    &format!("{}-ca", l.to),
                ],
            )
            .await?;
            let file = format!("{}-bundle.json", l.to);
            std::fs::write(work.join(&file), bundle)?;
            meshfed(
                &exe,
                &work,
                &[
                    "trust",
                    "bundle",
                    "import",
                    "--dir",
                    &format!("{}-ca", l.from),
                    "--trust-domain",
                    &format!("{}.local", l.to),
                    &file,
                ],
            )
            .await?;
        }
        let mut links = Vec::new();
        for l in &layout.links {
            let pairs = [
                (
                    SocketAddr::new(l.listen, topology::INGRESS_PORT),
                    l.target.map(|t| t.0),
                ),
                (
                    SocketAddr::new(l.listen, topology::DISCOVERY_PORT),
                    l.target.map(|t| t.1),
                ),
            ];
            links.push(Link::start(&l.from, &l.to, &pairs).await?);
        }
        let mut procs = Procs::default();
        for m in &layout.meshes {
            let n = &m.name;
            procs.spawn(
                &exe,
                &work,
                &format!("{n}-control"),
                [
                    "control",
                    "--mesh",
                    &format!("{n}.yaml"),
                    "--dir",
                    &format!("{n}-ca"),
                    "--listen",
                    &s(m.control),
                    "--admin",
                    &s(m.admin),
                    "--peering",
                    &s(m.peering),
                    "--heartbeat",
                    "1s",
                    "--liveness",
                    "3s",
                    "--rotation-grace",
                    "2s",
                    // Imports survive a restart (served stale until the peer answers).
                    "--store",
                    &format!("{n}-store"),
                    "--bootstrap-out",
                    &format!("{n}-bootstrap.json"),
                ]
                .map(str::to_owned)
                .into_iter()
                .chain(
                    plan.svid_ttl
                        .map(|t| ["--svid-ttl".to_owned(), format!("{}s", t.as_secs())])
                        .into_iter()
                        .flatten(),
                )
                .collect(),
            )?;
        }
        for m in &layout.meshes {
            let boot = work.join(format!("{}-bootstrap.json", m.name));
            let deadline = Instant::now() + READY_TIMEOUT;
            while !boot.exists() {
                if Instant::now() > deadline {
                    bail!(
                        "the control plane of {} did not start; see {}",
                        m.name,
                        work.join("logs").display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for m in &layout.meshes {
            let n = &m.name;
            for p in &m.peers {
                // Each process joins with its own credential: the gateways' names only theirs.
                let boot = join(
                    &exe,
                    &work,
                    n,
                    &format!("{n}-system"),
                    &[
                        &format!("ingress-{}", p.name),
                        &format!("egress-{}", p.name),
                    ],
                )?;
                procs.spawn(
                    &exe,
                    &work,
                    &format!("{n}-gateway-{}", p.name),
                    [
                        "gateway",
                        "--bootstrap",
                        &boot,
                        "--peer",
                        &p.name,
                        "--dir",
                        &format!("{n}-ca"),
                        "--ingress",
                        "--egress",
                        "--discovery",
                        "--discovery-upstream",
                        &s(m.peering),
                        "--admin",
                        &s(p.gateway_admin),
                        "--probe-interval",
                        "1s",
                        "--workers",
                        "1",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                )?;
            }
            for w in &m.workloads {
                procs.spawn(
                    &exe,
                    &work,
                    &format!("{n}-{}-{}-app", w.namespace, w.name),
                    [
                        "echo",
                        "--listen",
                        &s(w.app),
                        "--mesh",
                        n,
                        "--instance",
                        &format!("{n}/{}", w.name),
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                )?;
                let boot = join(&exe, &work, n, &w.namespace, &[&w.name])?;
                let mut args: Vec<String> = [
                    "proxy",
                    "--bootstrap",
                    &boot,
                    "--namespace",
                    &w.namespace,
                    "--workload",
                    &w.name,
                    "--admin",
                    &s(w.admin),
                    "--workers",
                    "1",
                    "--drain",
                    "2s",
                ]
                .map(str::to_owned)
                .to_vec();
                if let Some(o) = w.outbound {
                    args.extend(["--outbound".to_owned(), s(o)]);
                }
                procs.spawn(
                    &exe,
                    &work,
                    &format!("{n}-{}-{}", w.namespace, w.name),
                    args,
                )?;
            }
        }
        let lab = Self {
            layout,
            procs,
            links,
            exe,
            work,
            plan: plan.clone(),
            resources: plan
                .meshes
                .iter()
                .map(|m| (m.name.clone(), m.resources.clone()))
                .collect(),
            draining: Vec::new(),
        };
        lab.wait_ready(opts).await?;
        Ok(lab)
    }

    /// Every mesh's proxies and gateways run the served version, and every peering is
    /// active.
    async fn wait_ready(&self, opts: &Options) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut waiting = Vec::new();
            for m in &self.layout.meshes {
                let want = m.workloads.len() + m.peers.len();
                match admin_status(m.admin).await {
                    None => waiting.push(format!("{}: control plane", m.name)),
                    Some(st) => {
                        let v = st.control.version;
                        let acked = st
                            .control
                            .proxies
                            .values()
                            .filter(|p| p.connected && p.acked == Some(v))
                            .count();
                        if acked < want {
                            waiting.push(format!(
                                "{}: {acked}/{want} proxies on the served version",
                                m.name
                            ));
                        }
                        let active = st.peering.as_ref().map_or(0, |p| {
                            p.imports
                                .iter()
                                .filter(|i| i.status.state == PeerState::Active)
                                .count()
                        });
                        if active < m.peers.len() {
                            waiting.push(format!(
                                "{}: {active}/{} peerings active",
                                m.name,
                                m.peers.len()
                            ));
                        }
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the lab was not ready after {READY_TIMEOUT:?}: {}; logs in {}",
                    waiting.join(", "),
                    self.work.join("logs").display()
                );
            }
            (opts.say)(&format!("waiting: {}", waiting.join(", ")));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Plays one step.
    async fn apply(&mut self, a: &Action) -> Result<()> {
        match a {
            Action::Kill(c) | Action::Start(c) | Action::Restart(c) => {
                let names: Vec<String> = match c {
                    Component::Apps {
                        mesh,
                        namespace,
                        service,
                    } => self
                        .layout
                        .mesh(mesh)
                        .map(|m| {
                            m.workloads
                                .iter()
                                .filter(|w| &w.namespace == namespace && &w.service == service)
                                .map(|w| format!("{mesh}-{}-{}-app", w.namespace, w.name))
                                .collect()
                        })
                        .unwrap_or_default(),
                    Component::Control { mesh } => vec![format!("{mesh}-control")],
                    Component::Gateway { mesh, peer } => vec![format!("{mesh}-gateway-{peer}")],
                    Component::Sidecars {
                        mesh,
                        namespace,
                        service,
                    } => self.workloads_of(mesh, namespace, service),
                };
                for n in names {
                    match a {
                        Action::Kill(_) => self.procs.kill(&n).await,
                        Action::Start(_) => self.procs.ensure(&self.exe, &self.work, &n)?,
                        _ => {
                            self.procs.kill(&n).await;
                            self.procs.restart(&self.exe, &self.work, &n)?;
                        }
                    }
                }
                // Starting a service brings back its sidecars too (after a scale-down).
                if let Action::Start(Component::Apps {
                    mesh,
                    namespace,
                    service,
                }) = a
                {
                    for w in self.workloads_of(mesh, namespace, service) {
                        self.procs.ensure(&self.exe, &self.work, &w)?;
                    }
                }
            }
            Action::Scale {
                mesh,
                namespace,
                service,
                replicas,
            } => {
                let all = self.workloads_of(mesh, namespace, service);
                let keep = usize::try_from(*replicas).unwrap_or(usize::MAX);
                for (i, w) in all.iter().enumerate() {
                    let app = format!("{w}-app");
                    if i < keep {
                        self.procs.ensure(&self.exe, &self.work, &app)?;
                        self.procs.ensure(&self.exe, &self.work, w)?;
                    } else if let Some(sidecar) = self.procs.running.remove(w) {
                        let app = self.procs.running.remove(&app);
                        self.draining.push(tokio::spawn(drain(sidecar, app)));
                    }
                }
            }
            Action::Rotate { mesh } | Action::Retire { mesh } => {
                let dir = format!("{mesh}-ca");
                let mut args = vec!["trust", "rotate", "--dir", dir.as_str()];
                if matches!(a, Action::Retire { .. }) {
                    args.push("--retire");
                }
                meshfed(&self.exe, &self.work, &args).await?;
            }
            Action::Apply { mesh, resource } => {
                let key = |r: &serde_json::Value| {
                    (
                        r.get("kind").and_then(|k| k.as_str()).map(str::to_owned),
                        r.pointer("/metadata/name")
                            .and_then(|k| k.as_str())
                            .map(str::to_owned),
                    )
                };
                let held = self.resources.entry(mesh.clone()).or_default();
                held.retain(|r| key(r) != key(resource));
                held.push(resource.clone());
                self.write_mesh_file(mesh)?;
            }
            Action::Delete { mesh, kind, name } => {
                let held = self.resources.entry(mesh.clone()).or_default();
                held.retain(|r| {
                    r.get("kind").and_then(|k| k.as_str()) != Some(kind.as_str())
                        || r.pointer("/metadata/name").and_then(|k| k.as_str())
                            != Some(name.as_str())
                });
                self.write_mesh_file(mesh)?;
            }
            Action::Cut { from, to }
            | Action::Blackhole { from, to }
            | Action::Delay { from, to, .. }
            | Action::Heal { from, to } => {
                let mode = match a {
                    Action::Cut { .. } => Mode::Cut,
                    Action::Blackhole { .. } => Mode::Blackhole,
                    Action::Delay { by, .. } => Mode::Delay(*by),
                    _ => Mode::Open,
                };
                if !self.links.iter().any(|l| &l.from == from && &l.to == to) {
                    bail!("no link {from}->{to}: {from} does not peer with {to}");
                }
                for l in self.links.iter().filter(|l| &l.from == from && &l.to == to) {
                    l.set(mode);
                }
            }
        }
        Ok(())
    }

    /// The processes that should run (started, and not stopped by a step) but exited.
    fn exited(&mut self) -> Vec<String> {
        self.procs
            .running
            .iter_mut()
            .filter_map(|(n, c)| (!matches!(c.try_wait(), Ok(None))).then(|| n.clone()))
            .collect()
    }

    /// The process names of a service's sidecars (`<name>-app` are their apps), in order.
    fn workloads_of(&self, mesh: &str, namespace: &str, service: &str) -> Vec<String> {
        self.layout
            .mesh(mesh)
            .map(|m| {
                m.workloads
                    .iter()
                    .filter(|w| w.namespace == namespace && w.service == service)
                    .map(|w| format!("{mesh}-{}-{}", w.namespace, w.name))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes `mesh`'s file with its resources as they are now; its control plane reloads it.
    fn write_mesh_file(&self, mesh: &str) -> Result<()> {
        let m = self.layout.mesh(mesh).context("no such mesh")?;
        let resources = self.resources.get(mesh).cloned().unwrap_or_default();
        let text = topology::mesh_file(&self.plan, &self.layout, m, &resources)?;
        let path = self.work.join(format!("{mesh}.yaml"));
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The addresses worth knowing, for `meshfed lab up`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for m in &self.layout.meshes {
            out.push_str(&format!(
                "mesh {}: control {} (admin http://{}/status), peering {}\n",
                m.name, m.control, m.admin, m.peering
            ));
            for p in &m.peers {
                out.push_str(&format!(
                    "  gateways for {}: ingress {}, discovery {}, egress {} (admin http://{}/status)\n",
                    p.name, p.ingress, p.discovery, p.egress, p.gateway_admin
                ));
            }
            for w in &m.workloads {
                out.push_str(&format!(
                    "  {}/{} ({}): inbound {}, app {}, admin http://{}/metrics{}\n",
                    w.namespace,
                    w.name,
                    w.service,
                    w.inbound,
                    w.app,
                    w.admin,
                    w.outbound.map_or(String::new(), |o| format!(
                        ", outbound http://{o} (send Host: <service hostname>)"
                    ))
                ));
            }
        }
        for l in &self.layout.links {
            out.push_str(&format!("link {}->{} at {}\n", l.from, l.to, l.listen));
        }
        out
    }
}
