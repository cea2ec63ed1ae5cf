//! `Scenario` (`meshfed.io/v1alpha1`): a run of the embedded lab — the meshes to build (their
//! services and federation resources), the load, the timeline of faults, and what must hold.
//! `meshfed validate` checks it like any other kind; `meshfed scenario run` runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::CustomResource;
use meshfed_core::locality::Locality;
use meshfed_core::name;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{FieldPath, Finding};
use crate::model::{Findings, locality, name_finding};

/// A lab scenario.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meshfed.io",
    version = "v1alpha1",
    kind = "Scenario",
    plural = "scenarios",
    doc = "Scenario describes a run of the meshfed embedded lab."
)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioSpec {
    /// What the scenario shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The meshes, each on its own loopback range with its own CA and trust domain
    /// `<name>.local` and control-plane namespace `<name>-system`.
    pub meshes: Vec<ScenarioMesh>,
    /// The load, sent through a client workload's sidecar for the whole run.
    pub load: ScenarioLoad,
    /// How long the load runs, e.g. `20s` (at most 30 minutes).
    pub duration: String,
    /// Lifetime of the workload certificates the control planes sign (default 24 h), e.g.
    /// `60s`: proxies renew at half of it, so a short one shows renewals during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svid_ttl: Option<String>,
    /// Faults and repairs, in time order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<ScenarioStep>>,
    /// What must hold at the end; the run fails otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<ScenarioExpectation>>,
}

/// One mesh of the lab.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioMesh {
    /// The mesh's name (DNS-1123 label).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<crate::common::Locality>,
    /// Its services, each with `replicas` echo workloads behind sidecars.
    pub services: Vec<ScenarioService>,
    /// Services of the catalog only, for scale runs (0–20,000; default 0): `bulk-0`,
    /// `bulk-1`… in namespace `bulk`, an HTTP port each, no workloads — exported and
    /// imported like any other (no call reaches one: nothing serves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_services: Option<u32>,
    /// Its federation resources (`ServiceMeshPeer`, `ExportedServiceSet`,
    /// `ImportedServiceSet`), as in a mesh file. A `ServiceMeshPeer`'s `spec.remote.addresses`
    /// names the peer mesh (`[beta]`); the lab puts the fault-injectable link to that mesh's
    /// ingress gateway there. Their namespace is the mesh's control-plane namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "objects")]
    pub resources: Option<Vec<serde_json::Value>>,
}

fn objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// A service of a lab mesh.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioService {
    pub name: String,
    pub namespace: String,
    /// Workloads (echo apps behind sidecars), 1 by default, at most 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// The load.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioLoad {
    /// The calling workload's service, `mesh/namespace/name`; its first workload's sidecar
    /// carries the load.
    pub from: String,
    /// The hostname called, e.g. `orders.shop.svc.cluster.local`.
    pub host: String,
    /// Requests per second (1–2,000).
    pub rps: u32,
    /// The request path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One timeline step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioStep {
    /// When, from the start of the load, e.g. `4s`.
    pub at: String,
    /// `kill`, `start` or `restart` a service's apps (`mesh/namespace/name`) or its sidecars
    /// (`mesh:sidecars/namespace/name`), a mesh's control plane (`mesh:control`) or its
    /// gateways for a peer (`mesh:gateway/PEER`, the `ServiceMeshPeer`'s name); `scale` a service (`mesh/namespace/name`) to `replicas`
    /// (workloads beyond it drain gracefully and stop, as in a Kubernetes scale-down;
    /// `start` brings back everything of a service); `cut` the link from one mesh to another
    /// (`alpha->beta`: refused), `blackhole` it (accepted, never answered), `delay` it by
    /// `latency`, or `heal` it; `rotate` a mesh's root (`alpha`: a new root is added and signs
    /// once trusted everywhere) or `retire` its old roots; `apply` a `resource` to a mesh
    /// (`alpha`) or `delete` one (`alpha/ExportedServiceSet/NAME`).
    pub action: String,
    pub target: String,
    /// For `delay`: how long each direction of the link holds every chunk, e.g. `100ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// For `scale`: how many of the service's workloads run (0 to its `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// For `apply`: an `ExportedServiceSet` or `ImportedServiceSet`, as in `resources`
    /// (one of the same kind and name is replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "object")]
    pub resource: Option<serde_json::Value>,
    /// Plays the step this many times (1–1,000; default 1), `every` apart — e.g. 100
    /// SIGKILL/restart cycles of a component. For `kill`, `start`, `restart`, `cut`,
    /// `blackhole`, `delay` and `heal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    /// With `repeat`: the time between two plays, e.g. `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

fn object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// One expectation; exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioExpectation {
    /// Share of requests that must succeed over the whole run, e.g. `0.999`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_ratio: Option<f64>,
    /// Share of requests that may succeed at most (`0`: every request must be refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_ratio_at_most: Option<f64>,
    /// After the first `kill`, ≥ 99 % of requests are served by another mesh within this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_within: Option<String>,
    /// After the first `start`, ≥ 99 % of requests are served by the caller's mesh again
    /// within this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_within: Option<String>,
    /// A share of the requests in a window is served by a mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<ServedBy>,
    /// The share of requests that succeed in a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_between: Option<SuccessBetween>,
    /// A peer's status, as a mesh's control plane reports it, is reached during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_status: Option<PeerStatusExpectation>,
    /// A mesh's control planes sign at least so many certificates from a moment on (first
    /// certificates and renewals; counted across control-plane restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_issued: Option<CertificatesIssued>,
}

