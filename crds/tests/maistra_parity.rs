//! Documents `oc apply` accepts into Maistra's CRDs that meshfed must accept too, each with
//! the exact document and what `validate` says about it: integral floats for integers, a
//! `kind: List`, a label selector without `selector`, ports 0, no `spec`, namespace-less
//! objects with `--namespace`, and YAML 1.1 booleans; and the alias that collapses every
//! namespace's service of one name onto one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_core::export::ExportSelector;
use meshfed_crds::validate::{Converted, Input, Report, validate, validate_in};

const PEER: &str = "\
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {name: beta, namespace: istio-system}
spec:
  remote: {addresses: [beta.example.com], discoveryPort: 8188.0, servicePort: 15443.0}
  gateways: {ingress: {name: ingress-beta}, egress: {name: egress-beta}}
  security:
    trustDomain: beta.local
    clientID: beta.local/ns/istio-system/sa/egress-alpha-service-account
    certificateChain: {kind: ConfigMap, name: beta-ca-root-cert}
";

fn run(text: &str) -> Report {
    validate(&[Input {
        file: "doc.yaml",
        text,
    }])
}

/// Every diagnostic but the cross-object `PeerNotFound` (the documents stand alone).
fn said(report: &Report) -> Vec<String> {
    report
        .diagnostics
        .iter()
        .filter(|d| d.reason != "PeerNotFound")
        .map(|d| format!("{} {} {}", d.severity, d.reason, d.path))
        .collect()
}

fn peer_of(report: &Report) -> meshfed_core::federation::Peer {
    report
        .objects
        .iter()
        .find_map(|o| match &o.converted {
            Some(Converted::Peer(p)) => Some(p.clone()),
            _ => None,
        })
        .expect("a converted peer")
}

#[test]
fn whole_number_floats_are_the_integers_kubernetes_stores() {
    let report = run(PEER);
    assert_eq!(said(&report), Vec::<String>::new());
    let peer = peer_of(&report);
    assert_eq!((peer.discovery_port, peer.service_port), (8188, 15443));
    // A fraction is still no port.
    let report = run(&PEER.replace("8188.0", "8188.5"));
    assert!(
        said(&report).contains(&"error OutOfRange spec.remote.discoveryPort".to_owned()),
        "{:?}",
        said(&report)
    );
}

#[test]
fn ports_zero_are_the_defaults() {
    let doc = PEER
        .replace("discoveryPort: 8188.0", "discoveryPort: 0")
        .replace("servicePort: 15443.0", "servicePort: 0");
    let report = run(&doc);
    assert_eq!(said(&report), Vec::<String>::new());
    let peer = peer_of(&report);
    assert_eq!((peer.discovery_port, peer.service_port), (8188, 15443));
}

#[test]
fn a_list_is_checked_item_by_item() {
    let doc = "\
apiVersion: v1
kind: List
items:
- apiVersion: federation.maistra.io/v1
  kind: ExportedServiceSet
  metadata: {name: beta, namespace: istio-system}
  spec:
    exportRules:
    - type: NameSelector
      nameSelector: {namespace: shop, name: orders}
- apiVersion: federation.maistra.io/v1
  kind: ImportedServiceSet
  metadata: {name: beta, namespace: istio-system}
  spec:
    importRules:
    - type: NameSelector
      nameSelector: {namespace: shop, name: orders}
      tyop: 1
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: beta-ca-root-cert, namespace: istio-system}
";
    let report = run(doc);
    // A typo inside the list is an error at its field (it used to pass with exit 0).
    assert_eq!(
        said(&report),
        [
            "error UnknownField spec.importRules[0].tyop",
            "warning UnknownKind kind"
        ]
    );
    assert_eq!(report.objects.len(), 2, "both federation items are objects");
    let tyop = report
        .diagnostics
        .iter()
        .find(|d| d.reason == "UnknownField")
        .unwrap();
    assert_eq!(tyop.line, 18, "{tyop}");
    // A List whose items are not a list says so.
    let report = run("apiVersion: v1\nkind: List\nitems: {a: 1}\n");
    assert_eq!(said(&report), ["error WrongType items"]);
}

