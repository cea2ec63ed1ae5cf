//! Peer status as users see it (CRD status in Kubernetes mode, `meshfed status` in embedded
//! mode): the state, Maistra's watch fields, counts, and conditions with stable reasons.
//!
//! These types are the one shape of the peering node's status: the admin endpoint serves them
//! as JSON, and the control plane's `/status`, the Kubernetes status writer, the lab, the
//! scenario assertions and `meshfed status` read them back typed — a renamed field is a
//! compile error there, not a silently empty status.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use meshfed_core::session::PeerState;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The kinds of condition a peer's status carries (the `type` of a CRD condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConditionType {
    /// The peering stream is up (`False` with why it is not).
    Connected,
    /// Imports are kept but may be out of date.
    Stale,
    /// The peer's last snapshot or delta was refused (NACKed).
    ImportRejected,
    /// The peer's trust bundle received over the stream was refused.
    TrustBundleRejected,
    /// The peer's health summary was refused.
    HealthRejected,
    /// Two of the peer's exports claim one local name, or one would shadow a local service.
    ImportConflict,
    /// Some of the peer's exports match no import rule.
    ExportNotImported,
}

impl ConditionType {
    /// The name Kubernetes status and the JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "Connected",
            Self::Stale => "Stale",
            Self::ImportRejected => "ImportRejected",
            Self::TrustBundleRejected => "TrustBundleRejected",
            Self::HealthRejected => "HealthRejected",
            Self::ImportConflict => "ImportConflict",
            Self::ExportNotImported => "ExportNotImported",
        }
    }

    /// Conditions that come from applying our `ImportedServiceSet`'s rules (they go on that
    /// set's status as well as on the `ServiceMeshPeer`'s).
    pub fn is_import_rule(self) -> bool {
        matches!(self, Self::ImportConflict | Self::ExportNotImported)
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition: a type, whether it holds, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub last_transition_ms: u64,
}

/// The importing side's view of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub peer: String,
    pub state: PeerState,
    pub connected: bool,
    pub last_connected_ms: Option<u64>,
    /// Last snapshot or delta received.
    pub last_event_ms: Option<u64>,
    pub last_full_sync_ms: Option<u64>,
    pub last_disconnect_ms: Option<u64>,
    pub last_disconnect_reason: Option<String>,
    pub last_heartbeat_ms: Option<u64>,
    /// The exporter version we hold.
    pub imported_version: Option<u64>,
    pub imported_services: usize,
    /// Sequence of the peer's trust bundle received over the stream.
    pub peer_bundle_sequence: Option<u64>,
    /// Imports are kept but may be out of date (peer silent, or restored from the store).
    pub stale: bool,
    pub conditions: Vec<Condition>,
}

/// A peering node's status: what `/status` of `meshfed peering run` serves, and what the
/// control plane's `/status` carries under `peering`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub mesh: String,
    pub trust_domain: String,
    /// Where the peering endpoint listens.
    pub listen: String,
    /// Per peer we import from, by peer name order.
    pub imports: Vec<ImportSide>,
    /// Per peer we export to, by peer name.
    pub exports: BTreeMap<String, ExportSide>,
    /// Recent refused connections and streams (at most [`NodeStatus::MAX_REFUSED`], newest
    /// last).
    pub refused: Vec<Refusal>,
}

impl NodeStatus {
    /// How many refusals the status keeps.
    pub const MAX_REFUSED: usize = 20;

    /// Our import from `peer`, if we import from it.
    pub fn import(&self, peer: &str) -> Option<&ImportSide> {
        self.imports.iter().find(|i| i.status.peer == peer)
    }

    /// Notes a refusal, keeping the newest [`NodeStatus::MAX_REFUSED`].
    pub fn push_refused(&mut self, r: Refusal) {
        if self.refused.len() >= Self::MAX_REFUSED {
            self.refused.remove(0);
        }
        self.refused.push(r);
    }
}

/// A refused connection or stream: who (a SPIFFE ID, or an address before the handshake
/// finished) and the stable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub from: String,
    pub reason: String,
}

/// The importer side of one peer: the importer's status and what the peer's exports became
/// here (`ImportedServiceSet.status.importedServices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportSide {
    #[serde(flatten)]
    pub status: PeerStatus,
    pub services: Vec<ListedService>,
}

/// The exporter side of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSide {
    /// Some replica of the peer's control plane streams our exports.
    pub connected: bool,
    /// The peer's control-plane replicas streaming now (pod names; `""` for a peer that
    /// names none).
    #[serde(default)]
    pub replicas: std::collections::BTreeSet<String>,
    pub last_acked_version: Option<u64>,
    pub last_close_reason: Option<String>,
    pub last_nack_reason: Option<String>,
    pub exported_services: usize,
    /// What is exported to the peer (`ExportedServiceSet.status.exportedServices`).
    pub services: Vec<ListedService>,
}

/// A service as the service sets' status lists it: the exported name and the local service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedService {
    pub exported_name: String,
    /// Empty for an export of the peer that no import rule matched (as Maistra lists it).
    pub local_service: LocalService,
}

/// The local side of a listed service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
}

impl ListedService {
    /// `exported`, with the local service it is (or became), if any.
    pub fn new(
        exported: &meshfed_core::Hostname,
        local: Option<(&meshfed_core::ServiceKey, &meshfed_core::Hostname)>,
    ) -> Self {
        Self {
            exported_name: exported.to_string(),
            local_service: local.map_or_else(LocalService::default, |(key, host)| LocalService {
                name: key.name.to_string(),
                namespace: key.namespace.to_string(),
                hostname: host.to_string(),
            }),
        }
    }
}

impl PeerStatus {
    pub fn new(peer: &str) -> Self {
        Self {
            peer: peer.to_owned(),
            state: PeerState::Pending,
            connected: false,
            last_connected_ms: None,
            last_event_ms: None,
            last_full_sync_ms: None,
            last_disconnect_ms: None,
            last_disconnect_reason: None,
            last_heartbeat_ms: None,
            imported_version: None,
            imported_services: 0,
            peer_bundle_sequence: None,
            stale: false,
            conditions: Vec::new(),
        }
    }

    /// Sets a condition, keeping its transition time when nothing changed.
    pub fn set_condition(
        &mut self,
        type_: ConditionType,
        status: bool,
        reason: &str,
        message: &str,
        now_ms: u64,
    ) {
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status || c.reason != reason {
                    c.last_transition_ms = now_ms;
                }
                c.status = status;
                c.reason = reason.to_owned();
                c.message = message.to_owned();
            }
            None => self.conditions.push(Condition {
                type_,
                status,
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_ms: now_ms,
            }),
        }
    }

    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
