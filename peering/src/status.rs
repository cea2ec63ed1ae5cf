//! Peer status as users see it (CRD status in Kubernetes mode, `meshfed status` in embedded
//! mode): the state, Maistra's watch fields, counts, and conditions with stable reasons.

use std::time::{SystemTime, UNIX_EPOCH};

use meshfed_core::session::PeerState;
use serde::Serialize;

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One condition: a type, whether it holds, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub last_transition_ms: u64,
}

/// The importing side's view of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
        type_: &'static str,
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

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
