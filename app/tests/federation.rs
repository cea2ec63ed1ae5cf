//! Two meshes, each with its own CA and trust domain, every component joined to its mesh's
//! control plane, built in-process as `meshfed-app` handles on loopback (the process tier of
//! the same story is the lab's failover scenario): a control plane with its peering node,
//! the gateways (ingress, egress and discovery port, configured from the config stream),
//! sidecars and echo. Beta exports echo to alpha; alpha imports it. Peering runs through
//! beta's discovery port (the only listener at the address alpha's ServiceMeshPeer names), the
//! request through both gateways, and echo sees the alpha workload's SPIFFE ID. Alpha's egress
//! reports beta's ingress reachable to alpha's control plane. Unexporting echo in beta's file
//! takes it away from alpha; removing alpha's ServiceMeshPeer stops the import, putting it back
//! starts it again — no restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{eventually, free, get_host, sidecar, status_until, watch_until};
use meshfed_app::control::{Control, ControlConfig, PeeringOptions, Source};
use meshfed_app::echo::{Echo, EchoConfig};
use meshfed_app::gateway::{GatewayMode, GatewayOptions, Gateways, Transport};
use meshfed_core::session::PeerState;
use meshfed_trust::ca::CertificateAuthority;

const UI: &str = "spiffe://alpha.local/ns/web/sa/ui";
const IMPORTED: &str = "echo.shop.svc.beta-imports.local";

/// Addresses of one mesh's components.
struct Addrs {
    control: SocketAddr,
    admin: SocketAddr,
    peering: SocketAddr,
    ingress: SocketAddr,
    discovery: SocketAddr,
    egress: SocketAddr,
}

fn addrs(net: &str) -> Addrs {
    let at = |host: u8| free(&format!("{net}.{host}"));
    Addrs {
        control: at(10),
        admin: at(10),
        peering: at(10),
        ingress: at(1),
        discovery: at(1),
        egress: at(2),
    }
}