/// `certificatesIssued`: from `from` (default: the start of the load) to the end of the run,
/// `mesh`'s control planes sign at least `atLeast` certificates. The lab reads every control
/// plane's status twice a second.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesIssued {
    pub mesh: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub at_least: u64,
}

/// `successBetween`: in `[from, to)`, the share of requests that succeed is at least
/// `atLeast` and at most `atMost` (give one or both).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessBetween {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
}

/// `peerStatus`: at some moment from `from` (default: the start) up to `by` (default: the
/// end of the run), `mesh`'s status of
/// its `ServiceMeshPeer` `peer` shows everything given — its `state`, a condition of `type`
/// with `status` (and `reason`), or the peer's trust bundle at `bundleSequence` or later.
/// The lab reads every control plane's status twice a second.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatusExpectation {
    pub mesh: String,
    pub peer: String,
    /// `Pending`, `Establishing`, `Active`, `Failing` or `Terminated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// A condition type, e.g. `Connected`, `Stale`, `TrustBundleRejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// With `condition`: `"True"` (default) or `"False"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// With `condition`: its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_sequence: Option<u64>,
    /// At least so many services imported from the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_services: Option<usize>,
    /// Not before this moment, e.g. after a partition heals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// `servedBy`: in `[from, to)`, at least `atLeast` of the successful requests came from `mesh`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedBy {
    pub mesh: String,
    pub from: String,
    pub to: String,
    pub at_least: f64,
}

/// Limits of a scenario.
pub const MAX_MESHES: usize = 8;
pub const MAX_REPLICAS: u32 = 10;
pub const MAX_WORKLOADS_PER_MESH: usize = 40;
pub const MAX_DURATION: Duration = Duration::from_secs(1_800);
pub const MAX_REPEAT: u32 = 1_000;
pub const MAX_BULK_SERVICES: u32 = 20_000;
pub const MAX_RPS: u32 = 2_000;

/// A checked scenario, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioPlan {
    pub name: String,
    pub description: String,
    pub meshes: Vec<PlanMesh>,
    pub load: PlanLoad,
    pub duration: Duration,
    /// The control planes' `--svid-ttl`, when the scenario sets one.
    pub svid_ttl: Option<Duration>,
    /// In time order; a repeated step is one entry per play.
    pub steps: Vec<PlanStep>,
    pub expect: Vec<Expectation>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanMesh {
    pub name: String,
    pub locality: Option<Locality>,
    /// (namespace, name, replicas).
    pub services: Vec<(String, String, u32)>,
    /// Catalog-only services `bulk-<i>` in namespace `bulk`.
    pub bulk_services: u32,
    /// The federation resources, as given.
    pub resources: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanLoad {
    pub mesh: String,
    pub namespace: String,
    pub service: String,
    pub host: String,
    pub rps: u32,
    pub path: String,
}

/// What a step acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// A service's apps (the echo processes behind its sidecars).
    Apps {
        mesh: String,
        namespace: String,
        service: String,
    },
    Control {
        mesh: String,
    },
    /// The gateways of `mesh` for its `ServiceMeshPeer` `peer`.
    Gateway {
        mesh: String,
        peer: String,
    },
    /// A service's sidecars (the proxies in front of its apps).
    Sidecars {
        mesh: String,
        namespace: String,
        service: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Kill(Component),
    Start(Component),
    Restart(Component),
    Cut {
        from: String,
        to: String,
    },
    Blackhole {
        from: String,
        to: String,
    },
    Delay {
        from: String,
        to: String,
        by: Duration,
    },
    Heal {
        from: String,
        to: String,
    },
    /// Runs `replicas` of the service's workloads: the rest drain and stop, stopped ones
    /// start.
    Scale {
        mesh: String,
        namespace: String,
        service: String,
        replicas: u32,
    },
    /// Adds a root to the mesh's CA.
    Rotate {
        mesh: String,
    },
    /// Drops the mesh CA's old roots.
    Retire {
        mesh: String,
    },
    /// Adds or replaces a federation resource of a mesh.
    Apply {
        mesh: String,
        resource: serde_json::Value,
    },
    /// Removes a federation resource of a mesh.
    Delete {
        mesh: String,
        kind: String,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanStep {
    pub at: Duration,
    pub action: Action,
    /// As written, for the report.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    SuccessRatio(f64),
    SuccessRatioAtMost(f64),
    FailoverWithin(Duration),
    FailbackWithin(Duration),
    ServedBy {
        mesh: String,
        from: Duration,
        to: Duration,
        at_least: f64,
    },
    SuccessBetween {
        from: Duration,
        to: Duration,
        at_least: Option<f64>,
        at_most: Option<f64>,
    },
    PeerStatus(PeerStatusCheck),
    CertificatesIssued {
        mesh: String,
        from: Duration,
        at_least: u64,
    },
}

/// A checked `peerStatus` expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatusCheck {
    pub mesh: String,
    pub peer: String,
    pub state: Option<String>,
    /// (type, status, reason).
    pub condition: Option<(String, bool, Option<String>)>,
    pub bundle_sequence: Option<u64>,
    /// At least so many imported services.
    pub imported_services: Option<usize>,
    /// Not seen before this moment.
    pub from: Duration,
    /// None: the end of the run.
    pub by: Option<Duration>,
}

impl PeerStatusCheck {
    /// What it asks for, for the report.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.state {
            parts.push(format!("state {s}"));
        }
        if let Some((t, st, r)) = &self.condition {
            parts.push(format!(
                "{t}={}{}",
                if *st { "True" } else { "False" },
                r.as_ref().map_or(String::new(), |r| format!(" ({r})"))
            ));
        }
        if let Some(n) = self.bundle_sequence {
            parts.push(format!("bundle sequence >= {n}"));
        }
        if let Some(n) = self.imported_services {
            parts.push(format!("≥ {n} services imported"));
        }
        format!(
            "{}'s peer {}: {}{}{}",
            self.mesh,
            self.peer,
            parts.join(", "),
            if self.from.is_zero() {
                String::new()
            } else {
                format!(" from {:.1}s", self.from.as_secs_f64())
            },
            self.by
                .map_or(String::new(), |b| format!(" by {:.1}s", b.as_secs_f64()))
        )
    }
}

