//! Valid inputs for each target, from which the fuzzer starts (`fuzz-seeds` writes them to
//! `fuzz/corpus/<target>/`) and which the corpus replay always runs.

use std::time::{Duration, SystemTime};

use meshfed_api::peering as pb;
use prost::Message;

/// A ClientHello record naming `name`, with ALPN `h2`.
pub fn client_hello(name: &[u8]) -> Vec<u8> {
    fn vec16(out: &mut Vec<u8>, body: &[u8]) {
        out.extend(u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut sni = vec![0];
    vec16(&mut sni, name);
    let mut sni_ext = Vec::new();
    vec16(&mut sni_ext, &sni);
    let mut alpn_list = vec![2];
    alpn_list.extend(b"h2");
    let mut alpn_ext = Vec::new();
    vec16(&mut alpn_ext, &alpn_list);
    let mut exts = vec![0, 0];
    vec16(&mut exts, &sni_ext);
    exts.extend([0, 16]);
    vec16(&mut exts, &alpn_ext);
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0, 2, 0x13, 0x01, 1, 0]);
    vec16(&mut body, &exts);
    let mut msg = vec![1];
    msg.extend(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes()[1..]);
    msg.extend(body);
    let mut out = vec![22, 3, 1];
    vec16(&mut out, &msg);
    out
}

fn service(name: &str) -> pb::Service {
    pb::Service {
        exported_name: format!("{name}.shop.svc.alpha-exports.local"),
        namespace: "shop".into(),
        name: name.into(),
        ports: vec![pb::Port {
            name: "http".into(),
            port: 8080,
            protocol: "HTTP".into(),
        }],
        service_accounts: vec![format!("spiffe://beta.local/ns/shop/sa/{name}")],
    }
}

/// A peering snapshot of two services at epoch 7, version 5.
pub fn peering_snapshot() -> pb::Snapshot {
    pb::Snapshot {
        epoch: 7,
        version: 5,
        chunk: 0,
        last: true,
        services: vec![service("orders"), service("payments")],
    }
}

const MESH: &str = "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: alpha, namespace: alpha-system}
spec:
  trustDomain: alpha-mesh.local
  services:
  - {name: echo, namespace: shop, ports: [{name: http, port: 8080}]}
  workloads:
  - {name: echo-1, namespace: shop, service: echo, inbound: \"127.0.0.1:15006\", app: \"127.0.0.1:8080\"}
";

fn bundle_json(td: &str) -> String {
    meshfed_trust::CertificateAuthority::new(
        td.parse()
            .unwrap_or_else(|_| unreachable!("a valid trust domain")),
        SystemTime::now(),
    )
    .ok()
    .and_then(|ca| ca.bundle(1).ok())
    .map(|b| b.to_json().to_string())
    .unwrap_or_default()
}

fn token() -> String {
    let now = SystemTime::now();
    let Ok(ca) = meshfed_trust::CertificateAuthority::new(
        "alpha.local".parse().unwrap_or_else(|_| unreachable!()),
        now,
    ) else {
        return String::new();
    };
    let id = |s: &str| {
        s.parse()
            .unwrap_or_else(|_| unreachable!("a valid SPIFFE ID"))
    };
    let req = meshfed_trust::token::TokenRequest {
        peer_name: "alpha-mesh".parse().unwrap_or_else(|_| unreachable!()),
        server_id: id("spiffe://alpha.local/ns/alpha-system/sa/meshfed-control"),
        client_id: id("spiffe://alpha.local/ns/alpha-system/sa/egress-beta-mesh"),
        addresses: vec!["127.0.1.1".into()],
        discovery_port: 8188,
        service_port: 15443,
        ttl: Duration::from_secs(7 * 24 * 3600),
        bundle_sequence: 1,
    };
    meshfed_trust::token::create(&ca, &req, now)
        .map(|(t, _)| t)
        .unwrap_or_default()
}

/// The seeds of `target`.
/// A DNS query (id 0x4242, recursion desired, one A question) for `name`.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(0));
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "sni" => vec![
            client_hello(b"orders.shop.svc.beta-imports.local"),
            client_hello(b"a.b"),
        ],
        "names" => [
            "spiffe://alpha-mesh.local/ns/shop/sa/orders",
            "alpha-mesh.local/ns/alpha-system/sa/egress",
            "orders.shop.svc.cluster.local.",
            "alpha-mesh.local",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "documents" => [
            include_str!("../../scenarios/examples/alpha.yaml"),
            include_str!("../../crds/tests/fixtures/maistra/red-mesh.yaml"),
            include_str!("../../scenarios/failover.yaml"),
            MESH,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "token" => vec![token().into_bytes()],
        "bundle" => vec![bundle_json("fuzz.local").into_bytes()],
        "store_record" => {
            let body = r#"{"schema":1,"body":{"epoch":9,"version":3,"savedAt":1,"services":[{"exportedName":"orders.shop.svc.alpha-exports.local","key":"shop/orders","ports":[{"name":"http","port":8080,"protocol":"HTTP"}],"serviceAccounts":["spiffe://beta.local/ns/shop/sa/orders"]}]}}"#;
            let mut out = vec![9];
            out.extend(b"beta-mesh");
            out.extend(body.as_bytes());
            vec![out]
        }
        "peering_message" => {
            let mut snap = vec![0];
            let mut next = peering_snapshot();
            next.version = 6;
            snap.extend(next.encode_to_vec());
            let mut delta = vec![1];
            delta.extend(
                pb::Delta {
                    epoch: 7,
                    base: 5,
                    version: 6,
                    upserts: vec![service("stock")],
                    removals: vec!["orders.shop.svc.alpha-exports.local".into()],
                }
                .encode_to_vec(),
            );
            vec![snap, delta]
        }
        "dns_query" => vec![
            // A query for orders.shop.svc.beta-imports.local (A), and one for example.com (A).
            dns_query("orders.shop.svc.beta-imports.local"),
            dns_query("example.com"),
        ],
        "config_snapshot" => {
            use meshfed_api::config as cfg;
            let snap = cfg::Snapshot {
                version: 3,
                mesh_json: MESH.into(),
                bundles: vec![
                    cfg::Bundle {
                        trust_domain: "alpha-mesh.local".into(),
                        json: bundle_json("alpha-mesh.local"),
                    },
                    cfg::Bundle {
                        trust_domain: "beta-mesh.local".into(),
                        json: bundle_json("beta-mesh.local"),
                    },
                ],
                imports: vec![cfg::ImportedService {
                    hostname: "orders.shop.svc.beta-imports.local".into(),
                    peer: "beta-mesh".into(),
                    exported_name: "orders.shop.svc.alpha-mesh-exports.local".into(),
                    identities: vec!["spiffe://beta-mesh.local/ns/shop/sa/orders".into()],
                    egress: "127.0.0.2:15443".into(),
                    region: "eu".into(),
                    healthy: 1,
                    total: 2,
                    ..Default::default()
                }],
                exported_names: vec!["echo.shop.svc.beta-mesh-exports.local".into()],
                exported_to_domains: vec!["beta-mesh.local".into()],
                unready_workloads: vec!["shop/echo-2".into()],
                ..Default::default()
            };
            vec![snap.encode_to_vec()]
        }
        _ => Vec::new(),
    }
}
