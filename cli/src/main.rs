//! `meshfed`: the one binary. Thin: parses arguments, runs a subcommand, maps the outcome to
//! an exit code (0 success, 1 problems found, 2 usage or I/O error).

mod control;
mod explain;
mod gateway;
mod join;
mod kubernetes;
mod node;
mod proxy;
mod scenario;
mod table;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use meshfed_crds::diag::Severity;
use meshfed_crds::manifests;

#[derive(Parser, Debug)]
#[command(
    name = "meshfed",
    version,
    about = "Mesh federation gateway and peering service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to standard error: text, or one JSON object per line. Which
    /// lines: MESHFED_LOG (EnvFilter syntax, e.g. `debug` or `meshfed_peering=debug,info`;
    /// default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MESHFED_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the federation.maistra.io/v1 CRD manifests (or write one file per CRD).
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Also include meshfed's embedded-mode `Mesh` kind.
        #[arg(long)]
        include_mesh: bool,
    },
    /// Check YAML files (federation CRDs and Mesh files) against the schema and the semantic
    /// rules; print every problem with file, document, line, field path and hint.
    Validate {
        /// Files to check; `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = ReportFormat::Text)]
        output: ReportFormat,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
        /// The namespace of objects that name none, as `kubectl apply -n` (an object naming
        /// another namespace is an error).
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Dry run: what a mesh exports to and imports from each peer, under which hostnames,
    /// which importAsLocal merges happen, and every conflict.
    Explain {
        /// Mesh file (a Mesh document plus its federation resources). The first one is
        /// explained; the others supply the peers' exports.
        #[arg(long = "mesh", required = true, value_name = "FILE")]
        meshes: Vec<PathBuf>,
        /// Only this peer (a ServiceMeshPeer name of the explained mesh).
        #[arg(long)]
        peer: Option<String>,
        /// Explain every given mesh, not only the first.
        #[arg(long)]
        all: bool,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// The mesh CA: SVIDs, bundles, rotation, certificate checks.
    Trust {
        #[command(subcommand)]
        command: trust::TrustCommand,
    },
    /// Embedded mode: join credentials, each bound to one workload, and the bootstrap files
    /// that carry them.
    Join {
        #[command(subcommand)]
        command: join::JoinCommand,
    },
    /// Peering between meshes: tokens, and the peering service.
    Peering {
        #[command(subcommand)]
        command: trust::PeeringCommand,
    },
    /// Show peer status from a running `meshfed peering run` or `meshfed control --peering`.
    Status(node::StatusArgs),
    /// Run this mesh's federation gateways for one peer: the ingress (what we export to the
    /// peer) and/or the egress (our sidecars to what the peer exports to us).
    Gateway(gateway::GatewayArgs),
    /// Run the mesh's control plane: the mesh file as config source, workload certificates
    /// from the mesh CA, and the config stream to proxies.
    Control(control::ControlArgs),
    /// Run one workload's sidecar, configured by the control plane (`--bootstrap`) or from a
    /// mesh file (`--mesh`, identity from the mesh CA in `--dir`).
    Proxy(proxy::ProxyArgs),
    /// Run the echo test workload: answers every request with JSON naming its mesh, service,
    /// instance and the caller's verified identity (as its sidecar passes it on).
    Echo(EchoArgs),
    /// Run a lab scenario: meshes on loopback, load, faults, assertions and reports.
    Scenario {
        #[command(subcommand)]
        command: scenario::ScenarioCommand,
    },
    /// Keep a scenario's meshes running on loopback for manual poking.
    Lab {
        #[command(subcommand)]
        command: scenario::LabCommand,
    },
    /// Add the meshfed sidecar to Kubernetes workloads (Deployments, StatefulSets, Pods…) in
    /// YAML files, like `istioctl kube-inject`; prints the result. Idempotent.
    Inject(kubernetes::InjectArgs),
    /// Install the traffic redirection of an injected pod (what its `meshfed-init` container
    /// runs; needs NET_ADMIN): iptables `nat` rules sending inbound and outbound TCP through
    /// the sidecar.
    Redirect(kubernetes::RedirectArgs),
}

#[derive(clap::Args, Debug)]
struct EchoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "")]
    mesh: String,
    #[arg(long, default_value = "echo")]
    service: String,
    #[arg(long, default_value = "echo-0")]
    instance: String,
    /// Status code of every answer.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(100..600))]
    status: u16,
    /// Added latency, e.g. 50ms.
    #[arg(long, default_value = "0ms", value_parser = trust::parse_duration_or_zero)]
    latency: std::time::Duration,
    /// Percentage of requests answered 503 instead (0 to 100, fractions allowed).
    #[arg(long, default_value = "0", value_parser = parse_percent)]
    failure_percent: meshfed_core::traffic::Share,
}

