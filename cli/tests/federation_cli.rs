//! Two meshes, each with its own CA and trust domain, every component joined to its mesh's
//! control plane, all as processes on loopback: `meshfed control --peering` (config stream,
//! CSR signing and peering in one process), `meshfed gateway --bootstrap` (ingress, egress and
//! the discovery port, configured from the stream), `meshfed proxy --bootstrap` sidecars and
//! echo workloads. Beta exports echo to alpha; alpha imports it. Peering runs through the
//! gateways' discovery port, the request through both gateways, and the echo sees the alpha
//! workload's SPIFFE ID. Alpha's egress reports beta's ingress reachable to alpha's control
//! plane. Unexporting echo in beta's file takes it away from alpha again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{Procs, eventually, exchange_bundles, free, get, status, tempdir, trust_init};
use meshfed_core::session::PeerState;

const UI: &str = "spiffe://alpha.local/ns/web/sa/ui";
const IMPORTED: &str = "echo.shop.svc.beta-imports.local";

/// Addresses of one mesh's components.
struct Mesh {
    control: SocketAddr,
    admin: SocketAddr,
    peering: SocketAddr,
    ingress: SocketAddr,
    discovery: SocketAddr,
    egress: SocketAddr,
    gw_admin: SocketAddr,
}

fn mesh_addrs(net: &str) -> Mesh {
    let at = |host: u8| free(&format!("{net}.{host}"));
    Mesh {
        control: at(10),
        admin: at(10),
        peering: at(10),
        ingress: at(1),
        discovery: at(1),
        egress: at(2),
        gw_admin: at(2),
    }
}

