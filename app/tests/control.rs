//! The control plane and two sidecars joined to it, built in-process as `meshfed-app`
//! handles on loopback (the process tier of the same story is `cli/tests/control_cli.rs`):
//! identity end to end with certificates the control plane signed from CSRs; a bad mesh file
//! refused whole while the served version stays; a good change applied live and ACKed; the
//! sidecars keep serving when the control plane stops, and rejoin a new one with the
//! certificates they hold.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use meshfed_app::control::{Control, ControlConfig, Source};
use meshfed_app::echo::{Echo, EchoConfig};
use meshfed_app::sidecar::Sidecar;
use meshfed_app::status::ControlStatus;
use meshfed_trust::ca::CertificateAuthority;

mod common;

use common::{eventually, free, get_host, status_until};

const HOST: &str = "echo.shop.svc.cluster.local";

/// `GET path` of echo through the sidecar's outbound listener.
async fn get(out: SocketAddr, path: &str) -> String {
    get_host(out, HOST, path).await
}

/// Every one of `n` proxies is connected and has ACKed the served version.
fn all_acked(st: &ControlStatus, n: usize) -> Result<(), String> {
    let ok = st.proxies.len() == n
        && st
            .proxies
            .values()
            .all(|p| p.connected && p.acked == Some(st.version));
    if ok { Ok(()) } else { Err(format!("{st:#?}")) }
}

fn control_config(dir: &Path, listen: SocketAddr) -> ControlConfig {
    ControlConfig {
        source: Source::File(dir.join("mesh.yaml")),
        dir: dir.join("ca"),
        listen,
        advertise: None,
        admin: None,
        bootstrap_out: Some(dir.join("boot.json")),
        svid_ttl: Duration::from_secs(3600),
        peering: None,
        rotation_grace: Duration::from_secs(10),
    }
}

async fn sidecar(dir: &Path, name: &str, namespace: &str, outbound: Option<SocketAddr>) -> Sidecar {
    common::sidecar(
        &dir.join("ca"),
        &dir.join("boot.json"),
        name,
        namespace,
        outbound,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_sidecars_carry_identity_apply_updates_and_outlive_the_control_plane() {
    let dir = meshfed_test_support::scratch("app-control");
    CertificateAuthority::new("alpha-mesh.local".parse().unwrap(), SystemTime::now())
        .unwrap()
        .save(&dir.join("ca"))
        .unwrap();
    let cp = free("127.0.9.1");
    let (echo_in, echo_app) = (free("127.0.9.2"), free("127.0.9.2"));
    let (ui_in, ui_app, ui_out) = (free("127.0.9.3"), free("127.0.9.3"), free("127.0.9.3"));
    let mesh = meshfed_test_support::shop_mesh((echo_in, echo_app), (ui_in, ui_app), "");
    let deny_admin = meshfed_test_support::DENY_ADMIN;
    std::fs::write(dir.join("mesh.yaml"), &mesh).unwrap();
    let control = Control::build(control_config(&dir, cp)).await.unwrap();
    let echo = Echo::build(
        echo_app,
        EchoConfig {
            mesh: "alpha".into(),
            service: "echo".into(),
            instance: "echo-1".into(),
            status: 200,
            latency: Duration::ZERO,
            failure: meshfed_core::traffic::Share::from_percent(0.0).unwrap(),
        },
    )
    .await
    .unwrap();
    let echo_sidecar = sidecar(&dir, "echo-1", "shop", None).await;
    let ui_sidecar = sidecar(&dir, "ui-1", "web", Some(ui_out)).await;

    // Identity end to end, with certificates the control plane signed from CSRs.
    eventually("a request through both joined sidecars", || async {
        let r = get(ui_out, "/who").await;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    })
    .await;
    let r = get(ui_out, "/who").await;
    assert!(
        r.contains("\"caller\":\"spiffe://alpha-mesh.local/ns/web/sa/ui\""),
        "{r}"
    );
    // The status is watched: every change arrives without polling.
    let mut watch = control.watch();
    let st = status_until(&mut watch, "both proxies ACK the served version", |st| {
        all_acked(st, 2).is_ok()
    })
    .await;
    assert_eq!(st.certificates_issued, 2, "{st:#?}");
    let v1 = st.version;

    // A bad mesh file is refused whole; the served version stays in force.
    std::fs::write(
        dir.join("mesh.yaml"),
        format!("{mesh}  traffic:\n  - {{service: echo, namespace: shop, bogus: 1}}\n"),
    )
    .unwrap();
    status_until(&mut watch, "the control plane refuses the bad file", |st| {
        st.config_error
            .as_deref()
            .is_some_and(|e| e.contains("bogus"))
    })
    .await;
    assert_eq!(control.status().control.version, v1);
    assert!(get(ui_out, "/who").await.starts_with("HTTP/1.1 200"));

    // A good change reaches the sidecars live and is ACKed.
    std::fs::write(dir.join("mesh.yaml"), format!("{mesh}{deny_admin}")).unwrap();
    eventually("the new policy is applied", || async {
        let r = get(ui_out, "/admin").await;
        if r.starts_with("HTTP/1.1 403") {
            Ok(())
        } else {
            Err(r)
        }
    })
    .await;
    status_until(&mut watch, "both proxies ACK the new version", |st| {
        st.version > v1 && all_acked(st, 2).is_ok()
    })
    .await;

    // The control plane stops: the sidecars keep serving with their last snapshot, and
    // nothing of theirs is reported as failed.
    control.stop().await;
    for _ in 0..10 {
        assert!(get(ui_out, "/who").await.starts_with("HTTP/1.1 200"));
        assert!(get(ui_out, "/admin").await.starts_with("HTTP/1.1 403"));
    }
    // A new control plane (same CA, same address) is rejoined with the SVIDs the proxies
    // hold: no new certificate.
    std::fs::write(dir.join("mesh.yaml"), &mesh).unwrap();
    let control = Control::build(control_config(&dir, cp)).await.unwrap();
    eventually("the proxies rejoin the new control plane", || async {
        let r = get(ui_out, "/admin").await;
        if !r.starts_with("HTTP/1.1 200") {
            return Err(r);
        }
        all_acked(&control.status().control, 2)
    })
    .await;
    let st = control.status().control;
    assert_eq!(
        st.certificates_issued, 0,
        "rejoining needs no new certificate: {st:#?}"
    );
    for s in [&echo_sidecar, &ui_sidecar] {
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(200), s.failed()).await {
            panic!("a sidecar's task failed: {f}");
        }
    }
    ui_sidecar.stop().await;
    echo_sidecar.stop().await;
    echo.stop().await;
    control.stop().await;
}
