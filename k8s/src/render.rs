//! The cluster as a mesh file: what the reflectors hold, rendered into the `Mesh` document
//! and federation resources that embedded mode reads from disk, so Kubernetes mode serves
//! proxies through exactly the same validation and snapshot path.
//!
//! - **Services** (not `ExternalName`, not headless-without-selector) become mesh services:
//!   ports named as in the Service (`port-N` when unnamed), the protocol from `appProtocol` or
//!   Istio's port-name prefix (`http-`, `http2-`, `grpc-`, `tcp-`, `tls-`), HTTP otherwise.
//! - **Workloads** are the injected pods (a `meshfed-proxy` container) behind each Service's
//!   EndpointSlices: the pod's name and service account, its IP with the sidecar's inbound
//!   port (15006) and the slice's first port as the app, its labels, and its locality from its
//!   node's `topology.kubernetes.io/region`/`zone` and `topology.istio.io/subzone` labels. A
//!   pod behind several Services backs the first by name (a workload backs one service).
//! - **Federation resources** (`ServiceMeshPeer`, `ExportedServiceSet`, `ImportedServiceSet`
//!   in the control-plane namespace) are checked one by one with the same validator as a mesh
//!   file: an invalid one is left out and reported ([`Refusal`]) — the others are unaffected.
//! - **Peer roots** come from the ConfigMap each accepted `ServiceMeshPeer` names in
//!   `spec.security.certificateChain` (`root-cert.pem`), as in Maistra ([`PeerRoots`]), and
//!   from the peer bundles meshfed stores itself in `meshfed-peer-bundles` (peering tokens,
//!   redemptions, bundles received over the peering stream; [`crate::trust_store`]).
//! - **Gateways** are the Services in the control-plane namespace labelled
//!   `federation.meshfed.io/gateway: <gateway name>`: their cluster IP with the port named
//!   `tls` (15443 otherwise) and, if present, the port named `discovery`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshfed_crds::diag::Severity;
use meshfed_crds::validate::{Input, validate};
use serde_json::{Value, json};

/// The sidecar's container name (what `meshfed inject` adds).
pub const SIDECAR_CONTAINER: &str = "meshfed-proxy";
/// The sidecar's inbound mTLS port.
pub const INBOUND_PORT: u16 = 15006;
/// The label that makes a control-plane Service a federation gateway.
pub const GATEWAY_LABEL: &str = "federation.meshfed.io/gateway";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the reflectors hold.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    /// The federation resources of the control-plane namespace, as the API server has them.
    pub federation: Vec<Value>,
    /// The ConfigMaps of the control-plane namespace (peer roots, as Maistra keeps them).
    pub configmaps: Vec<ConfigMap>,
}

/// A peer's roots from the ConfigMap its `ServiceMeshPeer` names in
/// `spec.security.certificateChain` (key `root-cert.pem`, as in Maistra).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoots {
    pub peer: String,
    pub trust_domain: String,
    pub pem: String,
    /// The ConfigMap's resourceVersion (rises with every change): the bundle's sequence.
    pub version: u64,
}

impl PeerRoots {
    /// The roots as the peer's trust bundle.
    pub fn bundle(&self) -> Result<meshfed_trust::TrustBundle, PeerRootsError> {
        let td = self.trust_domain.parse()?;
        let certs = meshfed_trust::pem::certificates(&self.pem)?;
        Ok(meshfed_trust::TrustBundle::new(td, certs, self.version)?)
    }
}