/// A time in the run (`0s` allowed) or a length.
fn duration(v: &str, path: FieldPath, out: &mut Findings) -> Option<Duration> {
    meshfed_core::traffic::parse_duration_or_zero(v)
        .map_err(|e| {
            out.push(
                Finding::error("InvalidDuration", path, e.to_string()).hint("e.g. 4s or 1500ms"),
            );
        })
        .ok()
}

fn share(v: f64, path: FieldPath, out: &mut Findings) -> Option<f64> {
    if v > 0.0 && v <= 1.0 {
        Some(v)
    } else {
        out.push(Finding::error(
            "InvalidShare",
            path,
            format!("{v} is not a share in (0, 1]"),
        ));
        None
    }
}

/// Checks a `peerStatus` expectation.
fn peer_status(
    ps: &PeerStatusExpectation,
    p: &FieldPath,
    peers_of: &BTreeMap<String, BTreeSet<String>>,
    out: &mut Findings,
) -> Option<PeerStatusCheck> {
    let before = out.len();
    match peers_of.get(&ps.mesh) {
        None => out.push(Finding::error(
            "UnknownMesh",
            p.key("mesh"),
            format!("no mesh {:?} in the scenario", ps.mesh),
        )),
        Some(peers) if !peers.contains(&ps.peer) => out.push(
            Finding::error(
                "UnknownPeer",
                p.key("peer"),
                format!("mesh {} has no ServiceMeshPeer {:?}", ps.mesh, ps.peer),
            )
            .hint("the name of one of the mesh's ServiceMeshPeer resources"),
        ),
        Some(_) => {}
    }
    if let Some(s) = &ps.state
        && !matches!(
            s.as_str(),
            "Pending" | "Establishing" | "Active" | "Failing" | "Terminated"
        )
    {
        out.push(
            Finding::error(
                "InvalidState",
                p.key("state"),
                format!("{s:?} is no peer state"),
            )
            .hint("Pending, Establishing, Active, Failing or Terminated"),
        );
    }
    let status = match ps.status.as_deref() {
        None | Some("True") => true,
        Some("False") => false,
        Some(other) => {
            out.push(Finding::error(
                "InvalidStatus",
                p.key("status"),
                format!("{other:?}: a condition's status is \"True\" or \"False\""),
            ));
            true
        }
    };
    if ps.condition.is_none() && (ps.status.is_some() || ps.reason.is_some()) {
        out.push(Finding::error(
            "MissingField",
            p.key("condition"),
            "status and reason belong to a condition",
        ));
    }
    if ps.state.is_none()
        && ps.condition.is_none()
        && ps.bundle_sequence.is_none()
        && ps.imported_services.is_none()
    {
        out.push(Finding::error(
            "MissingField",
            p.clone(),
            "give a state, a condition, a bundleSequence or importedServices to reach",
        ));
    }
    let by = ps.by.as_deref().map(|b| duration(b, p.key("by"), out));
    let from = ps.from.as_deref().map(|f| duration(f, p.key("from"), out));
    if let (Some(Some(from)), Some(Some(by))) = (from, by)
        && from >= by
    {
        out.push(Finding::error(
            "EmptyWindow",
            p.key("by"),
            format!("{by:?} is not after {from:?}"),
        ));
    }
    if out.len() > before {
        return None;
    }
    Some(PeerStatusCheck {
        mesh: ps.mesh.clone(),
        peer: ps.peer.clone(),
        state: ps.state.clone(),
        condition: ps.condition.clone().map(|t| (t, status, ps.reason.clone())),
        bundle_sequence: ps.bundle_sequence,
        imported_services: ps.imported_services,
        from: from.flatten().unwrap_or_default(),
        by: by.flatten(),
    })
}

/// What the scenario's meshes define: the names steps, the load and expectations may use.
struct Known {
    meshes: BTreeSet<String>,
    /// Each mesh's (namespace, service) pairs.
    services_of: BTreeMap<String, BTreeSet<(String, String)>>,
    /// Each mesh's ServiceMeshPeer names (what `mesh:gateway/PEER` may name).
    peers_of: BTreeMap<String, BTreeSet<String>>,
}

impl Known {
    /// `mesh/namespace/name`: a service of one of the meshes.
    fn service_at(
        &self,
        target: &str,
        path: FieldPath,
        out: &mut Findings,
    ) -> Option<(String, String, String)> {
        let parts: Vec<&str> = target.split('/').collect();
        match parts.as_slice() {
            [m, ns, s]
                if self
                    .services_of
                    .get(*m)
                    .is_some_and(|set| set.contains(&((*ns).to_owned(), (*s).to_owned()))) =>
            {
                Some(((*m).to_owned(), (*ns).to_owned(), (*s).to_owned()))
            }
            _ => {
                out.push(
                    Finding::error(
                        "UnknownService",
                        path,
                        format!("{target:?} names no service of the scenario's meshes"),
                    )
                    .hint("mesh/namespace/name, e.g. alpha/shop/orders"),
                );
                None
            }
        }
    }

