//! SPIFFE X.509-SVID rules (X.509-SVID §4–5, security design §2.2), checked with
//! x509-parser: exactly one URI SAN holding a valid workload SPIFFE ID, leaf not a CA, key
//! usage present, critical and fit for TLS, EKU (if present) with both TLS purposes, a validity
//! window containing `now`, and key and signature algorithms meshfed accepts.
//!
//! [`inspect`] lists *every* rule a certificate breaks (for `meshfed trust show`);
//! [`check_leaf`] stops at the first (for handshakes).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshfed_core::id::{SpiffeId, SpiffeIdError};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Largest certificate accepted, in bytes.
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Largest chain accepted, in bytes (security design §1: chains ≤ 64 KiB).
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Deepest chain accepted, leaf and root included (§1: depth ≤ 5).
pub const MAX_CHAIN_DEPTH: usize = 5;

/// One broken SPIFFE or meshfed certificate rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidViolation {
    #[error("certificate cannot be parsed: {0}")]
    Malformed(String),
    #[error("certificate is {0} bytes; the limit is {MAX_CERT_BYTES}")]
    TooLarge(usize),
    #[error("certificate has no URI SAN, so it names no SPIFFE ID")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN {0:?} is not a spiffe:// ID")]
    NonSpiffeUri(String),
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(SpiffeIdError),
    #[error("SPIFFE ID {0} names a trust domain, not a workload")]
    NoWorkloadPath(String),
    #[error("leaf certificate has basicConstraints cA=true")]
    LeafIsCa,
    #[error("leaf certificate has no key usage extension")]
    KeyUsageMissing,
    #[error("key usage extension is not marked critical")]
    KeyUsageNotCritical,
    #[error("key usage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf key usage allows signing certificates or CRLs (keyCertSign/cRLSign)")]
    LeafCanSign,
    #[error("extended key usage lacks {0}; an SVID used for mTLS needs serverAuth and clientAuth")]
    EkuMissingPurpose(&'static str),
    #[error("certificate expired at {0}")]
    Expired(Timestamp),
    #[error("certificate is not valid before {0}")]
    NotYetValid(Timestamp),
    #[error("subject is empty but the SAN extension is not critical")]
    EmptySubjectSanNotCritical,
    #[error(
        "{0} keys are not accepted; use ECDSA P-256/P-384, Ed25519 or RSA of at least 2048 bits"
    )]
    WeakKey(String),
    #[error("signature algorithm {0} is not accepted (SHA-1 and MD5 are broken)")]
    WeakSignature(&'static str),
    #[error("signing certificate lacks basicConstraints cA=true")]
    IssuerNotCa,
    #[error("signing certificate lacks keyCertSign")]
    IssuerCannotSign,
}

impl SvidViolation {
    /// Stable CamelCase token for conditions, metrics and tests.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "MalformedCertificate",
            Self::TooLarge(_) => "CertificateTooLarge",
            Self::NoUriSan => "NoUriSan",
            Self::MultipleUriSans(_) => "MultipleUriSans",
            Self::NonSpiffeUri(_) => "NonSpiffeUri",
            Self::InvalidSpiffeId(_) => "InvalidSpiffeId",
            Self::NoWorkloadPath(_) => "NoWorkloadPath",
            Self::LeafIsCa => "LeafIsCa",
            Self::KeyUsageMissing => "KeyUsageMissing",
            Self::KeyUsageNotCritical => "KeyUsageNotCritical",
            Self::NoDigitalSignature => "NoDigitalSignature",
            Self::LeafCanSign => "LeafCanSign",
            Self::EkuMissingPurpose(_) => "EkuMissingPurpose",
            Self::Expired(_) => "Expired",
            Self::NotYetValid(_) => "NotYetValid",
            Self::EmptySubjectSanNotCritical => "EmptySubjectSanNotCritical",
            Self::WeakKey(_) => "WeakKey",
            Self::WeakSignature(_) => "WeakSignature",
            Self::IssuerNotCa => "IssuerNotCa",
            Self::IssuerCannotSign => "IssuerCannotSign",
        }
    }
}

