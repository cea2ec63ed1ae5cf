//! Peering tokens: how mesh A hands mesh B what B needs to peer — A's gateway addresses and
//! ports, trust domain and bundle, the identities of its peering server and egress gateway,
//! and a one-time secret — without copying root certificates by hand.
//!
//! Format: `mfpt1.<base64url JSON claims>.<base64url ECDSA signature>`, signed by A's signing
//! root, which must be in the bundle the token carries. The signature catches corruption and
//! edits; like any bearer token, it must travel over a channel the operators trust.
//! A records only a hash of the secret and accepts each secret once ([`Ledger::redeem`]); B
//! refuses a token it has accepted before ([`Ledger::check_new`]). Where the ledger and peer
//! bundles are kept, and the checks run before anything is written (so a refused token stores
//! nothing), is [`crate::store`].

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meshfed_core::{Hostname, PeerName, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use crate::bundle::{self, TrustBundle};
use crate::ca::{CertificateAuthority, write_file};
use crate::svid;

const PREFIX: &str = "mfpt1";
/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Longest token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const PENDING: &str = "pending-tokens.json";
const ACCEPTED: &str = "accepted-tokens.json";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Claims {
    pub version: u32,
    /// Random token id (hex).
    pub id: String,
    /// The name the accepting mesh should give the issuer (its `ServiceMeshPeer` name).
    pub peer_name: String,
    pub trust_domain: String,
    /// Identity of the issuer's peering server.
    pub server_id: String,
    /// Identity of the issuer's egress gateway: the accepting side's `spec.security.clientID`.
    pub client_id: String,
    pub addresses: Vec<String>,
    pub discovery_port: u16,
    pub service_port: u16,
    /// The issuer's SPIFFE bundle document.
    pub bundle: serde_json::Value,
    /// One-time secret (base64url, 32 bytes).
    pub secret: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is {0} bytes; the limit is {MAX_TOKEN_BYTES}")]
    TooLarge(usize),
    #[error("not a meshfed peering token: {0}")]
    Malformed(String),
    #[error(
        "token signature does not verify against the bundle it carries: it was altered or corrupted"
    )]
    BadSignature,
    #[error("token expired at {0}")]
    Expired(svid::Timestamp),
    #[error("token field {field}: {detail}")]
    InvalidClaim { field: &'static str, detail: String },
    #[error("token {0} was already accepted here")]
    AlreadyAccepted(String),
    #[error("this secret was already redeemed")]
    Reused,
    #[error("no pending token has this secret")]
    UnknownSecret,
    #[error("token comes from this mesh's own trust domain {0}")]
    OwnTrustDomain(String),
    #[error("token lifetime {0:?} is outside 1 minute–7 days")]
    BadTtl(Duration),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("{path}: {detail}")]
    Store { path: String, detail: String },
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "TokenTooLarge",
            Self::Malformed(_) => "TokenMalformed",
            Self::BadSignature => "TokenBadSignature",
            Self::Expired(_) => "TokenExpired",
            Self::InvalidClaim { .. } => "TokenInvalidClaim",
            Self::AlreadyAccepted(_) => "TokenAlreadyAccepted",
            Self::Reused => "TokenReused",
            Self::UnknownSecret => "TokenUnknownSecret",
            Self::OwnTrustDomain(_) => "TokenOwnTrustDomain",
            Self::BadTtl(_) => "TokenBadTtl",
            Self::Ca(e) => e.reason(),
            Self::Store { .. } => "TokenStore",
        }
    }
}

/// What the issuer puts in a token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub peer_name: PeerName,
    pub server_id: SpiffeId,
    pub client_id: SpiffeId,
    pub addresses: Vec<String>,
    pub discovery_port: u16,
    pub service_port: u16,
    pub ttl: Duration,
    pub bundle_sequence: u64,
}

