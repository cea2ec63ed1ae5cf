//! Two peering nodes — the example meshes alpha and beta — built in-process as
//! `meshfed_app::node::Node` handles on loopback: both directions sync and the typed status
//! says so; stopping a node stops everything it started (its port closes, the peer sees it go)
//! and is not reported as a failure; a node restarted while its peer is down serves its
//! imports from its store, and resyncs when the peer returns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_app::node::{Node, NodeConfig};
use meshfed_core::SpiffeId;
use meshfed_core::federation::MeshFederation;
use meshfed_core::session::PeerState;
use meshfed_peering::status::{ConditionType, NodeStatus};
use meshfed_trust::TrustBundleSet;
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::store::DirStore;
use meshfed_trust::verify;
use tokio::sync::watch;

/// An address on `ip` that is free now, outside the ephemeral port range.
fn free(ip: &str) -> SocketAddr {
    meshfed_test_support::free_addr(ip)
}

/// The example mesh file with its peer at `peer`.
fn mesh(example: &str, peer: SocketAddr) -> MeshFederation {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/examples")
        .join(example);
    let mut text = String::new();
    for line in std::fs::read_to_string(src).unwrap().lines() {
        if line.trim_start().starts_with("addresses: [127.") {
            text.push_str(&format!(
                "    addresses: [{}]\n    discoveryPort: {}\n",
                peer.ip(),
                peer.port()
            ));
        } else if !line.trim_start().starts_with("discoveryPort:") {
            text.push_str(line);
            text.push('\n');
        }
    }
    meshfed_crds::validate::load_mesh(example, &text)
        .unwrap()
        .mesh
}

fn config(
    mesh: MeshFederation,
    ca: &Arc<CertificateAuthority>,
    both: &TrustBundleSet,
    listen: SocketAddr,
    dir: &Path,
) -> NodeConfig {
    let issuer = ca.clone();
    NodeConfig {
        trust_store: Arc::new(DirStore::new(dir, mesh.trust_domain.clone())),
        mesh,
        issue: Arc::new(move |id: &SpiffeId| issuer.issue(id, DEFAULT_SVID_TTL, SystemTime::now())),
        bundles: verify::shared(both.clone()),
        listen,
        store: Some(dir.join("store")),
        heartbeat: Duration::from_millis(300),
        liveness: Duration::from_millis(1500),
        replica: String::new(),
    }
}

/// The node of the example mesh `example`, its peer at `peer`, listening on `listen`.
async fn start(
    example: &str,
    peer: SocketAddr,
    ca: &Arc<CertificateAuthority>,
    both: &TrustBundleSet,
    listen: SocketAddr,
    dir: &Path,
) -> Node {
    Node::build(config(mesh(example, peer), ca, both, listen, dir))
        .await
        .unwrap()
}

async fn wait(
    rx: &mut watch::Receiver<Arc<NodeStatus>>,
    what: &str,
    f: impl Fn(&NodeStatus) -> bool,
) -> Arc<NodeStatus> {
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let st = rx.borrow_and_update().clone();
            if f(&st) {
                return st;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {what}: {:#?}", rx.borrow()))
}

/// Active and synced, with both of the peer's exports mapped by our import rules.
fn importing(st: &NodeStatus, peer: &str) -> bool {
    st.import(peer).is_some_and(|i| {
        i.status.state == PeerState::Active
            && i.status.imported_services == 2
            && !i.status.stale
            && i.services.len() == 2
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sync_both_ways_stop_cleanly_and_restart_from_the_store() {
    let now = SystemTime::now();
    let a_ca =
        Arc::new(CertificateAuthority::new("alpha-mesh.local".parse().unwrap(), now).unwrap());
    let b_ca =
        Arc::new(CertificateAuthority::new("beta-mesh.local".parse().unwrap(), now).unwrap());
    let mut both = TrustBundleSet::new();
    both.insert(a_ca.current_bundle().unwrap()).unwrap();
    both.insert(b_ca.current_bundle().unwrap()).unwrap();
    let (a_addr, b_addr) = (free("127.0.5.1"), free("127.0.6.1"));
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alpha = start("alpha.yaml", b_addr, &a_ca, &both, a_addr, a_dir.path()).await;
    let beta = start("beta.yaml", a_addr, &b_ca, &both, b_addr, b_dir.path()).await;
    assert_eq!(alpha.listen(), a_addr);
    let (mut a_st, mut b_st) = (alpha.status(), beta.status());
    // Both directions sync; the status is typed all the way.
    let b = wait(&mut b_st, "beta importing from alpha", |s| {
        importing(s, "alpha-mesh")
    })
    .await;
    assert_eq!(b.mesh, "beta");
    let import = b.import("alpha-mesh").unwrap();
    let conflict = import
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ImportConflict)
        .expect("the import rules' conditions are in the status");
    assert!(!conflict.status, "{conflict:?}");
    assert_eq!(import.services.len(), 2, "{import:#?}");
    let a = wait(
        &mut a_st,
        "alpha importing from beta and exporting to it",
        |s| importing(s, "beta-mesh") && s.exports.get("beta-mesh").is_some_and(|e| e.connected),
    )
    .await;
    assert_eq!(a.exports["beta-mesh"].exported_services, 2);
    // The status survives JSON both ways unchanged (what /status serves and readers parse).
    let json = serde_json::to_string(&*a).unwrap();
    assert_eq!(serde_json::from_str::<NodeStatus>(&json).unwrap(), *a);
    // Stopping alpha stops all it started: its port closes, beta sees the peer go, and
    // nothing is reported as failed.
    alpha.stop().await;
    // (The accept loop ends as its server goes: give it a moment on a busy machine.)
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while tokio::net::TcpStream::connect(a_addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "alpha's peering port is closed");
    wait(&mut b_st, "beta sees alpha gone", |s| {
        s.import("alpha-mesh")
            .is_some_and(|i| i.status.state == PeerState::Failing && i.status.stale)
    })
    .await;
    if let Ok(f) = tokio::time::timeout(Duration::from_millis(1500), alpha.failed()).await {
        panic!("a stopped node reports no failed task: {f}");
    }
    drop(alpha);
    // beta restarts while alpha is down: its imports come back from its store at once, stale.
    // (A stopped node holds nothing, not even its store's lock, though its handle is kept.)
    beta.stop().await;
    let stopped_beta = beta;
    let beta = start("beta.yaml", a_addr, &b_ca, &both, b_addr, b_dir.path()).await;
    let mut b_st = beta.status();
    let restored = wait(&mut b_st, "beta restored from its store", |s| {
        s.import("alpha-mesh")
            .is_some_and(|i| i.status.imported_services == 2 && i.status.stale)
    })
    .await;
    let import = restored.import("alpha-mesh").unwrap();
    assert!(
        import
            .status
            .conditions
            .iter()
            .any(|c| c.reason == "RestoredFromStore"),
        "{import:#?}"
    );
    // alpha comes back: beta resyncs, fresh.
    let alpha = start("alpha.yaml", b_addr, &a_ca, &both, a_addr, a_dir.path()).await;
    wait(&mut b_st, "beta active again", |s| {
        importing(s, "alpha-mesh")
    })
    .await;
    alpha.stop().await;
    beta.stop().await;
    drop(stopped_beta);
}