    /// `from->to`: the link between two of the meshes.
    fn link(&self, target: &str, path: FieldPath, out: &mut Findings) -> Option<(String, String)> {
        match target.split_once("->") {
            Some((a, b))
                if self.meshes.contains(a.trim())
                    && self.meshes.contains(b.trim())
                    && a.trim() != b.trim() =>
            {
                Some((a.trim().to_owned(), b.trim().to_owned()))
            }
            _ => {
                out.push(
                    Finding::error(
                        "UnknownLink",
                        path,
                        format!("{target:?} names no link between two of the scenario's meshes"),
                    )
                    .hint("from->to, e.g. alpha->beta"),
                );
                None
            }
        }
    }

    /// A mesh's name.
    fn mesh(&self, target: &str, path: FieldPath, out: &mut Findings) -> Option<String> {
        if self.meshes.contains(target) {
            Some(target.to_owned())
        } else {
            out.push(
                Finding::error(
                    "UnknownMesh",
                    path,
                    format!("no mesh {target:?} in the scenario"),
                )
                .hint("a mesh's name, e.g. alpha"),
            );
            None
        }
    }

    /// `mesh:control`, `mesh:gateway/PEER`, or a service's apps.
    fn component(&self, target: &str, path: FieldPath, out: &mut Findings) -> Option<Component> {
        let Some((mesh, what)) = target.split_once(':') else {
            return self
                .service_at(target, path, out)
                .map(|(mesh, namespace, service)| Component::Apps {
                    mesh,
                    namespace,
                    service,
                });
        };
        let ok_mesh = self.meshes.contains(mesh);
        let c = match what.split_once('/') {
            None if what == "control" && ok_mesh => Some(Component::Control {
                mesh: mesh.to_owned(),
            }),
            Some(("gateway", peer))
                if ok_mesh && self.peers_of.get(mesh).is_some_and(|p| p.contains(peer)) =>
            {
                Some(Component::Gateway {
                    mesh: mesh.to_owned(),
                    peer: peer.to_owned(),
                })
            }
            Some(("sidecars", svc)) if ok_mesh => {
                return self.service_at(&format!("{mesh}/{svc}"), path, out).map(
                    |(mesh, namespace, service)| Component::Sidecars {
                        mesh,
                        namespace,
                        service,
                    },
                );
            }
            _ => None,
        };
        if c.is_none() {
            out.push(
                Finding::error(
                    "UnknownComponent",
                    path,
                    format!("{target:?} names no component of the scenario's meshes"),
                )
                .hint(
                    "mesh:control, mesh:gateway/PEER with PEER a ServiceMeshPeer of that mesh, or mesh:sidecars/NAMESPACE/SERVICE",
                ),
            );
        }
        c
    }
}

/// The meshes to build, and what they define.
fn convert_meshes(
    spec: &ScenarioSpec,
    base: &FieldPath,
    out: &mut Findings,
) -> (Vec<PlanMesh>, Known) {
    if spec.meshes.is_empty() || spec.meshes.len() > MAX_MESHES {
        out.push(Finding::error(
            "MeshCount",
            base.key("meshes"),
            format!(
                "{} meshes; a scenario has 1 to {MAX_MESHES}",
                spec.meshes.len()
            ),
        ));
    }
    let mut meshes = Vec::new();
    let mut names = BTreeSet::new();
    let mut services_of: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for (i, m) in spec.meshes.iter().enumerate() {
        let p = base.key("meshes").index(i);
        if let Err(e) = name::dns1123_label("mesh name", &m.name) {
            out.push(name_finding(p.key("name"), &e));
        } else if !names.insert(m.name.clone()) {
            out.push(Finding::error(
                "DuplicateMesh",
                p.key("name"),
                format!("mesh {:?} is defined twice", m.name),
            ));
        }
        let loc = locality(m.locality.as_ref(), &p.key("locality"), out);
        let mut services = Vec::new();
        let total: u32 = m.services.iter().map(|s| s.replicas.unwrap_or(1)).sum();
        if usize::try_from(total).unwrap_or(usize::MAX) > MAX_WORKLOADS_PER_MESH {
            out.push(Finding::error(
                "TooManyWorkloads",
                p.key("services"),
                format!("{total} workloads; a lab mesh has at most {MAX_WORKLOADS_PER_MESH}"),
            ));
        }
        for (j, s) in m.services.iter().enumerate() {
            let sp = p.key("services").index(j);
            if let Err(e) = name::dns1035_label("service name", &s.name) {
                out.push(name_finding(sp.key("name"), &e));
            }
            if let Err(e) = name::dns1123_label("namespace", &s.namespace) {
                out.push(name_finding(sp.key("namespace"), &e));
            }
            let replicas = s.replicas.unwrap_or(1);
            if replicas == 0 || replicas > MAX_REPLICAS {
                out.push(Finding::error(
                    "InvalidReplicas",
                    sp.key("replicas"),
                    format!("{replicas} replicas; 1 to {MAX_REPLICAS}"),
                ));
            }
            if !services_of
                .entry(m.name.clone())
                .or_default()
                .insert((s.namespace.clone(), s.name.clone()))
            {
                out.push(Finding::error(
                    "DuplicateService",
                    sp.key("name"),
                    format!("{}/{} is listed twice", s.namespace, s.name),
                ));
            }
            services.push((s.namespace.clone(), s.name.clone(), replicas));
        }
        let resources = m.resources.clone().unwrap_or_default();
        for (j, r) in resources.iter().enumerate() {
            let rp = p.key("resources").index(j);
            let kind = r.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            if !matches!(
                kind,
                "ServiceMeshPeer" | "ExportedServiceSet" | "ImportedServiceSet"
            ) {
                out.push(
                    Finding::error(
                        "UnsupportedResource",
                        rp.key("kind"),
                        format!("{kind:?} is not a federation resource"),
                    )
                    .hint("ServiceMeshPeer, ExportedServiceSet or ImportedServiceSet"),
                );
            }
            let want = format!("{}-system", m.name);
            if let Some(ns) = r.pointer("/metadata/namespace").and_then(|n| n.as_str())
                && ns != want
            {
                out.push(
                    Finding::error(
                        "WrongNamespace",
                        rp.key("metadata").key("namespace"),
                        format!("{ns:?}: mesh {}'s resources live in {want:?}", m.name),
                    )
                    .hint("leave it out; the lab puts them in the control-plane namespace"),
                );
            }
        }
        let bulk_services = m.bulk_services.unwrap_or(0);
        if bulk_services > MAX_BULK_SERVICES {
            out.push(Finding::error(
                "OutOfRange",
                p.key("bulkServices"),
                format!("{bulk_services}; a lab mesh has 0 to {MAX_BULK_SERVICES} bulk services"),
            ));
        }
        meshes.push(PlanMesh {
            name: m.name.clone(),
            locality: loc,
            services,
            bulk_services,
            resources,
        });
    }
    let peers_of: BTreeMap<String, BTreeSet<String>> = spec
        .meshes
        .iter()
        .map(|m| {
            let peers = m
                .resources
                .iter()
                .flatten()
                .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some("ServiceMeshPeer"))
                .filter_map(|r| r.pointer("/metadata/name").and_then(|n| n.as_str()))
                .map(str::to_owned)
                .collect();
            (m.name.clone(), peers)
        })
        .collect();
    let known = Known {
        meshes: names,
        services_of,
        peers_of,
    };
    (meshes, known)
}

