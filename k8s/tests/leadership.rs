//! Two control-plane replicas against one in-memory API server: one Lease holder at a time,
//! a take-over when the holder stops renewing; the join secret both share; the bootstrap
//! Secrets written only by the leader, where injected pods run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::time::Duration;

use meshfed_k8s::lease::{self, Election};
use meshfed_k8s::render::Settings;
use meshfed_k8s::source::KubeSource;
use serde_json::json;
use support::ApiServer;
use tokio::sync::watch;

const NS: &str = "alpha-system";

/// alpha's Kubernetes source on `client`, its first lists done.
async fn source(client: &meshfed_k8s::Client) -> KubeSource {
    let settings = Settings {
        mesh: "alpha".into(),
        namespace: NS.into(),
        trust_domain: "alpha.local".into(),
        cluster_domain: None,
    };
    KubeSource::start(client, settings, Duration::from_secs(20))
        .await
        .unwrap()
}

fn fast(identity: &str) -> Election {
    Election {
        lease: "meshfed-control".into(),
        identity: identity.into(),
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry: Duration::from_millis(100),
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached in 10 s");
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_when_it_stops() {
    let api = ApiServer::start().await;
    let client = api.client();
    let (a_tx, a) = watch::channel(false);
    let (b_tx, b) = watch::channel(false);
    let leases = kube_api(&client);
    let task_a = tokio::spawn(lease::run(leases.clone(), fast("a"), a_tx));
    // b starts once a leads, so the first holder is known.
    until("a leads", || *a.borrow()).await;
    tokio::spawn(lease::run(leases, fast("b"), b_tx));
    // b never leads while a renews.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(*a.borrow() && !*b.borrow());
    let held = api.get("leases", NS, "meshfed-control").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], "a");
    // a stops renewing (its process is gone): b takes over once the Lease expires.
    task_a.abort();
    until("b leads", || *b.borrow()).await;
    let held = api.get("leases", NS, "meshfed-control").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], "b");
    assert_eq!(held["spec"]["leaseTransitions"], 1);
}

fn kube_api(client: &meshfed_k8s::Client) -> kube_api::Leases {
    kube_api::leases(client, NS)
}

/// The Lease API of the test's namespace (typed through the k8s crate's own kube).
mod kube_api {
    pub type Leases = kube::Api<k8s_openapi::api::coordination::v1::Lease>;
    pub fn leases(client: &meshfed_k8s::Client, ns: &str) -> Leases {
        kube::Api::namespaced(client.clone(), ns)
    }
}