/// The mesh file of `name` peering with `peer` (whose addresses are `them`).
fn mesh_file(
    name: &str,
    peer: &str,
    me: &Addrs,
    them: &Addrs,
    services: &str,
    sets: &str,
) -> String {
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

/// One mesh's control plane (with its peering node) and gateways, from `<name>.yaml`.
struct Mesh {
    control: Control,
    gateways: Gateways,
}

async fn start_mesh(dir: &Path, name: &str, peer: &str, a: &Addrs) -> Mesh {
    let ca = dir.join(name);
    let bootstrap = dir.join(format!("{name}-bootstrap.json"));
    let control = Control::build(ControlConfig {
        source: Source::File(dir.join(format!("{name}.yaml"))),
        dir: ca.clone(),
        listen: a.control,
        advertise: None,
        admin: Some(a.admin),
        bootstrap_out: Some(bootstrap.clone()),
        svid_ttl: Duration::from_secs(3600),
        peering: Some(PeeringOptions {
            listen: a.peering,
            store: None,
            heartbeat: Duration::from_secs(1),
            liveness: Duration::from_secs(3),
        }),
        rotation_grace: Duration::from_secs(10),
    })
    .await
    .unwrap_or_else(|e| panic!("{name}'s control plane: {e}"));
    // The gateway process's own credential: its ingress and egress for this peer, nothing else.
    let gateway_boot = common::join_file(
        &ca,
        &bootstrap,
        &format!("{name}-system"),
        &[&format!("ingress-{peer}"), &format!("egress-{peer}")],
    );
    let gateways = Gateways::build(GatewayOptions {
        mode: GatewayMode::Joined {
            bootstrap: gateway_boot,
            ingress_name: None,
            egress_name: None,
        },
        peer: peer.into(),
        dir: ca,
        ingress: Some(None),
        egress: Some(None),
        discovery: Some(None),
        discovery_upstream: Some(a.peering.to_string()),
        tunnel: Transport::Tcp,
        probe_interval: Duration::from_millis(500),
        admin: None,
    })
    .await
    .unwrap_or_else(|e| panic!("{name}'s gateways: {e}"));
    Mesh { control, gateways }
}

/// Each mesh's CA in `<dir>/<name>`, each holding the other's bundle.
fn trust(dir: &Path) {
    for (name, td) in [("alpha", "alpha.local"), ("beta", "beta.local")] {
        CertificateAuthority::new(td.parse().unwrap(), SystemTime::now())
            .unwrap()
            .save(&dir.join(name))
            .unwrap();
    }
    for (from, to, td) in [
        ("alpha", "beta", "alpha.local"),
        ("beta", "alpha", "beta.local"),
    ] {
        let file = dir.join(format!("{from}-bundle.json"));
        let bundle = meshfed_app::ca::bundle_json(&dir.join(from)).unwrap();
        std::fs::write(&file, bundle.to_string()).unwrap();
        meshfed_app::ca::import_bundle(&dir.join(to), td.parse().unwrap(), &file).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_joined_to_their_control_planes_federate_through_gateways_and_peering() {
    let dir = meshfed_test_support::scratch("app-federation");
    trust(&dir);
    let (a, b) = (addrs("127.0.23"), addrs("127.0.24"));
    let (ui_in, ui_app, ui_out) = (
        free("127.0.23.20"),
        free("127.0.23.20"),
        free("127.0.23.20"),
    );
    let (echo_in, echo_app) = (free("127.0.24.20"), free("127.0.24.20"));
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
    let beta = mesh_file(
        "beta",
        "alpha",
        &b,
        &a,
        &format!(
            "  services: [{{name: echo, namespace: shop, ports: [{{name: http, port: 8080}}]}}]
  workloads:
  - {{name: echo-1, namespace: shop, service: echo, inbound: \"{echo_in}\", app: \"{echo_app}\"}}"
        ),
        exported,
    );
    std::fs::write(dir.join("alpha.yaml"), &alpha).unwrap();
    std::fs::write(dir.join("beta.yaml"), &beta).unwrap();

    let alpha_mesh = start_mesh(&dir, "alpha", "beta", &a).await;
    let beta_mesh = start_mesh(&dir, "beta", "alpha", &b).await;
    let echo = Echo::build(
        echo_app,
        EchoConfig {
            mesh: "beta".into(),
            service: "echo".into(),
            instance: "echo-1".into(),
            ..EchoConfig::default()
        },
    )
    .await
    .unwrap();
    let echo_sidecar = sidecar(
        &dir.join("beta"),
        &dir.join("beta-bootstrap.json"),
        "echo-1",
        "shop",
        None,
    )
    .await;
    let ui_sidecar = sidecar(
        &dir.join("alpha"),
        &dir.join("alpha-bootstrap.json"),
        "ui-1",
        "web",
        Some(ui_out),
    )
    .await;

    // Alpha's control plane imports echo from beta over peering (through beta's discovery
    // port), and alpha's ui sidecar reaches it through both gateways with its own identity.
    let get = || get_host(ui_out, IMPORTED, "/who");
    eventually("an answer through the federation", || async {
        let r = get().await;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    })
    .await;
    let r = get().await;
    assert!(r.contains(&format!("\"caller\":\"{UI}\"")), "{r}");
    assert!(r.contains("\"mesh\":\"beta\""), "{r}");

    // Alpha's egress probes beta's ingress and reports it on the config stream.
    let mut control = alpha_mesh.control.watch();
    status_until(
        &mut control,
        "alpha's control plane knows beta is reachable",
        |st| {
            st.proxies
                .get("alpha-system/ingress-beta")
                .and_then(|p| p.reachability.get("beta"))
                .is_some_and(|r| r.reachable)
        },
    )
    .await;
    // What `meshfed status` reads: the peering status on the control plane's admin endpoint.
    let served = meshfed_app::status::fetch(a.admin, Duration::from_secs(5))
        .await
        .unwrap();
    let import = served.import("beta").expect("alpha imports from beta");
    assert_eq!(import.status.state, PeerState::Active, "{served:#?}");

    // Beta stops exporting echo: alpha's sidecar no longer knows the name.
    std::fs::write(dir.join("beta.yaml"), beta.replace(exported, "")).unwrap();
    eventually("the unexported service disappears from alpha", || async {
        let r = get().await;
        if r.starts_with("HTTP/1.1 200") {
            Err(r)
        } else {
            Ok(())
        }
    })
    .await;
    // Beta exports it again; then alpha's ServiceMeshPeer for beta is removed and put back,
    // with no restart: alpha stops importing from beta, then imports again.
    std::fs::write(dir.join("beta.yaml"), &beta).unwrap();
    let serves = || async { get().await.starts_with("HTTP/1.1 200") };
    eventually("the service is back", || async {
        if serves().await {
            Ok(())
        } else {
            Err(get().await)
        }
    })
    .await;
    let mut peering = alpha_mesh.control.peering().expect("alpha runs peering");
    let cut = alpha
        .find("---\napiVersion: federation.maistra.io/v1\nkind: ServiceMeshPeer")
        .unwrap();
    std::fs::write(dir.join("alpha.yaml"), &alpha[..cut]).unwrap();
    watch_until(
        &mut peering,
        "alpha stops importing from the removed peer",
        |st| st.imports.is_empty(),
    )
    .await;
    eventually("the removed peer's name is no longer served", || async {
        if serves().await {
            Err("still served".into())
        } else {
            Ok(())
        }
    })
    .await;
    std::fs::write(dir.join("alpha.yaml"), &alpha).unwrap();
    watch_until(&mut peering, "alpha imports from the peer put back", |st| {
        st.import("beta")
            .is_some_and(|i| i.status.state == PeerState::Active)
    })
    .await;
    eventually("the service is served again", || async {
        if serves().await {
            Ok(())
        } else {
            Err(get().await)
        }
    })
    .await;

    // Everything stops cleanly; nothing reported a failed task.
    for (name, f) in [
        ("alpha control", alpha_mesh.control.failed()),
        ("beta control", beta_mesh.control.failed()),
    ] {
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(100), f).await {
            panic!("{name}: {f}");
        }
    }
    ui_sidecar.stop().await;
    echo_sidecar.stop().await;
    echo.stop().await;
    for m in [alpha_mesh, beta_mesh] {
        m.gateways.drain(Duration::ZERO).await;
        m.control.stop().await;
    }
}