/// The load: the calling service and the request path.
fn convert_load(
    spec: &ScenarioLoad,
    known: &Known,
    lp: &FieldPath,
    out: &mut Findings,
) -> (Option<(String, String, String)>, String) {
    let from = known.service_at(&spec.from, lp.key("from"), out);
    if spec.host.parse::<meshfed_core::Hostname>().is_err() {
        out.push(Finding::error(
            "InvalidHost",
            lp.key("host"),
            format!("{:?} is not a hostname", spec.host),
        ));
    }
    if spec.rps == 0 || spec.rps > MAX_RPS {
        out.push(Finding::error(
            "InvalidRate",
            lp.key("rps"),
            format!("{} requests per second; 1 to {MAX_RPS}", spec.rps),
        ));
    }
    let path = spec.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.len() > 1024 || path.chars().any(char::is_whitespace) {
        out.push(Finding::error(
            "InvalidPath",
            lp.key("path"),
            format!("{path:?} is not an absolute request path"),
        ));
    }
    (from, path)
}

/// The timeline, checked step by step against what the meshes hold at that point.
struct Timeline<'a> {
    known: &'a Known,
    meshes: &'a [PlanMesh],
    /// The federation resources each mesh holds as the steps apply and delete them.
    held: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Timeline<'_> {
    fn action(&mut self, s: &ScenarioStep, sp: &FieldPath, out: &mut Findings) -> Option<Action> {
        let known = self.known;
        let tp = sp.key("target");
        match s.action.as_str() {
            "kill" => known.component(&s.target, tp, out).map(Action::Kill),
            "start" => known.component(&s.target, tp, out).map(Action::Start),
            "restart" => known.component(&s.target, tp, out).map(Action::Restart),
            "cut" => known
                .link(&s.target, tp, out)
                .map(|(from, to)| Action::Cut { from, to }),
            "blackhole" => known
                .link(&s.target, tp, out)
                .map(|(from, to)| Action::Blackhole { from, to }),
            "heal" => known
                .link(&s.target, tp, out)
                .map(|(from, to)| Action::Heal { from, to }),
            "scale" => self.scale(s, sp, out),
            "rotate" => known
                .mesh(&s.target, tp, out)
                .map(|mesh| Action::Rotate { mesh }),
            "retire" => known
                .mesh(&s.target, tp, out)
                .map(|mesh| Action::Retire { mesh }),
            "apply" => self.apply(s, sp, out),
            "delete" => self.delete(s, sp, out),
            "delay" => self.delay(s, sp, out),
            other => {
                out.push(
                    Finding::error(
                        "UnknownAction",
                        sp.key("action"),
                        format!("{other:?} is not a step action"),
                    )
                    .hint("kill, start, restart, scale, cut, blackhole, delay, heal, rotate, retire, apply or delete"),
                );
                None
            }
        }
    }

    fn scale(&self, s: &ScenarioStep, sp: &FieldPath, out: &mut Findings) -> Option<Action> {
        let tp = sp.key("target");
        let meshes = self.meshes;
        let svc = self.known.service_at(&s.target, tp, out);
        match (svc, s.replicas) {
            (_, None) => {
                out.push(
                    Finding::error(
                        "MissingField",
                        sp.key("replicas"),
                        "a scale step needs replicas",
                    )
                    .hint("e.g. replicas: 0"),
                );
                None
            }
            (Some((mesh, namespace, service)), Some(n)) => {
                let prepared = meshes
                    .iter()
                    .find(|m| m.name == mesh)
                    .and_then(|m| {
                        m.services
                            .iter()
                            .find(|(ns, name, _)| *ns == namespace && *name == service)
                    })
                    .map_or(0, |(_, _, r)| *r);
                if n > prepared {
                    out.push(
                            Finding::error(
                                "InvalidReplicas",
                                sp.key("replicas"),
                                format!(
                                    "{n}: the lab prepares {prepared} workload(s) of {}; scale between 0 and that",
                                    s.target
                                ),
                            )
                            .hint("raise the service's replicas"),
                        );
                    None
                } else {
                    Some(Action::Scale {
                        mesh,
                        namespace,
                        service,
                        replicas: n,
                    })
                }
            }
            (None, Some(_)) => None,
        }
    }

    fn apply(&mut self, s: &ScenarioStep, sp: &FieldPath, out: &mut Findings) -> Option<Action> {
        let tp = sp.key("target");
        let held = &mut self.held;
        let mesh = self.known.mesh(&s.target, tp, out);
        let rp = sp.key("resource");
        match (&s.resource, mesh) {
            (None, _) => {
                out.push(Finding::error(
                    "MissingField",
                    rp,
                    "an apply step needs the resource",
                ));
                None
            }
            (Some(r), Some(mesh)) => {
                let kind = r.get("kind").and_then(|k| k.as_str()).unwrap_or("");
                let name = r.pointer("/metadata/name").and_then(|n| n.as_str());
                match (kind, name) {
                    ("ServiceMeshPeer", _) => {
                        out.push(
                                Finding::error(
                                    "PeerChangeUnsupported",
                                    rp.key("kind"),
                                    "the lab builds a peer's gateways and link when it starts the meshes",
                                )
                                .hint("declare the ServiceMeshPeer under the mesh's resources"),
                            );
                        None
                    }
                    ("ExportedServiceSet" | "ImportedServiceSet", Some(name)) => {
                        held.entry(mesh.clone())
                            .or_default()
                            .insert((kind.to_owned(), name.to_owned()));
                        Some(Action::Apply {
                            mesh,
                            resource: r.clone(),
                        })
                    }
                    ("ExportedServiceSet" | "ImportedServiceSet", None) => {
                        out.push(Finding::error(
                            "MissingField",
                            rp.key("metadata").key("name"),
                            "the resource needs a name",
                        ));
                        None
                    }
                    _ => {
                        out.push(
                            Finding::error(
                                "UnsupportedResource",
                                rp.key("kind"),
                                format!("{kind:?} cannot be applied by a step"),
                            )
                            .hint("ExportedServiceSet or ImportedServiceSet"),
                        );
                        None
                    }
                }
            }
            (Some(_), None) => None,
        }
    }

    fn delete(&mut self, s: &ScenarioStep, sp: &FieldPath, out: &mut Findings) -> Option<Action> {
        let tp = sp.key("target");
        let (names, held) = (&self.known.meshes, &mut self.held);
        let parts: Vec<&str> = s.target.split('/').collect();
        match parts.as_slice() {
            [mesh, kind, name]
                if names.contains(*mesh)
                    && held
                        .get(*mesh)
                        .is_some_and(|h| h.contains(&((*kind).to_owned(), (*name).to_owned()))) =>
            {
                if *kind == "ServiceMeshPeer" {
                    out.push(
                        Finding::error(
                            "PeerChangeUnsupported",
                            tp,
                            "the lab builds a peer's gateways and link when it starts the meshes",
                        )
                        .hint("cut the link to the peer instead"),
                    );
                    None
                } else {
                    if let Some(h) = held.get_mut(*mesh) {
                        h.remove(&((*kind).to_owned(), (*name).to_owned()));
                    }
                    Some(Action::Delete {
                        mesh: (*mesh).to_owned(),
                        kind: (*kind).to_owned(),
                        name: (*name).to_owned(),
                    })
                }
            }
            _ => {
                out.push(
                    Finding::error(
                        "NoSuchResource",
                        tp,
                        format!(
                            "{:?} names no resource the mesh holds at this step",
                            s.target
                        ),
                    )
                    .hint("mesh/Kind/name, e.g. beta/ExportedServiceSet/alpha"),
                );
                None
            }
        }
    }

    fn delay(&self, s: &ScenarioStep, sp: &FieldPath, out: &mut Findings) -> Option<Action> {
        let tp = sp.key("target");
        let by = match &s.latency {
            Some(l) => duration(l, sp.key("latency"), out),
            None => {
                out.push(
                    Finding::error(
                        "MissingField",
                        sp.key("latency"),
                        "a delay step needs latency",
                    )
                    .hint("e.g. latency: 100ms"),
                );
                None
            }
        };
        let l = self.known.link(&s.target, tp, out);
        match (l, by) {
            (Some((from, to)), Some(by)) if by <= Duration::from_secs(10) => {
                Some(Action::Delay { from, to, by })
            }
            (Some(_), Some(by)) => {
                out.push(Finding::error(
                    "InvalidDuration",
                    sp.key("latency"),
                    format!("{by:?}; a link delays by at most 10s"),
                ));
                None
            }
            _ => None,
        }
    }
}

