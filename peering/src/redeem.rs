//! Redeeming a peering token at the issuer: the accepting mesh calls the issuer's peering
//! endpoint with server-authenticated TLS (it trusts the issuer's bundle from the token and
//! expects the issuer's peering-server identity), presents no certificate — the issuer does not
//! know its domain yet — and sends the one-time secret with its own bundle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_api::peering::peering_client::PeeringClient;
use meshfed_api::peering::{RedeemRequest, RedeemResponse};
use meshfed_core::SpiffeId;
use meshfed_trust::TrustBundle;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{self, Expect, SpiffeServerVerifier};

/// Why a redemption failed: a reason token and detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct RedeemError {
    pub reason: String,
    pub detail: String,
}

/// Calls `Redeem` on the issuer at `addr`, which must present `server_id` under `issuer_bundle`.
pub async fn redeem(
    addr: SocketAddr,
    server_id: SpiffeId,
    issuer_bundle: TrustBundle,
    request: RedeemRequest,
    timeout: Duration,
) -> Result<RedeemResponse, RedeemError> {
    let provider = verify::provider();
    let mut set = TrustBundleSet::new();
    set.insert(issuer_bundle).map_err(|e| RedeemError {
        reason: e.reason().into(),
        detail: e.to_string(),
    })?;
    let verifier =
        SpiffeServerVerifier::new(verify::shared(set), Expect::id(server_id), provider.clone());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RedeemError {
            reason: "Tls".into(),
            detail: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let channel = crate::tls::connect(addr, Arc::new(config), timeout)
        .await
        .map_err(|e| RedeemError {
            reason: e.reason,
            detail: e.detail,
        })?;
    let mut client = PeeringClient::new(channel).max_decoding_message_size(1 << 20);
    let response = tokio::time::timeout(timeout, client.redeem(request))
        .await
        .map_err(|_| RedeemError {
            reason: "GatewayUnreachable".into(),
            detail: "no answer in time".into(),
        })?
        .map_err(|s| RedeemError {
            reason: crate::reason::reason_of(&s).unwrap_or("Refused").to_owned(),
            detail: crate::reason::detail_of(&s).to_owned(),
        })?;
    Ok(response.into_inner())
}