/// Seconds since the Unix epoch, printed as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match time::OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }) {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

/// Seconds since the epoch of `t` (negative before 1970).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// What a certificate says, and every rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub spiffe_id: Option<SpiffeId>,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub is_ca: bool,
    pub key: String,
    pub signature: String,
    pub violations: Vec<SvidViolation>,
}

/// Which rules apply: a workload leaf, or a signing (CA) certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leaf,
    Signing,
}

const WEAK_SIGNATURES: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.4", "md5WithRSAEncryption"),
    ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption"),
    ("1.2.840.10045.4.1", "ecdsa-with-SHA1"),
    ("1.2.840.10040.4.3", "dsa-with-SHA1"),
];

fn key_description(cert: &X509Certificate<'_>) -> (String, Option<String>) {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => ("ECDSA P-256".into(), None),
                Some(c) if c == OID_NIST_EC_P384 => ("ECDSA P-384".into(), None),
                Some(c) => (format!("EC curve {c}"), Some(format!("EC curve {c}"))),
                None => (
                    "EC (unknown curve)".into(),
                    Some("EC keys of an unknown curve".into()),
                ),
            }
        }
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            let desc = format!("RSA {bits}");
            let weak = (bits < 2048).then(|| desc.clone());
            (desc, weak)
        }
        Ok(PublicKey::Unknown(_)) if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            ("Ed25519".into(), None)
        }
        Ok(other) => {
            let d = format!("{other:?}").chars().take(20).collect::<String>();
            (d.clone(), Some(d))
        }
        Err(e) => (format!("unparsable ({e})"), Some("unparsable".into())),
    }
}

/// Parses `der` and lists every rule it breaks for `role` at time `now`.
pub fn inspect(der: &[u8], role: Role, now: SystemTime) -> Result<Inspection, SvidViolation> {
    analyze(der, role, now, true)
}