/// Why a ConfigMap's roots are not a usable bundle.
#[derive(Debug, thiserror::Error)]
pub enum PeerRootsError {
    #[error("trustDomain: {0}")]
    TrustDomain(#[from] meshfed_core::id::SpiffeIdError),
    #[error(transparent)]
    Pem(#[from] meshfed_trust::pem::PemError),
    #[error(transparent)]
    Bundle(#[from] meshfed_trust::bundle::BundleError),
}

/// Adds to `set` the peer bundles meshfed stored (where newer than what `set` holds), then
/// the ConfigMap roots of every peer whose domain it still has no bundle for (a bundle
/// already held — stored, imported, or received over the peering stream after a rotation —
/// is newer than the ConfigMap's). True if something was added or updated.
pub fn add_peer_trust(set: &mut meshfed_trust::bundle::TrustBundleSet, r: &Rendered) -> bool {
    use meshfed_trust::bundle::Applied;
    let mut added = false;
    for b in crate::trust_store::parse_bundles(&r.stored_bundles).0 {
        if matches!(set.insert(b), Ok(Applied::Added | Applied::Updated)) {
            added = true;
        }
    }
    for p in &r.peer_roots {
        if let Ok(b) = p.bundle()
            && set.get(b.trust_domain()).is_none()
            && set.insert(b).is_ok()
        {
            added = true;
        }
    }
    added
}

/// A `certificateChain` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootProblem {
    pub peer: String,
    pub reason: String,
    pub message: String,
}

/// What the cluster does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The mesh's name.
    pub mesh: String,
    /// The control-plane namespace (the federation resources live there).
    pub namespace: String,
    pub trust_domain: String,
    pub cluster_domain: Option<String>,
}

/// A federation resource left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: String,
    pub name: String,
    pub generation: Option<i64>,
    /// The first error's stable reason.
    pub reason: String,
    /// Every error, one per line, with its field.
    pub message: String,
}

/// A service set in force without some of its rules, which did not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRules {
    pub kind: String,
    pub name: String,
    /// The first skipped rule's stable reason.
    pub reason: String,
    /// Every error of the skipped rules, one per line, with its field.
    pub message: String,
}

/// When every error of a service set's `report` lies inside its rules, the set without
/// those rules, and each error as (reason, "field: message"); else `None`.
fn without_bad_rules(
    doc: &Value,
    report: &meshfed_crds::validate::Report,
) -> Option<(Vec<(String, String)>, Value)> {
    let list = match doc["kind"].as_str()? {
        "ExportedServiceSet" => "exportRules",
        "ImportedServiceSet" => "importRules",
        _ => return None,
    };
    let prefix = format!("spec.{list}[");
    let mut bad = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    for d in report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
    {
        let path = d.path.to_string();
        let index: usize = path
            .strip_prefix(&prefix)?
            .split(']')
            .next()?
            .parse()
            .ok()?;
        bad.insert(index);
        errors.push((d.reason.to_owned(), format!("{path}: {}", d.message)));
    }
    if bad.is_empty() {
        return None;
    }
    let mut kept = doc.clone();
    let rules = kept.get_mut("spec")?.get_mut(list)?.as_array_mut()?;
    let mut i = 0;
    rules.retain(|_| {
        i += 1;
        !bad.contains(&(i - 1))
    });
    Some((errors, kept))
}

/// The rendered mesh file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Federation resources that did not validate (not in `text`).
    pub refused: Vec<Refusal>,
    /// Federation resources in `text`: (kind, name, generation).
    pub accepted: Vec<(String, String, Option<i64>)>,
    /// Accepted service sets in force without some of their rules.
    pub skipped: Vec<SkippedRules>,
    /// Peer roots from ConfigMaps, for accepted peers that name one.
    pub peer_roots: Vec<PeerRoots>,
    /// Accepted peers whose `certificateChain` could not be read.
    pub root_problems: Vec<RootProblem>,
    /// The stored peer bundles (`meshfed-peer-bundles`: key `<td>.json` → SPIFFE bundle).
    pub stored_bundles: BTreeMap<String, String>,
    /// Stored bundles that do not parse (left out), each naming its key.
    pub bundle_problems: Vec<String>,
    /// Every `ServiceMeshPeer` with its finalizers, and whether it is being deleted (those
    /// are out of the model already).
    pub peers: Vec<PeerMeta>,
}