#[test]
fn a_label_selector_without_selector_exports_the_whole_namespace() {
    let doc = "\
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {name: beta, namespace: istio-system}
spec:
  exportRules:
  - type: LabelSelector
    labelSelector:
      namespace: shop
";
    let report = run(doc);
    assert_eq!(said(&report), Vec::<String>::new());
    let rules = report
        .objects
        .iter()
        .find_map(|o| match &o.converted {
            Some(Converted::Exports(r)) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    let ExportSelector::Label { selector, .. } = &rules[0].selector else {
        panic!("{rules:?}")
    };
    assert!(
        selector.matches(&std::collections::BTreeMap::new()),
        "an absent selector matches every service: {selector:?}"
    );
}

#[test]
fn an_object_without_spec_is_an_empty_one() {
    for kind in ["ExportedServiceSet", "ImportedServiceSet"] {
        let doc = format!(
            "apiVersion: federation.maistra.io/v1\nkind: {kind}\nmetadata: {{name: beta, namespace: istio-system}}\n"
        );
        let report = run(&doc);
        assert_eq!(said(&report), Vec::<String>::new(), "{kind}");
        assert!(report.objects[0].converted.is_some(), "{kind}: no rules");
    }
    // A peer without spec lacks what it needs, said field by field.
    let report = run(
        "apiVersion: federation.maistra.io/v1\nkind: ServiceMeshPeer\nmetadata: {name: beta, namespace: istio-system}\n",
    );
    let said = said(&report);
    assert!(
        said.contains(&"error MissingField spec.remote".to_owned())
            && said.contains(&"error MissingField spec.security".to_owned()),
        "{said:?}"
    );
}

#[test]
fn namespace_less_objects_pair_with_namespaced_ones_under_namespace() {
    let doc = format!(
        "{PEER}---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: beta}}
spec:
  importRules:
  - type: NameSelector
    nameSelector: {{namespace: shop, name: orders}}
"
    );
    let input = [Input {
        file: "doc.yaml",
        text: &doc,
    }];
    // Without a namespace the set pairs with no peer.
    let alone = validate(&input);
    assert!(
        alone.diagnostics.iter().any(|d| d.reason == "PeerNotFound"),
        "{:?}",
        alone.diagnostics
    );
    // With -n istio-system, as `oc apply -n istio-system` applies them, they pair.
    let report = validate_in(&input, Some("istio-system"));
    assert_eq!(
        report
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
    assert_eq!(report.objects[1].namespace.as_deref(), Some("istio-system"));
    // An object naming another namespace than -n is refused, as kubectl refuses it.
    let report = validate_in(&input, Some("other"));
    let mismatch: Vec<_> = report
        .diagnostics
        .iter()
        .filter(|d| d.reason == "NamespaceMismatch")
        .collect();
    assert_eq!(mismatch.len(), 1, "{:?}", report.diagnostics);
    assert_eq!(mismatch[0].path.to_string(), "metadata.namespace");
    assert!(report.has_errors());
}

#[test]
fn yaml_1_1_booleans_read_as_kubectl_reads_them_with_a_warning() {
    let doc = "\
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {name: beta, namespace: istio-system}
spec:
  importRules:
  - type: NameSelector
    importAsLocal: yes
    nameSelector: {namespace: shop, name: orders, alias: {namespace: shop}}
";
    let report = run(doc);
    assert_eq!(
        said(&report),
        ["warning Yaml11Boolean spec.importRules[0].importAsLocal"]
    );
    let Some(Converted::Imports(set)) = &report.objects[0].converted else {
        panic!("{:?}", report.objects[0].converted)
    };
    assert!(set.rules[0].import_as_local, "{set:?}");
    // `off` is false, as kubectl reads it.
    let report = run(&doc.replace("importAsLocal: yes", "importAsLocal: off"));
    let Some(Converted::Imports(set)) = &report.objects[0].converted else {
        panic!()
    };
    assert!(!set.rules[0].import_as_local);
    // Quoted, it is a string: wrong type.
    let report = run(&doc.replace("importAsLocal: yes", "importAsLocal: 'yes'"));
    assert_eq!(
        said(&report),
        ["error WrongType spec.importRules[0].importAsLocal"]
    );
}

#[test]
fn an_alias_namespace_for_every_namespace_collapses_services_of_one_name() {
    let doc = "\
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {name: beta, namespace: istio-system}
spec:
  importRules:
  - type: NameSelector
    nameSelector: {namespace: \"*\", name: orders, alias: {namespace: shop}}
";
    assert_eq!(
        said(&run(doc)),
        ["warning AliasCollapses spec.importRules[0].nameSelector.alias"]
    );
    // One namespace into another collapses nothing.
    assert_eq!(
        said(&run(&doc.replace("namespace: \"*\"", "namespace: billing"))),
        Vec::<String>::new()
    );
}
