//! `ServiceMeshPeer`: how this mesh reaches and authenticates one peer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// Default discovery port at the peer's addresses (Maistra's).
pub const DEFAULT_DISCOVERY_PORT: i32 = 8188;
/// Default service-traffic port at the peer's addresses (Maistra's).
pub const DEFAULT_SERVICE_PORT: i32 = 15443;

/// Configures federation with one peer mesh. The object's name is how this mesh names the peer.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "federation.maistra.io",
    version = "v1",
    kind = "ServiceMeshPeer",
    plural = "servicemeshpeers",
    namespaced,
    status = "ServiceMeshPeerStatus",
    category = "maistra-io",
    doc = "ServiceMeshPeer configures federation with one peer mesh; its name is how this mesh names the peer."
)]
pub struct ServiceMeshPeerSpec {
    /// Where the peer's ingress gateway is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<ServiceMeshPeerRemote>,
    /// Local gateways serving this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<ServiceMeshPeerGateways>,
    /// How the peer is authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<ServiceMeshPeerSecurity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMeshPeerRemote {
    /// DNS names or IPs of the peer's ingress gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// Discovery port at those addresses; default 8188.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_port: Option<i32>,
    /// Service-traffic port at those addresses; default 15443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ServiceMeshPeerGateways {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMeshPeerSecurity {
    /// The peer egress gateway's identity, `<trust-domain>/ns/<ns>/sa/<sa>` (no `spiffe://`).
    #[serde(rename = "clientID", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The peer's trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Where the peer's root certificate is (a ConfigMap with key `root-cert.pem`); default
    /// `<peer>-ca-root-cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<TypedLocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypedLocalObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMeshPeerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_status: Option<ServiceMeshPeerDiscoveryStatus>,
    /// meshfed's addition: conditions with stable reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ServiceMeshPeerDiscoveryStatus {
    /// Control-plane pods whose outbound watch is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Vec<PodPeerDiscoveryStatus>>,
    /// The other control-plane pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive: Option<Vec<PodPeerDiscoveryStatus>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PodPeerDiscoveryStatus {
    pub pod: String,
    /// The peer's inbound watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remotes: Option<Vec<DiscoveryRemoteStatus>>,
    /// Our outbound watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<DiscoveryConnectionStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DiscoveryRemoteStatus {
    pub source: String,
    #[serde(flatten)]
    pub connection: DiscoveryConnectionStatus,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryConnectionStatus {
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_sync: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnect: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnect_status: Option<String>,
}

/// The key of a Maistra root ConfigMap (`spec.security.certificateChain`) that holds the
/// peer's root certificates as PEM.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// Why a ConfigMap gave no peer root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootCertError {
    #[error("not a ConfigMap: {0}")]
    NotConfigMap(String),
    #[error("the ConfigMap has no data.{ROOT_CERT_KEY} (Maistra's key for the peer root)")]
    NoRootCert,
}

impl RootCertError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConfigMap(_) => "NotConfigMap",
            Self::NoRootCert => "CertificateChainNotFound",
        }
    }
}

/// The peer root certificates (PEM) a Maistra root ConfigMap holds: the one reader of its
/// key, for the cluster's ConfigMaps and for ConfigMap files alike.
pub fn root_cert(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Result<&str, RootCertError> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(ROOT_CERT_KEY))
        .map(String::as_str)
        .ok_or(RootCertError::NoRootCert)
}

/// [`root_cert`] of a ConfigMap YAML document (`kubectl get configmap -o yaml`).
pub fn root_cert_from_yaml(text: &str) -> Result<String, RootCertError> {
    let stream = crate::yaml::load(text);
    if let Some(e) = stream.fatal {
        return Err(RootCertError::NotConfigMap(e.to_string()));
    }
    let root = stream
        .documents
        .into_iter()
        .find_map(|d| d.root)
        .ok_or_else(|| RootCertError::NotConfigMap("empty document".into()))?;
    if root.str_at("kind") != Some("ConfigMap") {
        return Err(RootCertError::NotConfigMap(format!(
            "kind is {:?}",
            root.str_at("kind").unwrap_or_default()
        )));
    }
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(root.to_json())
        .map_err(|e| RootCertError::NotConfigMap(e.to_string()))?;
    root_cert(&cm).map(str::to_owned)
}

#[cfg(test)]
mod root_cert_tests {
    use super::*;

    #[test]
    fn reads_the_root_of_a_configmap_file_and_names_what_is_missing() {
        let ok = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: beta-ca-root-cert}\ndata:\n  root-cert.pem: |\n    -----BEGIN CERTIFICATE-----\n";
        assert!(root_cert_from_yaml(ok).is_ok_and(|p| p.starts_with("-----BEGIN")));
        let no_key = "kind: ConfigMap\ndata: {ca.crt: x}\n";
        assert_eq!(
            root_cert_from_yaml(no_key).map_err(|e| e.reason()),
            Err("CertificateChainNotFound")
        );
        assert_eq!(
            root_cert_from_yaml("kind: Secret\n").map_err(|e| e.reason()),
            Err("NotConfigMap")
        );
        assert_eq!(
            root_cert_from_yaml("kind: [").map_err(|e| e.reason()),
            Err("NotConfigMap")
        );
    }
}
