//! The peering-token exchange in Kubernetes mode, as processes against two in-memory API
//! servers (one per cluster, the real kube client): alpha's `meshfed peering token create
//! --kube` records the token in alpha's cluster (no file in the read-only CA folder); beta's
//! `accept --kube` redeems it at alpha's running control plane, which stores beta's bundle in
//! its cluster and trusts it at once; beta stores alpha's bundle in its cluster and prints
//! alpha's `ServiceMeshPeer`. Applied, both control planes peer over mTLS with bundles no one
//! copied, and the service sets' status lists what was exported and imported; alpha restarted
//! still trusts beta (the bundle lives in the cluster); the token cannot be used again, from
//! the same cluster or another; every request was one deploy/rbac.yaml grants.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;
#[path = "../../k8s/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Procs, bin, free, kubeconfig, tempdir, trust_init};
use meshfed_core::session::PeerState;
use serde_json::{Value, json};

/// Runs `meshfed args…` with KUBECONFIG set, off the async workers.
async fn meshfed(dir: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    let (dir, kubeconfig) = (dir.to_owned(), kubeconfig.to_owned());
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .current_dir(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Starts `meshfed control --kube --peering` for `mesh` (namespace `<mesh>-system`).
fn control(
    procs: &mut Procs,
    dir: &Path,
    mesh: &str,
    kc: &Path,
    peering: SocketAddr,
) -> SocketAddr {
    let ns = format!("{mesh}-system");
    common::kube_control(procs, dir, mesh, (mesh, &ns), kc, peering, None)
}

/// The state of `mesh`'s import from `peer`, per its control plane's `/status`.
fn import_state(admin: SocketAddr, peer: &str) -> Option<PeerState> {
    let st = common::control_status(admin)?.peering?;
    st.import(peer).map(|i| i.status.state)
}

async fn wait(what: &str, dir: &Path, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs: String = ["alpha", "beta"]
        .iter()
        .map(|m| {
            format!(
                "--- {m}.log\n{}\n",
                std::fs::read_to_string(dir.join(format!("{m}.log"))).unwrap_or_default()
            )
        })
        .collect();
    panic!("{what}: not within 60 s\n{logs}");
}

fn bundle_keys(api: &support::ApiServer, ns: &str) -> Vec<String> {
    api.get("configmaps", ns, "meshfed-peer-bundles")
        .and_then(|c| c["data"].as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peering_token_peers_two_clusters_with_nothing_copied_by_hand() {
    let dir = tempdir("kube-token");
    trust_init(&dir, "alpha-ca", "alpha.local");
    trust_init(&dir, "beta-ca", "beta.local");
    // The CA folders stand for Secrets mounted read-only: nothing may be written there.
    let ls = |ca: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(ca))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let (alpha_files, beta_files) = (ls("alpha-ca"), ls("beta-ca"));
    let (alpha_api, beta_api) = (
        support::ApiServer::start().await,
        support::ApiServer::start().await,
    );
    let (alpha_kc, beta_kc) = (
        kubeconfig(&dir, "alpha.kubeconfig", alpha_api.addr),
        kubeconfig(&dir, "beta.kubeconfig", beta_api.addr),
    );
    let (alpha_peering, beta_peering) = (free("127.0.9.1"), free("127.0.10.1"));
    // alpha's operator declares beta (no certificateChain: the token brings the trust).
    alpha_api.put(
        "servicemeshpeers",
        json!({
            "metadata": {"name": "beta", "namespace": "alpha-system"},
            "spec": {
                "remote": {"addresses": [beta_peering.ip().to_string()],
                           "discoveryPort": beta_peering.port()},
                "security": {"trustDomain": "beta.local",
                             "clientID": "beta.local/ns/beta-system/sa/egress-alpha-service-account"},
            },
        }),
    );
    // beta exports shop/orders and shop/payments to alpha; alpha imports only orders.
    for (name, ip) in [("orders", "10.96.0.10"), ("payments", "10.96.0.11")] {
        beta_api.put(
            "services",
            json!({"metadata": {"name": name, "namespace": "shop"},
                   "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 8080}]}}),
        );
    }
    beta_api.put(
        "exportedservicesets",
        json!({"metadata": {"name": "alpha", "namespace": "beta-system"},
               "spec": {"exportRules": [{"type": "NameSelector",
                                         "nameSelector": {"namespace": "shop", "name": "*"}}]}}),
    );
    alpha_api.put(
        "importedservicesets",
        json!({"metadata": {"name": "beta", "namespace": "alpha-system"},
               "spec": {"importRules": [{"type": "NameSelector",
                                         "nameSelector": {"namespace": "shop", "name": "orders"}}]}}),
    );
    let mut procs = Procs::default();
    let alpha_admin = control(&mut procs, &dir, "alpha", &alpha_kc, alpha_peering);
    wait("alpha's control plane up", &dir, || {
        import_state(alpha_admin, "beta").is_some()
    })
    .await;

    // alpha issues a token, recorded in its cluster.
    let port = alpha_peering.port().to_string();
    let o = meshfed(
        &dir,
        &alpha_kc,
        &[
            "peering",
            "token",
            "create",
            "--kube",
            "--namespace",
            "alpha-system",
            "--dir",
            "alpha-ca",
            "--peer-name",
            "alpha",
            "--address",
            "127.0.9.1",
            "--discovery-port",
            &port,
            "--server-id",
            "spiffe://alpha.local/ns/alpha-system/sa/meshfed-peering",
            "--client-id",
            "alpha.local/ns/alpha-system/sa/egress-beta-service-account",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("Secret alpha-system/meshfed-peering-tokens"),
        "{}",
        text(&o.stderr)
    );
    let token = text(&o.stdout).trim().to_owned();
    assert!(
        alpha_api
            .get("secrets", "alpha-system", "meshfed-peering-tokens")
            .is_some()
    );

    // beta accepts in its cluster: redeemed at alpha's control plane.
    let accept = |kc: &Path| {
        let (dir, kc, token) = (dir.to_path_buf(), kc.to_owned(), token.clone());
        async move {
            meshfed(
                &dir,
                &kc,
                &[
                    "peering",
                    "token",
                    "accept",
                    "--kube",
                    "--namespace",
                    "beta-system",
                    "--dir",
                    "beta-ca",
                    "--mesh-name",
                    "beta",
                    &token,
                ],
            )
            .await
        }
    };
    let o = accept(&beta_kc).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        bundle_keys(&alpha_api, "alpha-system"),
        vec!["beta.local.json"]
    );
    assert_eq!(
        bundle_keys(&beta_api, "beta-system"),
        vec!["alpha.local.json"]
    );
    let ledger = beta_api
        .get("secrets", "beta-system", "meshfed-peering-tokens")
        .expect("beta's ledger");
    assert!(ledger["data"]["accepted-tokens.json"].is_string());
    // The printed ServiceMeshPeer goes into beta's cluster as is.
    let mut smp: Value = serde_saphyr::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(smp["spec"]["security"]["trustDomain"], "alpha.local");
    assert!(smp["spec"]["security"]["certificateChain"].is_null());
    smp["metadata"]["namespace"] = json!("beta-system");
    beta_api.put("servicemeshpeers", smp);

    // beta's control plane starts with alpha's bundle from its cluster; both directions
    // come up over mTLS.
    let beta_admin = control(&mut procs, &dir, "beta", &beta_kc, beta_peering);
    wait("beta importing from alpha", &dir, || {
        import_state(beta_admin, "alpha") == Some(PeerState::Active)
    })
    .await;
    wait("alpha importing from beta", &dir, || {
        import_state(alpha_admin, "beta") == Some(PeerState::Active)
    })
    .await;
    let alpha_log = std::fs::read_to_string(dir.join("alpha.log")).unwrap();
    assert!(
        alpha_log
            .lines()
            .any(|l| l.contains("peering token redeemed") && l.contains("peer_mesh=beta")),
        "{alpha_log}"
    );
    // Status in Maistra's shape: what beta exports, what alpha imported it as, and alpha's
    // watch of beta.
    // An export no import rule matched is listed with an empty localService, as in Maistra.
    let exported = json!([
        {"exportedName": "orders.shop.svc.alpha-exports.local",
         "localService": {"name": "orders", "namespace": "shop",
                          "hostname": "orders.shop.svc.cluster.local"}},
        {"exportedName": "payments.shop.svc.alpha-exports.local",
         "localService": {"name": "payments", "namespace": "shop",
                          "hostname": "payments.shop.svc.cluster.local"}}]);
    let imported = json!([
        {"exportedName": "orders.shop.svc.alpha-exports.local",
         "localService": {"name": "orders", "namespace": "shop",
                          "hostname": "orders.shop.svc.beta-imports.local"}},
        {"exportedName": "payments.shop.svc.alpha-exports.local",
         "localService": {"name": "", "namespace": "", "hostname": ""}}]);
    let last_status = |api: &support::ApiServer, kind: &str, name: &str| {
        api.patches()
            .into_iter()
            .rev()
            .find(|(k, n, b)| k == kind && n == name && b.get("status").is_some())
            .map(|(_, _, b)| b["status"].clone())
            .unwrap_or_default()
    };
    wait("the service sets' status lists the services", &dir, || {
        last_status(&beta_api, "ExportedServiceSet", "alpha")["exportedServices"] == exported
            && last_status(&alpha_api, "ImportedServiceSet", "beta")["importedServices"]
                == imported
            && last_status(&alpha_api, "ServiceMeshPeer", "beta")["discoveryStatus"]["active"][0]
                ["watch"]["connected"]
                == true
    })
    .await;
    // The unmatched export is counted in a condition on the ImportedServiceSet.
    let set = last_status(&alpha_api, "ImportedServiceSet", "beta");
    let not_imported = set["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ExportNotImported")
        .cloned()
        .unwrap_or_default();
    assert_eq!(not_imported["status"], "True", "{set}");
    assert_eq!(not_imported["reason"], "NoMatchingImportRule", "{set}");
    assert!(
        set["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] != "Connected"),
        "peering conditions stay on the ServiceMeshPeer: {set}"
    );
    let peer = last_status(&alpha_api, "ServiceMeshPeer", "beta");
    let active = &peer["discoveryStatus"]["active"][0];
    assert!(active["pod"].is_string(), "{peer}");
    assert!(
        active["watch"]["lastFullSync"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{peer}"
    );
    assert_eq!(peer["discoveryStatus"]["inactive"], json!([]), "{peer}");

    // alpha restarted: beta's bundle comes from the cluster, not from memory.
    procs.kill("alpha");
    let alpha_admin = control(&mut procs, &dir, "alpha", &alpha_kc, alpha_peering);
    wait("alpha importing from beta after a restart", &dir, || {
        import_state(alpha_admin, "beta") == Some(PeerState::Active)
    })
    .await;

    // The token is spent: refused by beta's own records, and by alpha when it comes from
    // another cluster.
    let o = accept(&beta_kc).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("already accepted"),
        "{}",
        text(&o.stderr)
    );
    let other_api = support::ApiServer::start().await;
    let other_kc = kubeconfig(&dir, "other.kubeconfig", other_api.addr);
    let o = accept(&other_kc).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("already redeemed"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        other_api
            .get("configmaps", "beta-system", "meshfed-peer-bundles")
            .is_none()
            && other_api
                .get("secrets", "beta-system", "meshfed-peering-tokens")
                .is_none(),
        "a refused token stores nothing"
    );
    // The control planes and the token commands (run in a control plane's pod, as its
    // service account) asked for nothing deploy/rbac.yaml does not grant.
    for (api, ns) in [(&alpha_api, "alpha-system"), (&beta_api, "beta-system")] {
        let denied = api.unauthorized(&common::rbac(), ns);
        assert!(
            denied.is_empty(),
            "not granted by deploy/rbac.yaml: {denied:#?}"
        );
    }
    // Nothing was written into the CA folders.
    assert_eq!(ls("alpha-ca"), alpha_files);
    assert_eq!(ls("beta-ca"), beta_files);
}
