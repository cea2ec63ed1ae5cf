//! `meshfed gateway` processes for two meshes with their own CAs, configured from the mesh
//! files: a client holding an alpha workload SVID reaches beta's echo — exported to alpha —
//! through alpha's egress and beta's ingress over the QUIC tunnel, and the echo sees the alpha
//! identity; a name beta does not export is refused; the discovery port forwards TLS; the
//! admin endpoints show counts and Prometheus metrics; a SIGKILLed ingress, started again,
//! serves the same egress at once; SIGTERM drains.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{Procs, free, tempdir, trust_init};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::ca::DEFAULT_SVID_TTL;
use meshfed_trust::verify::{self, Expect, SpiffeServerVerifier, SvidResolver};

const UI: &str = "spiffe://alpha-mesh.local/ns/web/sa/ui";
const ECHO: &str = "spiffe://beta-mesh.local/ns/shop/sa/echo";
const EXPORTED: &str = "echo.shop.svc.alpha-mesh-exports.local";

/// One HTTPS exchange as alpha's ui sidecar would make it: mTLS with SNI `name` to `egress`,
/// expecting beta's echo identity. The raw response, if any.
fn call(dir: &Path, egress: SocketAddr, name: &str) -> Option<String> {
    let ca = CertificateAuthority::load(&dir.join("a")).unwrap();
    let svid = ca
        .issue(&UI.parse().unwrap(), DEFAULT_SVID_TTL, SystemTime::now())
        .unwrap();
    let provider = verify::provider();
    let held = meshfed_trust::dir::load_bundles(&dir.join("a"), &ca).unwrap();
    let verifier = SpiffeServerVerifier::new(
        verify::shared(held),
        Expect::id(ECHO.parse().unwrap()),
        provider.clone(),
    );
    let cfg = verify::client_config(
        Arc::new(SvidResolver::new(&svid, provider.clone()).unwrap()),
        Arc::new(verifier),
        provider,
    )
    .unwrap();
    let server = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
    let tcp = TcpStream::connect(egress).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = "GET /who HTTP/1.1\r\nHost: echo.shop.svc.cluster.local\r\nConnection: close\r\n\r\n";
    tls.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    tls.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `GET path` from a gateway's admin endpoint: the body.
fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
}

/// `GET /status` from a gateway's admin endpoint.
fn status(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&admin_get(admin, "/status")).unwrap_or(serde_json::Value::Null)
}