/// One expectation entry; exactly one kind each.
fn convert_expectation(
    e: &ScenarioExpectation,
    ep: &FieldPath,
    known: &Known,
    expect: &mut Vec<Expectation>,
    out: &mut Findings,
) {
    let names = &known.meshes;
    let set = [
        e.success_ratio.is_some(),
        e.success_ratio_at_most.is_some(),
        e.failover_within.is_some(),
        e.failback_within.is_some(),
        e.served_by.is_some(),
        e.success_between.is_some(),
        e.peer_status.is_some(),
        e.certificates_issued.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        out.push(
            Finding::error(
                "OneExpectationEach",
                ep.clone(),
                format!("{set} expectations in one entry; give exactly one"),
            )
            .hint(
                "successRatio, successRatioAtMost, failoverWithin, failbackWithin, servedBy, successBetween, peerStatus or certificatesIssued",
            ),
        );
        return;
    }
    if let Some(r) = e.success_ratio {
        expect.extend(share(r, ep.key("successRatio"), out).map(Expectation::SuccessRatio));
    }
    if let Some(r) = e.success_ratio_at_most {
        if (0.0..=1.0).contains(&r) {
            expect.push(Expectation::SuccessRatioAtMost(r));
        } else {
            out.push(Finding::error(
                "InvalidShare",
                ep.key("successRatioAtMost"),
                format!("{r} is not a share in [0, 1]"),
            ));
        }
    }
    if let Some(d) = &e.failover_within {
        expect.extend(duration(d, ep.key("failoverWithin"), out).map(Expectation::FailoverWithin));
    }
    if let Some(d) = &e.failback_within {
        expect.extend(duration(d, ep.key("failbackWithin"), out).map(Expectation::FailbackWithin));
    }
    if let Some(s) = &e.served_by {
        let sp = ep.key("servedBy");
        if !names.contains(&s.mesh) {
            out.push(Finding::error(
                "UnknownMesh",
                sp.key("mesh"),
                format!("no mesh {:?} in the scenario", s.mesh),
            ));
        }
        let from = duration(&s.from, sp.key("from"), out);
        let to = duration(&s.to, sp.key("to"), out);
        let at_least = share(s.at_least, sp.key("atLeast"), out);
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            out.push(Finding::error(
                "EmptyWindow",
                sp.key("to"),
                format!("{to:?} is not after {from:?}"),
            ));
        }
        if let (Some(from), Some(to), Some(at_least)) = (from, to, at_least) {
            expect.push(Expectation::ServedBy {
                mesh: s.mesh.clone(),
                from,
                to,
                at_least,
            });
        }
    }
    if let Some(w) = &e.success_between {
        let wp = ep.key("successBetween");
        let from = duration(&w.from, wp.key("from"), out);
        let to = duration(&w.to, wp.key("to"), out);
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            out.push(Finding::error(
                "EmptyWindow",
                wp.key("to"),
                format!("{to:?} is not after {from:?}"),
            ));
        }
        let bound = |v: Option<f64>, key: &str, out: &mut Findings| match v {
            Some(v) if !(0.0..=1.0).contains(&v) => {
                out.push(Finding::error(
                    "InvalidShare",
                    wp.key(key),
                    format!("{v} is not a share in [0, 1]"),
                ));
                false
            }
            _ => true,
        };
        let ok = bound(w.at_least, "atLeast", out) & bound(w.at_most, "atMost", out);
        if w.at_least.is_none() && w.at_most.is_none() {
            out.push(Finding::error(
                "MissingField",
                wp.key("atLeast"),
                "give atLeast, atMost or both",
            ));
        } else if let (Some(from), Some(to), true) = (from, to, ok) {
            expect.push(Expectation::SuccessBetween {
                from,
                to,
                at_least: w.at_least,
                at_most: w.at_most,
            });
        }
    }
    if let Some(ps) = &e.peer_status
        && let Some(c) = peer_status(ps, &ep.key("peerStatus"), &known.peers_of, out)
    {
        expect.push(Expectation::PeerStatus(c));
    }
    if let Some(c) = &e.certificates_issued {
        let cp = ep.key("certificatesIssued");
        if !names.contains(&c.mesh) {
            out.push(Finding::error(
                "UnknownMesh",
                cp.key("mesh"),
                format!("no mesh {:?} in the scenario", c.mesh),
            ));
        }
        let from = match &c.from {
            Some(f) => duration(f, cp.key("from"), out),
            None => Some(Duration::ZERO),
        };
        if c.at_least == 0 {
            out.push(Finding::error(
                "OutOfRange",
                cp.key("atLeast"),
                "0 always holds; give at least 1",
            ));
        } else if let (Some(from), true) = (from, names.contains(&c.mesh)) {
            expect.push(Expectation::CertificatesIssued {
                mesh: c.mesh.clone(),
                from,
                at_least: c.at_least,
            });
        }
    }
}

