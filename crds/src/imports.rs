//! `ImportedServiceSet`: which of one peer's exports this mesh imports, and under what names.
//! Its name is the exporting peer's.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Locality, PeerServiceMapping, ServiceNameMapping};

/// Ordered import rules for the peer named like this object; the first matching rule decides.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "federation.maistra.io",
    version = "v1",
    kind = "ImportedServiceSet",
    plural = "importedservicesets",
    namespaced,
    status = "ImportedServiceSetStatus",
    doc = "ImportedServiceSet lists which of the exports of the peer named like this object are imported, and under which local names."
)]
#[serde(rename_all = "camelCase")]
pub struct ImportedServiceSetSpec {
    /// Suffix for imported hostnames; default `svc.<peer>-imports.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_suffix: Option<String>,
    /// Locality of every service imported from this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    /// Empty or absent: nothing is imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_rules: Option<Vec<ImportedServiceRule>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedServiceRule {
    /// Per-rule hostname suffix; overrides `spec.domainSuffix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_suffix: Option<String>,
    /// Import under the local cluster domain and merge with the local service of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_as_local: Option<bool>,
    /// Only `NameSelector` is supported.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_selector: Option<ServiceNameMapping>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedServiceSetStatus {
    pub imported_services: Vec<PeerServiceMapping>,
    /// meshfed's addition: conditions with stable reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}