/// Calls until one answers 200, for at most `within`.
fn call_until_ok(dir: &Path, addr: SocketAddr, name: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(out) = call(dir, addr, name).filter(|o| o.starts_with("HTTP/1.1 200")) {
            return Some(out);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_workload_in_alpha_reaches_betas_export_through_both_gateway_processes() {
    let dir = tempdir("gateway-cli");
    trust_init(&dir, "a", "alpha-mesh.local");
    trust_init(&dir, "b", "beta-mesh.local");
    common::exchange_bundles(&dir, ("a", "alpha-mesh.local"), ("b", "beta-mesh.local"));
    let (ingress, egress) = (free("127.0.9.21"), free("127.0.9.11"));
    let (ingress_admin, egress_admin) = (free("127.0.9.21"), free("127.0.9.11"));
    let discovery = free("127.0.9.21");
    let (ui_in, ui_app, ui_out) = (free("127.0.9.12"), free("127.0.9.12"), free("127.0.9.12"));
    let (echo_in, echo_app) = (free("127.0.9.22"), free("127.0.9.22"));
    common::write_gateway_meshes(&dir, ui_in, ui_app, ingress, echo_in, echo_app);
    let mut procs = Procs::default();
    let s = |a: SocketAddr| a.to_string();
    procs.spawn(
        &dir,
        "echo",
        &[
            "echo",
            "--listen",
            &s(echo_app),
            "--mesh",
            "beta",
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
            "beta.yaml",
            "--dir",
            "b",
            "--workload",
            "echo-1",
        ],
    );
    let ingress_args = [
        "gateway",
        "--mesh",
        "beta.yaml",
        "--peer",
        "alpha-mesh",
        "--dir",
        "b",
        "--ingress",
        &s(ingress),
        "--admin",
        &s(ingress_admin),
        // Any TLS service stands in for beta's peering service here.
        "--discovery",
        &s(discovery),
        "--discovery-upstream",
        &s(echo_in),
    ];
    procs.spawn(&dir, "beta-ingress", &ingress_args);
    procs.spawn(
        &dir,
        "alpha-egress",
        &[
            "gateway",
            "--mesh",
            "alpha.yaml",
            "--peer",
            "beta-mesh",
            "--peer-mesh",
            "beta.yaml",
            "--dir",
            "a",
            "--egress",
            &s(egress),
            "--admin",
            &s(egress_admin),
            "--tunnel",
            "quic",
            "--probe-interval",
            "200ms",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        if let Some(out) = call(&dir, egress, EXPORTED).filter(|o| o.starts_with("HTTP/1.1 200")) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the gateways; ingress log:\n{}\negress log:\n{}",
            std::fs::read_to_string(dir.join("beta-ingress.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("alpha-egress.log")).unwrap_or_default(),
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.contains(&format!("\"caller\":\"{UI}\"")), "{out}");
    assert!(out.contains("\"mesh\":\"beta\""), "{out}");
    // A name beta does not export to alpha gets nowhere.
    let refused = call(&dir, egress, "secret.shop.svc.alpha-mesh-exports.local");
    assert!(
        refused.as_ref().is_none_or(|o| !o.contains("HTTP/1.1")),
        "{refused:?}"
    );
    // The admin endpoints count what happened: a connection carried by each gateway, and the
    // refused name at the egress.
    let ingress_status = status(ingress_admin);
    assert!(
        ingress_status["ingress"]["upstreamConnections"].as_u64() >= Some(1),
        "{ingress_status}"
    );
    let egress_status = status(egress_admin);
    let refused_here = egress_status["egress"]["denials"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["reason"] == "NoPeerExportsName");
    assert!(refused_here, "{egress_status}");
    // alpha's ui sidecar, from the mesh files: beta's export, imported by alpha's
    // ImportedServiceSet as echo.shop.svc.beta-mesh-imports.local, is called through the egress.
    procs.spawn(
        &dir,
        "proxy-ui",
        &[
            "proxy",
            "--mesh",
            "alpha.yaml",
            "--dir",
            "a",
            "--workload",
            "ui-1",
            "--outbound",
            &s(ui_out),
            "--peer-mesh",
            "beta.yaml",
            "--egress",
            &s(egress),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let via_sidecar = loop {
        let got = TcpStream::connect(ui_out).ok().and_then(|mut t| {
            t.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            t.write_all(
                b"GET /who HTTP/1.1\r\nHost: echo.shop.svc.beta-mesh-imports.local\r\nConnection: close\r\n\r\n",
            )
            .ok()?;
            let mut out = String::new();
            t.read_to_string(&mut out).ok()?;
            Some(out)
        });
        if let Some(out) = got.filter(|o| o.starts_with("HTTP/1.1 200")) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the ui sidecar; its log:\n{}",
            std::fs::read_to_string(dir.join("proxy-ui.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        via_sidecar.contains(&format!("\"caller\":\"{UI}\"")),
        "{via_sidecar}"
    );
    // Prometheus metrics: the egress's probes found beta's ingress over QUIC.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = admin_get(egress_admin, "/metrics");
        if m.contains("meshfed_gateway_peer_reachable{peer=\"beta-mesh\"} 1")
            && m.contains("meshfed_gateway_bytes_total{role=\"egress\",peer=\"beta-mesh\",direction=\"from_peer\"}")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The discovery port passes TLS through to the service behind it.
    let via_discovery = call_until_ok(&dir, discovery, EXPORTED, Duration::from_secs(10));
    assert!(via_discovery.is_some());
    // SIGKILL the ingress and start it again: the egress's QUIC connection to the old process
    // is dead; the new one (same stateless-reset key, kept in the CA folder) says so, and the
    // egress redials.
    procs.kill("beta-ingress");
    procs.spawn(&dir, "beta-ingress", &ingress_args);
    let t0 = Instant::now();
    let again = call_until_ok(&dir, egress, EXPORTED, Duration::from_secs(30));
    assert!(
        again.is_some_and(|o| o.contains(&format!("\"caller\":\"{UI}\""))),
        "not back after a restart; ingress log:\n{}\negress log:\n{}",
        std::fs::read_to_string(dir.join("beta-ingress.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("alpha-egress.log")).unwrap_or_default(),
    );
    eprintln!(
        "served again {:?} after the ingress was killed",
        t0.elapsed()
    );
    // SIGTERM drains: nothing is in flight, so the ingress exits at once, cleanly.
    let status = procs.terminate("beta-ingress", Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let log = std::fs::read_to_string(dir.join("beta-ingress.log")).unwrap();
    assert!(log.contains("drained; 0 connection(s) cut"), "{log}");
}