/// Checks a scenario's spec; every problem is reported with its field path.
pub fn convert_scenario(
    name: &str,
    spec: &ScenarioSpec,
    out: &mut Findings,
) -> Option<ScenarioPlan> {
    let base = FieldPath::parse("spec");
    let errors_before = out.len();
    let (meshes, known) = convert_meshes(spec, &base, out);
    let run = duration(&spec.duration, base.key("duration"), out);
    if let Some(d) = run
        && (d.is_zero() || d > MAX_DURATION)
    {
        out.push(Finding::error(
            "InvalidDuration",
            base.key("duration"),
            format!("{d:?}; a run lasts up to {MAX_DURATION:?}"),
        ));
    }
    let (from, path) = convert_load(&spec.load, &known, &base.key("load"), out);
    let held: BTreeMap<String, BTreeSet<(String, String)>> = spec
        .meshes
        .iter()
        .map(|m| {
            let set = m
                .resources
                .iter()
                .flatten()
                .filter_map(|r| {
                    Some((
                        r.get("kind")?.as_str()?.to_owned(),
                        r.pointer("/metadata/name")?.as_str()?.to_owned(),
                    ))
                })
                .collect();
            (m.name.clone(), set)
        })
        .collect();
    let mut timeline = Timeline {
        known: &known,
        meshes: &meshes,
        held,
    };
    let mut steps = Vec::new();
    let mut last = Duration::ZERO;
    for (i, s) in spec.steps.iter().flatten().enumerate() {
        let sp = base.key("steps").index(i);
        let at = duration(&s.at, sp.key("at"), out);
        if let (Some(at), Some(run)) = (at, run) {
            if at >= run {
                out.push(Finding::error(
                    "StepAfterEnd",
                    sp.key("at"),
                    format!("{at:?} is not before the end of the run ({run:?})"),
                ));
            }
            if at < last {
                out.push(Finding::error(
                    "StepsOutOfOrder",
                    sp.key("at"),
                    format!("{at:?} comes before the previous step's {last:?}"),
                ));
            }
            last = at;
        }
        let plays = repeat(s, &sp, at, run, out);
        let action = timeline.action(s, &sp, out);
        if let (Some(at), Some(action), Some((times, every))) = (at, action, plays) {
            let label = match &action {
                Action::Scale { replicas, .. } => format!("scale {} to {replicas}", s.target),
                Action::Delay { by, .. } => format!("delay {} by {by:?}", s.target),
                _ => format!("{} {}", s.action, s.target),
            };
            for n in 0..times {
                steps.push(PlanStep {
                    at: at + every * n,
                    action: action.clone(),
                    label: if times > 1 {
                        format!("{label} ({}/{times})", n + 1)
                    } else {
                        label.clone()
                    },
                });
            }
        }
    }
    // Repeated steps interleave with later ones: the timeline is played in time order
    // (stable: steps at the same moment keep their written order).
    steps.sort_by_key(|s| s.at);
    let svid_ttl = spec.svid_ttl.as_ref().and_then(|t| {
        let p = base.key("svidTtl");
        let d = duration(t, p.clone(), out)?;
        if d < Duration::from_secs(10) {
            out.push(Finding::error(
                "OutOfRange",
                p,
                format!("{d:?}; certificates live at least 10s"),
            ));
            return None;
        }
        Some(d)
    });
    let mut expect = Vec::new();
    for (i, e) in spec.expect.iter().flatten().enumerate() {
        convert_expectation(e, &base.key("expect").index(i), &known, &mut expect, out);
    }
    if out[errors_before..]
        .iter()
        .any(|f| f.severity == crate::diag::Severity::Error)
    {
        return None;
    }
    let (mesh, namespace, service) = from?;
    Some(ScenarioPlan {
        name: name.to_owned(),
        description: spec.description.clone().unwrap_or_default(),
        meshes,
        load: PlanLoad {
            mesh,
            namespace,
            service,
            host: spec.load.host.clone(),
            rps: spec.load.rps,
            path,
        },
        duration: run?,
        svid_ttl,
        steps,
        expect,
    })
}