/// The mesh file of `name` peering with `peer` (whose addresses are `them`).
fn mesh_file(name: &str, peer: &str, me: &Mesh, them: &Mesh, services: &str, sets: &str) -> String {
    format!(
        "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: {name}, namespace: {name}-system}}
spec:
  trustDomain: {name}.local
{services}
  gateways:
  - {{name: ingress-{peer}, address: \"{}\", discoveryAddress: \"{}\"}}
  - {{name: egress-{peer}, address: \"{}\"}}
---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: {peer}, namespace: {name}-system}}
spec:
  remote: {{addresses: [\"{}\"], discoveryPort: {}, servicePort: {}}}
  security:
    trustDomain: {peer}.local
    clientID: {peer}.local/ns/{peer}-system/sa/egress-{name}-service-account
{sets}",
        me.ingress,
        me.discovery,
        me.egress,
        them.ingress.ip(),
        them.discovery.port(),
        them.ingress.port(),
    )
}

fn start_mesh(procs: &mut Procs, dir: &Path, name: &str, peer: &str, m: &Mesh) {
    let s = |a: SocketAddr| a.to_string();
    procs.spawn(
        dir,
        &format!("{name}-control"),
        &[
            "control",
            "--mesh",
            &format!("{name}.yaml"),
            "--dir",
            name,
            "--listen",
            &s(m.control),
            "--admin",
            &s(m.admin),
            "--peering",
            &s(m.peering),
            "--heartbeat",
            "1s",
            "--liveness",
            "3s",
            "--bootstrap-out",
            &format!("{name}-bootstrap.json"),
        ],
    );
    let boot = dir.join(format!("{name}-bootstrap.json"));
    eventually("the control plane writes its bootstrap file", || {
        boot.exists().then_some(()).ok_or_else(|| {
            std::fs::read_to_string(dir.join(format!("{name}-control.log"))).unwrap_or_default()
        })
    });
    procs.spawn(
        dir,
        &format!("{name}-gateway"),
        &[
            "gateway",
            "--bootstrap",
            &format!("{name}-bootstrap.json"),
            "--peer",
            peer,
            "--dir",
            name,
            "--ingress",
            "--egress",
            "--discovery",
            "--discovery-upstream",
            &s(m.peering),
            "--admin",
            &s(m.gw_admin),
            "--probe-interval",
            "500ms",
        ],
    );
}

#[test]
fn meshes_joined_to_their_control_planes_federate_through_gateways_and_peering() {
    let dir = tempdir("federation-cli");
    trust_init(&dir, "alpha", "alpha.local");
    trust_init(&dir, "beta", "beta.local");
    exchange_bundles(&dir, ("alpha", "alpha.local"), ("beta", "beta.local"));
    let (a, b) = (mesh_addrs("127.0.21"), mesh_addrs("127.0.22"));
    let (ui_in, ui_app, ui_out) = (
        free("127.0.21.20"),
        free("127.0.21.20"),
        free("127.0.21.20"),
    );
    let (echo_in, echo_app) = (free("127.0.22.20"), free("127.0.22.20"));
    let alpha = mesh_file(
        "alpha",
        "beta",
        &a,
        &b,
        &format!(
            "  services: [{{name: ui, namespace: web, ports: [{{name: http, port: 8080}}]}}]
  workloads:
  - {{name: ui-1, namespace: web, service: ui, serviceAccount: ui, inbound: \"{ui_in}\", app: \"{ui_app}\"}}"
        ),
        "---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {name: beta, namespace: alpha-system}
spec:
  importRules: [{type: NameSelector, nameSelector: {namespace: shop, name: echo}}]
",
    );
    let exported = "---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {name: alpha, namespace: beta-system}
spec:
  exportRules: [{type: NameSelector, nameSelector: {namespace: shop, name: echo}}]
";
    let beta_services = format!(
        "  services: [{{name: echo, namespace: shop, ports: [{{name: http, port: 8080}}]}}]
  workloads:
  - {{name: echo-1, namespace: shop, service: echo, inbound: \"{echo_in}\", app: \"{echo_app}\"}}"
    );
    let beta = mesh_file("beta", "alpha", &b, &a, &beta_services, exported);
    std::fs::write(dir.join("alpha.yaml"), &alpha).unwrap();
    std::fs::write(dir.join("beta.yaml"), &beta).unwrap();

    let mut procs = Procs::default();
    start_mesh(&mut procs, &dir, "alpha", "beta", &a);
    start_mesh(&mut procs, &dir, "beta", "alpha", &b);
    procs.spawn(
        &dir,
        "echo",
        &["echo", "--listen", &echo_app.to_string(), "--mesh", "beta"],
    );
    procs.spawn(
        &dir,
        "proxy-echo",
        &[
            "proxy",
            "--bootstrap",
            "beta-bootstrap.json",
            "--namespace",
            "shop",
            "--workload",
            "echo-1",
        ],
    );
    procs.spawn(
        &dir,
        "proxy-ui",
        &[
            "proxy",
            "--bootstrap",
            "alpha-bootstrap.json",
            "--namespace",
            "web",
            "--workload",
            "ui-1",
            "--outbound",
            &ui_out.to_string(),
        ],
    );
    let logs = || {
        [
            "alpha-control",
            "alpha-gateway",
            "beta-control",
            "beta-gateway",
            "proxy-ui",
        ]
        .iter()
        .map(|n| {
            format!(
                "--- {n}:\n{}",
                std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    };
    // Alpha's control plane imports echo from beta over peering (through beta's discovery
    // port), and alpha's ui sidecar reaches it through both gateways with its own identity.
    let mut last = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        last = get(ui_out, IMPORTED, "/who").unwrap_or(last);
        if last.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer through the federation; last: {last}\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(last.contains(&format!("\"caller\":\"{UI}\"")), "{last}");
    assert!(last.contains("\"mesh\":\"beta\""), "{last}");
    // Peering went through beta's gateway discovery port.
    let gw = status(b.gw_admin);
    assert!(
        gw["discovery"]["upstreamConnections"].as_u64() >= Some(1),
        "{gw}"
    );
    // Alpha's egress probes beta's ingress.
    eventually("alpha's egress finds beta's ingress reachable", || {
        let st = status(a.gw_admin);
        (st["egress"]["peers"]["beta"]["reachable"] == true)
            .then_some(())
            .ok_or(st.to_string())
    });
    // ... and reports it to alpha's control plane on the config stream.
    eventually("alpha's control plane knows beta is reachable", || {
        let st = common::control_status(a.admin);
        st.as_ref()
            .and_then(|s| s.control.proxies.get("alpha-system/ingress-beta"))
            .and_then(|p| p.reachability.get("beta"))
            .is_some_and(|r| r.reachable)
            .then_some(())
            .ok_or(format!("{st:#?}"))
    });
    // `meshfed status` reads the control plane's peering status too.
    let o = std::process::Command::new(common::bin())
        .args(["status", "--admin", &a.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && table.contains("beta") && table.contains("Active"),
        "{table}"
    );
    // Beta stops exporting echo: alpha's sidecar no longer knows the name.
    std::fs::write(dir.join("beta.yaml"), beta.replace(exported, "")).unwrap();
    eventually("the unexported service disappears from alpha", || {
        let r = get(ui_out, IMPORTED, "/who").unwrap_or_default();
        (!r.starts_with("HTTP/1.1 200"))
            .then_some(())
            .ok_or(format!("{r}\n{}", logs()))
    });
    // Beta exports it again; then alpha's ServiceMeshPeer for beta is removed and put back,
    // with no restart: alpha stops importing from beta, then imports again.
    std::fs::write(dir.join("beta.yaml"), &beta).unwrap();
    let served = || {
        get(ui_out, IMPORTED, "/who")
            .unwrap_or_default()
            .starts_with("HTTP/1.1 200")
    };
    eventually("the service is back", || {
        served().then_some(()).ok_or_else(logs)
    });
    let cut = alpha
        .find("---\napiVersion: federation.maistra.io/v1\nkind: ServiceMeshPeer")
        .unwrap();
    std::fs::write(dir.join("alpha.yaml"), &alpha[..cut]).unwrap();
    eventually("alpha stops importing from the removed peer", || {
        let st = common::control_status(a.admin).and_then(|s| s.peering);
        (st.as_ref().is_some_and(|p| p.imports.is_empty()) && !served())
            .then_some(())
            .ok_or(format!("{st:#?}"))
    });
    std::fs::write(dir.join("alpha.yaml"), &alpha).unwrap();
    eventually("alpha imports from the peer put back", || {
        let st = common::control_status(a.admin).and_then(|s| s.peering);
        let active = st.as_ref().is_some_and(|p| {
            p.imports
                .first()
                .is_some_and(|i| i.status.state == PeerState::Active)
        });
        (active && served())
            .then_some(())
            .ok_or(format!("{st:#?}\n{}", logs()))
    });
}
