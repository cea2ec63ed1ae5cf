//! Kubernetes mode against real API servers (v1.20.2 with etcd, `k8s/tests/real`): two
//! clusters, each with the CRDs of `deploy/crds`, `deploy/namespace.yaml` and the RBAC of
//! `deploy/rbac.yaml` enforced on the control planes, which run as processes with their
//! ServiceAccount's token (so a missing rule fails here as it fails in a cluster). alpha runs
//! two replicas with `--peering`, as `deploy/control-plane.yaml` does; beta one.
//!
//! Proven through the real servers: the peering-token exchange with `--kube` (bundles kept in
//! each cluster, nothing copied); both alpha replicas import beta's services on streams of
//! their own (beta's exporter lists both); one replica leads on the real Lease and writes the
//! status by server-side apply — `Connected=True`, Maistra's `discoveryStatus`, the service
//! sets' lists — and Events; the leader stopped by SIGTERM gives the Lease up, the other takes
//! over within seconds, the `ServiceMeshPeer` stays `Connected=True` throughout and its
//! conditions keep their `lastTransitionTime`; a deleted `ServiceMeshPeer` is released by the
//! finalizer and its `ImportedServiceSet` says `Accepted=False (PeerNotFound)`; no request
//! was forbidden.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;
#[path = "../../k8s/tests/real/mod.rs"]
mod real;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Procs, bin, free, tempdir, trust_init};
use meshfed_core::session::PeerState;
use real::RealApi;
use serde_json::{Value, json};

const NS: &str = "meshfed-system";

fn deploy(file: &str) -> String {
    format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// A cluster as an operator sets it up from `deploy/`, and a kubeconfig with the control
/// plane's ServiceAccount token.
struct Cluster {
    api: RealApi,
    control: PathBuf,
}

fn cluster(name: &str) -> Option<Cluster> {
    let api = RealApi::start()?;
    api.kubectl(&["apply", "-f", &deploy("crds")]);
    api.kubectl(&["apply", "-f", &deploy("namespace.yaml")]);
    api.kubectl(&["apply", "-f", &deploy("rbac.yaml")]);
    for crd in [
        "servicemeshpeers",
        "exportedservicesets",
        "importedservicesets",
    ] {
        api.kubectl(&[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            &format!("crd/{crd}.federation.maistra.io"),
        ]);
    }
    let token = api.token(NS, "meshfed-control", None, None);
    let control = api.kubeconfig(&format!("{name}-control"), &token);
    Some(Cluster { api, control })
}

impl Cluster {
    fn apply(&self, object: &Value) {
        self.api
            .kubectl_in(&["apply", "-f", "-"], Some(&object.to_string()));
    }

    /// A federation object as the server holds it, if it exists.
    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let o = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.api.admin)
            .args(["get", kind, name, "-n", NS, "-o", "json"])
            .output()
            .unwrap();
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("NotFound"), "kubectl get {kind} {name}: {err}");
            return None;
        }
        Some(serde_json::from_slice(&o.stdout).unwrap())
    }

    fn lease_holder(&self) -> Option<String> {
        let out = self.api.kubectl(&[
            "get",
            "lease",
            "meshfed-control",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
            "--ignore-not-found",
        ]);
        let h = out.trim();
        (!h.is_empty()).then(|| h.to_owned())
    }
}

/// The condition `type_` of an object's status.
fn condition(object: &Value, type_: &str) -> Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// Starts `meshfed control --kube --peering` as pod `pod` of `mesh`; its admin address.
fn control(
    procs: &mut Procs,
    dir: &Path,
    pod: &str,
    mesh: &str,
    kubeconfig: &Path,
    peering: SocketAddr,
) -> SocketAddr {
    common::kube_control(procs, dir, pod, (mesh, NS), kubeconfig, peering, Some(pod))
}