/// A `ServiceMeshPeer`'s lifecycle, for the finalizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMeta {
    pub name: String,
    pub finalizers: Vec<String>,
    pub deleting: bool,
    /// Accepted (valid and in force).
    pub accepted: bool,
}

/// The roots each accepted `ServiceMeshPeer` names in `spec.security.certificateChain`.
fn peer_roots(peers: &[&Value], configmaps: &[ConfigMap]) -> (Vec<PeerRoots>, Vec<RootProblem>) {
    let mut roots = Vec::new();
    let mut problems = Vec::new();
    for p in peers {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let chain = &p["spec"]["security"]["certificateChain"];
        let Some(cm_name) = chain["name"].as_str() else {
            continue;
        };
        let problem = |reason: &str, message: String| RootProblem {
            peer: name.clone(),
            reason: reason.to_owned(),
            message,
        };
        if chain["kind"].as_str().is_some_and(|k| k != "ConfigMap") {
            problems.push(problem(
                "UnsupportedCertificateChain",
                format!(
                    "spec.security.certificateChain.kind: {} (only ConfigMap)",
                    chain["kind"]
                ),
            ));
            continue;
        }
        let Some(cm) = configmaps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(cm_name))
        else {
            problems.push(problem(
                "CertificateChainNotFound",
                format!("no ConfigMap {cm_name:?} in the control-plane namespace"),
            ));
            continue;
        };
        let pem = match meshfed_crds::peer::root_cert(cm) {
            Ok(pem) => pem.to_owned(),
            Err(e) => {
                problems.push(problem(e.reason(), format!("ConfigMap {cm_name:?}: {e}")));
                continue;
            }
        };
        let r = PeerRoots {
            peer: name.clone(),
            trust_domain: p["spec"]["security"]["trustDomain"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            pem,
            version: cm
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        };
        match r.bundle() {
            Ok(_) => roots.push(r),
            Err(e) => problems.push(problem(
                "CertificateChainInvalid",
                format!("ConfigMap {cm_name:?}: data.root-cert.pem: {e}"),
            )),
        }
    }
    (roots, problems)
}

fn protocol(name: &str, app_protocol: Option<&str>) -> &'static str {
    let p = app_protocol.unwrap_or(name).to_ascii_lowercase();
    let prefix = p.split('-').next().unwrap_or("");
    match prefix {
        "http2" | "h2c" | "kubernetes.io/h2c" => "HTTP2",
        "grpc" => "GRPC",
        "tcp" | "mongo" | "mysql" | "redis" => "TCP",
        "tls" | "https" => "TLS",
        _ => "HTTP",
    }
}

fn labels(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Value> {
    meta.labels
        .as_ref()
        .filter(|l| !l.is_empty())
        .map(|l| json!(l))
}

/// A pod with the meshfed sidecar.
pub(crate) fn injected(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == SIDECAR_CONTAINER))
}

/// A node's locality, from the well-known topology labels.
fn locality(node: &Node) -> Option<Value> {
    let l = node.metadata.labels.as_ref()?;
    let region = l.get("topology.kubernetes.io/region")?;
    let mut v = json!({"region": region});
    if let Some(z) = l.get("topology.kubernetes.io/zone") {
        v["zone"] = json!(z);
        if let Some(s) = l.get("topology.istio.io/subzone") {
            v["subzone"] = json!(s);
        }
    }
    Some(v)
}

