//! Kubernetes wire types for meshfed: the three `federation.maistra.io/v1` CRDs
//! (field-for-field compatible with OpenShift Service Mesh 2 federation, plus
//! `status.conditions`), the embedded-mode `Mesh` kind, CRD manifest generation, and
//! validation of multi-document YAML that reports file, document, line, field path, reason
//! and hint for every problem.
//!
//! Conversion into `meshfed-core`'s domain types happens here, one way ([`model`]).
//! This crate does no network I/O.

pub mod common;
pub mod diag;
pub mod exports;
pub mod imports;
pub mod manifests;
pub mod mesh;
pub mod model;
pub mod peer;
pub mod scenario;
pub mod schema;
pub mod validate;
pub mod yaml;

pub use exports::{ExportedServiceSet, ExportedServiceSetSpec};
pub use imports::{ImportedServiceSet, ImportedServiceSetSpec};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
pub use mesh::{Mesh, MeshSpec};
pub use peer::{ServiceMeshPeer, ServiceMeshPeerSpec};

/// API version of the federation CRDs.
pub const FEDERATION_API_VERSION: &str = "federation.maistra.io/v1";
/// API version of meshfed's embedded-mode kinds.
pub const MESHFED_API_VERSION: &str = "meshfed.io/v1alpha1";
