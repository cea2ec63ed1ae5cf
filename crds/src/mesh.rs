//! `Mesh` (`meshfed.io/v1alpha1`): the embedded-mode description of one mesh — its identity
//! and its services. Federation resources for the mesh sit beside it in the same file, in
//! the namespace given here (the control-plane namespace).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Locality;

/// API group of meshfed's own embedded-mode kinds.
pub const MESHFED_GROUP: &str = "meshfed.io";

/// One mesh in embedded mode.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "meshfed.io",
    version = "v1alpha1",
    kind = "Mesh",
    plural = "meshes",
    namespaced,
    doc = "Mesh describes one mesh in meshfed embedded mode: its identity and services."
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// This mesh's SPIFFE trust domain, e.g. `alpha-mesh.local`. Required.
    pub trust_domain: String,
    /// DNS domain of local services (`<name>.<ns>.svc.<clusterDomain>`); default `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Locality of this mesh's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    /// Services of this mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<MeshService>>,
    /// Instances of the services, with their sidecar and app addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<Vec<MeshWorkload>>,
    /// Authorization policies (Istio `AuthorizationPolicy` names and meaning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_policies: Option<Vec<MeshAuthorizationPolicy>>,
    /// Client-side traffic policy per service (Istio `VirtualService` HTTP route names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Vec<MeshTrafficPolicy>>,
    /// The mesh's federation gateways and where they listen. A `ServiceMeshPeer` names its
    /// gateways in `spec.gateways` (default `ingress-<peer>` and `egress-<peer>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<MeshGateway>>,
}

/// One federation gateway of the mesh.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshGateway {
    /// Its name, as a `ServiceMeshPeer`'s `spec.gateways.ingress.name` or `.egress.name` gives
    /// it (DNS-1123 label); it runs as `<name>-service-account` in the control-plane namespace.
    pub name: String,
    /// Where it listens, `ip:port`: an ingress for peers' egress gateways (what the peer lists
    /// as `spec.remote.addresses` and `servicePort`), an egress for this mesh's sidecars.
    pub address: String,
    /// An ingress's discovery listener, `ip:port` (the peer's `discoveryPort`), forwarded to
    /// the control plane's peering service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
}

/// How callers' sidecars treat requests to one service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshTrafficPolicy {
    /// The service's name.
    pub service: String,
    /// The service's namespace.
    pub namespace: String,
    /// Limit on the whole request, retries included, e.g. `2s`; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFault>,
    /// Istio `DestinationRule` `trafficPolicy.connectionPool`: the circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Istio `DestinationRule` `trafficPolicy.outlierDetection`; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSettings>,
    /// Istio `DestinationRule` `trafficPolicy.loadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Istio `DestinationRule` `subsets`: named groups of the service's workloads, chosen by
    /// workload labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsets: Option<Vec<SubsetSettings>>,
    /// Istio `VirtualService` `http`: ordered routes; the first whose `match` fits a request
    /// wins, and its `route` splits traffic over subsets by `weight`. When routes are given and
    /// none matches, the request gets 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRouteSettings>>,
}

/// A named group of a service's workloads (Istio `Subset`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SubsetSettings {
    /// Subset name (DNS-1123 label), unique for the service.
    pub name: String,
    /// Workloads carrying all these labels belong to the subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// One HTTP route (Istio `HTTPRoute`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HttpRouteSettings {
    /// A name for logs and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Alternatives (any may match); absent or empty matches every request.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<Vec<HttpMatchRequest>>,
    /// Where matching requests go; the weights of several destinations sum to 100.
    pub route: Vec<HttpRouteDestination>,
}

/// Conditions that must all hold (Istio `HTTPMatchRequest`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HttpMatchRequest {
    /// The request path, without its query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatchSettings>,
    /// The request method, e.g. `{exact: GET}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatchSettings>,
    /// By lower-case header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, StringMatchSettings>>,
}

/// Exactly one of `exact`, `prefix` or `regex` (RE2 syntax, matched against the whole value).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct StringMatchSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A weighted destination (Istio `HTTPRouteDestination`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HttpRouteDestination {
    pub destination: DestinationSettings,
    /// Share of the route's requests, 0–100; may be omitted for a single destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// Istio `Destination`: this service (routing to other services is not supported), optionally
/// one of its subsets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DestinationSettings {
    /// The service: its name, `name.namespace`, or its full hostname.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LoadBalancerSettings {
    /// `LEAST_REQUEST` (default), `ROUND_ROBIN` or `RANDOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Upstream connections at once; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HttpSettings {
    /// Requests waiting for a connection; default 1024.
    #[serde(
        default,
        rename = "http1MaxPendingRequests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http1_max_pending_requests: Option<i64>,
    /// Requests in flight to the service, over HTTP/1.1 or HTTP/2; beyond it, 503 at once.
    /// Default unlimited (2^32 − 1), as in Istio.
    #[serde(
        default,
        rename = "http2MaxRequests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_max_requests: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct OutlierDetectionSettings {
    /// Default 5; 0 turns this trigger off.
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<i64>,
    /// Default 0 (off).
    #[serde(
        default,
        rename = "consecutiveGatewayErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_gateway_errors: Option<i64>,
    /// Default 30s.
    #[serde(
        default,
        rename = "baseEjectionTime",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection_time: Option<String>,
    /// Default 10.
    #[serde(
        default,
        rename = "maxEjectionPercent",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_percent: Option<i64>,
}

/// Istio `HTTPRetry`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    /// Retries after the first attempt; 0 disables retries.
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Comma-separated: `5xx`, `gateway-error`, `connect-failure`, `reset`, status codes.
    /// Default `connect-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

/// Istio `HTTPFaultInjection`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HttpFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A share of requests; absent means all of them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Percent {
    /// 0 to 100, fractions allowed.
    pub value: serde_json::Number,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    pub fixed_delay: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    pub http_status: i64,
}

/// An authorization policy for the workloads of a namespace, or of one service there.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct MeshAuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    /// Only the workloads of this service; default every workload of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    /// `ALLOW` (default) or `DENY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// No rules: the policy matches every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<PolicyRule>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicySelector {
    pub service: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<PolicyFrom>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<PolicyTo>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicyFrom {
    pub source: PolicySource,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicyTo {
    pub operation: PolicyOperation,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySource {
    /// `<trust-domain>/ns/<ns>/sa/<sa>`, with `*` prefix/suffix patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domains: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicyOperation {
    /// Exact, `prefix*` or `*suffix`, matched against the normalized path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Upper-case HTTP methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

/// One instance of a service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshWorkload {
    /// Workload name (DNS-1123 label), unique in its namespace.
    pub name: String,
    /// Namespace; the service it backs lives here too.
    pub namespace: String,
    /// The service it backs (a name in `services`).
    pub service: String,
    /// Service account it runs as; default the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Its sidecar's inbound mTLS address, `ip:port`.
    pub inbound: String,
    /// Its app's address, `ip:port` (plaintext, reached only through the sidecar).
    pub app: String,
    /// Locality; default the mesh's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    /// Labels, matched by traffic `subsets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A service of the mesh.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    /// Service name (DNS-1035 label).
    pub name: String,
    /// Namespace (DNS-1123 label).
    pub namespace: String,
    /// Labels, matched by `LabelSelector` export rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Ports; names must be unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<MeshServicePort>>,
    /// Service accounts of the workloads behind the service; default `[<name>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct MeshServicePort {
    /// Port name (DNS-1123 label).
    pub name: String,
    /// Port number, 1–65535.
    pub port: i32,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP` or `TLS`; default `HTTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}
