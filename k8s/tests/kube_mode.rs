//! Kubernetes mode against an in-memory API server (real kube client, list and watch over
//! HTTP): the cluster becomes the control plane's model; an invalid federation resource is
//! left out with an `Accepted=False` status naming the reason while the others are served;
//! changes are picked up from the watch; a watch answered `410 Gone` re-lists without
//! duplicates; a deleted resource disappears from the model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_control::Snapshot;
use meshfed_control::server::StatusCell;
use meshfed_control::source::{Trust, TrustFn};
use meshfed_core::TrustDomain;
use meshfed_k8s::render::Settings;
use meshfed_k8s::source::KubeSource;
use serde_json::json;
use support::ApiServer;
use tokio::sync::watch;

const NS: &str = "alpha-system";

fn td() -> TrustDomain {
    "alpha.local".parse().unwrap()
}

fn trust() -> TrustFn {
    let ca = meshfed_trust::CertificateAuthority::new(td(), SystemTime::now()).unwrap();
    let json = ca.current_bundle().unwrap().to_json().to_string();
    Arc::new(move || {
        Ok(Trust {
            bundles: vec![(td(), json.clone())],
            signing_root: String::new(),
        })
    })
}

fn settings() -> Settings {
    Settings {
        mesh: "alpha".into(),
        namespace: NS.into(),
        trust_domain: "alpha.local".into(),
        cluster_domain: None,
    }
}

fn pod(name: &str, ip: &str, injected: bool) -> serde_json::Value {
    let mut containers = vec![json!({"name": "app", "image": "echo"})];
    if injected {
        containers.push(json!({"name": "meshfed-proxy", "image": "meshfed"}));
    }
    json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "orders", "version": "v1"}},
        "spec": {"serviceAccountName": "orders", "nodeName": "node-a", "containers": containers},
        "status": {"podIP": ip},
    })
}

fn slice(endpoints: &[(&str, &str)]) -> serde_json::Value {
    json!({
        "metadata": {"name": "orders-x1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "orders"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(pod, ip)| json!({
            "addresses": [ip],
            "conditions": {"ready": true},
            "nodeName": "node-a",
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"},
        })).collect::<Vec<_>>(),
    })
}

fn peer(name: &str, client_id: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "remote": {"addresses": [format!("{name}.example.test")]},
            "gateways": {"ingress": {"name": format!("ingress-{name}")},
                         "egress": {"name": format!("egress-{name}")}},
            "security": {"trustDomain": format!("{name}.local"), "clientID": client_id},
        },
    })
}

/// A root of beta's, as PEM (one per test run).
fn beta_root_pem() -> String {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let ca = meshfed_trust::CertificateAuthority::new(
            "beta.local".parse().unwrap(),
            SystemTime::now(),
        )
        .unwrap();
        meshfed_trust::ca::pem_encode("CERTIFICATE", ca.signing_root().unwrap())
    })
    .clone()
}

