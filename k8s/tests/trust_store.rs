//! The trust store in the cluster against an in-memory API server (real kube client): peer
//! bundles in the ConfigMap `meshfed-peer-bundles` keep the bundle rules (a rising sequence,
//! never our own domain, never a root another domain holds) and write nothing when unchanged;
//! the token ledger in the Secret `meshfed-peering-tokens` spends a secret exactly once even
//! when two replicas redeem it at the same moment; a corrupt entry is named and replaced; the
//! control plane's render takes the stored bundles.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::time::{Duration, SystemTime};

use meshfed_core::{PeerName, SpiffeId, TrustDomain};
use meshfed_k8s::trust_store::{BUNDLES_CONFIGMAP, KubeTrustStore, LEDGER_SECRET};
use meshfed_trust::bundle::{Applied, TrustBundleSet};
use meshfed_trust::store::{self, TrustStore};
use meshfed_trust::{CertificateAuthority, token};
use serde_json::json;
use support::ApiServer;

const NS: &str = "alpha-system";

fn td(s: &str) -> TrustDomain {
    s.parse().unwrap()
}

fn store(api: &ApiServer) -> KubeTrustStore {
    KubeTrustStore::new(api.client(), NS, td("alpha.local"))
}

fn configmap(api: &ApiServer) -> serde_json::Value {
    api.get("configmaps", NS, BUNDLES_CONFIGMAP)
        .expect("the bundles ConfigMap")
}

#[tokio::test]
async fn peer_bundles_keep_the_bundle_rules_in_a_configmap() {
    let api = ApiServer::start().await;
    let s = store(&api);
    assert!(s.peer_bundles().await.unwrap().is_empty(), "nothing yet");
    let now = SystemTime::now();
    let mut beta = CertificateAuthority::new(td("beta.local"), now).unwrap();
    let b1 = beta.current_bundle().unwrap();
    assert_eq!(s.save_peer_bundle(&b1).await.unwrap(), Applied::Added);
    let cm = configmap(&api);
    let rv = cm["metadata"]["resourceVersion"].clone();
    assert!(cm["data"]["beta.local.json"].is_string(), "{cm}");
    // The same bundle again writes nothing.
    assert_eq!(s.save_peer_bundle(&b1).await.unwrap(), Applied::Unchanged);
    assert_eq!(configmap(&api)["metadata"]["resourceVersion"], rv);
    // A rotation (sequence + 1) replaces it; the old one is then stale.
    beta.rotate(now).unwrap();
    let b2 = beta.current_bundle().unwrap();
    assert_eq!(b2.sequence, b1.sequence + 1);
    assert_eq!(s.save_peer_bundle(&b2).await.unwrap(), Applied::Updated);
    let e = s.save_peer_bundle(&b1).await.unwrap_err();
    assert_eq!(e.reason(), "BundleStale", "{e}");
    assert!(e.to_string().contains(BUNDLES_CONFIGMAP), "{e}");
    let held = s.peer_bundles().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0], b2);
    // Our own domain is never stored as a peer's.
    let own = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let e = s
        .save_peer_bundle(&own.current_bundle().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "OwnTrustDomain");
    // A root another domain holds is refused.
    let gamma = meshfed_trust::TrustBundle::new(td("gamma.local"), b2.roots().to_vec(), 1).unwrap();
    let e = s.save_peer_bundle(&gamma).await.unwrap_err();
    assert_eq!(e.reason(), "RootInTwoDomains", "{e}");
    // A corrupt entry (edited by hand) is named when read, and a good bundle replaces it.
    let mut cm = configmap(&api);
    cm["data"]["delta.local.json"] = json!("{not json");
    api.put("configmaps", cm);
    let e = s.peer_bundles().await.unwrap_err();
    assert!(e.to_string().contains("data.delta.local.json"), "{e}");
    let delta = CertificateAuthority::new(td("delta.local"), now).unwrap();
    assert_eq!(
        s.save_peer_bundle(&delta.current_bundle().unwrap())
            .await
            .unwrap(),
        Applied::Added
    );
    assert_eq!(s.peer_bundles().await.unwrap().len(), 2);
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn issue_token(ca: &CertificateAuthority, now: SystemTime) -> (String, token::Pending) {
    let id = |s: &str| -> SpiffeId { s.parse().unwrap() };
    token::create(
        ca,
        &token::TokenRequest {
            peer_name: "alpha".parse::<PeerName>().unwrap(),
            server_id: id("spiffe://alpha.local/ns/alpha-system/sa/meshfed-peering"),
            client_id: id("spiffe://alpha.local/ns/alpha-system/sa/egress-beta-service-account"),
            addresses: vec!["127.0.0.1".into()],
            discovery_port: 8188,
            service_port: 15443,
            ttl: Duration::from_secs(600),
            bundle_sequence: ca.sequence(),
        },
        now,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_secret_is_spent_once_across_replicas() {
    let api = ApiServer::start().await;
    let now = SystemTime::now();
    let alpha = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let (tok, pending) = issue_token(&alpha, now);
    // Issued by one process, redeemed by the replicas.
    store::record_pending(&store(&api), pending.clone())
        .await
        .unwrap();
    let secret = api.get("secrets", NS, LEDGER_SECRET).expect("the ledger");
    assert!(
        !secret
            .to_string()
            .contains(&token::verify(&tok, now).unwrap().secret),
        "the ledger holds a hash, never the secret"
    );
    let v = token::verify(&tok, now).unwrap();
    // Two replicas redeem the same secret at once: one wins, the other is told it was
    // spent (its first write conflicts; it re-reads and re-runs the change).
    for _ in 0..3 {
        let (r1, r2) = (store(&api), store(&api));
        let (a, b) = tokio::join!(
            store::redeem(&r1, &v.secret, now),
            store::redeem(&r2, &v.secret, now)
        );
        let ok = [&a, &b].iter().filter(|r| r.is_ok()).count();
        let spent = [&a, &b]
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.reason() == "TokenReused"))
            .count();
        assert!(ok <= 1, "spent twice: {a:?} {b:?}");
        assert_eq!(ok + spent, 2, "{a:?} {b:?}");
        if ok == 1 {
            assert_eq!(a.as_ref().or(b.as_ref()).unwrap(), &pending.id);
        }
    }
    let ledger = store(&api).ledger().await.unwrap();
    assert_eq!(ledger.pending.len(), 1);
    assert!(ledger.pending[0].redeemed);
    // Deterministically: another writer changes the Secret between our read and our write;
    // our write conflicts, and the change runs again on what the other wrote — both stay.
    let mut runs = 0;
    let (_, other) = issue_token(&alpha, now);
    let (_, ours) = issue_token(&alpha, now);
    store(&api)
        .update_ledger(&mut |l| {
            runs += 1;
            if runs == 1 {
                let mut theirs = l.clone();
                theirs.record(other.clone(), now);
                let (pending, _) = theirs.to_json();
                let mut secret = api.get("secrets", NS, LEDGER_SECRET).unwrap();
                secret["data"]["pending-tokens.json"] = json!(base64(&pending));
                api.put("secrets", secret);
            }
            l.record(ours.clone(), now);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(runs, 2, "the change ran again after the conflict");
    let ids: Vec<String> = store(&api)
        .ledger()
        .await
        .unwrap()
        .pending
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![pending.id.clone(), other.id, ours.id]);
    // Unknown and expired secrets.
    let e = store::redeem(&store(&api), "nope", now).await.unwrap_err();
    assert_eq!(e.reason(), "TokenUnknownSecret");
    let (tok2, pending2) = issue_token(&alpha, now);
    store::record_pending(&store(&api), pending2).await.unwrap();
    let s2 = token::verify(&tok2, now).unwrap().secret;
    let e = store::redeem(&store(&api), &s2, now + Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "TokenExpired");
    // A corrupt ledger is named and changes nothing.
    let mut secret = api.get("secrets", NS, LEDGER_SECRET).unwrap();
    secret["data"]["pending-tokens.json"] = json!("bm90IGpzb24="); // "not json"
    api.put("secrets", secret);
    let e = store::redeem(&store(&api), &s2, now).await.unwrap_err();
    assert_eq!(e.reason(), "TokenStore");
    assert!(e.to_string().contains("data.pending-tokens.json"), "{e}");
}

#[tokio::test]
async fn the_acceptor_keeps_the_token_and_the_issuers_bundle_in_the_cluster() {
    let api = ApiServer::start().await;
    let now = SystemTime::now();
    let alpha = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let beta = CertificateAuthority::new(td("beta.local"), now).unwrap();
    let (tok, _) = issue_token(&alpha, now);
    let s = KubeTrustStore::new(api.client(), "beta-system", td("beta.local"));
    let mut held = TrustBundleSet::new();
    held.insert(beta.current_bundle().unwrap()).unwrap();
    let v = store::check_token(&s, &held, &td("beta.local"), &tok, now)
        .await
        .unwrap();
    store::accept(&s, &v).await.unwrap();
    let stored = s.peer_bundles().await.unwrap();
    assert_eq!(stored, vec![alpha.current_bundle().unwrap()]);
    // Accepting it again is refused before anything is sent or written.
    let e = store::check_token(&s, &held, &td("beta.local"), &tok, now)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "TokenAlreadyAccepted");
    // A token of our own domain is refused.
    let (own, _) = issue_token(&alpha, now);
    let e = store::check_token(&s, &held, &td("alpha.local"), &own, now)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "TokenOwnTrustDomain");
}