/// `meshfed args…` with KUBECONFIG set; its stdout. Panics when it fails.
fn meshfed(dir: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let o = Command::new(bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "meshfed {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A control plane's import from `peer`: its state and the local names it imported.
fn import_of(admin: SocketAddr, peer: &str) -> Option<(PeerState, Vec<String>)> {
    let st = common::control_status(admin)?.peering?;
    st.import(peer).map(|i| {
        let names = i
            .services
            .iter()
            .map(|s| s.local_service.hostname.clone())
            .filter(|h| !h.is_empty())
            .collect();
        (i.status.state, names)
    })
}

const ORDERS: &str = "orders.shop.svc.beta-imports.local";

const LOGS: [&str; 3] = ["alpha-0", "alpha-1", "beta-0"];

fn wait(dir: &Path, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            // Each log's distinct warnings and errors, then its last lines.
            let logs: String = LOGS
                .iter()
                .map(|p| {
                    let log =
                        std::fs::read_to_string(dir.join(format!("{p}.log"))).unwrap_or_default();
                    let mut said = std::collections::BTreeSet::new();
                    let problems: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                        .filter(|l| said.insert(l.get(28..148).unwrap_or(l)))
                        .collect();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = &lines[lines.len().saturating_sub(15)..];
                    format!(
                        "--- {p}.log: warnings and errors\n{}\n--- {p}.log: last lines\n{}\n",
                        problems.join("\n"),
                        tail.join("\n")
                    )
                })
                .collect();
            panic!("{what}: not within {secs} s\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one story: two clusters, set up, peered, a leader lost
fn two_real_clusters_peer_by_token_and_a_replica_takes_over_without_a_status_flap() {
    let Some(alpha) = cluster("alpha") else {
        return;
    };
    let Some(beta) = cluster("beta") else {
        return;
    };
    let dir = tempdir("real-kube");
    trust_init(&dir, "alpha-ca", "alpha.local");
    trust_init(&dir, "beta-ca", "beta.local");
    let alpha_peering = [free("127.0.11.1"), free("127.0.11.2")];
    let beta_peering = free("127.0.12.1");

    // beta exports shop/*; alpha imports shop/orders. alpha declares beta with no roots: the
    // peering token brings them.
    for (name, port) in [("orders", 8080), ("payments", 8081)] {
        beta.apply(&json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
        beta.apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": port}]}}));
    }
    beta.apply(&json!({
        "apiVersion": "federation.maistra.io/v1", "kind": "ExportedServiceSet",
        "metadata": {"name": "alpha", "namespace": NS},
        "spec": {"exportRules": [{"type": "NameSelector",
                                  "nameSelector": {"namespace": "shop", "name": "*"}}]}}));
    alpha.apply(&json!({
        "apiVersion": "federation.maistra.io/v1", "kind": "ServiceMeshPeer",
        "metadata": {"name": "beta", "namespace": NS},
        "spec": {
            "remote": {"addresses": [beta_peering.ip().to_string()],
                       "discoveryPort": beta_peering.port()},
            "security": {"trustDomain": "beta.local",
                         "clientID": format!("beta.local/ns/{NS}/sa/egress-alpha-service-account")}}}));
    alpha.apply(&json!({
        "apiVersion": "federation.maistra.io/v1", "kind": "ImportedServiceSet",
        "metadata": {"name": "beta", "namespace": NS},
        "spec": {"importRules": [{"type": "NameSelector",
                                  "nameSelector": {"namespace": "shop", "name": "orders"}}]}}));

    // alpha's two replicas, as the Deployment runs them.
    let mut procs = Procs::default();
    let alpha_admin = [
        control(
            &mut procs,
            &dir,
            "alpha-0",
            "alpha",
            &alpha.control,
            alpha_peering[0],
        ),
        control(
            &mut procs,
            &dir,
            "alpha-1",
            "alpha",
            &alpha.control,
            alpha_peering[1],
        ),
    ];
    wait(&dir, "alpha's replicas up, one leading", 60, || {
        alpha_admin.iter().all(|a| import_of(*a, "beta").is_some())
            && alpha.lease_holder().is_some()
    });

    // The token exchange, each command with the control plane's own account (as when run in
    // its pod): alpha records the token in its cluster, beta redeems it at alpha-0.
    let port = alpha_peering[0].port().to_string();
    let ip = alpha_peering[0].ip().to_string();
    let token = meshfed(
        &dir,
        &alpha.control,
        &[
            "peering",
            "token",
            "create",
            "--kube",
            "--namespace",
            NS,
            "--dir",
            "alpha-ca",
            "--peer-name",
            "alpha",
            "--address",
            &ip,
            "--discovery-port",
            &port,
            "--server-id",
            &format!("spiffe://alpha.local/ns/{NS}/sa/meshfed-peering"),
            "--client-id",
            &format!("alpha.local/ns/{NS}/sa/egress-beta-service-account"),
        ],
    );
    let printed = meshfed(
        &dir,
        &beta.control,
        &[
            "peering",
            "token",
            "accept",
            "--kube",
            "--namespace",
            NS,
            "--dir",
            "beta-ca",
            "--mesh-name",
            "beta",
            token.trim(),
        ],
    );
    let mut smp: Value = serde_saphyr::from_str(&printed).unwrap();
    smp["metadata"]["namespace"] = json!(NS);
    beta.apply(&smp);
    let beta_admin = control(
        &mut procs,
        &dir,
        "beta-0",
        "beta",
        &beta.control,
        beta_peering,
    );

    // Both alpha replicas import beta's orders (each on its own stream), beta imports alpha.
    wait(&dir, "both alpha replicas importing from beta", 90, || {
        let imports: Vec<_> = alpha_admin.iter().map(|a| import_of(*a, "beta")).collect();
        eprintln!("alpha's imports of beta: {imports:?}");
        imports
            .iter()
            .all(|i| *i == Some((PeerState::Active, vec![ORDERS.to_owned()])))
    });
    wait(&dir, "beta importing from alpha", 60, || {
        import_of(beta_admin, "alpha").is_some_and(|(s, _)| s == PeerState::Active)
    });
    let streams = common::control_status(beta_admin)
        .and_then(|s| s.peering)
        .and_then(|p| p.exports.get("alpha").map(|e| e.replicas.clone()))
        .unwrap_or_default();
    assert_eq!(
        streams.into_iter().collect::<Vec<_>>(),
        ["alpha-0", "alpha-1"],
        "beta serves each alpha replica a stream"
    );

    // The leader's status, by server-side apply through the real server.
    let leader = alpha.lease_holder().unwrap();
    let other = if leader == "alpha-0" {
        "alpha-1"
    } else {
        "alpha-0"
    };
    wait(&dir, "alpha's ServiceMeshPeer Connected=True", 60, || {
        alpha.get("servicemeshpeer", "beta").is_some_and(|p| {
            condition(&p, "Connected")["status"] == "True"
                && p["status"]["discoveryStatus"]["active"][0]["pod"] == leader.as_str()
        })
    });
    let peer = alpha.get("servicemeshpeer", "beta").unwrap();
    let connected_since = condition(&peer, "Connected")["lastTransitionTime"].clone();
    assert!(connected_since.is_string(), "{peer}");
    assert_eq!(condition(&peer, "Accepted")["status"], "True", "{peer}");
    assert_eq!(
        condition(&peer, "Accepted")["observedGeneration"],
        peer["metadata"]["generation"]
    );
    assert_eq!(
        peer["metadata"]["finalizers"],
        json!(["federation.meshfed.io/peer-cleanup"]),
        "{peer}"
    );
    wait(&dir, "the service sets list what went across", 60, || {
        alpha.get("importedserviceset", "beta").is_some_and(|s| {
            s["status"]["importedServices"][0]["localService"]["hostname"] == ORDERS
        }) && beta
            .get("exportedserviceset", "alpha")
            .is_some_and(|s| s["status"]["exportedServices"].as_array().map(Vec::len) == Some(2))
    });
    let events = alpha.api.kubectl(&[
        "get",
        "events.events.k8s.io",
        "-n",
        NS,
        "-o",
        "jsonpath={range .items[*]}{.reason}/{.regarding.kind}/{.regarding.name}{\"\\n\"}{end}",
    ]);
    assert!(
        events
            .lines()
            .any(|l| l == "PeerConnected/ServiceMeshPeer/beta"),
        "{events}"
    );

    // The leader stops (SIGTERM): it gives the Lease up, the other replica takes over in
    // seconds, and the peer's status never says anything but Connected=True.
    let watcher = {
        let admin = alpha.api.admin.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let o = Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&admin)
                    .args(["get", "servicemeshpeer", "beta", "-n", NS, "-o", "json"])
                    .output()
                    .unwrap();
                if let Ok(p) = serde_json::from_slice::<Value>(&o.stdout) {
                    seen.push(condition(&p, "Connected"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        });
        (stop, h)
    };
    let stopped = Instant::now();
    let status = procs.terminate(&leader, Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{leader}: {status:?}");
    wait(&dir, "the other replica holding the Lease", 30, || {
        alpha.lease_holder().as_deref() == Some(other)
    });
    let takeover = stopped.elapsed();
    eprintln!("the Lease changed hands {takeover:?} after SIGTERM to the leader");
    assert!(
        takeover < Duration::from_secs(10),
        "the Lease was not released: the takeover took {takeover:?} (lease 15 s)"
    );
    wait(&dir, "the new leader's status", 30, || {
        alpha
            .get("servicemeshpeer", "beta")
            .is_some_and(|p| p["status"]["discoveryStatus"]["active"][0]["pod"] == other)
    });
    std::thread::sleep(Duration::from_secs(2));
    watcher.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.1.join().unwrap();
    assert!(seen.len() > 5, "{seen:?}");
    for c in &seen {
        assert_eq!(
            c["status"], "True",
            "Connected flapped during the takeover: {seen:#?}"
        );
        assert_eq!(
            c["lastTransitionTime"], connected_since,
            "Connected's transition time moved without a transition: {seen:#?}"
        );
    }
    let survivor = alpha_admin[usize::from(other == "alpha-1")];
    assert_eq!(
        import_of(survivor, "beta"),
        Some((PeerState::Active, vec![ORDERS.to_owned()])),
        "the surviving replica keeps importing"
    );

    // A deleted ServiceMeshPeer: the new leader releases the finalizer after the cleanup,
    // and the ImportedServiceSet for it says it has no effect.
    alpha.api.kubectl(&[
        "delete",
        "servicemeshpeer",
        "beta",
        "-n",
        NS,
        "--wait=false",
    ]);
    wait(&dir, "the deleted ServiceMeshPeer gone", 60, || {
        alpha.get("servicemeshpeer", "beta").is_none()
    });
    wait(
        &dir,
        "the orphaned ImportedServiceSet not accepted",
        60,
        || {
            alpha.get("importedserviceset", "beta").is_some_and(|s| {
                let c = condition(&s, "Accepted");
                c["status"] == "False" && c["reason"] == "PeerNotFound"
            })
        },
    );
    wait(
        &dir,
        "the survivor no longer importing from beta",
        30,
        || import_of(survivor, "beta").is_none(),
    );

    // Every request the control planes made was one deploy/rbac.yaml grants.
    for p in LOGS {
        let log = std::fs::read_to_string(dir.join(format!("{p}.log"))).unwrap_or_default();
        let denied: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
            .collect();
        assert!(denied.is_empty(), "{p}: {denied:#?}");
    }
}

/// The API server goes away for 20 s and comes back: the control plane's watches resume
/// (relisting as needed) within seconds, so a spec edit made after the outage reaches the
/// status soon — not after a backoff grown to half a minute.
#[test]
fn after_an_api_server_outage_a_spec_edit_reaches_status_within_seconds() {
    let Some(mut alpha) = cluster("alpha") else {
        return;
    };
    let dir = tempdir("real-kube-outage");
    trust_init(&dir, "alpha-ca", "alpha.local");
    let set = |rules: Value| {
        json!({
            "apiVersion": "federation.maistra.io/v1", "kind": "ExportedServiceSet",
            "metadata": {"name": "beta", "namespace": NS},
            "spec": {"exportRules": rules}})
    };
    let rule = |name: &str| json!({"type": "NameSelector", "nameSelector": {"namespace": "shop", "name": name}});
    alpha.apply(&json!({
        "apiVersion": "federation.maistra.io/v1", "kind": "ServiceMeshPeer",
        "metadata": {"name": "beta", "namespace": NS},
        "spec": {
            "remote": {"addresses": ["127.0.12.9"], "discoveryPort": 9},
            "security": {"trustDomain": "beta.local",
                         "clientID": format!("beta.local/ns/{NS}/sa/egress-alpha-service-account")}}}));
    alpha.apply(&set(json!([rule("orders")])));
    let mut procs = Procs::default();
    control(
        &mut procs,
        &dir,
        "alpha-0",
        "alpha",
        &alpha.control,
        free("127.0.11.3"),
    );
    let observed = |alpha: &Cluster| {
        alpha
            .get("exportedserviceset", "beta")
            .and_then(|s| condition(&s, "Accepted")["observedGeneration"].as_i64())
    };
    wait(&dir, "the set's status", 60, || observed(&alpha) == Some(1));
    alpha.api.stop_apiserver();
    std::thread::sleep(Duration::from_secs(20));
    alpha.api.start_apiserver();
    let edited = Instant::now();
    alpha.apply(&set(json!([rule("orders"), rule("payments")])));
    wait(&dir, "the edit in the status", 60, || {
        observed(&alpha) == Some(2)
    });
    let took = edited.elapsed();
    eprintln!("a spec edit reached the status {took:?} after the API server came back");
    assert!(
        took < Duration::from_secs(15),
        "the edit took {took:?} to reach the status"
    );
}