/// A cluster with one injected orders pod, one not injected, a node with its topology, a
/// valid peer, an invalid one, and an export to the valid one.
async fn cluster() -> ApiServer {
    let api = ApiServer::start().await;
    api.put(
        "nodes",
        json!({"metadata": {"name": "node-a", "labels": {
            "topology.kubernetes.io/region": "us-east",
            "topology.kubernetes.io/zone": "us-east-1a"}}}),
    );
    api.put(
        "services",
        json!({"metadata": {"name": "orders", "namespace": "shop", "labels": {"app": "orders"}},
               "spec": {"clusterIP": "10.96.0.10",
                        "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}),
    );
    api.put(
        "services",
        json!({"metadata": {"name": "ingress-beta", "namespace": NS,
                            "labels": {"federation.meshfed.io/gateway": "ingress-beta"}},
               "spec": {"clusterIP": "10.96.0.20", "ports": [
                   {"name": "tls", "port": 15443}, {"name": "discovery", "port": 8188}]}}),
    );
    api.put("pods", pod("orders-1", "10.0.0.5", true));
    api.put("pods", pod("legacy-1", "10.0.0.9", false));
    api.put(
        "endpointslices",
        slice(&[("orders-1", "10.0.0.5"), ("legacy-1", "10.0.0.9")]),
    );
    // beta's root where its certificateChain points (Maistra's ConfigMap); delta names a
    // ConfigMap that does not exist.
    let mut beta = peer(
        "beta",
        "beta.local/ns/beta-system/sa/egress-alpha-service-account",
    );
    beta["spec"]["security"]["certificateChain"] =
        json!({"kind": "ConfigMap", "name": "beta-ca-root-cert"});
    api.put("servicemeshpeers", beta);
    api.put(
        "configmaps",
        json!({"metadata": {"name": "beta-ca-root-cert", "namespace": NS},
               "data": {"root-cert.pem": beta_root_pem()}}),
    );
    let mut delta = peer(
        "delta",
        "delta.local/ns/delta-system/sa/egress-alpha-service-account",
    );
    delta["spec"]["security"]["certificateChain"] =
        json!({"kind": "ConfigMap", "name": "missing-root-cert"});
    api.put("servicemeshpeers", delta);
    // An egress identity that is no SPIFFE ID: refused, and only this peer.
    api.put("servicemeshpeers", peer("gamma", "not an id"));
    api.put(
        "exportedservicesets",
        json!({"metadata": {"name": "beta", "namespace": NS},
               "spec": {"exportRules": [{"type": "NameSelector",
                        "nameSelector": {"namespace": "shop", "name": "orders"}}]}}),
    );
    api
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached in 15 s");
}

fn workloads(s: &Snapshot) -> Vec<String> {
    let mut w: Vec<String> = s
        .mesh
        .catalog
        .workloads()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    w.sort();
    w
}

#[tokio::test]
async fn the_cluster_is_the_model_and_a_bad_resource_affects_only_itself() {
    let api = cluster().await;
    let client = api.client();
    let source = KubeSource::start(&client, settings(), Duration::from_secs(20))
        .await
        .unwrap();
    let first = source.initial(&td(), &trust()).unwrap();
    // Only the injected pod is a workload, with its pod's address, account and locality.
    assert_eq!(workloads(&first), vec!["shop/orders-1"]);
    let w = first.mesh.catalog.workloads().next().unwrap();
    assert_eq!(w.inbound.to_string(), "10.0.0.5:15006");
    assert_eq!(w.app.to_string(), "10.0.0.5:8080");
    assert_eq!(w.service_account.as_str(), "orders");
    let loc = w.locality.as_ref().expect("the node's locality");
    assert_eq!(loc.region(), "us-east");
    assert_eq!(loc.zone(), Some("us-east-1a"));
    // The valid peer is served, the invalid one left out.
    let peers: Vec<String> = first.mesh.peers.keys().map(ToString::to_string).collect();
    assert_eq!(peers, vec!["beta", "delta"]);
    let rendered = source.rendered.borrow().clone();
    // beta's roots come from its ConfigMap; delta's are missing.
    assert_eq!(rendered.peer_roots.len(), 1);
    let b = rendered.peer_roots[0].bundle().unwrap();
    assert_eq!(b.trust_domain().to_string(), "beta.local");
    let want = meshfed_trust::pem::certificates(&beta_root_pem()).unwrap();
    assert_eq!(b.roots(), want.as_slice());
    let mut set = meshfed_trust::bundle::TrustBundleSet::new();
    assert!(meshfed_k8s::render::add_peer_trust(&mut set, &rendered));
    assert!(
        !meshfed_k8s::render::add_peer_trust(&mut set, &rendered),
        "added twice"
    );
    assert_eq!(rendered.root_problems.len(), 1);
    assert_eq!(rendered.root_problems[0].peer, "delta");
    assert_eq!(rendered.root_problems[0].reason, "CertificateChainNotFound");
    assert_eq!(rendered.refused.len(), 1);
    assert_eq!(rendered.refused[0].name, "gamma");
    assert!(
        rendered.refused[0]
            .message
            .contains("spec.security.clientID"),
        "{}",
        rendered.refused[0].message
    );
    // The gateway Service became the mesh's gateway.
    assert!(
        first.mesh_json.contains("10.96.0.20:15443") && first.mesh_json.contains("10.96.0.20:8188"),
        "{}",
        first.mesh_json
    );

    // Status: Accepted=False with the reason on gamma, Accepted=True on the others.
    let (_leads, leader) = watch::channel(true);
    tokio::spawn(meshfed_k8s::status::run(
        client.clone(),
        NS.into(),
        source.rendered.subscribe(),
        None,
        leader,
        "meshfed-control-test".into(),
        Duration::from_millis(200),
    ));
    eventually("statuses applied", || api.patches().len() >= 4).await;
    let patches = api.patches();
    let conditions = |name: &str| {
        patches
            .iter()
            .rev()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, b)| b["status"]["conditions"].clone())
            .unwrap()
    };
    let of = |name: &str| conditions(name)[0].clone();
    let chain = |name: &str| {
        conditions(name)
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "CertificateChainLoaded")
            .cloned()
            .unwrap()
    };
    assert_eq!(chain("beta")["status"], "True");
    assert_eq!(chain("delta")["status"], "False");
    assert_eq!(chain("delta")["reason"], "CertificateChainNotFound");
    assert_eq!(of("gamma")["status"], "False");
    assert_eq!(of("gamma")["observedGeneration"], 1);
    assert_eq!(of("beta")["status"], "True");
    assert_eq!(of("beta")["reason"], "Valid");
    // The refusal is an Event on gamma, with the validator's reason.
    eventually("an event for gamma", || {
        api.all("events").iter().any(|e| {
            e["regarding"]["name"] == "gamma"
                && e["type"] == "Warning"
                && e["reason"] == of("gamma")["reason"]
        })
    })
    .await;
    let applied_before = patches.len();

    // Changes arrive from the watch.
    let (tx, mut rx) = watch::channel(Arc::new(first));
    let status = StatusCell::default();
    tokio::spawn(source.run(td(), trust(), tx, status.clone(), Duration::from_secs(60)));
    api.put("pods", pod("orders-2", "10.0.0.6", true));
    api.put(
        "endpointslices",
        slice(&[("orders-1", "10.0.0.5"), ("orders-2", "10.0.0.6")]),
    );
    eventually("the second pod served", || {
        workloads(&rx.borrow_and_update()) == vec!["shop/orders-1", "shop/orders-2"]
    })
    .await;

    // A watch answered 410 Gone re-lists; nothing is duplicated, and what changed meanwhile
    // is there.
    let lists = api.lists("services");
    api.expire_next_watch("services");
    eventually("services listed again", || api.lists("services") > lists).await;
    api.put(
        "services",
        json!({"metadata": {"name": "payments", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.0.11", "ports": [{"name": "grpc", "port": 9090}]}}),
    );
    let served = |rx: &watch::Receiver<Arc<Snapshot>>, name: &str| {
        rx.borrow()
            .mesh_json
            .matches(&format!("\"name\":\"{name}\""))
            .count()
    };
    eventually("payments served", || served(&rx, "payments") == 1).await;
    // After the re-list a later change is still picked up, once.
    api.put(
        "services",
        json!({"metadata": {"name": "billing", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.0.12", "ports": [{"name": "http", "port": 80}]}}),
    );
    eventually("billing served", || served(&rx, "billing") == 1).await;
    assert_eq!(served(&rx, "payments"), 1, "{}", rx.borrow().mesh_json);
    assert_eq!(served(&rx, "orders"), 1, "{}", rx.borrow().mesh_json);
    // The invalid peer fixed: served, and its status follows.
    api.put(
        "servicemeshpeers",
        peer(
            "gamma",
            "gamma.local/ns/gamma-system/sa/egress-alpha-service-account",
        ),
    );
    eventually("gamma served", || {
        rx.borrow().mesh.peers.keys().any(|p| p.as_str() == "gamma")
    })
    .await;
    eventually("gamma accepted", || {
        api.patches()[applied_before..]
            .iter()
            .any(|(_, n, b)| n == "gamma" && b["status"]["conditions"][0]["status"] == "True")
    })
    .await;
    // A deleted export is gone from the model.
    api.delete("exportedservicesets", NS, "beta");
    eventually("the export withdrawn", || {
        rx.borrow()
            .mesh
            .peers
            .values()
            .all(|p| p.exports.is_empty())
    })
    .await;
    assert!(
        status.get().config_error.is_none(),
        "{:?}",
        status.get().config_error
    );
}

#[test]
fn service_sets_always_list_their_services_and_peers_their_discovery_status() {
    let object = |kind: &str, name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "federation.maistra.io/v1", "kind": kind,
               "metadata": {"name": name, "namespace": NS, "generation": 3}, "spec": spec})
    };
    let cluster = meshfed_k8s::render::Cluster {
        federation: vec![
            object(
                "ServiceMeshPeer",
                "beta",
                json!({"remote": {"addresses": ["beta.example.test"]},
                       "security": {"trustDomain": "beta.local",
                                    "clientID": "beta.local/ns/beta-system/sa/egress-alpha-service-account"}}),
            ),
            object(
                "ExportedServiceSet",
                "beta",
                json!({"exportRules": [{"type": "NameSelector",
                                        "nameSelector": {"namespace": "shop", "name": "*"}}]}),
            ),
            object("ImportedServiceSet", "beta", json!({"bogus": true})),
        ],
        ..Default::default()
    };
    let r = meshfed_k8s::render::render(&cluster, &settings());
    let listed = json!([{"exportedName": "orders.shop.svc.beta-exports.local",
        "localService": {"name": "orders", "namespace": "shop",
                         "hostname": "orders.shop.svc.cluster.local"}}]);
    let mut import = meshfed_peering::status::PeerStatus::new("beta");
    import.last_disconnect_ms = Some(1_795_000_000_000);
    import.last_disconnect_reason = Some("StreamStale".into());
    let peering = meshfed_peering::status::NodeStatus {
        imports: vec![meshfed_peering::status::ImportSide {
            status: import,
            services: Vec::new(),
        }],
        exports: [(
            "beta".to_owned(),
            meshfed_peering::status::ExportSide {
                connected: true,
                services: serde_json::from_value(listed.clone()).unwrap(),
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    let st = meshfed_k8s::status::statuses(
        &r,
        Some(&peering),
        "control-0",
        "2026-11-26T00:00:00Z".parse().unwrap(),
    );
    let get = |kind: &str| st[&(kind.to_owned(), "beta".to_owned())].clone();
    assert_eq!(get("ExportedServiceSet")["exportedServices"], listed);
    // The refused set still carries its (required) list, empty, beside the reason.
    let refused = get("ImportedServiceSet");
    assert_eq!(refused["importedServices"], json!([]), "{refused}");
    assert_eq!(refused["conditions"][0]["status"], "False", "{refused}");
    // Our watch of beta is down: this pod is inactive; beta's watch of us is connected.
    let d = &get("ServiceMeshPeer")["discoveryStatus"];
    assert_eq!(d["active"], json!([]), "{d}");
    let pod = &d["inactive"][0];
    assert_eq!(pod["pod"], "control-0");
    assert_eq!(pod["watch"]["connected"], false);
    assert_eq!(pod["watch"]["lastDisconnect"], "2026-11-18T11:06:40Z");
    assert_eq!(pod["watch"]["lastDisconnectStatus"], "StreamStale");
    assert_eq!(
        pod["remotes"],
        json!([{"source": "beta", "connected": true}])
    );
}