#[tokio::test]
async fn only_the_leader_writes_bootstrap_secrets_where_injected_pods_run() {
    let api = ApiServer::start().await;
    for (ns, name, injected) in [("shop", "orders-1", true), ("legacy", "old-1", false)] {
        let mut containers = vec![json!({"name": "app", "image": "a"})];
        if injected {
            containers.push(json!({"name": "meshfed-proxy", "image": "m"}));
        }
        api.put(
            "pods",
            json!({"metadata": {"name": name, "namespace": ns},
                   "spec": {"containers": containers}}),
        );
    }
    let client = api.client();
    let source = source(&client).await;
    let (leads, leader) = watch::channel(false);
    let (json_tx, json) = watch::channel("{\"v\":1}".to_owned());
    tokio::spawn(source.bootstrap_writer(client.clone(), json, leader));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(api.all("secrets").is_empty(), "a follower wrote");
    leads.send_replace(true);
    until("bootstrap Secrets", || api.all("secrets").len() == 2).await;
    let mut where_: Vec<String> = api
        .all("secrets")
        .iter()
        .map(|s| s["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect();
    where_.sort();
    assert_eq!(where_, vec![NS.to_owned(), "shop".to_owned()]);
    let s = api.get("secrets", "shop", "meshfed-bootstrap").unwrap();
    assert_eq!(s["stringData"]["bootstrap.json"], "{\"v\":1}");
    // A new bootstrap (a rotated root) is written again.
    json_tx.send_replace("{\"v\":2}".to_owned());
    until("rewritten", || {
        api.get("secrets", "shop", "meshfed-bootstrap").unwrap()["stringData"]["bootstrap.json"]
            == "{\"v\":2}"
    })
    .await;
}

#[tokio::test]
async fn a_deleted_peer_leaves_the_model_and_is_released_after_its_cleanup() {
    let api = ApiServer::start().await;
    api.put(
        "servicemeshpeers",
        json!({"metadata": {"name": "beta", "namespace": NS},
               "spec": {"remote": {"addresses": ["beta.example.test"]},
                        "security": {"trustDomain": "beta.local",
                                     "clientID": "beta.local/ns/beta-system/sa/egress-alpha-service-account"}}}),
    );
    let client = api.client();
    let source = source(&client).await;
    let (_leads, leader) = watch::channel(true);
    let cleaned: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let cleanup: meshfed_k8s::finalizer::Cleanup = {
        let cleaned = cleaned.clone();
        Arc::new(move |peer: String| {
            let cleaned = cleaned.clone();
            Box::pin(async move {
                cleaned.lock().unwrap().push(peer);
                Ok(())
            })
        })
    };
    let mut rendered = source.rendered.subscribe();
    tokio::spawn(meshfed_k8s::finalizer::run(
        client.clone(),
        NS.into(),
        source.rendered.subscribe(),
        leader,
        cleanup,
    ));
    let (tx, _rx) = watch::channel(Arc::new(
        source
            .initial(&"alpha.local".parse().unwrap(), &trust())
            .unwrap(),
    ));
    let status = meshfed_control::server::StatusCell::default();
    tokio::spawn(source.run(
        "alpha.local".parse().unwrap(),
        trust(),
        tx,
        status,
        Duration::from_secs(60),
    ));
    until("the finalizer added", || {
        api.get("servicemeshpeers", NS, "beta").unwrap()["metadata"]["finalizers"]
            == json!([meshfed_k8s::finalizer::FINALIZER])
    })
    .await;
    assert!(cleaned.lock().unwrap().is_empty());
    api.request_delete("servicemeshpeers", NS, "beta");
    until("released and gone", || {
        api.get("servicemeshpeers", NS, "beta").is_none()
    })
    .await;
    assert_eq!(*cleaned.lock().unwrap(), vec!["beta".to_owned()]);
    // It left the model as soon as it was being deleted.
    let r = rendered.borrow_and_update().clone();
    assert!(
        r.accepted.iter().all(|(_, n, _)| n != "beta"),
        "{:?}",
        r.accepted
    );
}

fn trust() -> meshfed_control::source::TrustFn {
    let ca = meshfed_trust::CertificateAuthority::new(
        "alpha.local".parse().unwrap(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let json = ca.current_bundle().unwrap().to_json().to_string();
    Arc::new(move || {
        Ok(meshfed_control::source::Trust {
            bundles: vec![("alpha.local".parse().unwrap(), json.clone())],
            signing_root: String::new(),
        })
    })
}

#[tokio::test]
async fn a_replica_that_stops_gives_the_lease_up_at_once() {
    let api = ApiServer::start().await;
    let client = api.client();
    // A lease far longer than the test waits: only a release lets b in.
    let slow = |id: &str| Election {
        duration: Duration::from_secs(60),
        renew_deadline: Duration::from_secs(40),
        ..fast(id)
    };
    let a = lease::start(&client, NS, slow("a"));
    let a_leads = a.leader();
    until("a leads", || *a_leads.borrow()).await;
    let b = lease::start(&client, NS, slow("b"));
    let b_leads = b.leader();
    a.release(Duration::from_secs(5)).await;
    assert!(!*a_leads.borrow(), "a steps down when it stops");
    until("b leads after a released the Lease", || *b_leads.borrow()).await;
    let held = api.get("leases", NS, "meshfed-control").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], "b");
}
