//! A sidecar's configuration from a mesh (`proxy::config::from_mesh`, as the app applies each
//! snapshot): which callers its inbound listener lets in.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;

use meshfed_core::TrustDomain;
use meshfed_proxy::config::{Federated, Workload, from_mesh};
use meshfed_trust::verify::Expect;

fn peer(name: &str) -> String {
    format!(
        "---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: {name}, namespace: alpha-system}}
spec:
  remote: {{addresses: [127.0.0.9]}}
  security:
    trustDomain: {name}.local
    clientID: {name}.local/ns/{name}-system/sa/egress-alpha-service-account
"
    )
}

fn td(s: &str) -> TrustDomain {
    s.parse().unwrap()
}

/// The regression of the security review: a third mesh's identity reached a service
/// exported only to another peer, because every sidecar let in every domain it held a bundle
/// for. Now a service takes callers from its own mesh and the peers it is exported to.
#[test]
fn a_sidecar_takes_callers_only_from_its_mesh_and_the_peers_its_service_is_exported_to() {
    let a = meshfed_test_support::free_addr("127.0.0.1");
    let mut text = meshfed_test_support::shop_mesh((a, a), (a, a), "");
    text.push_str(&peer("beta"));
    text.push_str(&peer("gamma"));
    text.push_str(
        "---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {name: beta, namespace: alpha-system}
spec:
  exportRules: [{type: NameSelector, nameSelector: {namespace: shop, name: echo}}]
",
    );
    let mesh = meshfed_crds::validate::load_mesh("mesh.yaml", &text)
        .unwrap()
        .mesh;
    // The bundles held: ours and both peers'.
    let held: BTreeSet<TrustDomain> = ["alpha-mesh.local", "beta.local", "gamma.local"]
        .map(td)
        .into();
    let allow = |name: &str| {
        let w = Workload {
            name: name.into(),
            namespace: None,
            outbound: None,
            admin: None,
            tcp: Vec::new(),
        };
        from_mesh(&mesh, &Federated::default(), &w, &held)
            .unwrap()
            .0
            .allow
    };
    assert_eq!(
        allow("echo-1"),
        Expect::TrustDomains(["alpha-mesh.local", "beta.local"].map(td).into())
    );
    assert_eq!(
        allow("ui-1"),
        Expect::TrustDomains(["alpha-mesh.local"].map(td).into())
    );
}