/// How often a step plays and how far apart: `(1, 0)` unless it repeats. A repeat is for
/// faults and repairs only, and every play must come before the end of the run.
fn repeat(
    s: &ScenarioStep,
    sp: &FieldPath,
    at: Option<Duration>,
    run: Option<Duration>,
    out: &mut Findings,
) -> Option<(u32, Duration)> {
    let times = s.repeat.unwrap_or(1);
    if s.repeat.is_none() {
        if s.every.is_some() {
            out.push(Finding::error(
                "EveryWithoutRepeat",
                sp.key("every"),
                "every says how far apart a repeated step plays; give repeat too",
            ));
            return None;
        }
        return Some((1, Duration::ZERO));
    }
    if !(1..=MAX_REPEAT).contains(&times) {
        out.push(Finding::error(
            "OutOfRange",
            sp.key("repeat"),
            format!("{times}; a step plays 1 to {MAX_REPEAT} times"),
        ));
        return None;
    }
    if !matches!(
        s.action.as_str(),
        "kill" | "start" | "restart" | "cut" | "blackhole" | "delay" | "heal"
    ) {
        out.push(
            Finding::error(
                "RepeatNotAllowed",
                sp.key("repeat"),
                format!("{:?} steps play once", s.action),
            )
            .hint("repeat kill, start, restart, cut, blackhole, delay or heal"),
        );
        return None;
    }
    let Some(every) = s.every.as_ref() else {
        out.push(Finding::error(
            "MissingField",
            sp.key("every"),
            "a repeated step needs every (the time between two plays)",
        ));
        return None;
    };
    let every = duration(every, sp.key("every"), out)?;
    if every.is_zero() && times > 1 {
        out.push(Finding::error(
            "OutOfRange",
            sp.key("every"),
            "0s; plays of a repeated step are apart",
        ));
        return None;
    }
    if let (Some(at), Some(run)) = (at, run)
        && at + every * (times - 1) >= run
    {
        out.push(Finding::error(
            "StepAfterEnd",
            sp.key("repeat"),
            format!(
                "the last play, at {:?}, is not before the end of the run ({run:?})",
                at + every * (times - 1)
            ),
        ));
        return None;
    }
    Some((times, every))
}