#[tokio::test]
async fn the_render_takes_the_stored_bundles_and_names_a_corrupt_one() {
    let now = SystemTime::now();
    let beta = CertificateAuthority::new(td("beta.local"), now)
        .unwrap()
        .current_bundle()
        .unwrap();
    let cluster = meshfed_k8s::render::Cluster {
        configmaps: vec![
            serde_json::from_value(json!({
                "metadata": {"name": BUNDLES_CONFIGMAP, "namespace": NS},
                "data": {
                    "beta.local.json": beta.to_json().to_string(),
                    "broken.local.json": "[]",
                },
            }))
            .unwrap(),
        ],
        ..Default::default()
    };
    let settings = meshfed_k8s::render::Settings {
        mesh: "alpha".into(),
        namespace: NS.into(),
        trust_domain: "alpha.local".into(),
        cluster_domain: None,
    };
    let r = meshfed_k8s::render::render(&cluster, &settings);
    assert_eq!(r.bundle_problems.len(), 1, "{:?}", r.bundle_problems);
    assert!(
        r.bundle_problems[0].contains("data.broken.local.json"),
        "{:?}",
        r.bundle_problems
    );
    let mut set = TrustBundleSet::new();
    assert!(meshfed_k8s::render::add_peer_trust(&mut set, &r));
    assert_eq!(set.get(&td("beta.local")), Some(&beta));
    assert!(!meshfed_k8s::render::add_peer_trust(&mut set, &r));
}
