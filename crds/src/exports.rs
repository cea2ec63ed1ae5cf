//! `ExportedServiceSet`: which local services one peer may see. Its name is the peer's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, PeerServiceMapping, ServiceNameMapping};

/// Ordered export rules for the peer named like this object; the first matching rule decides.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "federation.maistra.io",
    version = "v1",
    kind = "ExportedServiceSet",
    plural = "exportedservicesets",
    namespaced,
    status = "ExportedServiceSetStatus",
    doc = "ExportedServiceSet lists which local services the peer named like this object may see, and under which names."
)]
#[serde(rename_all = "camelCase")]
pub struct ExportedServiceSetSpec {
    /// Empty or absent: nothing is exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_rules: Option<Vec<ExportedServiceRule>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedServiceRule {
    /// `NameSelector` or `LabelSelector`.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_selector: Option<ServiceNameMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<ServiceLabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ServiceLabelSelector {
    /// `""` or `*`: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Matched against the Service's labels; empty or absent matches all (Maistra: every
    /// service of the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Ordered renames; the first fitting entry applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<ServiceNameMapping>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedServiceSetStatus {
    pub exported_services: Vec<PeerServiceMapping>,
    /// meshfed's addition: conditions with stable reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}
