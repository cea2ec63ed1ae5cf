//! `meshfed echo` + two `meshfed proxy` processes in local-file mode: a request from the ui
//! workload's app reaches the echo app over mTLS, and echo reports the ui workload's SPIFFE ID.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Procs, bin, free, tempdir, trust_init};

#[test]
fn a_request_carries_the_callers_identity_through_two_sidecars() {
    let dir = tempdir("proxy-cli");
    trust_init(&dir, "ca", "alpha-mesh.local");
    let (echo_in, echo_app, echo_admin) = (free("127.0.7.1"), free("127.0.7.1"), free("127.0.7.1"));
    let (ui_in, ui_app, ui_out) = (free("127.0.7.2"), free("127.0.7.2"), free("127.0.7.2"));
    let mesh = meshfed_test_support::shop_mesh((echo_in, echo_app), (ui_in, ui_app), "");
    let policy = meshfed_test_support::DENY_ADMIN;
    std::fs::write(dir.join("mesh.yaml"), format!("{mesh}{policy}")).unwrap();
    let mut procs = Procs::default();
    procs.spawn(
        &dir,
        "echo",
        &[
            "echo",
            "--listen",
            &echo_app.to_string(),
            "--mesh",
            "alpha",
            "--instance",
            "echo-1",
        ],
    );
    procs.spawn(
        &dir,
        "proxy-echo",
        &[
            "proxy",
            "--mesh",
            "mesh.yaml",
            "--workload",
            "echo-1",
            "--dir",
            "ca",
            "--admin",
            &echo_admin.to_string(),
        ],
    );
    procs.spawn(
        &dir,
        "proxy-ui",
        &[
            "proxy",
            "--mesh",
            "mesh.yaml",
            "--workload",
            "ui-1",
            "--dir",
            "ca",
            "--outbound",
            &ui_out.to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        let attempt = TcpStream::connect(ui_out).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /who HTTP/1.1\r\nHost: echo.shop.svc.cluster.local\r\nConnection: close\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.starts_with("HTTP/1.1 200").then_some(out)
        });
        if let Some(r) = attempt {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no successful request through the sidecars"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        response.contains("\"caller\":\"spiffe://alpha-mesh.local/ns/web/sa/ui\""),
        "{response}"
    );
    assert!(response.contains("\"instance\":\"echo-1\""), "{response}");
    // The mesh file's DENY policy is enforced by echo's sidecar, whatever the spelling.
    let mut s = TcpStream::connect(ui_out).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /x/%2e%2e//admin HTTP/1.1\r\nHost: echo.shop.svc.cluster.local\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("AccessDenied"), "{out}");
    // The admin port counts what echo's sidecar decided.
    let mut s = TcpStream::connect(echo_admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("\nmeshfed_authz_denied_total 1\n"), "{out}");
    assert!(
        out.contains(
            r#"meshfed_requests_total{direction="inbound",service="shop/echo",code="2xx"}"#
        ),
        "{out}"
    );
    // A broken mesh file is refused and the running configuration stays.
    std::fs::write(dir.join("mesh.yaml"), "apiVersion: [unclosed\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(http_get(ui_out, "/who").starts_with("HTTP/1.1 200"));
    assert!(http_get(ui_out, "/admin").starts_with("HTTP/1.1 403"));
    // A valid change is applied without a restart: the DENY policy is gone.
    std::fs::write(dir.join("mesh.yaml"), &mesh).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = http_get(ui_out, "/admin");
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new mesh file was not applied: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET `path` from echo through the sidecar listening on `addr`; the raw response.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: echo.shop.svc.cluster.local\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn tcp_ports_are_forwarded_between_sidecar_processes() {
    let dir = tempdir("proxy-tcp");
    trust_init(&dir, "ca", "alpha-mesh.local");
    // The database app: echoes every byte, on the workload's IP and the service port.
    let db_app = TcpListener::bind("127.0.7.5:0").unwrap();
    let port = db_app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in db_app.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let (db_in, ui_in, ui_app, listen) = (
        free("127.0.7.5"),
        free("127.0.7.6"),
        free("127.0.7.6"),
        free("127.0.7.6"),
    );
    let mesh = format!(
        "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: alpha, namespace: alpha-system}}
spec:
  trustDomain: alpha-mesh.local
  services:
  - {{name: db, namespace: data, ports: [{{name: sql, port: {port}, protocol: TCP}}]}}
  - {{name: ui, namespace: web, ports: [{{name: http, port: 8080}}]}}
  workloads:
  - {{name: db-1, namespace: data, service: db, inbound: \"{db_in}\", app: \"127.0.7.5:1\"}}
  - {{name: ui-1, namespace: web, service: ui, inbound: \"{ui_in}\", app: \"{ui_app}\"}}
"
    );
    std::fs::write(dir.join("mesh.yaml"), mesh).unwrap();
    // A --tcp that names no TCP port is refused before anything starts.
    let o = Command::new(bin())
        .args([
            "proxy",
            "--mesh",
            "mesh.yaml",
            "--dir",
            "ca",
            "--workload",
            "ui-1",
        ])
        .args(["--tcp", &format!("ui.web:8080={listen}")])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not TCP or TLS"), "{err}");
    let forward = format!("db.data:{port}={listen}");
    let mut procs = Procs::default();
    procs.spawn(
        &dir,
        "proxy-db",
        &[
            "proxy",
            "--mesh",
            "mesh.yaml",
            "--dir",
            "ca",
            "--workload",
            "db-1",
        ],
    );
    procs.spawn(
        &dir,
        "proxy-ui",
        &[
            "proxy",
            "--mesh",
            "mesh.yaml",
            "--dir",
            "ca",
            "--workload",
            "ui-1",
            "--tcp",
            &forward,
        ],
    );
    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = TcpStream::connect(listen).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(&payload).ok()?;
            let mut got = vec![0u8; payload.len()];
            s.read_exact(&mut got).ok()?;
            Some(got)
        });
        if got.as_deref() == Some(payload.as_slice()) {
            break;
        }
        assert!(Instant::now() < deadline, "no stream through the sidecars");
        std::thread::sleep(Duration::from_millis(100));
    }
}
