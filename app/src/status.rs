//! Reading a running component's status from its admin endpoint (`meshfed status`): a
//! control plane's `/status` carries the peering node's under `peering`, `meshfed peering
//! run`'s is the node's own. Both are read typed.

use std::net::SocketAddr;
use std::time::Duration;

pub use meshfed_control::server::{AdminStatus, ControlStatus, ProxyStatus, StatusCell};
pub use meshfed_peering::status::{
    Condition, ConditionType, ExportSide, ImportSide, NodeStatus, PeerStatus, Refusal, unix_ms,
};
use meshfed_proxy::admin::GetError;

/// Why a status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "reading status from {addr} (is `meshfed peering run` or `meshfed control --peering` running?): {source}"
    )]
    Get { addr: SocketAddr, source: GetError },
    #[error("this control plane runs no peering (start it with --peering)")]
    NoPeering,
    #[error("the admin endpoint sent a status this meshfed does not read: {0}")]
    Unreadable(serde_json::Error),
}

impl StatusError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Get { .. } => "Unreachable",
            Self::NoPeering => "NoPeering",
            Self::Unreadable(_) => "UnreadableStatus",
        }
    }
}

/// The peering status served on the admin endpoint `addr`.
pub async fn fetch(addr: SocketAddr, timeout: Duration) -> Result<NodeStatus, StatusError> {
    let body = meshfed_proxy::admin::get(addr, "/status", timeout)
        .await
        .map_err(|source| StatusError::Get { addr, source })?;
    parse(&body)
}

/// A peering node's status from the body of an admin endpoint's `/status`.
pub fn parse(body: &str) -> Result<NodeStatus, StatusError> {
    if let Ok(cp) = serde_json::from_str::<AdminStatus>(body)
        && let Some(p) = cp.peering
    {
        return Ok(p);
    }
    match serde_json::from_str::<NodeStatus>(body) {
        Ok(st) => Ok(st),
        Err(_) if serde_json::from_str::<AdminStatus>(body).is_ok() => Err(StatusError::NoPeering),
        Err(e) => Err(StatusError::Unreadable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_control_planes_status_and_a_nodes_own() {
        let node = NodeStatus {
            mesh: "alpha".into(),
            ..NodeStatus::default()
        };
        let own = serde_json::to_string(&node).unwrap_or_default();
        assert_eq!(parse(&own).map(|s| s.mesh).ok(), Some("alpha".into()));
        let cp = AdminStatus {
            peering: Some(node),
            ..AdminStatus::default()
        };
        let cp = serde_json::to_string(&cp).unwrap_or_default();
        assert_eq!(parse(&cp).map(|s| s.mesh).ok(), Some("alpha".into()));
        let without = serde_json::to_string(&AdminStatus::default()).unwrap_or_default();
        assert_eq!(
            parse(&without).map_err(|e| e.reason()).err(),
            Some("NoPeering")
        );
        assert_eq!(
            parse("[]").map_err(|e| e.reason()).err(),
            Some("UnreadableStatus")
        );
    }
}