/// The checks; `describe` also fills the human-readable fields (skipped on the handshake path).
fn analyze(
    der: &[u8],
    role: Role,
    now: SystemTime,
    describe: bool,
) -> Result<Inspection, SvidViolation> {
    if der.len() > MAX_CERT_BYTES {
        return Err(SvidViolation::TooLarge(der.len()));
    }
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidViolation::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidViolation::Malformed(format!(
            "{} bytes of trailing data",
            rest.len()
        )));
    }
    let mut v = Vec::new();
    // SAN: exactly one URI, a SPIFFE ID (the identity never comes from DNS or other SANs).
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidViolation::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .as_ref()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| {
                    if let GeneralName::URI(u) = g {
                        Some(*u)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let mut spiffe_id = None;
    match (role, uris.as_slice()) {
        (Role::Leaf, []) => v.push(SvidViolation::NoUriSan),
        (_, [one]) => {
            if !one.to_ascii_lowercase().starts_with("spiffe:") {
                v.push(SvidViolation::NonSpiffeUri((*one).to_owned()));
            } else {
                match one.parse::<SpiffeId>() {
                    Ok(id) => {
                        if role == Role::Leaf && !id.is_workload() {
                            v.push(SvidViolation::NoWorkloadPath(id.to_string()));
                        }
                        spiffe_id = Some(id);
                    }
                    Err(e) => v.push(SvidViolation::InvalidSpiffeId(e)),
                }
            }
        }
        (Role::Leaf, many) => v.push(SvidViolation::MultipleUriSans(many.len())),
        (Role::Signing, _) => {}
    }
    if cert.subject().iter_attributes().next().is_none()
        && san.as_ref().is_some_and(|s| !s.critical)
    {
        v.push(SvidViolation::EmptySubjectSanNotCritical);
    }
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidViolation::Malformed(e.to_string()))?;
    let is_ca = bc.as_ref().is_some_and(|b| b.value.ca);
    let ku = cert
        .key_usage()
        .map_err(|e| SvidViolation::Malformed(e.to_string()))?;
    match role {
        Role::Leaf => {
            if is_ca {
                v.push(SvidViolation::LeafIsCa);
            }
            match &ku {
                None => v.push(SvidViolation::KeyUsageMissing),
                Some(k) => {
                    if !k.critical {
                        v.push(SvidViolation::KeyUsageNotCritical);
                    }
                    if !k.value.digital_signature() {
                        v.push(SvidViolation::NoDigitalSignature);
                    }
                    if k.value.key_cert_sign() || k.value.crl_sign() {
                        v.push(SvidViolation::LeafCanSign);
                    }
                }
            }
            let eku = cert
                .extended_key_usage()
                .map_err(|e| SvidViolation::Malformed(e.to_string()))?;
            if let Some(e) = eku {
                // Pinned decision: no EKU is accepted; an EKU must carry both TLS purposes.
                if !e.value.server_auth {
                    v.push(SvidViolation::EkuMissingPurpose("serverAuth"));
                }
                if !e.value.client_auth {
                    v.push(SvidViolation::EkuMissingPurpose("clientAuth"));
                }
            }
        }
        Role::Signing => {
            if !is_ca {
                v.push(SvidViolation::IssuerNotCa);
            }
            if !ku.as_ref().is_some_and(|k| k.value.key_cert_sign()) {
                v.push(SvidViolation::IssuerCannotSign);
            }
        }
    }
    let not_before = Timestamp(cert.validity().not_before.timestamp());
    let not_after = Timestamp(cert.validity().not_after.timestamp());
    let now_s = unix_seconds(now);
    if now_s > not_after.0 {
        v.push(SvidViolation::Expired(not_after));
    }
    if now_s < not_before.0 {
        v.push(SvidViolation::NotYetValid(not_before));
    }
    let (key, weak_key) = key_description(&cert);
    if let Some(w) = weak_key {
        v.push(SvidViolation::WeakKey(w));
    }
    let sig_oid = cert.signature_algorithm.algorithm.to_id_string();
    let signature = match WEAK_SIGNATURES.iter().find(|(oid, _)| *oid == sig_oid) {
        Some((_, name)) => {
            v.push(SvidViolation::WeakSignature(name));
            (*name).to_owned()
        }
        None => KNOWN_SIGNATURES
            .iter()
            .find(|(oid, _)| *oid == sig_oid)
            .map_or(sig_oid, |(_, n)| (*n).to_owned()),
    };
    let text = |f: &dyn Fn() -> String| if describe { f() } else { String::new() };
    Ok(Inspection {
        spiffe_id,
        subject: text(&|| cert.subject().to_string()),
        issuer: text(&|| cert.issuer().to_string()),
        serial: text(&|| cert.raw_serial_as_string()),
        not_before,
        not_after,
        is_ca,
        key,
        signature,
        violations: v,
    })
}

const KNOWN_SIGNATURES: &[(&str, &str)] = &[
    ("1.2.840.10045.4.3.2", "ecdsa-with-SHA256"),
    ("1.2.840.10045.4.3.3", "ecdsa-with-SHA384"),
    ("1.2.840.113549.1.1.11", "sha256WithRSAEncryption"),
    ("1.2.840.113549.1.1.12", "sha384WithRSAEncryption"),
    ("1.2.840.113549.1.1.10", "rsassa-pss"),
    ("1.3.101.112", "ed25519"),
];

/// Checks a workload leaf; returns its SPIFFE ID or the first rule it breaks.
pub fn check_leaf(der: &[u8], now: SystemTime) -> Result<SpiffeId, SvidViolation> {
    let inspection = analyze(der, Role::Leaf, now, false)?;
    if let Some(v) = inspection.violations.into_iter().next() {
        return Err(v);
    }
    inspection.spiffe_id.ok_or(SvidViolation::NoUriSan)
}

/// The SPIFFE ID in a leaf's single URI SAN, without any other check.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, SvidViolation> {
    inspect(der, Role::Leaf, UNIX_EPOCH + Duration::from_secs(0))
        .and_then(|i| i.spiffe_id.ok_or(SvidViolation::NoUriSan))
}