fn parse_percent(s: &str) -> Result<meshfed_core::traffic::Share, String> {
    s.parse::<f64>()
        .ok()
        .and_then(meshfed_core::traffic::Share::from_percent)
        .ok_or_else(|| format!("{s:?} is not a percentage from 0 to 100"))
}

fn echo(args: EchoArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = meshfed_app::echo::EchoConfig {
            mesh: args.mesh,
            service: args.service,
            instance: args.instance,
            status: args.status,
            latency: args.latency,
            failure: args.failure_percent,
        };
        let echo = meshfed_app::echo::Echo::build(args.listen, cfg)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let failed = until_stopped(echo.failed()).await?;
        echo.stop().await;
        exit(failed)
    })
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Table,
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    meshfed_app::logging::init(match cli.log_format {
        LogFormat::Text => meshfed_app::logging::LogFormat::Text,
        LogFormat::Json => meshfed_app::logging::LogFormat::Json,
    });
    let result = match cli.command {
        Command::Crds {
            out_dir,
            include_mesh,
        } => crds(out_dir, include_mesh),
        Command::Validate {
            files,
            output,
            strict,
            namespace,
        } => validate_cmd(&files, output, strict, namespace.as_deref()),
        Command::Explain {
            meshes,
            peer,
            all,
            output,
        } => explain::run(&meshes, peer.as_deref(), all, output),
        Command::Trust { command } => trust::run_trust(command),
        Command::Join { command } => join::run(command),
        Command::Peering { command } => trust::run_peering(command),
        Command::Status(args) => node::status(args),
        Command::Echo(args) => echo(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Control(args) => control::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Scenario { command } => scenario::run(command),
        Command::Lab { command } => scenario::lab(command),
        Command::Inject(args) => kubernetes::inject(&args),
        Command::Redirect(args) => kubernetes::redirect(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::note(&format!("meshfed: {}", error_chain(&e)));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause once: library errors often name their
/// source in their own message already.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

/// Writes `text` to standard output. A closed pipe (`meshfed … | head`) ends output quietly
/// instead of failing.
pub(crate) fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing standard output")
        }
        _ => Ok(()),
    }
}

/// Writes one line to standard error, ignoring failures (nothing better can be done).
pub(crate) fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn crds(out_dir: Option<PathBuf>, include_mesh: bool) -> Result<ExitCode> {
    let crds = if include_mesh {
        manifests::all_crds()
    } else {
        manifests::federation_crds()
    };
    for crd in &crds {
        let text = manifests::to_yaml(crd).context("serializing CRD")?;
        match &out_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(manifests::file_name(crd));
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                crate::note(&format!("wrote {}", path.display()));
            }
            None => emit(&text)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate_cmd(
    files: &[PathBuf],
    output: ReportFormat,
    strict: bool,
    namespace: Option<&str>,
) -> Result<ExitCode> {
    let (mut report, names) = meshfed_app::files::validate_files_in(files, namespace)?;
    if strict {
        for d in &mut report.diagnostics {
            d.severity = Severity::Error;
        }
    }
    match output {
        ReportFormat::Json => {
            let body = serde_json::json!({
                "files": names,
                "objects": report.objects.len(),
                "errors": report.errors(),
                "warnings": report.warnings(),
                "diagnostics": report.diagnostics,
            });
            emit(&format!("{}\n", serde_json::to_string_pretty(&body)?))?;
        }
        ReportFormat::Text => {
            let mut text = String::new();
            for d in &report.diagnostics {
                text.push_str(&format!("{d}\n"));
            }
            text.push_str(&format!(
                "{} file(s), {} object(s): {} error(s), {} warning(s)\n",
                names.len(),
                report.objects.len(),
                report.errors(),
                report.warnings()
            ));
            emit(&text)?;
        }
    }
    Ok(if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or Ctrl-C (`None`), or for `failed` — a component's task that ended on
/// its own (`Some`).
pub(crate) async fn until_stopped(
    failed: impl std::future::Future<Output = meshfed_app::tasks::TaskFailure>,
) -> Result<Option<meshfed_app::tasks::TaskFailure>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        f = failed => Some(f),
    })
}

/// The exit of a component that was stopped: success, or the task that failed.
pub(crate) fn exit(failed: Option<meshfed_app::tasks::TaskFailure>) -> Result<ExitCode> {
    match failed {
        Some(f) => Err(anyhow::anyhow!("{f}")),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// A runtime with `workers` threads. One worker gets a current-thread runtime, without the
/// cross-thread wake-ups and work stealing a one-worker multi-thread runtime still pays for.
fn runtime(workers: u16) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        // A library error that names its source, then a context above it.
        let e = anyhow::Error::new(io)
            .context("reading x.yaml: no such file")
            .context("loading the mesh");
        assert_eq!(
            super::error_chain(&e),
            "loading the mesh: reading x.yaml: no such file"
        );
    }
}