/// Renders `cluster` as a mesh file for `settings`.
pub fn render(cluster: &Cluster, settings: &Settings) -> Rendered {
    let pods: BTreeMap<(String, String), &Pod> = cluster
        .pods
        .iter()
        .filter_map(|p| Some(((p.metadata.namespace.clone()?, p.metadata.name.clone()?), p)))
        .collect();
    let nodes: BTreeMap<&str, &Node> = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    let mut services = Vec::new();
    let mut gateways = Vec::new();
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    let mut sorted: Vec<&Service> = cluster.services.iter().collect();
    sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for s in sorted {
        let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) else {
            continue;
        };
        let Some(spec) = &s.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        if ns == &settings.namespace
            && let Some(gw) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(GATEWAY_LABEL))
        {
            if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| *ip != "None") {
                let port_named = |n: &str| {
                    spec.ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(n))
                        .map(|p| p.port)
                };
                let mut g = json!({
                    "name": gw,
                    "address": format!("{ip}:{}", port_named("tls").unwrap_or(15443)),
                });
                if let Some(d) = port_named("discovery") {
                    g["discoveryAddress"] = json!(format!("{ip}:{d}"));
                }
                gateways.push(g);
            }
            continue;
        }
        let ports: Vec<Value> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let pname = p.name.clone().unwrap_or_else(|| format!("port-{}", p.port));
                json!({
                    "name": pname,
                    "port": p.port,
                    "protocol": protocol(&pname, p.app_protocol.as_deref()),
                })
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let mut v = json!({"name": name, "namespace": ns, "ports": ports});
        if let Some(l) = labels(&s.metadata) {
            v["labels"] = l;
        }
        known.insert((ns.clone(), name.clone()));
        services.push(v);
    }
    // Workloads: injected pods behind the services' slices; a pod backs its first service.
    let mut workloads: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut accounts: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut slices: Vec<&EndpointSlice> = cluster.slices.iter().collect();
    slices.sort_by_key(|s| {
        (
            s.metadata.namespace.clone(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL).cloned()),
            s.metadata.name.clone(),
        )
    });
    for slice in slices {
        let Some(ns) = &slice.metadata.namespace else {
            continue;
        };
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        if !known.contains(&(ns.clone(), svc.clone())) || slice.address_type != "IPv4" {
            continue;
        }
        let Some(app_port) = slice.ports.iter().flatten().find_map(|p| p.port) else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(target) = &ep.target_ref else {
                continue;
            };
            if target.kind.as_deref() != Some("Pod") {
                continue;
            }
            let Some(pod_name) = &target.name else {
                continue;
            };
            let Some(pod) = pods.get(&(ns.clone(), pod_name.clone())) else {
                continue;
            };
            if !injected(pod) {
                continue;
            }
            let Some(ip) = ep.addresses.first() else {
                continue;
            };
            let key = (ns.clone(), pod_name.clone());
            if workloads.contains_key(&key) {
                continue;
            }
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned());
            accounts
                .entry((ns.clone(), svc.clone()))
                .or_default()
                .insert(sa.clone());
            let mut w = json!({
                "name": pod_name,
                "namespace": ns,
                "service": svc,
                "serviceAccount": sa,
                "inbound": format!("{ip}:{INBOUND_PORT}"),
                "app": format!("{ip}:{app_port}"),
            });
            if let Some(l) = labels(&pod.metadata) {
                w["labels"] = l;
            }
            let node = ep
                .node_name
                .as_deref()
                .or_else(|| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()));
            if let Some(loc) = node.and_then(|n| nodes.get(n)).and_then(|n| locality(n)) {
                w["locality"] = loc;
            }
            workloads.insert(key, w);
        }
    }
    for s in &mut services {
        let key = (
            s["namespace"].as_str().unwrap_or_default().to_owned(),
            s["name"].as_str().unwrap_or_default().to_owned(),
        );
        if let Some(sas) = accounts.get(&key) {
            s["serviceAccounts"] = json!(sas);
        }
    }
    let mut spec = json!({
        "trustDomain": settings.trust_domain,
        "services": services,
        "workloads": workloads.into_values().collect::<Vec<_>>(),
    });
    if let Some(d) = &settings.cluster_domain {
        spec["clusterDomain"] = json!(d);
    }
    if !gateways.is_empty() {
        spec["gateways"] = json!(gateways);
    }
    let mesh = json!({
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": settings.mesh, "namespace": settings.namespace},
        "spec": spec,
    });
    let mut docs = vec![mesh];
    let mut refused = Vec::new();
    let mut accepted = Vec::new();
    let mut skipped = Vec::new();
    let deleting = |o: &Value| !o["metadata"]["deletionTimestamp"].is_null();
    // Resources being deleted are gone from the model at once.
    let mut fed: Vec<&Value> = cluster.federation.iter().filter(|o| !deleting(o)).collect();
    fed.sort_by_key(|o| {
        (
            o["kind"].as_str().unwrap_or_default().to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    });
    for o in fed {
        let kind = o["kind"].as_str().unwrap_or_default().to_owned();
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let generation = o["metadata"]["generation"].as_i64();
        let mut doc = federation_doc(o, &settings.namespace);
        let file = format!("{kind}/{name}");
        let check = |doc: &Value| {
            let text = serde_json::to_string(doc).unwrap_or_default();
            validate(&[Input {
                file: &file,
                text: &text,
            }])
        };
        let mut report = check(&doc);
        // As Maistra does, a service set whose only errors are in some of its rules keeps
        // the others in force; the skipped ones are reported (`RulesSkipped`).
        if let Some((left_out, kept)) = without_bad_rules(&doc, &report) {
            let fewer = check(&kept);
            if !fewer.has_errors() {
                skipped.push(SkippedRules {
                    kind: kind.clone(),
                    name: name.clone(),
                    reason: left_out[0].0.clone(),
                    message: left_out
                        .iter()
                        .map(|(_, m)| m.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                });
                doc = kept;
                report = fewer;
            }
        }
        let errors: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        match errors.first() {
            None => {
                accepted.push((kind, name, generation));
                docs.push(doc);
            }
            Some(first) => refused.push(Refusal {
                kind,
                name,
                generation,
                reason: first.reason.to_owned(),
                message: errors
                    .iter()
                    .map(|d| format!("{}: {}", d.path, d.message))
                    .collect::<Vec<_>>()
                    .join("\n"),
            }),
        }
    }
    let accepted_peers: Vec<&Value> = cluster
        .federation
        .iter()
        .filter(|o| {
            o["kind"] == "ServiceMeshPeer"
                && accepted.iter().any(|(k, n, _)| {
                    k == "ServiceMeshPeer" && Some(n.as_str()) == o["metadata"]["name"].as_str()
                })
        })
        .collect();
    let (peer_roots, root_problems) = peer_roots(&accepted_peers, &cluster.configmaps);
    let stored_bundles = cluster
        .configmaps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(crate::trust_store::BUNDLES_CONFIGMAP))
        .and_then(|c| c.data.clone())
        .unwrap_or_default();
    let bundle_problems = crate::trust_store::parse_bundles(&stored_bundles).1;
    let mut peers: Vec<PeerMeta> = cluster
        .federation
        .iter()
        .filter(|o| o["kind"] == "ServiceMeshPeer")
        .map(|o| {
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            PeerMeta {
                accepted: accepted
                    .iter()
                    .any(|(k, n, _)| k == "ServiceMeshPeer" && *n == name),
                finalizers: o["metadata"]["finalizers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect(),
                deleting: deleting(o),
                name,
            }
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string_pretty(&d).unwrap_or_default());
        text.push('\n');
    }
    Rendered {
        text,
        refused,
        accepted,
        skipped,
        peer_roots,
        root_problems,
        stored_bundles,
        bundle_problems,
        peers,
    }
}

/// A federation object as a mesh file holds it: its kind, name, namespace, labels and spec
/// (server-set metadata and status left out).
fn federation_doc(o: &Value, namespace: &str) -> Value {
    let mut meta = json!({
        "name": o["metadata"]["name"],
        "namespace": namespace,
    });
    if let Some(l) = o["metadata"].get("labels").filter(|l| l.is_object()) {
        meta["labels"] = l.clone();
    }
    let mut d = json!({
        "apiVersion": o["apiVersion"],
        "kind": o["kind"],
        "metadata": meta,
    });
    if let Some(spec) = o.get("spec") {
        d["spec"] = spec.clone();
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::statuses;
    use serde_json::json;

    #[test]
    fn a_set_keeps_its_valid_rules_and_reports_the_skipped_one() {
        let set = json!({
        "apiVersion": "federation.maistra.io/v1", "kind": "ImportedServiceSet",
        "metadata": {"name": "beta", "namespace": "alpha-system", "generation": 3},
        "spec": {"importRules": [
            {"type": "NameSelector", "nameSelector": {"namespace": "shop", "name": "Bad_Name"}},
            {"type": "NameSelector", "nameSelector": {"namespace": "shop", "name": "orders"}},
        ]}});
        let peer = json!({
            "apiVersion": "federation.maistra.io/v1", "kind": "ServiceMeshPeer",
            "metadata": {"name": "beta", "namespace": "alpha-system"},
            "spec": {"remote": {"addresses": ["beta.example.test"]},
                     "gateways": {"ingress": {"name": "ingress-beta"}, "egress": {"name": "egress-beta"}},
                     "security": {"trustDomain": "beta.local",
                                  "clientID": "beta.local/ns/beta-system/sa/egress-alpha-service-account",
                                  "certificateChain": {"kind": "ConfigMap", "name": "beta-ca-root-cert"}}}});
        let cluster = Cluster {
            services: vec![],
            slices: vec![],
            pods: vec![],
            nodes: vec![],
            federation: vec![peer, set],
            configmaps: vec![],
        };
        let settings = Settings {
            mesh: "alpha".into(),
            namespace: "alpha-system".into(),
            trust_domain: "alpha.local".into(),
            cluster_domain: None,
        };
        let r = render(&cluster, &settings);
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert_eq!(r.skipped[0].reason, "InvalidName");
        assert!(
            r.skipped[0]
                .message
                .starts_with("spec.importRules[0].nameSelector.name:"),
            "{}",
            r.skipped[0].message
        );
        // The valid rule is in force.
        assert!(
            r.text.contains("orders") && !r.text.contains("Bad_Name"),
            "{}",
            r.text
        );
        // Status: accepted, with RulesSkipped naming the rule; and a Warning Event for it.
        let st = statuses(&r, None, "control-0", k8s_openapi::jiff::Timestamp::now());
        let status = &st[&("ImportedServiceSet".to_owned(), "beta".to_owned())];
        let conditions = status["conditions"].as_array().unwrap();
        let of = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap();
        assert_eq!(of("Accepted")["status"], "True");
        assert_eq!(of("RulesSkipped")["status"], "True");
        assert_eq!(of("RulesSkipped")["reason"], "InvalidName");
        assert_eq!(of("RulesSkipped")["observedGeneration"], 3);
        let events = crate::status::transitions(None, status);
        assert!(
            events.iter().any(|(_, reason, note)| reason == "InvalidName" && note.contains("importRules[0]")),
            "{events:?}"
        );
        // A set whose error is outside its rules is still refused whole.
        let mut broken = cluster.clone();
        broken.federation[1]["spec"]["importDomainSuffix"] = json!("Not A Domain");
        let r = render(&broken, &settings);
        assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn protocols_follow_app_protocol_then_the_port_name() {
        assert_eq!(protocol("http", None), "HTTP");
        assert_eq!(protocol("grpc-api", None), "GRPC");
        assert_eq!(protocol("http2", None), "HTTP2");
        assert_eq!(protocol("tcp-db", None), "TCP");
        assert_eq!(protocol("https", None), "TLS");
        assert_eq!(protocol("web", Some("kubernetes.io/h2c")), "HTTP2");
        assert_eq!(protocol("web", Some("grpc")), "GRPC");
        assert_eq!(protocol("port-8080", None), "HTTP");
    }
}
