//! Hostile-input vectors for the config stream's snapshots as a proxy receives them: every
//! field of a valid snapshot made hostile in turn. Each is refused (`InvalidSnapshot`, the
//! NACK's reason) with a detail naming the field, and nothing of it is applied (the check is
//! pure: the proxy applies only what it returns).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::SystemTime;

use meshfed_api::config as pb;
use meshfed_control::client::check_snapshot;
use meshfed_core::TrustDomain;
use meshfed_test_support::hostile::Tally;
use meshfed_trust::ca::CertificateAuthority;

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

fn bundle(td: &str) -> pb::Bundle {
    let ca = CertificateAuthority::new(td.parse().unwrap(), SystemTime::now()).unwrap();
    pb::Bundle {
        trust_domain: td.into(),
        json: ca.bundle(1).unwrap().to_json().to_string(),
    }
}

fn good() -> pb::Snapshot {
    static BUNDLES: std::sync::OnceLock<Vec<pb::Bundle>> = std::sync::OnceLock::new();
    pb::Snapshot {
        version: 3,
        mesh_json: MESH.into(),
        bundles: BUNDLES
            .get_or_init(|| vec![bundle("alpha-mesh.local"), bundle("beta-mesh.local")])
            .clone(),
        imports: vec![pb::ImportedService {
            hostname: "orders.shop.svc.beta-imports.local".into(),
            peer: "beta-mesh".into(),
            exported_name: "orders.shop.svc.alpha-mesh-exports.local".into(),
            identities: vec!["spiffe://beta-mesh.local/ns/shop/sa/orders".into()],
            egress: "127.0.0.2:15443".into(),
            import_as_local: false,
            http2: false,
            region: "eu".into(),
            zone: "eu-1".into(),
            subzone: String::new(),
            healthy: 1,
            total: 2,
        }],
        gateway: Some(pb::GatewayConfig {
            ingress: vec![pb::GatewayIngressPeer {
                peer: "beta-mesh".into(),
                client_id: "spiffe://beta-mesh.local/ns/beta-system/sa/egress".into(),
                exports: vec![pb::GatewayExport {
                    exported_name: "echo.shop.svc.beta-mesh-exports.local".into(),
                    endpoints: vec!["127.0.0.1:15006".into()],
                }],
            }],
            egress: vec![pb::GatewayEgressRoute {
                exported_name: "orders.shop.svc.alpha-mesh-exports.local".into(),
                peer: "beta-mesh".into(),
                ingress: "127.0.0.3:15443".into(),
                trust_domain: "beta-mesh.local".into(),
            }],
        }),
        exported_names: vec!["echo.shop.svc.beta-mesh-exports.local".into()],
        unready_workloads: vec!["shop/echo-2".into()],
        signing_root: String::new(),
        exported_to_domains: vec!["beta-mesh.local".into()],
    }
}

const FOREIGN: &[&str] = &[
    " ", "\0", "\n", "@", "/", "\\", "*", "%", "?", "#", "A", "é", "\u{202e}", "[", ";", "..",
];

/// `ok` with one foreign piece inserted at each position.
fn spoiled(ok: &str) -> Vec<String> {
    FOREIGN
        .iter()
        .flat_map(|c| (0..=ok.len()).map(move |i| format!("{}{c}{}", &ok[..i], &ok[i..])))
        .collect()
}

/// Where a refusal points: `InvalidSnapshot at <field>` when its detail names `field`.
fn refusal(own: &TrustDomain, snap: pb::Snapshot, field: &str) -> Option<String> {
    let e = check_snapshot(own, snap).err()?;
    Some(if e.detail.contains(field) {
        format!("{} at {field}", e.reason)
    } else {
        format!("{}: {}", e.reason, e.detail)
    })
}

