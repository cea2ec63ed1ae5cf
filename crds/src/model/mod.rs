//! Conversion of the wire types into `meshfed-core` domain values. Each function returns the
//! converted value (skipping only what is invalid) together with every finding, so that
//! `meshfed validate` and everything that consumes the model share one set of rules.
//!
//! By kind: `peer` (ServiceMeshPeer), `sets` (ExportedServiceSet, ImportedServiceSet),
//! `mesh` (the Mesh document) with its `policy`, `traffic` and `workload` parts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use meshfed_core::export::{ExportRule, ExportSelector};
use meshfed_core::federation::Peer;
use meshfed_core::import::{ImportRule, ImportSet};
use meshfed_core::locality::Locality;
use meshfed_core::mapping::{NameMapping, Pattern, PatternError};
use meshfed_core::name::{self, NameError};
use meshfed_core::selector::{LabelSelector, RawRequirement};
use meshfed_core::traffic::{Share, TrafficPolicy};
use meshfed_core::{
    Catalog, Hostname, MeshName, Namespace, PeerName, Protocol, Service, ServicePort, SpiffeId,
    TrustDomain,
};

use crate::common::{LABEL_SELECTOR, NAME_SELECTOR, ServiceNameMapping};
use crate::diag::{FieldPath, Finding};
use crate::exports::{ExportedServiceRule, ExportedServiceSetSpec};
use crate::imports::ImportedServiceSetSpec;
use crate::mesh::MeshSpec;
use crate::peer::{DEFAULT_DISCOVERY_PORT, DEFAULT_SERVICE_PORT, ServiceMeshPeerSpec};

/// Most addresses a peer may list.
pub const MAX_ADDRESSES: usize = 64;
/// Most rules one service set may hold.
pub const MAX_RULES: usize = 1024;
/// Most services one mesh file may define.
pub const MAX_SERVICES: usize = 50_000;
/// The cluster domain when a mesh does not set one.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Findings collected while converting one object.
pub type Findings = Vec<Finding>;

pub(crate) fn name_finding(path: FieldPath, e: &NameError) -> Finding {
    Finding::error("InvalidName", path, e.to_string())
}

fn pattern_finding(path: FieldPath, e: &PatternError) -> Finding {
    let reason = if e.reason() == "PartialWildcard" {
        "PartialWildcard"
    } else {
        "InvalidName"
    };
    Finding::error(reason, path, e.to_string())
}

mod mesh;
mod peer;
mod policy;
mod sets;
mod traffic;
mod workload;

pub use mesh::*;
pub use peer::*;
use policy::*;
pub use sets::*;
use traffic::*;
use workload::*;