/// The issuer's record of a token: the secret's hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub id: String,
    pub secret_sha256: String,
    pub expires_at: i64,
    pub redeemed: bool,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| TokenError::Malformed("system random source failed".into()))?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`, lowercase hex.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// Creates a signed token; returns it and the issuer's pending record.
pub fn create(
    ca: &CertificateAuthority,
    req: &TokenRequest,
    now: SystemTime,
) -> Result<(String, Pending), TokenError> {
    if req.ttl < Duration::from_secs(60) || req.ttl > MAX_TOKEN_TTL {
        return Err(TokenError::BadTtl(req.ttl));
    }
    for (field, id) in [("serverId", &req.server_id), ("clientId", &req.client_id)] {
        if id.trust_domain() != ca.trust_domain() || !id.is_workload() {
            return Err(TokenError::InvalidClaim {
                field,
                detail: format!("{id} is not a workload of {}", ca.trust_domain()),
            });
        }
    }
    check_addresses(&req.addresses)?;
    let bundle = ca
        .bundle(req.bundle_sequence)
        .map_err(|e| TokenError::InvalidClaim {
            field: "bundle",
            detail: e.to_string(),
        })?;
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let expires_at = svid::unix_seconds(now + req.ttl);
    let claims = Claims {
        version: 1,
        id: hex(&random_bytes::<16>()?),
        peer_name: req.peer_name.to_string(),
        trust_domain: ca.trust_domain().to_string(),
        server_id: req.server_id.to_string(),
        client_id: req.client_id.to_string(),
        addresses: req.addresses.clone(),
        discovery_port: req.discovery_port,
        service_port: req.service_port,
        bundle: bundle.to_json(),
        secret: secret.clone(),
        expires_at,
    };
    let payload = serde_json::to_vec(&claims).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(payload));
    let sig = ca.sign(signed.as_bytes())?;
    let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig));
    let pending = Pending {
        id: claims.id,
        secret_sha256: sha256_hex(secret.as_bytes()),
        expires_at,
        redeemed: false,
    };
    Ok((token, pending))
}

fn check_addresses(addresses: &[String]) -> Result<(), TokenError> {
    if addresses.is_empty() || addresses.len() > 64 {
        return Err(TokenError::InvalidClaim {
            field: "addresses",
            detail: "need 1–64 addresses".into(),
        });
    }
    for a in addresses {
        if a.parse::<std::net::IpAddr>().is_err() && a.parse::<Hostname>().is_err() {
            return Err(TokenError::InvalidClaim {
                field: "addresses",
                detail: format!("{a:?} is neither an IP nor a DNS name"),
            });
        }
    }
    Ok(())
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub id: String,
    pub peer_name: PeerName,
    pub trust_domain: TrustDomain,
    pub server_id: SpiffeId,
    pub client_id: SpiffeId,
    pub addresses: Vec<String>,
    pub discovery_port: u16,
    pub service_port: u16,
    pub bundle: TrustBundle,
    pub secret: String,
    pub expires_at: i64,
}

fn claim<T: std::str::FromStr>(field: &'static str, v: &str) -> Result<T, TokenError>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| TokenError::InvalidClaim {
        field,
        detail: e.to_string(),
    })
}

/// Checks a token's form, signature, expiry and claims.
pub fn verify(token: &str, now: SystemTime) -> Result<Verified, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge(token.len()));
    }
    let mut parts = token.split('.');
    let (Some(prefix), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    if prefix != PREFIX {
        return Err(TokenError::Malformed(format!(
            "unknown prefix {:?}",
            prefix.chars().take(16).collect::<String>()
        )));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|e| TokenError::Malformed(format!("payload: {e}")))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|e| TokenError::Malformed(format!("signature: {e}")))?;
    let text = std::str::from_utf8(&payload)
        .map_err(|_| TokenError::Malformed("payload is not UTF-8".into()))?;
    let value = bundle::strict_json(text).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let claims: Claims =
        serde_json::from_value(value).map_err(|e| TokenError::Malformed(e.to_string()))?;
    if claims.version != 1 {
        return Err(TokenError::Malformed(format!(
            "unsupported version {}",
            claims.version
        )));
    }
    let trust_domain: TrustDomain = claim("trustDomain", &claims.trust_domain)?;
    let bundle_text = claims.bundle.to_string();
    let (bundle, _) = TrustBundle::from_json(trust_domain.clone(), &bundle_text).map_err(|e| {
        TokenError::InvalidClaim {
            field: "bundle",
            detail: e.to_string(),
        }
    })?;
    let signed = format!("{PREFIX}.{payload_b64}");
    if !bundle
        .roots()
        .iter()
        .any(|r| signature_ok(r, signed.as_bytes(), &sig))
    {
        return Err(TokenError::BadSignature);
    }
    if svid::unix_seconds(now) >= claims.expires_at {
        return Err(TokenError::Expired(svid::Timestamp(claims.expires_at)));
    }
    let server_id: SpiffeId = claim("serverId", &claims.server_id)?;
    let client_id: SpiffeId = claim("clientId", &claims.client_id)?;
    for (field, id) in [("serverId", &server_id), ("clientId", &client_id)] {
        if id.trust_domain() != &trust_domain || !id.is_workload() {
            return Err(TokenError::InvalidClaim {
                field,
                detail: format!("{id} is not a workload of {trust_domain}"),
            });
        }
    }
    check_addresses(&claims.addresses)?;
    if claims.discovery_port == 0 || claims.service_port == 0 {
        return Err(TokenError::InvalidClaim {
            field: "ports",
            detail: "port 0".into(),
        });
    }
    if URL_SAFE_NO_PAD.decode(&claims.secret).map(|s| s.len()) != Ok(32) {
        return Err(TokenError::InvalidClaim {
            field: "secret",
            detail: "not 32 base64url bytes".into(),
        });
    }
    Ok(Verified {
        id: claims.id,
        peer_name: claim("peerName", &claims.peer_name)?,
        trust_domain,
        server_id,
        client_id,
        addresses: claims.addresses,
        discovery_port: claims.discovery_port,
        service_port: claims.service_port,
        bundle,
        secret: claims.secret,
        expires_at: claims.expires_at,
    })
}

fn signature_ok(root: &rustls_pki_types::CertificateDer<'_>, msg: &[u8], sig: &[u8]) -> bool {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(root) else {
        return false;
    };
    let point = cert.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, sig)
        .is_ok()
}

/// The token records a mesh keeps: as issuer, a hash of every pending secret; as acceptor, the
/// ids of the tokens it accepted. Kept in the CA folder (embedded mode) or a Secret
/// (Kubernetes mode); the rules are here, so both keep them alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub pending: Vec<Pending>,
    pub accepted: Vec<String>,
}

/// How long an expired pending record is kept (so a late redemption is told it expired),
/// before the ledger drops it.
const KEEP_EXPIRED_SECS: i64 = 30 * 24 * 3600;

impl Ledger {
    /// Records a token the issuer created; records expired long ago are dropped.
    pub fn record(&mut self, pending: Pending, now: SystemTime) {
        let now = svid::unix_seconds(now);
        self.pending
            .retain(|p| now.saturating_sub(p.expires_at) < KEEP_EXPIRED_SECS);
        self.pending.push(pending);
    }

    /// Spends a secret once (the peering service, when the acceptor redeems). Returns the
    /// token id.
    pub fn redeem(&mut self, secret: &str, now: SystemTime) -> Result<String, TokenError> {
        let hash = sha256_hex(secret.as_bytes());
        let p = self
            .pending
            .iter_mut()
            .find(|p| p.secret_sha256 == hash)
            .ok_or(TokenError::UnknownSecret)?;
        if p.redeemed {
            return Err(TokenError::Reused);
        }
        if svid::unix_seconds(now) >= p.expires_at {
            return Err(TokenError::Expired(svid::Timestamp(p.expires_at)));
        }
        p.redeemed = true;
        Ok(p.id.clone())
    }

    /// Refuses a token accepted before.
    pub fn check_new(&self, id: &str) -> Result<(), TokenError> {
        if self.accepted.iter().any(|a| a == id) {
            return Err(TokenError::AlreadyAccepted(id.to_owned()));
        }
        Ok(())
    }

    /// Records an accepted token (refusing one accepted before).
    pub fn accept(&mut self, id: &str) -> Result<(), TokenError> {
        self.check_new(id)?;
        self.accepted.push(id.to_owned());
        Ok(())
    }

    /// Reads the two JSON documents a ledger is kept as (absent = empty).
    pub fn from_json(
        pending: Option<&[u8]>,
        accepted: Option<&[u8]>,
        at: &str,
    ) -> Result<Self, TokenError> {
        fn parse<T: for<'de> Deserialize<'de> + Default>(
            bytes: Option<&[u8]>,
            at: String,
        ) -> Result<T, TokenError> {
            bytes.map_or_else(
                || Ok(T::default()),
                |b| {
                    serde_json::from_slice(b).map_err(|e| TokenError::Store {
                        path: at,
                        detail: e.to_string(),
                    })
                },
            )
        }
        Ok(Self {
            pending: parse(pending, format!("{at}{PENDING}"))?,
            accepted: parse(accepted, format!("{at}{ACCEPTED}"))?,
        })
    }

    /// The two JSON documents: (`pending-tokens.json`, `accepted-tokens.json`).
    pub fn to_json(&self) -> (Vec<u8>, Vec<u8>) {
        (
            serde_json::to_vec_pretty(&self.pending).unwrap_or_default(),
            serde_json::to_vec_pretty(&self.accepted).unwrap_or_default(),
        )
    }
}

/// The file names of a ledger's two documents.
pub const LEDGER_FILES: (&str, &str) = (PENDING, ACCEPTED);

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, TokenError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TokenError::Store {
            path: path.display().to_string(),
            detail: e.to_string(),
        }),
    }
}

/// The ledger kept in a CA folder.
pub fn read_ledger(dir: &Path) -> Result<Ledger, TokenError> {
    Ledger::from_json(
        read_opt(&dir.join(PENDING))?.as_deref(),
        read_opt(&dir.join(ACCEPTED))?.as_deref(),
        &format!("{}/", dir.display()),
    )
}

/// Writes what changed of a ledger to a CA folder.
pub fn write_ledger(dir: &Path, before: &Ledger, after: &Ledger) -> Result<(), TokenError> {
    let (pending, accepted) = after.to_json();
    if before.pending != after.pending {
        write_file(&dir.join(PENDING), &pending, 0o600)?;
    }
    if before.accepted != after.accepted {
        write_file(&dir.join(ACCEPTED), &accepted, 0o600)?;
    }
    Ok(())
}