#[test]
fn hostile_config_snapshots_are_refused_naming_the_field() {
    let own: TrustDomain = "alpha-mesh.local".parse().unwrap();
    assert!(check_snapshot(&own, good()).is_ok());
    let mut t = Tally::new("config stream snapshots");
    let mut vector = |what: String, field: &str, edit: &dyn Fn(&mut pb::Snapshot)| {
        let mut snap = good();
        edit(&mut snap);
        let expected = format!("InvalidSnapshot at {field}");
        t.check(what, &expected, || refusal(&own, snap, field));
    };
    type Edit = fn(&mut pb::Snapshot, String);
    let strings: [(&str, &str, &str, Edit); 10] = [
        (
            "hostname",
            "orders.shop.svc.beta-imports.local",
            "imports[0].hostname",
            |s, v| s.imports[0].hostname = v,
        ),
        ("peer", "beta-mesh", "imports[0].peer", |s, v| {
            s.imports[0].peer = v
        }),
        (
            "exported name",
            "orders.shop.svc.alpha-mesh-exports.local",
            "imports[0].exportedName",
            |s, v| s.imports[0].exported_name = v,
        ),
        (
            "identity",
            "spiffe://beta-mesh.local/ns/shop/sa/orders",
            "imports[0].identities[0]",
            |s, v| s.imports[0].identities[0] = v,
        ),
        (
            "ingress peer",
            "beta-mesh",
            "gateway.ingress[0].peer",
            |s, v| s.gateway.as_mut().unwrap().ingress[0].peer = v,
        ),
        (
            "ingress export",
            "echo.shop.svc.beta-mesh-exports.local",
            "gateway.ingress[0].exports[0].exportedName",
            |s, v| s.gateway.as_mut().unwrap().ingress[0].exports[0].exported_name = v,
        ),
        (
            "egress name",
            "orders.shop.svc.alpha-mesh-exports.local",
            "gateway.egress[0].exportedName",
            |s, v| s.gateway.as_mut().unwrap().egress[0].exported_name = v,
        ),
        (
            "egress trust domain",
            "beta-mesh.local",
            "gateway.egress[0].trustDomain",
            |s, v| s.gateway.as_mut().unwrap().egress[0].trust_domain = v,
        ),
        (
            "exported name",
            "echo.shop.svc.beta-mesh-exports.local",
            "exportedNames[0]",
            |s, v| s.exported_names[0] = v,
        ),
        (
            "exported-to domain",
            "beta-mesh.local",
            "exportedToDomains[0]",
            |s, v| s.exported_to_domains[0] = v,
        ),
    ];
    for (what, ok, field, edit) in strings {
        for bad in spoiled(ok) {
            // An identity may name another trust domain, hold `/`, `..` or upper case in
            // its path: those spoilings are still valid identities, so not vectors.
            if field.contains("identities") && bad.parse::<meshfed_core::id::SpiffeId>().is_ok() {
                continue;
            }
            vector(format!("{what} {bad:?}"), field, &|s| edit(s, bad.clone()));
        }
    }
    for bad in spoiled("beta-mesh.local/ns/beta-system/sa/egress") {
        let id = format!("spiffe://{bad}");
        if id.parse::<meshfed_core::id::SpiffeId>().is_ok() {
            continue;
        }
        vector(
            format!("client id {id:?}"),
            "gateway.ingress[0].clientId",
            &|s| {
                s.gateway.as_mut().unwrap().ingress[0].client_id = id.clone();
            },
        );
    }
    for bad in [
        "",
        "127.0.0.2",
        "127.0.0.2:",
        ":15443",
        "127.0.0.2:99999",
        "host:15443",
        "[::1]",
        "127.0.0.2:15443\n",
        "a".repeat(300).as_str(),
    ] {
        let bad = bad.to_owned();
        vector(format!("egress {bad:?}"), "imports[0].egress", &|s| {
            s.imports[0].egress = bad.clone()
        });
        vector(
            format!("endpoint {bad:?}"),
            "gateway.ingress[0].exports[0].endpoints",
            &|s| {
                s.gateway.as_mut().unwrap().ingress[0].exports[0].endpoints = vec![bad.clone()];
            },
        );
    }
    for bad in ["", "127.0.0.3", "a".repeat(301).as_str()] {
        let bad = bad.to_owned();
        vector(
            format!("peer ingress {bad:?}"),
            "gateway.egress[0].ingress",
            &|s| {
                s.gateway.as_mut().unwrap().egress[0].ingress = bad.clone();
            },
        );
    }
    for bad in ["shop", "/echo", "shop/", "", "/"] {
        let bad = bad.to_owned();
        vector(format!("unready {bad:?}"), "unreadyWorkloads[0]", &|s| {
            s.unready_workloads[0] = bad.clone()
        });
    }
    vector("no identities".into(), "identities", &|s| {
        s.imports[0].identities.clear()
    });
    vector("65 identities".into(), "identities", &|s| {
        s.imports[0].identities = vec!["spiffe://beta-mesh.local/ns/shop/sa/orders".into(); 65];
    });
    vector("healthy above total".into(), "healthy", &|s| {
        s.imports[0].healthy = 3
    });
    // Localities are label values: upper case and dots are fine.
    for bad in spoiled("eu")
        .into_iter()
        .filter(|b| meshfed_core::name::label_value(b).is_err())
    {
        vector(format!("region {bad:?}"), "imports[0].locality", &|s| {
            s.imports[0].region = bad.clone()
        });
    }
    for bad in spoiled("beta-mesh.local") {
        if bad.parse::<TrustDomain>().is_ok() {
            continue;
        }
        vector(format!("bundle domain {bad:?}"), "bundles[", &|s| {
            s.bundles[1].trust_domain = bad.clone()
        });
    }
    for bad in [
        "",
        "{}",
        "null",
        "[]",
        "{\"keys\": 1}",
        "not json",
        "{\"keys\": {}}",
        "{\"keys\": [], \"spiffe_sequence\": -1}",
    ] {
        let bad = bad.to_owned();
        vector(
            format!("bundle {bad:?}"),
            "bundle of beta-mesh.local",
            &|s| s.bundles[1].json = bad.clone(),
        );
    }
    vector(
        "no bundle of its own".into(),
        "no bundle for the mesh's own domain",
        &|s| {
            s.bundles.remove(0);
        },
    );
    vector(
        "the mesh of another domain".into(),
        "spec.trustDomain",
        &|s| {
            s.mesh_json = MESH.replace("alpha-mesh.local", "gamma-mesh.local");
        },
    );
    vector(
        "another root under the same sequence".into(),
        "bundle of alpha-mesh.local",
        &|s| {
            s.bundles.push(bundle("alpha-mesh.local"));
        },
    );
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}
