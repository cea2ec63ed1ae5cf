//! Types shared by the three federation CRDs: name mappings, service references and
//! status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `type` value of a name-based rule.
pub const NAME_SELECTOR: &str = "NameSelector";
/// `type` value of a label-based rule.
pub const LABEL_SELECTOR: &str = "LabelSelector";

/// A namespace and name; either may be `""` or `*` for "any" (in selectors) or "keep" (in
/// aliases).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ServiceName {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Maistra's `nameSelector`: which services match, and an optional alias.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ServiceNameMapping {
    /// Namespace to match exactly; `""` or `*` matches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name to match exactly; `""` or `*` matches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Replacement namespace and/or name; `""` or `*` keeps that part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<ServiceName>,
}

/// A local service as listed in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ServiceKey {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
}

/// One entry of `status.exportedServices` / `status.importedServices`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerServiceMapping {
    /// The FQDN the exporting mesh sends to its peer.
    pub exported_name: String,
    pub local_service: ServiceKey,
}

/// A status condition (the shape of Maistra's unmerged MAISTRA-2518 draft plus
/// `observedGeneration`, as in `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// CamelCase condition type, e.g. `Connected`, `ImportConflict`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A locality; a zone needs a region and a subzone needs a zone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Needs `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Needs `zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subzone: Option<String>,
}
