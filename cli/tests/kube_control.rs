//! `meshfed control --kube` as a process against an in-memory Kubernetes API server (a real
//! kubeconfig, the real kube client): it serves the cluster's mesh, leaves out an invalid
//! `ServiceMeshPeer` (named in `/status`), takes the Lease, writes the federation resources'
//! status by server-side apply and writes the bootstrap Secret, which holds no secret (pods
//! prove who they are with their projected ServiceAccount tokens).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;
#[path = "../../k8s/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, free, tempdir, trust_init};
use serde_json::json;

const NS: &str = "alpha-system";

fn peer(name: &str, client_id: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "remote": {"addresses": [format!("{name}.example.test")]},
            "security": {"trustDomain": format!("{name}.local"), "clientID": client_id},
        },
    })
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_a_kubernetes_cluster_and_writes_status() {
    let api = support::ApiServer::start().await;
    api.put(
        "services",
        json!({"metadata": {"name": "orders", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 8080}]}}),
    );
    api.put(
        "servicemeshpeers",
        peer(
            "beta",
            "beta.local/ns/beta-system/sa/egress-alpha-service-account",
        ),
    );
    api.put("servicemeshpeers", peer("gamma", "not an id"));
    let dir = tempdir("kube-control");
    trust_init(&dir, "ca", "alpha.local");
    common::kubeconfig(&dir, "kubeconfig", api.addr);
    let admin = free("127.0.0.1");
    let listen = free("127.0.0.1");
    let _cp = Killed(
        Command::new(bin())
            .args(["control", "--kube", "--namespace", NS, "--dir", "ca"])
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--bootstrap-out", "boot.json"])
            .env("KUBECONFIG", dir.join("kubeconfig"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("control.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = dir.join("control.log");
    let st = tokio::task::spawn_blocking(move || {
        let mut last = serde_json::Value::Null;
        for _ in 0..300 {
            if let Some((_, body)) = common::get(admin, "admin", "/status")
                .as_deref()
                .and_then(|r| r.split_once("\r\n\r\n"))
            {
                last = serde_json::from_str(body).unwrap_or_default();
                if last["configError"].is_string() {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no status naming the left-out peer: {last}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    })
    .await
    .unwrap();
    let err = st["configError"].as_str().unwrap();
    assert!(err.contains("ServiceMeshPeer gamma"), "{err}");
    assert!(!err.contains("beta"), "{err}");
    assert!(dir.join("boot.json").exists());
    for _ in 0..300 {
        let p = api.patches();
        let status_of = |name: &str| {
            p.iter()
                .rev()
                .find(|(_, n, b)| n == name && b.get("status").is_some())
                .map(|(_, _, b)| b["status"]["conditions"][0]["status"].clone())
        };
        if status_of("gamma").is_some()
            && status_of("beta").is_some()
            && let Some(boot) = api.get("secrets", NS, "meshfed-bootstrap")
        {
            assert_eq!(status_of("gamma").unwrap(), "False");
            assert_eq!(status_of("beta").unwrap(), "True");
            // It leads (the Lease names it) and wrote the bootstrap Secret the gateways mount:
            // the advertised address and where the pod's token is, no secret.
            let lease = api.get("leases", NS, "meshfed-control").unwrap();
            // The accepted peer carries the finalizer, the refused one does not.
            let fin = |n: &str| {
                api.get("servicemeshpeers", NS, n).unwrap()["metadata"]["finalizers"].clone()
            };
            for _ in 0..100 {
                if fin("beta").is_array() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                fin("beta"),
                serde_json::json!(["federation.meshfed.io/peer-cleanup"])
            );
            assert!(fin("gamma").is_null());
            assert!(lease["spec"]["holderIdentity"].is_string());
            assert!(api.get("secrets", NS, "meshfed-join-token").is_none());
            let file: serde_json::Value =
                serde_json::from_str(boot["stringData"]["bootstrap.json"].as_str().unwrap())
                    .unwrap();
            assert!(file.get("token").is_none(), "{file}");
            assert_eq!(file["tokenFile"], "/var/run/secrets/meshfed/token");
            let on_disk: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("boot.json")).unwrap())
                    .unwrap();
            assert_eq!(file, on_disk);
            // Everything it asked of the API server is granted by deploy/rbac.yaml.
            assert!(api.requests() > 10);
            let denied = api.unauthorized(&common::rbac(), NS);
            assert!(
                denied.is_empty(),
                "not granted by deploy/rbac.yaml: {denied:#?}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no status patches: {:?}", api.patches());
}
