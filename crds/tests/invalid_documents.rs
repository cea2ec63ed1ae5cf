//! Table-driven bad-input tests (C1–C12, CF1 of the security design): each invalid document
//! must produce the expected reason at the expected field path, with a line number, and never
//! panic. Bases are valid documents; each case changes one thing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_crds::diag::Severity;
use meshfed_crds::validate::{Input, Report, validate};

const PEER: &str = "\
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata:
  name: beta-mesh
  namespace: alpha-system
  labels: {team: federation}
spec:
  remote:
    addresses: [127.0.2.1]
    discoveryPort: 8188
    servicePort: 15443
  gateways:
    ingress: {name: ingress-beta}
    egress: {name: egress-beta}
  security:
    trustDomain: beta-mesh.local
    clientID: beta-mesh.local/ns/beta-system/sa/egress
    certificateChain: {kind: ConfigMap, name: beta-root}
";

const EXPORTS: &str = "\
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata:
  name: beta-mesh
  namespace: alpha-system
spec:
  exportRules:
  - type: NameSelector
    nameSelector:
      namespace: shop-prod
      name: orders-v2
      alias: {namespace: shop, name: orders}
  - type: LabelSelector
    labelSelector:
      namespace: shop-prod
      selector:
        matchLabels: {federation-export: \"true\"}
        matchExpressions:
        - {key: tier, operator: NotIn, values: [internal]}
      aliases:
      - {namespace: \"*\", name: \"*\", alias: {namespace: shop}}
";

const IMPORTS: &str = "\
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata:
  name: beta-mesh
  namespace: alpha-system
spec:
  domainSuffix: beta.remote
  locality: {region: eu-central, zone: eu-central-1a}
  importRules:
  - type: NameSelector
    importAsLocal: true
    nameSelector:
      namespace: shop
      name: payments
      alias: {namespace: shop}
  - type: NameSelector
    domainSuffix: other.remote
    nameSelector: {namespace: ops, name: \"*\"}
";

const MESH: &str = "\
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata:
  name: alpha
  namespace: alpha-system
spec:
  trustDomain: alpha-mesh.local
  clusterDomain: cluster.local
  locality: {region: us-east, zone: us-east-1a}
  services:
  - name: orders
    namespace: shop
    labels: {tier: web}
    ports: [{name: http, port: 8080, protocol: HTTP}, {name: grpc, port: 9090, protocol: GRPC}]
    serviceAccounts: [orders]
  - name: payments
    namespace: shop
  workloads:
  - {name: orders-1, namespace: shop, service: orders, inbound: \"127.0.1.11:15006\", app: \"127.0.1.11:8080\", labels: {version: v1}}
  - {name: orders-2, namespace: shop, service: orders, inbound: \"127.0.1.12:15006\", app: \"127.0.1.12:8080\", labels: {version: v2}}
  authorizationPolicies:
  - name: orders-readers
    namespace: shop
    selector: {service: orders}
    rules:
    - from:
      - source:
          principals: [alpha-mesh.local/ns/web/sa/ui, \"beta-mesh.local/ns/*\"]
          namespaces: [web]
          trustDomains: [alpha-mesh.local]
      to:
      - operation: {paths: [/orders, \"/orders/*\"], methods: [GET]}
  - name: no-admin
    namespace: shop
    action: DENY
    rules:
    - to:
      - operation: {paths: [/admin]}
  gateways:
  - {name: egress-beta-mesh, address: \"127.0.1.2:15443\"}
  - {name: ingress-beta-mesh, address: \"127.0.1.3:15443\", discoveryAddress: \"127.0.1.3:8188\"}
  traffic:
  - service: orders
    namespace: shop
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: \"5xx,connect-failure,429\"}
    fault:
      delay: {percentage: {value: 0.5}, fixedDelay: 100ms}
      abort: {percentage: {value: 1}, httpStatus: 503}
    connectionPool: {tcp: {maxConnections: 100}, http: {http1MaxPendingRequests: 10, http2MaxRequests: 500}}
    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 15s, maxEjectionPercent: 50}
    loadBalancer: {simple: ROUND_ROBIN}
    subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
    http:
    - name: canary
      match:
      - headers: {x-canary: {exact: \"1\"}}
      - uri: {regex: \"/v2/.*\"}
        method: {exact: GET}
      route: [{destination: {host: orders, subset: v2}}]
    - route:
      - {destination: {host: orders.shop.svc.cluster.local, subset: v1}, weight: 90}
      - {destination: {host: orders, subset: v2}, weight: 10}
";

/// `base` with the first `from` replaced by `to`; the base must contain `from`.
fn r(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "base lacks {from:?}");
    base.replacen(from, to, 1)
}

fn run(files: &[&str]) -> Report {
    let names: Vec<String> = (0..files.len()).map(|i| format!("case{i}.yaml")).collect();
    let inputs: Vec<Input<'_>> = files
        .iter()
        .zip(&names)
        .map(|(t, f)| Input { file: f, text: t })
        .collect();
    validate(&inputs)
}

struct Case {
    name: &'static str,
    files: Vec<String>,
    reason: &'static str,
    path: &'static str,
}

fn case(name: &'static str, yaml: String, reason: &'static str, path: &'static str) -> Case {
    Case {
        name,
        files: vec![yaml],
        reason,
        path,
    }
}

fn with(name: &'static str, files: Vec<String>, reason: &'static str, path: &'static str) -> Case {
    Case {
        name,
        files,
        reason,
        path,
    }
}

fn addresses(n: usize) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    format!("addresses: [{}]", list.join(", "))
}

fn many_rules(n: usize) -> String {
    let mut s = String::from("exportRules:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - {{type: NameSelector, nameSelector: {{namespace: ns{i}, name: svc}}}}\n"
        ));
    }
    s
}

fn cases() -> Vec<Case> {
    let ra = "addresses: [127.0.2.1]";
    let td = "trustDomain: beta-mesh.local";
    let cid = "clientID: beta-mesh.local/ns/beta-system/sa/egress";
    let chain = "certificateChain: {kind: ConfigMap, name: beta-root}";
    let ns_sel = "      namespace: shop-prod\n      name: orders-v2\n";
    let expr = "- {key: tier, operator: NotIn, values: [internal]}";
    let rule0 = "  - type: NameSelector\n    importAsLocal: true\n    nameSelector:\n      namespace: shop\n      name: payments\n      alias: {namespace: shop}\n";
    let svc0 = "  - name: orders\n    namespace: shop\n";
    let port0 = "{name: http, port: 8080, protocol: HTTP}";
    vec![
        // --- ServiceMeshPeer: metadata (C1, C2)
        case(
            "peer name missing",
            r(PEER, "  name: beta-mesh\n", ""),
            "MissingField",
            "metadata.name",
        ),
        case(
            "peer name upper case",
            r(PEER, "name: beta-mesh", "name: Beta-Mesh"),
            "InvalidName",
            "metadata.name",
        ),
        case(
            "peer name underscore",
            r(PEER, "name: beta-mesh", "name: beta_mesh"),
            "InvalidName",
            "metadata.name",
        ),
        case(
            "peer name leading dash",
            r(PEER, "name: beta-mesh", "name: -beta"),
            "InvalidName",
            "metadata.name",
        ),
        case(
            "peer name cyrillic",
            r(PEER, "name: beta-mesh", "name: bet\u{0430}"),
            "InvalidName",
            "metadata.name",
        ),
        case(
            "peer name too long for suffixes",
            r(
                PEER,
                "name: beta-mesh",
                &format!("name: {}", "b".repeat(56)),
            ),
            "InvalidPeerName",
            "metadata.name",
        ),
        case(
            "peer name with dot",
            r(PEER, "name: beta-mesh", "name: beta.mesh"),
            "InvalidPeerName",
            "metadata.name",
        ),
        case(
            "peer name over 253",
            r(
                PEER,
                "name: beta-mesh",
                &format!("name: {}", vec!["a"; 130].join(".")),
            ),
            "InvalidName",
            "metadata.name",
        ),
        case(
            "peer name not a string",
            r(PEER, "name: beta-mesh", "name: [a]"),
            "WrongType",
            "metadata.name",
        ),
        case(
            "namespace invalid",
            r(PEER, "namespace: alpha-system", "namespace: Alpha_System"),
            "InvalidName",
            "metadata.namespace",
        ),
        case(
            "metadata not a mapping",
            r(
                PEER,
                "metadata:\n  name: beta-mesh\n  namespace: alpha-system\n  labels: {team: federation}\n",
                "metadata: beta\n",
            ),
            "WrongType",
            "metadata",
        ),
        case(
            "metadata missing",
            r(
                PEER,
                "metadata:\n  name: beta-mesh\n  namespace: alpha-system\n  labels: {team: federation}\n",
                "",
            ),
            "MissingField",
            "metadata",
        ),
        case(
            "label key invalid",
            r(PEER, "team: federation", "bad key: federation"),
            "InvalidLabelKey",
            "metadata.labels[\"bad key\"]",
        ),
        case(
            "label value invalid",
            r(PEER, "team: federation", "team: -fed"),
            "InvalidLabelValue",
            "metadata.labels.team",
        ),
        case(
            "label value boolean",
            r(PEER, "team: federation", "team: true"),
            "WrongType",
            "metadata.labels.team",
        ),
        case(
            "kind missing",
            r(PEER, "kind: ServiceMeshPeer\n", ""),
            "MissingField",
            "kind",
        ),
        case(
            "apiVersion missing",
            r(PEER, "apiVersion: federation.maistra.io/v1\n", ""),
            "MissingField",
            "apiVersion",
        ),
        case(
            "apiVersion wrong",
            r(PEER, "federation.maistra.io/v1", "federation.maistra.io/v2"),
            "UnsupportedVersion",
            "apiVersion",
        ),
        case(
            "document is a list",
            "- a\n- b\n".into(),
            "WrongType",
            "(document)",
        ),
        case(
            "document is a scalar",
            "just text\n".into(),
            "WrongType",
            "(document)",
        ),
        case(
            "spec missing",
            r(PEER, &PEER[PEER.find("spec:").unwrap_or(0)..], ""),
            "MissingField",
            "spec.remote",
        ),
        case(
            "spec not a mapping",
            r(
                PEER,
                &PEER[PEER.find("spec:").unwrap_or(0)..],
                "spec: [1]\n",
            ),
            "WrongType",
            "spec",
        ),
        // --- remote (C5)
        case(
            "remote missing",
            r(
                PEER,
                "  remote:\n    addresses: [127.0.2.1]\n    discoveryPort: 8188\n    servicePort: 15443\n",
                "",
            ),
            "MissingField",
            "spec.remote",
        ),
        case(
            "addresses empty",
            r(PEER, ra, "addresses: []"),
            "MissingAddresses",
            "spec.remote.addresses",
        ),
        case(
            "addresses absent",
            r(PEER, "    addresses: [127.0.2.1]\n", ""),
            "MissingAddresses",
            "spec.remote.addresses",
        ),
        case(
            "addresses a string",
            r(PEER, ra, "addresses: 127.0.2.1"),
            "WrongType",
            "spec.remote.addresses",
        ),
        case(
            "address a number",
            r(PEER, ra, "addresses: [12]"),
            "WrongType",
            "spec.remote.addresses[0]",
        ),
        case(
            "address unspecified v4",
            r(PEER, ra, "addresses: [0.0.0.0]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address unspecified v6",
            r(PEER, ra, "addresses: ['::']"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address metadata",
            r(PEER, ra, "addresses: [169.254.169.254]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address link-local v4",
            r(PEER, ra, "addresses: [169.254.1.1]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address link-local v6",
            r(PEER, ra, "addresses: ['fe80::1']"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address zone id",
            r(PEER, ra, "addresses: ['fe80::1%eth0']"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address multicast",
            r(PEER, ra, "addresses: [224.0.0.1]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address broadcast",
            r(PEER, ra, "addresses: [255.255.255.255]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address with port",
            r(PEER, ra, "addresses: ['gw.example.com:8188']"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address trailing dot",
            r(PEER, ra, "addresses: [gw.example.com.]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address upper case",
            r(PEER, ra, "addresses: [GW.example.com]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address underscore",
            r(PEER, ra, "addresses: [bad_host]"),
            "InvalidAddress",
            "spec.remote.addresses[0]",
        ),
        case(
            "address second bad",
            r(PEER, ra, "addresses: [gw.example.com, 'a b']"),
            "InvalidAddress",
            "spec.remote.addresses[1]",
        ),
        case(
            "addresses too many",
            r(PEER, ra, &addresses(65)),
            "TooManyAddresses",
            "spec.remote.addresses",
        ),
        case(
            "discovery port negative",
            r(PEER, "discoveryPort: 8188", "discoveryPort: -1"),
            "InvalidPort",
            "spec.remote.discoveryPort",
        ),
        case(
            "service port 65536",
            r(PEER, "servicePort: 15443", "servicePort: 65536"),
            "InvalidPort",
            "spec.remote.servicePort",
        ),
        case(
            "discovery port string",
            r(PEER, "discoveryPort: 8188", "discoveryPort: \"8188\""),
            "WrongType",
            "spec.remote.discoveryPort",
        ),
        case(
            "discovery port float",
            r(PEER, "discoveryPort: 8188", "discoveryPort: 8188.5"),
            "OutOfRange",
            "spec.remote.discoveryPort",
        ),
        case(
            "service port beyond int32",
            r(PEER, "servicePort: 15443", "servicePort: 99999999999"),
            "OutOfRange",
            "spec.remote.servicePort",
        ),
        case(
            "ports clash",
            r(PEER, "servicePort: 15443", "servicePort: 8188"),
            "PortClash",
            "spec.remote.servicePort",
        ),
        case(
            "remote unknown field",
            r(PEER, ra, "adresses: [127.0.2.1]"),
            "UnknownField",
            "spec.remote.adresses",
        ),
        // --- gateways
        case(
            "ingress gateway name",
            r(PEER, "name: ingress-beta", "name: Ingress_Beta"),
            "InvalidName",
            "spec.gateways.ingress.name",
        ),
        case(
            "egress gateway name",
            r(PEER, "name: egress-beta", "name: egress..beta"),
            "InvalidName",
            "spec.gateways.egress.name",
        ),
        case(
            "gateways unknown field",
            r(
                PEER,
                "ingress: {name: ingress-beta}",
                "ingres: {name: ingress-beta}",
            ),
            "UnknownField",
            "spec.gateways.ingres",
        ),
        // --- security (C3, C4, C10)
        case(
            "security missing",
            r(PEER, &PEER[PEER.find("  security:").unwrap_or(0)..], ""),
            "MissingField",
            "spec.security",
        ),
        case(
            "trust domain missing",
            r(PEER, &format!("    {td}\n"), ""),
            "MissingTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain empty",
            r(PEER, td, "trustDomain: ''"),
            "MissingTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain upper case",
            r(PEER, td, "trustDomain: Beta-Mesh.local"),
            "InvalidTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain port",
            r(PEER, td, "trustDomain: 'beta-mesh.local:443'"),
            "InvalidTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain path",
            r(PEER, td, "trustDomain: beta-mesh.local/x"),
            "InvalidTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain ipv6",
            r(PEER, td, "trustDomain: '[::1]'"),
            "InvalidTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain percent",
            r(PEER, td, "trustDomain: beta%2emesh"),
            "InvalidTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain empty label",
            r(PEER, td, "trustDomain: beta..local"),
            "InvalidTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain 256 bytes",
            r(PEER, td, &format!("trustDomain: {}", "a".repeat(256))),
            "InvalidTrustDomain",
            "spec.security.trustDomain",
        ),
        case(
            "trust domain number",
            r(PEER, td, "trustDomain: 42"),
            "WrongType",
            "spec.security.trustDomain",
        ),
        case(
            "client id missing",
            r(PEER, &format!("    {cid}\n"), ""),
            "MissingClientID",
            "spec.security.clientID",
        ),
        case(
            "client id empty",
            r(PEER, cid, "clientID: ''"),
            "MissingClientID",
            "spec.security.clientID",
        ),
        case(
            "client id no path",
            r(PEER, cid, "clientID: beta-mesh.local"),
            "InvalidClientID",
            "spec.security.clientID",
        ),
        case(
            "client id empty segment",
            r(PEER, cid, "clientID: beta-mesh.local/ns//sa/x"),
            "InvalidClientID",
            "spec.security.clientID",
        ),
        case(
            "client id dot segment",
            r(PEER, cid, "clientID: beta-mesh.local/ns/../sa/x"),
            "InvalidClientID",
            "spec.security.clientID",
        ),
        case(
            "client id query",
            r(PEER, cid, "clientID: beta-mesh.local/ns/x?y"),
            "InvalidClientID",
            "spec.security.clientID",
        ),
        case(
            "client id upper scheme",
            r(PEER, cid, "clientID: SPIFFE://beta-mesh.local/ns/x/sa/y"),
            "InvalidClientID",
            "spec.security.clientID",
        ),
        case(
            "client id trailing slash",
            r(PEER, cid, "clientID: beta-mesh.local/ns/x/"),
            "InvalidClientID",
            "spec.security.clientID",
        ),
        case(
            "client id other domain",
            r(PEER, cid, "clientID: gamma.local/ns/x/sa/y"),
            "ClientIDTrustDomainMismatch",
            "spec.security.clientID",
        ),
        case(
            "client id wrong case key",
            r(PEER, "clientID:", "clientId:"),
            "UnknownField",
            "spec.security.clientId",
        ),
        case(
            "chain kind secret",
            r(
                PEER,
                chain,
                "certificateChain: {kind: Secret, name: beta-root}",
            ),
            "UnsupportedCertificateChainKind",
            "spec.security.certificateChain.kind",
        ),
        case(
            "chain api group",
            r(
                PEER,
                chain,
                "certificateChain: {apiGroup: v1, kind: ConfigMap, name: beta-root}",
            ),
            "UnsupportedCertificateChainKind",
            "spec.security.certificateChain.apiGroup",
        ),
        case(
            "chain name missing",
            r(PEER, chain, "certificateChain: {kind: ConfigMap}"),
            "MissingField",
            "spec.security.certificateChain.name",
        ),
        case(
            "chain kind missing",
            r(PEER, chain, "certificateChain: {name: beta-root}"),
            "MissingField",
            "spec.security.certificateChain.kind",
        ),
        case(
            "chain name invalid",
            r(
                PEER,
                chain,
                "certificateChain: {kind: ConfigMap, name: Beta_Root}",
            ),
            "InvalidName",
            "spec.security.certificateChain.name",
        ),
        case(
            "spec unknown field",
            r(PEER, "spec:\n", "spec:\n  allowDirectInbound: true\n"),
            "UnknownField",
            "spec.allowDirectInbound",
        ),
        // --- cross-object (C3, SEC-ID-9)
        with(
            "trust domain is ours",
            vec![format!(
                "{MESH}---\n{}",
                r(PEER, td, "trustDomain: alpha-mesh.local")
                    .replace("beta-mesh.local/ns", "alpha-mesh.local/ns")
            )],
            "TrustDomainIsLocal",
            "spec.security.trustDomain",
        ),
        with(
            "trust domain taken",
            vec![format!(
                "{PEER}---\n{}",
                r(PEER, "name: beta-mesh", "name: gamma-mesh")
            )],
            "TrustDomainTaken",
            "spec.security.trustDomain",
        ),
        with(
            "peer defined twice",
            vec![format!("{PEER}---\n{PEER}")],
            "DuplicateObject",
            "metadata.name",
        ),
        with(
            "peer in wrong namespace",
            vec![format!(
                "{MESH}---\n{}",
                r(PEER, "namespace: alpha-system", "namespace: other-system")
            )],
            "WrongNamespace",
            "metadata.namespace",
        ),
        // --- ExportedServiceSet (C6, C7, C8)
        case(
            "export name invalid",
            r(EXPORTS, "name: beta-mesh", "name: Beta"),
            "InvalidName",
            "metadata.name",
        ),
        case(
            "export name too long for a peer",
            r(
                EXPORTS,
                "name: beta-mesh",
                &format!("name: {}", "b".repeat(60)),
            ),
            "InvalidPeerName",
            "metadata.name",
        ),
        case(
            "export rules not a list",
            r(
                EXPORTS,
                &EXPORTS[EXPORTS.find("  exportRules:").unwrap_or(0)..],
                "  exportRules: {a: 1}\n",
            ),
            "WrongType",
            "spec.exportRules",
        ),
        case(
            "export rule type unknown",
            r(EXPORTS, "- type: NameSelector", "- type: Name"),
            "UnknownRuleType",
            "spec.exportRules[0].type",
        ),
        case(
            "export rule type missing",
            r(
                EXPORTS,
                "- type: NameSelector\n    nameSelector:",
                "- nameSelector:",
            ),
            "MissingField",
            "spec.exportRules[0].type",
        ),
        case(
            "export rule type number",
            r(EXPORTS, "- type: NameSelector", "- type: 7"),
            "WrongType",
            "spec.exportRules[0].type",
        ),
        case(
            "name rule without selector",
            r(
                EXPORTS,
                &format!(
                    "    nameSelector:\n{ns_sel}      alias: {{namespace: shop, name: orders}}\n"
                ),
                "",
            ),
            "MissingSelector",
            "spec.exportRules[0].nameSelector",
        ),
        case(
            "label rule without selector",
            r(EXPORTS, "- type: NameSelector", "- type: LabelSelector"),
            "MissingSelector",
            "spec.exportRules[0].labelSelector",
        ),
        case(
            "name selector partial namespace",
            r(
                EXPORTS,
                "namespace: shop-prod\n      name: orders-v2",
                "namespace: shop-*\n      name: orders-v2",
            ),
            "PartialWildcard",
            "spec.exportRules[0].nameSelector.namespace",
        ),
        case(
            "name selector upper name",
            r(EXPORTS, "name: orders-v2", "name: Orders"),
            "InvalidName",
            "spec.exportRules[0].nameSelector.name",
        ),
        case(
            "name selector digit name",
            r(EXPORTS, "name: orders-v2", "name: 1orders"),
            "InvalidName",
            "spec.exportRules[0].nameSelector.name",
        ),
        case(
            "name selector partial name",
            r(EXPORTS, "name: orders-v2", "name: orders-*"),
            "PartialWildcard",
            "spec.exportRules[0].nameSelector.name",
        ),
        case(
            "alias namespace invalid",
            r(
                EXPORTS,
                "alias: {namespace: shop, name: orders}",
                "alias: {namespace: Shop, name: orders}",
            ),
            "InvalidName",
            "spec.exportRules[0].nameSelector.alias.namespace",
        ),
        case(
            "alias name partial",
            r(
                EXPORTS,
                "alias: {namespace: shop, name: orders}",
                "alias: {namespace: shop, name: 'o*'}",
            ),
            "PartialWildcard",
            "spec.exportRules[0].nameSelector.alias.name",
        ),
        case(
            "alias unknown field",
            r(
                EXPORTS,
                "alias: {namespace: shop, name: orders}",
                "alias: {ns: shop}",
            ),
            "UnknownField",
            "spec.exportRules[0].nameSelector.alias.ns",
        ),
        case(
            "rule unknown field",
            r(
                EXPORTS,
                "    nameSelector:\n      namespace: shop-prod",
                "    nameselector:\n      namespace: shop-prod",
            ),
            "UnknownField",
            "spec.exportRules[0].nameselector",
        ),
        case(
            "label namespace invalid",
            r(
                EXPORTS,
                "    labelSelector:\n      namespace: shop-prod",
                "    labelSelector:\n      namespace: a_b",
            ),
            "InvalidName",
            "spec.exportRules[1].labelSelector.namespace",
        ),
        case(
            "operator unknown",
            r(EXPORTS, "operator: NotIn", "operator: notin"),
            "UnknownOperator",
            "spec.exportRules[1].labelSelector.selector.matchExpressions[0].operator",
        ),
        case(
            "operator In without values",
            r(EXPORTS, expr, "- {key: tier, operator: In, values: []}"),
            "MissingValues",
            "spec.exportRules[1].labelSelector.selector.matchExpressions[0].values",
        ),
        case(
            "operator Exists with values",
            r(
                EXPORTS,
                expr,
                "- {key: tier, operator: Exists, values: [x]}",
            ),
            "UnexpectedValues",
            "spec.exportRules[1].labelSelector.selector.matchExpressions[0].values",
        ),
        case(
            "expression key missing",
            r(EXPORTS, expr, "- {operator: Exists}"),
            "MissingField",
            "spec.exportRules[1].labelSelector.selector.matchExpressions[0].key",
        ),
        case(
            "expression key invalid",
            r(EXPORTS, expr, "- {key: 'a b', operator: Exists}"),
            "InvalidLabelKey",
            "spec.exportRules[1].labelSelector.selector.matchExpressions[0].key",
        ),
        case(
            "expression value invalid",
            r(
                EXPORTS,
                expr,
                "- {key: tier, operator: In, values: ['a b']}",
            ),
            "InvalidLabelValue",
            "spec.exportRules[1].labelSelector.selector.matchExpressions[0].values[0]",
        ),
        case(
            "match label key invalid",
            r(
                EXPORTS,
                "matchLabels: {federation-export: \"true\"}",
                "matchLabels: {'a b': x}",
            ),
            "InvalidLabelKey",
            "spec.exportRules[1].labelSelector.selector.matchLabels[\"a b\"]",
        ),
        case(
            "match label value invalid",
            r(
                EXPORTS,
                "matchLabels: {federation-export: \"true\"}",
                "matchLabels: {federation-export: '-x'}",
            ),
            "InvalidLabelValue",
            "spec.exportRules[1].labelSelector.selector.matchLabels.federation-export",
        ),
        case(
            "match label value boolean",
            r(
                EXPORTS,
                "matchLabels: {federation-export: \"true\"}",
                "matchLabels: {federation-export: true}",
            ),
            "WrongType",
            "spec.exportRules[1].labelSelector.selector.matchLabels.federation-export",
        ),
        case(
            "label alias name invalid",
            r(EXPORTS, "alias: {namespace: shop}}", "alias: {name: X}}"),
            "InvalidName",
            "spec.exportRules[1].labelSelector.aliases[0].alias.name",
        ),
        case(
            "too many export rules",
            r(
                EXPORTS,
                &EXPORTS[EXPORTS.find("exportRules:").unwrap_or(0)..],
                &many_rules(1025),
            ),
            "TooManyRules",
            "spec.exportRules",
        ),
        with(
            "export set twice",
            vec![format!("{EXPORTS}---\n{EXPORTS}")],
            "DuplicateObject",
            "metadata.name",
        ),
        // --- ImportedServiceSet (C7, locality, suffixes)
        case(
            "import rule label type",
            r(
                IMPORTS,
                "- type: NameSelector\n    importAsLocal",
                "- type: LabelSelector\n    importAsLocal",
            ),
            "UnsupportedImportRuleType",
            "spec.importRules[0].type",
        ),
        case(
            "import rule unknown type",
            r(
                IMPORTS,
                "- type: NameSelector\n    importAsLocal",
                "- type: Foo\n    importAsLocal",
            ),
            "UnknownRuleType",
            "spec.importRules[0].type",
        ),
        case(
            "import rule without selector",
            r(IMPORTS, rule0, "  - type: NameSelector\n"),
            "MissingSelector",
            "spec.importRules[0].nameSelector",
        ),
        case(
            "import as local without alias",
            r(IMPORTS, "      alias: {namespace: shop}\n", ""),
            "ImportAsLocalNeedsAliasNamespace",
            "spec.importRules[0].nameSelector.alias.namespace",
        ),
        case(
            "import as local wildcard alias",
            r(
                IMPORTS,
                "alias: {namespace: shop}",
                "alias: {namespace: '*'}",
            ),
            "ImportAsLocalNeedsAliasNamespace",
            "spec.importRules[0].nameSelector.alias.namespace",
        ),
        case(
            "import as local string",
            r(IMPORTS, "importAsLocal: true", "importAsLocal: 'true'"),
            "WrongType",
            "spec.importRules[0].importAsLocal",
        ),
        case(
            "domain suffix local",
            r(
                IMPORTS,
                "domainSuffix: beta.remote",
                "domainSuffix: svc.cluster.local",
            ),
            "LocalDomainSuffix",
            "spec.domainSuffix",
        ),
        case(
            "domain suffix under local",
            r(
                IMPORTS,
                "domainSuffix: beta.remote",
                "domainSuffix: x.svc.cluster.local",
            ),
            "LocalDomainSuffix",
            "spec.domainSuffix",
        ),
        case(
            "domain suffix cluster domain",
            r(
                IMPORTS,
                "domainSuffix: beta.remote",
                "domainSuffix: cluster.local",
            ),
            "LocalDomainSuffix",
            "spec.domainSuffix",
        ),
        case(
            "domain suffix leading dot",
            r(
                IMPORTS,
                "domainSuffix: beta.remote",
                "domainSuffix: .remote",
            ),
            "InvalidDomainSuffix",
            "spec.domainSuffix",
        ),
        case(
            "domain suffix upper case",
            r(IMPORTS, "domainSuffix: beta.remote", "domainSuffix: Remote"),
            "InvalidDomainSuffix",
            "spec.domainSuffix",
        ),
        case(
            "rule domain suffix local",
            r(
                IMPORTS,
                "domainSuffix: other.remote",
                "domainSuffix: svc.cluster.local",
            ),
            "LocalDomainSuffix",
            "spec.importRules[1].domainSuffix",
        ),
        case(
            "zone without region",
            r(
                IMPORTS,
                "locality: {region: eu-central, zone: eu-central-1a}",
                "locality: {zone: eu-central-1a}",
            ),
            "ZoneWithoutRegion",
            "spec.locality.zone",
        ),
        case(
            "subzone without zone",
            r(
                IMPORTS,
                "locality: {region: eu-central, zone: eu-central-1a}",
                "locality: {region: eu, subzone: s1}",
            ),
            "SubzoneWithoutZone",
            "spec.locality.subzone",
        ),
        case(
            "region with slash",
            r(
                IMPORTS,
                "locality: {region: eu-central, zone: eu-central-1a}",
                "locality: {region: 'eu/central'}",
            ),
            "InvalidLocality",
            "spec.locality.region",
        ),
        case(
            "region a number",
            r(
                IMPORTS,
                "locality: {region: eu-central, zone: eu-central-1a}",
                "locality: {region: 5}",
            ),
            "WrongType",
            "spec.locality.region",
        ),
        case(
            "import name partial",
            r(IMPORTS, "name: \"*\"}", "name: 'a*'}"),
            "PartialWildcard",
            "spec.importRules[1].nameSelector.name",
        ),
        case(
            "import rule not a mapping",
            r(IMPORTS, rule0, "  - just-a-string\n"),
            "WrongType",
            "spec.importRules[0]",
        ),
        case(
            "import spec unknown field",
            r(
                IMPORTS,
                "  domainSuffix: beta.remote",
                "  domainsuffix: beta.remote",
            ),
            "UnknownField",
            "spec.domainsuffix",
        ),
        // --- Mesh (CF1, CF2)
        case(
            "mesh namespace missing",
            r(MESH, "  namespace: alpha-system\n", ""),
            "MissingNamespace",
            "metadata.namespace",
        ),
        case(
            "mesh trust domain missing",
            r(MESH, "  trustDomain: alpha-mesh.local\n", ""),
            "MissingField",
            "spec.trustDomain",
        ),
        case(
            "mesh trust domain invalid",
            r(MESH, "trustDomain: alpha-mesh.local", "trustDomain: Alpha"),
            "InvalidTrustDomain",
            "spec.trustDomain",
        ),
        case(
            "mesh cluster domain invalid",
            r(
                MESH,
                "clusterDomain: cluster.local",
                "clusterDomain: cluster..local",
            ),
            "InvalidName",
            "spec.clusterDomain",
        ),
        case(
            "mesh locality invalid",
            r(
                MESH,
                "locality: {region: us-east, zone: us-east-1a}",
                "locality: {zone: us-east-1a}",
            ),
            "ZoneWithoutRegion",
            "spec.locality.zone",
        ),
        case(
            "service name invalid",
            r(MESH, svc0, "  - name: Orders\n    namespace: shop\n"),
            "InvalidName",
            "spec.services[0].name",
        ),
        case(
            "service namespace invalid",
            r(MESH, svc0, "  - name: orders\n    namespace: shop_1\n"),
            "InvalidName",
            "spec.services[0].namespace",
        ),
        case(
            "service name missing",
            r(MESH, svc0, "  - namespace: shop\n"),
            "MissingField",
            "spec.services[0].name",
        ),
        case(
            "service defined twice",
            r(MESH, "  - name: payments\n", "  - name: orders\n"),
            "DuplicateService",
            "spec.services[1]",
        ),
        case(
            "port zero",
            r(MESH, port0, "{name: http, port: 0, protocol: HTTP}"),
            "InvalidPort",
            "spec.services[0].ports[0].port",
        ),
        case(
            "port too large",
            r(MESH, port0, "{name: http, port: 70000, protocol: HTTP}"),
            "InvalidPort",
            "spec.services[0].ports[0].port",
        ),
        case(
            "port protocol unknown",
            r(MESH, port0, "{name: http, port: 8080, protocol: http}"),
            "UnknownProtocol",
            "spec.services[0].ports[0].protocol",
        ),
        case(
            "port name invalid",
            r(MESH, port0, "{name: HTTP, port: 8080}"),
            "InvalidName",
            "spec.services[0].ports[0].name",
        ),
        case(
            "port defined twice",
            r(
                MESH,
                "{name: grpc, port: 9090, protocol: GRPC}",
                "{name: http, port: 9090}",
            ),
            "DuplicatePort",
            "spec.services[0].ports[1]",
        ),
        case(
            "service account invalid",
            r(
                MESH,
                "serviceAccounts: [orders]",
                "serviceAccounts: [Orders_SA]",
            ),
            "InvalidName",
            "spec.services[0].serviceAccounts[0]",
        ),
        case(
            "service label invalid",
            r(MESH, "labels: {tier: web}", "labels: {tier: 'w b'}"),
            "InvalidLabelValue",
            "spec.services[0].labels.tier",
        ),
        case(
            "mesh unknown field",
            r(MESH, "  services:\n", "  service:\n"),
            "UnknownField",
            "spec.service",
        ),
        case(
            "policy unknown action",
            r(MESH, "action: DENY", "action: AUDIT"),
            "UnknownAction",
            "spec.authorizationPolicies[1].action",
        ),
        case(
            "policy principal not an identity",
            r(
                MESH,
                "alpha-mesh.local/ns/web/sa/ui",
                "alpha mesh/ns/web/sa/ui",
            ),
            "InvalidPrincipal",
            "spec.authorizationPolicies[0].rules[0].from[0].source.principals[0]",
        ),
        case(
            "policy bad namespace",
            r(MESH, "namespaces: [web]", "namespaces: [Web_1]"),
            "InvalidName",
            "spec.authorizationPolicies[0].rules[0].from[0].source.namespaces[0]",
        ),
        case(
            "policy bad trust domain",
            r(
                MESH,
                "trustDomains: [alpha-mesh.local]",
                "trustDomains: [Alpha]",
            ),
            "InvalidTrustDomain",
            "spec.authorizationPolicies[0].rules[0].from[0].source.trustDomains[0]",
        ),
        case(
            "policy relative path",
            r(MESH, "paths: [/admin]", "paths: [admin]"),
            "InvalidPath",
            "spec.authorizationPolicies[1].rules[0].to[0].operation.paths[0]",
        ),
        case(
            "policy path that no request can match",
            r(MESH, "paths: [/admin]", "paths: [/a/../admin]"),
            "PathNotNormalized",
            "spec.authorizationPolicies[1].rules[0].to[0].operation.paths[0]",
        ),
        case(
            "policy path with params",
            r(MESH, "paths: [/admin]", "paths: [\"/admin;x=1\"]"),
            "PathNotNormalized",
            "spec.authorizationPolicies[1].rules[0].to[0].operation.paths[0]",
        ),
        case(
            "policy lower-case method",
            r(MESH, "methods: [GET]", "methods: [get]"),
            "InvalidMethod",
            "spec.authorizationPolicies[0].rules[0].to[0].operation.methods[0]",
        ),
        case(
            "policy bad name",
            r(MESH, "name: no-admin", "name: No_Admin"),
            "InvalidName",
            "spec.authorizationPolicies[1].name",
        ),
        case(
            "policy unknown field",
            r(MESH, "    action: DENY", "    acton: DENY"),
            "UnknownField",
            "spec.authorizationPolicies[1].acton",
        ),
        case(
            "traffic timeout without unit",
            r(MESH, "timeout: 2s", "timeout: 2 seconds"),
            "InvalidDuration",
            "spec.traffic[0].timeout",
        ),
        case(
            "traffic zero per-try timeout",
            r(MESH, "perTryTimeout: 500ms", "perTryTimeout: 0s"),
            "InvalidDuration",
            "spec.traffic[0].retries.perTryTimeout",
        ),
        case(
            "traffic negative attempts",
            r(MESH, "attempts: 3", "attempts: -1"),
            "InvalidAttempts",
            "spec.traffic[0].retries.attempts",
        ),
        case(
            "traffic unknown retry condition",
            r(MESH, "5xx,connect-failure,429", "5xx,sometimes"),
            "UnknownRetryOn",
            "spec.traffic[0].retries.retryOn",
        ),
        case(
            "traffic impossible percentage",
            r(MESH, "{value: 0.5}", "{value: 150}"),
            "InvalidPercentage",
            "spec.traffic[0].fault.delay.percentage.value",
        ),
        case(
            "traffic bad fixed delay",
            r(MESH, "fixedDelay: 100ms", "fixedDelay: soon"),
            "InvalidDuration",
            "spec.traffic[0].fault.delay.fixedDelay",
        ),
        case(
            "traffic abort status out of range",
            r(MESH, "httpStatus: 503", "httpStatus: 700"),
            "InvalidHttpStatus",
            "spec.traffic[0].fault.abort.httpStatus",
        ),
        case(
            "traffic twice for one service",
            format!(
                "{}  - {{service: orders, namespace: shop, timeout: 1s}}\n",
                MESH
            ),
            "DuplicateTrafficPolicy",
            "spec.traffic[1].service",
        ),
        case(
            "traffic unknown field",
            r(MESH, "    timeout: 2s", "    timout: 2s"),
            "UnknownField",
            "spec.traffic[0].timout",
        ),
        case(
            "traffic zero connections",
            r(MESH, "maxConnections: 100", "maxConnections: 0"),
            "InvalidConnectionPool",
            "spec.traffic[0].connectionPool.tcp.maxConnections",
        ),
        case(
            "traffic zero request limit",
            r(MESH, "http2MaxRequests: 500", "http2MaxRequests: 0"),
            "InvalidConnectionPool",
            "spec.traffic[0].connectionPool.http.http2MaxRequests",
        ),
        case(
            "traffic negative pending requests",
            r(
                MESH,
                "http1MaxPendingRequests: 10",
                "http1MaxPendingRequests: -5",
            ),
            "InvalidConnectionPool",
            "spec.traffic[0].connectionPool.http.http1MaxPendingRequests",
        ),
        case(
            "traffic negative 5xx streak",
            r(MESH, "consecutive5xxErrors: 3", "consecutive5xxErrors: -3"),
            "InvalidOutlierDetection",
            "spec.traffic[0].outlierDetection.consecutive5xxErrors",
        ),
        case(
            "traffic ejection percent above 100",
            r(MESH, "maxEjectionPercent: 50", "maxEjectionPercent: 101"),
            "InvalidPercentage",
            "spec.traffic[0].outlierDetection.maxEjectionPercent",
        ),
        case(
            "traffic bad ejection time",
            r(MESH, "baseEjectionTime: 15s", "baseEjectionTime: 15"),
            "WrongType",
            "spec.traffic[0].outlierDetection.baseEjectionTime",
        ),
        case(
            "traffic ejection time unit",
            r(MESH, "baseEjectionTime: 15s", "baseEjectionTime: 15y"),
            "InvalidDuration",
            "spec.traffic[0].outlierDetection.baseEjectionTime",
        ),
        case(
            "traffic unsupported outlier field",
            r(
                MESH,
                "maxEjectionPercent: 50",
                "maxEjectionPercent: 50, interval: 10s",
            ),
            "UnknownField",
            "spec.traffic[0].outlierDetection.interval",
        ),
        case(
            "traffic unsupported load balancer",
            r(MESH, "simple: ROUND_ROBIN", "simple: PASSTHROUGH"),
            "UnsupportedLoadBalancer",
            "spec.traffic[0].loadBalancer.simple",
        ),
        case(
            "route regex that does not compile",
            r(MESH, "{regex: \"/v2/.*\"}", "{regex: \"/v2/(\"}"),
            "InvalidRegex",
            "spec.traffic[0].http[0].match[1].uri.regex",
        ),
        case(
            "route regex of unbounded size",
            r(
                MESH,
                "{regex: \"/v2/.*\"}",
                "{regex: \"(\\\\w{100}){100}\"}",
            ),
            "InvalidRegex",
            "spec.traffic[0].http[0].match[1].uri.regex",
        ),
        case(
            "route string match with two kinds",
            r(
                MESH,
                "{regex: \"/v2/.*\"}",
                "{regex: \"/v2/.*\", prefix: /v2}",
            ),
            "StringMatchOneOf",
            "spec.traffic[0].http[0].match[1].uri",
        ),
        case(
            "route string match with none",
            r(MESH, "method: {exact: GET}", "method: {}"),
            "StringMatchOneOf",
            "spec.traffic[0].http[0].match[1].method",
        ),
        case(
            "route uri prefix without a slash",
            r(MESH, "{regex: \"/v2/.*\"}", "{prefix: v2}"),
            "InvalidPath",
            "spec.traffic[0].http[0].match[1].uri.prefix",
        ),
        case(
            "route header name in upper case",
            r(MESH, "x-canary:", "X-Canary:"),
            "InvalidHeaderName",
            "spec.traffic[0].http[0].match[0].headers.X-Canary",
        ),
        case(
            "route weights not summing to 100",
            r(MESH, "weight: 10}", "weight: 20}"),
            "WeightSum",
            "spec.traffic[0].http[1].route",
        ),
        case(
            "route weight above 100",
            r(MESH, "weight: 90}", "weight: 190}"),
            "InvalidWeight",
            "spec.traffic[0].http[1].route[0].weight",
        ),
        case(
            "route to an undefined subset",
            r(
                MESH,
                "{host: orders, subset: v2}}]",
                "{host: orders, subset: v3}}]",
            ),
            "UnknownSubset",
            "spec.traffic[0].http[0].route[0].destination.subset",
        ),
        case(
            "route to another service",
            r(
                MESH,
                "{host: orders, subset: v2}}]",
                "{host: payments, subset: v2}}]",
            ),
            "CrossServiceRoute",
            "spec.traffic[0].http[0].route[0].destination.host",
        ),
        case(
            "route without destinations",
            r(
                MESH,
                "route: [{destination: {host: orders, subset: v2}}]",
                "route: []",
            ),
            "EmptyRoute",
            "spec.traffic[0].http[0].route",
        ),
        case(
            "subset defined twice",
            r(
                MESH,
                "{name: v2, labels: {version: v2}}",
                "{name: v1, labels: {version: v2}}",
            ),
            "DuplicateSubset",
            "spec.traffic[0].subsets[1].name",
        ),
        case(
            "subset with a bad name",
            r(
                MESH,
                "{name: v2, labels: {version: v2}}",
                "{name: V2, labels: {version: v2}}",
            ),
            "InvalidName",
            "spec.traffic[0].subsets[1].name",
        ),
        case(
            "workload label key invalid",
            r(MESH, "labels: {version: v1}}", "labels: {\"bad key\": v1}}"),
            "InvalidLabelKey",
            "spec.workloads[0].labels[\"bad key\"]",
        ),
        case(
            "gateway address not ip:port",
            r(
                MESH,
                "address: \"127.0.1.2:15443\"",
                "address: \"egress.local\"",
            ),
            "InvalidAddress",
            "spec.gateways[0].address",
        ),
        case(
            "gateway discovery address not ip:port",
            r(
                MESH,
                "discoveryAddress: \"127.0.1.3:8188\"",
                "discoveryAddress: \"8188\"",
            ),
            "InvalidAddress",
            "spec.gateways[1].discoveryAddress",
        ),
        case(
            "gateway declared twice",
            r(MESH, "name: ingress-beta-mesh", "name: egress-beta-mesh"),
            "DuplicateGateway",
            "spec.gateways[1].name",
        ),
        case(
            "gateway name not a DNS label",
            r(MESH, "name: egress-beta-mesh", "name: Egress_Beta"),
            "InvalidName",
            "spec.gateways[0].name",
        ),
        case(
            "gateway without an address",
            r(MESH, ", address: \"127.0.1.2:15443\"", ""),
            "MissingField",
            "spec.gateways[0].address",
        ),
        case(
            "traffic attempts of the wrong type",
            r(MESH, "attempts: 3", "attempts: three"),
            "WrongType",
            "spec.traffic[0].retries.attempts",
        ),
        with(
            "two meshes in one file",
            vec![format!(
                "{MESH}---\n{}",
                r(MESH, "name: alpha", "name: gamma")
            )],
            "MultipleMeshes",
            "(document)",
        ),
        // --- YAML itself (CF1)
        case(
            "yaml syntax",
            "apiVersion: [unclosed\n".into(),
            "YamlSyntax",
            "apiVersion[0]",
        ),
        case(
            "yaml tab indentation",
            "apiVersion: v1\nmetadata:\n\tname: x\n".into(),
            "YamlSyntax",
            "metadata",
        ),
        case(
            "yaml duplicate key",
            r(
                PEER,
                "  name: beta-mesh\n",
                "  name: beta-mesh\n  name: other\n",
            ),
            "DuplicateKey",
            "metadata.name",
        ),
        case(
            "yaml alias bomb",
            {
                let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
                for i in 1..10 {
                    s.push_str(&format!("a{i}: &a{i} [*a{0}, *a{0}, *a{0}, *a{0}, *a{0}, *a{0}, *a{0}, *a{0}, *a{0}, *a{0}]\n", i - 1));
                }
                s
            },
            "TooManyNodes",
            "a5[0]",
        ),
        case(
            "yaml too deep",
            format!("a: {}{}\n", "[".repeat(80), "]".repeat(80)),
            "TooDeep",
            "a[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]",
        ),
        case(
            "yaml complex key",
            "? [a, b]\n: c\n".into(),
            "ComplexKey",
            "(document)",
        ),
    ]
}

#[test]
fn bases_are_clean() {
    for (name, base) in [
        ("peer", PEER),
        ("exports", EXPORTS),
        ("imports", IMPORTS),
        ("mesh", MESH),
    ] {
        let report = run(&[base]);
        let problems: Vec<String> = report
            .diagnostics
            .iter()
            .filter(|d| d.reason != "PeerNotFound")
            .map(ToString::to_string)
            .collect();
        assert!(
            problems.is_empty(),
            "base {name} is not clean:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn every_invalid_document_reports_reason_and_path() {
    let cases = cases();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let files: Vec<&str> = c.files.iter().map(String::as_str).collect();
        let report = run(&files);
        let hit = report.diagnostics.iter().find(|d| {
            d.severity == Severity::Error && d.reason == c.reason && d.path.to_string() == c.path
        });
        match hit {
            None => failures.push(format!(
                "{}: expected {} at {}, got:\n    {}",
                c.name,
                c.reason,
                c.path,
                report
                    .diagnostics
                    .iter()
                    .map(|d| format!("{} {} {}", d.reason, d.path, d.message))
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )),
            Some(d) if d.line == 0 => failures.push(format!("{}: no line number in {d}", c.name)),
            Some(_) => {}
        }
        if !report.has_errors() {
            failures.push(format!("{}: report has no errors", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn only_the_bad_rule_is_skipped() {
    // Rule 0 is broken; rule 1 still converts and the set stays usable.
    let text = r(EXPORTS, "name: orders-v2", "name: Orders");
    let report = run(&[&text]);
    assert!(report.has_errors());
    let rules = report
        .objects
        .iter()
        .find_map(|o| match &o.converted {
            Some(meshfed_crds::validate::Converted::Exports(r)) => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_default();
    assert_eq!(rules.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn warnings_are_reported() {
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "exports everything",
            r(
                EXPORTS,
                "namespace: shop-prod\n      name: orders-v2\n      alias: {namespace: shop, name: orders}",
                "namespace: '*'\n      name: '*'",
            ),
            "ExportsEverything",
            "spec.exportRules[0]",
        ),
        (
            "unreachable rule",
            r(
                EXPORTS,
                "name: orders-v2\n      alias: {namespace: shop, name: orders}",
                "name: '*'\n  - type: NameSelector\n    nameSelector: {namespace: shop-prod, name: cart}",
            ),
            "UnreachableRule",
            "spec.exportRules[1]",
        ),
        (
            "duplicate rule",
            r(
                IMPORTS,
                "nameSelector: {namespace: ops, name: \"*\"}",
                "nameSelector: {namespace: ops, name: \"*\"}\n  - type: NameSelector\n    nameSelector: {namespace: ops, name: \"*\"}",
            ),
            "DuplicateRule",
            "spec.importRules[2]",
        ),
        (
            "subset no workload carries",
            r(
                MESH,
                "{name: v2, labels: {version: v2}}",
                "{name: v2, labels: {version: v3}}",
            ),
            "EmptySubset",
            "spec.traffic[0].subsets[1].labels",
        ),
        (
            "peer not found",
            EXPORTS.to_owned(),
            "PeerNotFound",
            "metadata.name",
        ),
        (
            "yaml 1.1 boolean",
            r(PEER, "team: federation", "team: yes"),
            "Yaml11Boolean",
            "metadata.labels.team",
        ),
        (
            "alias collapses",
            r(
                EXPORTS,
                "name: orders-v2\n      alias: {namespace: shop, name: orders}",
                "name: '*'\n      alias: {name: one}",
            ),
            "AliasCollapses",
            "spec.exportRules[0].nameSelector.alias",
        ),
        (
            "ignored selector",
            r(
                EXPORTS,
                "- type: NameSelector\n",
                "- type: NameSelector\n    labelSelector: {selector: {}}\n",
            ),
            "IgnoredSelector",
            "spec.exportRules[0].labelSelector",
        ),
        (
            "ignored suffix",
            r(
                IMPORTS,
                "    importAsLocal: true\n",
                "    importAsLocal: true\n    domainSuffix: x.remote\n",
            ),
            "IgnoredDomainSuffix",
            "spec.importRules[0].domainSuffix",
        ),
        (
            "duplicate address",
            r(
                PEER,
                "addresses: [127.0.2.1]",
                "addresses: [127.0.2.1, 127.0.2.1]",
            ),
            "DuplicateAddress",
            "spec.remote.addresses[1]",
        ),
        (
            "client id with scheme",
            r(PEER, "clientID: beta", "clientID: spiffe://beta"),
            "ClientIDHasScheme",
            "spec.security.clientID",
        ),
        (
            "unknown kind",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".to_owned(),
            "UnknownKind",
            "kind",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, reason, path) in &cases {
        let report = run(&[text]);
        let found = report.diagnostics.iter().any(|d| {
            d.severity == Severity::Warning && d.reason == *reason && d.path.to_string() == *path
        });
        if !found {
            failures.push(format!(
                "{name}: expected warning {reason} at {path}, got {:?}",
                report
                    .diagnostics
                    .iter()
                    .map(|d| format!("{} {}", d.reason, d.path))
                    .collect::<Vec<_>>()
            ));
        }
        if report.has_errors() {
            failures.push(format!(
                "{name}: unexpected errors {:?}",
                report
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn diagnostics_point_at_the_right_line() {
    let text = r(PEER, "trustDomain: beta-mesh.local", "trustDomain: Beta");
    let report = run(&[&text]);
    let d = report
        .diagnostics
        .iter()
        .find(|d| d.reason == "InvalidTrustDomain")
        .map(|d| d.line);
    let expected = text
        .lines()
        .position(|l| l.contains("trustDomain: Beta"))
        .map(|i| i + 1);
    assert_eq!(d, expected);
}

#[test]
fn later_documents_keep_their_index_and_lines() {
    let text = format!(
        "{PEER}---\n{}",
        r(
            IMPORTS,
            "domainSuffix: beta.remote",
            "domainSuffix: svc.cluster.local"
        )
    );
    let report = run(&[&text]);
    let d = report
        .diagnostics
        .iter()
        .find(|d| d.reason == "LocalDomainSuffix")
        .cloned();
    let d = d.as_ref().map(|d| (d.document, d.line));
    let expected_line = text
        .lines()
        .position(|l| l.contains("domainSuffix: svc.cluster.local"))
        .map(|i| i + 1);
    assert_eq!(d, expected_line.map(|l| (1, l)));
}

#[test]
fn the_base_traffic_policy_converts() {
    use meshfed_core::traffic::Share;
    use std::time::Duration;
    let mesh = run(&[MESH]).meshes().remove(0);
    let orders = "shop/orders".parse().unwrap();
    let t = mesh.traffic_for(&orders);
    assert_eq!(t.timeout, Some(Duration::from_secs(2)));
    assert_eq!(t.retries.attempts, 3);
    assert_eq!(t.retries.per_try_timeout, Some(Duration::from_millis(500)));
    assert!(t.retries.retry_on.five_xx && t.retries.retry_on.connect_failure);
    assert_eq!(t.retries.retry_on.statuses, vec![429]);
    let delay = t.fault.delay.unwrap();
    assert_eq!(delay.share, Share::from_percent(0.5).unwrap());
    assert_eq!(delay.fixed_delay, Duration::from_millis(100));
    assert_eq!(t.fault.abort.unwrap().http_status, 503);
    assert_eq!(t.connection_pool.max_connections, 100);
    assert_eq!(t.connection_pool.max_pending_requests, 10);
    let od = t.outlier_detection.unwrap();
    assert_eq!(od.consecutive_5xx_errors, 3);
    assert_eq!(od.consecutive_gateway_errors, 0);
    assert_eq!(od.base_ejection_time, Duration::from_secs(15));
    assert_eq!(od.max_ejection_percent, 50);
    assert_eq!(
        t.load_balancer,
        meshfed_core::traffic::LoadBalancer::RoundRobin
    );
    // A service without a policy gets the default: connection failures retried twice.
    let payments = mesh.traffic_for(&"shop/payments".parse().unwrap());
    assert_eq!(payments.retries.attempts, 2);
    assert!(payments.retries.retry_on.connect_failure && !payments.retries.retry_on.five_xx);
    assert_eq!(payments.connection_pool.max_connections, 1024);
    assert!(payments.outlier_detection.is_none());
    assert_eq!(
        payments.load_balancer,
        meshfed_core::traffic::LoadBalancer::LeastRequest
    );
}
