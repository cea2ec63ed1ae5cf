//! Trust bundles: the roots of one trust domain (several during a rotation) with a sequence
//! number, in the SPIFFE bundle format (an RFC 7517 JWK set with `spiffe_sequence` and
//! `spiffe_refresh_hint`), and the per-domain [`TrustBundleSet`]. Bundles are never merged:
//! each domain's roots verify only that domain's identities.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use meshfed_core::TrustDomain;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use x509_parser::public_key::PublicKey;

use crate::svid::{self, Role};

/// Refresh hint when a bundle has none (SPIFFE bundle §4).
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
/// Smallest and largest refresh hints accepted; others are clamped.
pub const MIN_REFRESH_HINT: Duration = Duration::from_secs(10);
pub const MAX_REFRESH_HINT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest bundle document accepted.
pub const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// Most roots one bundle may hold.
pub const MAX_ROOTS: usize = 32;

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {0} bytes; the limit is {MAX_BUNDLE_BYTES}")]
    TooLarge(usize),
    #[error("bundle is not valid JSON: {0}")]
    Json(String),
    #[error("bundle field {0:?} appears twice")]
    DuplicateKey(String),
    #[error("bundle has no \"keys\" array")]
    MissingKeys,
    #[error("bundle field {field:?}: {detail}")]
    BadField { field: &'static str, detail: String },
    #[error("bundle for {0} has no usable x509-svid root")]
    NoRoots(String),
    #[error("bundle holds more than {MAX_ROOTS} roots")]
    TooManyRoots,
    #[error("root {index}: {detail}")]
    BadRoot { index: usize, detail: String },
    #[error("bundle for {domain} has sequence {got}, not above the current {current}")]
    Stale {
        domain: String,
        got: u64,
        current: u64,
    },
    #[error("bundle for {domain} reuses sequence {sequence} with different roots")]
    SequenceReused { domain: String, sequence: u64 },
    #[error("a root of {0} is also a root of {1}; each trust domain needs its own roots")]
    RootInTwoDomains(String, String),
}

impl BundleError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "BundleTooLarge",
            Self::Json(_) => "BundleJson",
            Self::DuplicateKey(_) => "BundleDuplicateKey",
            Self::MissingKeys => "BundleMissingKeys",
            Self::BadField { .. } => "BundleBadField",
            Self::NoRoots(_) => "BundleNoRoots",
            Self::TooManyRoots => "BundleTooManyRoots",
            Self::BadRoot { .. } => "BundleBadRoot",
            Self::Stale { .. } => "BundleStale",
            Self::SequenceReused { .. } => "BundleSequenceReused",
            Self::RootInTwoDomains(..) => "RootInTwoDomains",
        }
    }
}

/// A peer's copy of our bundle does not hold the root that signs our SVIDs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bundle {trust_domain} (sequence {sequence}) lacks the root that signs current SVIDs; publish it before signing with it"
)]
pub struct RotationWarning {
    pub trust_domain: String,
    pub sequence: u64,
}

impl RotationWarning {
    pub const REASON: &'static str = "BundleLacksSigningRoot";
}

/// The roots of one trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    /// Validity window of each root (seconds since the epoch), parallel to `anchors`.
    validity: Vec<(i64, i64)>,
    /// Each root's pathLenConstraint, parallel to `anchors` (webpki ignores it on anchors).
    path_len: Vec<Option<u32>>,
    pub sequence: u64,
    pub refresh_hint: Duration,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("roots", &self.roots.len())
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain
            && self.roots == other.roots
            && self.sequence == other.sequence
    }
}

impl TrustBundle {
    /// A bundle of `roots`, each of which must be a CA certificate able to sign.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
        sequence: u64,
    ) -> Result<Self, BundleError> {
        if roots.len() > MAX_ROOTS {
            return Err(BundleError::TooManyRoots);
        }
        let mut anchors = Vec::new();
        let mut validity = Vec::new();
        let mut path_len = Vec::new();
        for (index, r) in roots.iter().enumerate() {
            let ins = svid::inspect(r, Role::Signing, SystemTime::UNIX_EPOCH).map_err(|e| {
                BundleError::BadRoot {
                    index,
                    detail: e.to_string(),
                }
            })?;
            validity.push((ins.not_before.0, ins.not_after.0));
            path_len.push(
                x509_parser::parse_x509_certificate(r)
                    .ok()
                    .and_then(|(_, c)| {
                        c.basic_constraints()
                            .ok()
                            .flatten()
                            .and_then(|b| b.value.path_len_constraint)
                    }),
            );
            if let Some(v) = ins
                .violations
                .iter()
                .find(|v| !matches!(v, svid::SvidViolation::NotYetValid(_)))
            {
                return Err(BundleError::BadRoot {
                    index,
                    detail: v.to_string(),
                });
            }
            let anchor = webpki::anchor_from_trusted_cert(r)
                .map_err(|e| BundleError::BadRoot {
                    index,
                    detail: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(anchor);
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
            validity,
            path_len,
            sequence,
            refresh_hint: DEFAULT_REFRESH_HINT,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Rotation safety: `Err` when this bundle (as a peer holds it) lacks the root that signs
    /// our current SVIDs, so the peer would refuse them (`BundleLacksSigningRoot`).
    pub fn check_signing_root(
        &self,
        signing_root: &CertificateDer<'_>,
    ) -> Result<(), RotationWarning> {
        if self.contains(signing_root) {
            Ok(())
        } else {
            Err(RotationWarning {
                trust_domain: self.trust_domain.to_string(),
                sequence: self.sequence,
            })
        }
    }

    /// webpki trust anchors of this bundle only.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The pathLenConstraint of the root whose public key is `spki` (DER of the key info).
    pub fn path_len_of(&self, spki: &[u8]) -> Option<u32> {
        self.anchors
            .iter()
            .zip(&self.path_len)
            .find(|(a, _)| a.subject_public_key_info.as_ref() == spki)
            .and_then(|(_, p)| *p)
    }

    /// The anchors whose root certificate is valid at `now` (seconds since the epoch).
    /// webpki ignores an anchor's validity, so an expired root must be left out here.
    pub fn anchors_valid_at(&self, now: i64) -> Vec<TrustAnchor<'static>> {
        self.anchors
            .iter()
            .zip(&self.validity)
            .filter(|(_, (nb, na))| *nb <= now && now <= *na)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// True when `root` (DER) is one of this bundle's roots.
    pub fn contains(&self, root: &CertificateDer<'_>) -> bool {
        self.roots.iter().any(|r| r.as_ref() == root.as_ref())
    }

    /// The SPIFFE bundle document (JWK set).
    pub fn to_json(&self) -> Value {
        let keys: Vec<Value> = self.roots.iter().map(|r| jwk_for(r)).collect();
        json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint.as_secs(),
        })
    }

    /// The trust domain named by the roots of a bundle document (their `spiffe://<td>` URI
    /// SAN), when the document itself does not say.
    pub fn domain_hint(text: &str) -> Option<TrustDomain> {
        let doc = strict_json(text).ok()?;
        doc["keys"].as_array()?.iter().find_map(|k| {
            let der = STANDARD.decode(k["x5c"][0].as_str()?).ok()?;
            svid::inspect(&der, Role::Signing, SystemTime::UNIX_EPOCH)
                .ok()?
                .spiffe_id
                .map(|id| id.trust_domain().clone())
        })
    }

    /// Parses a SPIFFE bundle document for `trust_domain`. Keys that are not usable X.509
    /// roots are skipped and listed in the returned warnings, as the format requires.
    pub fn from_json(
        trust_domain: TrustDomain,
        text: &str,
    ) -> Result<(Self, Vec<String>), BundleError> {
        if text.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(text.len()));
        }
        let doc = strict_json(text)?;
        let Value::Object(obj) = doc else {
            return Err(BundleError::Json(
                "the document is not a JSON object".into(),
            ));
        };
        let keys = match obj.get("keys") {
            Some(Value::Array(k)) => k,
            Some(_) => {
                return Err(BundleError::BadField {
                    field: "keys",
                    detail: "not an array".into(),
                });
            }
            None => return Err(BundleError::MissingKeys),
        };
        let sequence = match obj.get("spiffe_sequence") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| BundleError::BadField {
                field: "spiffe_sequence",
                detail: "must be a non-negative integer".into(),
            })?,
        };
        let mut warnings = Vec::new();
        let refresh_hint = match obj.get("spiffe_refresh_hint") {
            None => DEFAULT_REFRESH_HINT,
            Some(v) => {
                match v.as_i64() {
                    Some(s) if s > 0 => {
                        let d = Duration::from_secs(u64::try_from(s).unwrap_or(u64::MAX));
                        if d < MIN_REFRESH_HINT || d > MAX_REFRESH_HINT {
                            warnings.push(format!("spiffe_refresh_hint {s} clamped"));
                        }
                        d.clamp(MIN_REFRESH_HINT, MAX_REFRESH_HINT)
                    }
                    _ => {
                        warnings.push(format!("spiffe_refresh_hint {v} is not a positive number of seconds; using {}s", DEFAULT_REFRESH_HINT.as_secs()));
                        DEFAULT_REFRESH_HINT
                    }
                }
            }
        };
        let mut roots = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match root_from_jwk(k) {
                Ok(Some(r)) => roots.push(r),
                Ok(None) => {}
                Err(why) => warnings.push(format!("keys[{i}] skipped: {why}")),
            }
        }
        if roots.is_empty() && !keys.is_empty() {
            warnings.push(format!(
                "no usable x509-svid key: every SVID of {trust_domain} is invalid"
            ));
        }
        let mut b = Self::new(trust_domain, roots, sequence)?;
        b.refresh_hint = refresh_hint;
        Ok((b, warnings))
    }
}

/// Why a bundle key was skipped (a warning, not an error: the other keys still count).
#[derive(Debug)]
struct SkippedKey(String);

impl std::fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn root_from_jwk(k: &Value) -> Result<Option<CertificateDer<'static>>, SkippedKey> {
    let Value::Object(k) = k else {
        return Err(SkippedKey("not an object".into()));
    };
    if k.get("kty").and_then(Value::as_str).is_none() {
        return Err(SkippedKey("no kty".into()));
    }
    match k.get("use").and_then(Value::as_str) {
        Some("x509-svid") => {}
        Some("jwt-svid") => return Ok(None),
        Some(other) => return Err(SkippedKey(format!("unknown use {other:?}"))),
        None => return Err(SkippedKey("no use".into())),
    }
    if k.contains_key("kid") {
        return Err(SkippedKey("an x509-svid key has no kid".into()));
    }
    let first = match k.get("x5c") {
        Some(Value::Array(a)) if !a.is_empty() => a[0]
            .as_str()
            .ok_or_else(|| SkippedKey("x5c[0] is not a string".into()))?,
        _ => return Err(SkippedKey("x5c missing or empty".into())),
    };
    let der = STANDARD
        .decode(first)
        .map_err(|e| SkippedKey(format!("x5c[0] is not base64: {e}")))?;
    let cert = CertificateDer::from(der);
    let ins = svid::inspect(&cert, Role::Signing, SystemTime::UNIX_EPOCH)
        .map_err(|e| SkippedKey(e.to_string()))?;
    if let Some(v) = ins.violations.iter().find(|v| {
        matches!(
            v,
            svid::SvidViolation::IssuerNotCa | svid::SvidViolation::IssuerCannotSign
        )
    }) {
        return Err(SkippedKey(format!("x5c[0] is not a CA: {v}")));
    }
    Ok(Some(cert))
}

fn jwk_for(root: &CertificateDer<'_>) -> Value {
    let mut m = Map::new();
    m.insert("use".into(), "x509-svid".into());
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(root) {
        match cert.public_key().parsed() {
            Ok(PublicKey::EC(point)) => {
                let data = point.data();
                let n = (data.len().saturating_sub(1)) / 2;
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), if n == 48 { "P-384" } else { "P-256" }.into());
                if data.first() == Some(&4) && data.len() == 1 + 2 * n {
                    m.insert("x".into(), URL_SAFE_NO_PAD.encode(&data[1..=n]).into());
                    m.insert("y".into(), URL_SAFE_NO_PAD.encode(&data[1 + n..]).into());
                }
            }
            Ok(PublicKey::RSA(rsa)) => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), URL_SAFE_NO_PAD.encode(rsa.modulus).into());
                m.insert("e".into(), URL_SAFE_NO_PAD.encode(rsa.exponent).into());
            }
            _ => {
                m.insert("kty".into(), "OKP".into());
            }
        }
    }
    m.insert("x5c".into(), json!([STANDARD.encode(root.as_ref())]));
    Value::Object(m)
}

/// What [`TrustBundleSet::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Added,
    Updated,
    Unchanged,
}

/// One bundle per trust domain; a domain's roots verify only that domain's identities.
#[derive(Debug, Clone, Default)]
pub struct TrustBundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustBundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, td: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(td)
    }

    pub fn domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// Adds or replaces a domain's bundle. A lower sequence is refused as stale; the same
    /// sequence with other roots is refused; a root shared with another domain is refused.
    pub fn insert(&mut self, bundle: TrustBundle) -> Result<Applied, BundleError> {
        for (td, other) in &self.bundles {
            if td != bundle.trust_domain() && bundle.roots.iter().any(|r| other.contains(r)) {
                return Err(BundleError::RootInTwoDomains(
                    bundle.trust_domain.to_string(),
                    td.to_string(),
                ));
            }
        }
        let applied = match self.bundles.get(&bundle.trust_domain) {
            None => Applied::Added,
            Some(cur) if cur.roots == bundle.roots => {
                if bundle.sequence < cur.sequence {
                    return Err(BundleError::Stale {
                        domain: bundle.trust_domain.to_string(),
                        got: bundle.sequence,
                        current: cur.sequence,
                    });
                }
                Applied::Unchanged
            }
            Some(cur) if bundle.sequence == cur.sequence => {
                return Err(BundleError::SequenceReused {
                    domain: bundle.trust_domain.to_string(),
                    sequence: bundle.sequence,
                });
            }
            Some(cur) if bundle.sequence < cur.sequence => {
                return Err(BundleError::Stale {
                    domain: bundle.trust_domain.to_string(),
                    got: bundle.sequence,
                    current: cur.sequence,
                });
            }
            Some(_) => Applied::Updated,
        };
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
        Ok(applied)
    }

    /// Removes a domain (ending a relationship drops its bundle).
    pub fn remove(&mut self, td: &TrustDomain) -> Option<TrustBundle> {
        self.bundles.remove(td)
    }
}

/// Parses JSON, refusing duplicate object keys anywhere (serde_json keeps the last one
/// silently), and bounding nesting.
pub fn strict_json(text: &str) -> Result<Value, BundleError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = StrictValue::deserialize(&mut de).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("duplicate key ") {
            Some(rest) => BundleError::DuplicateKey(
                rest.split(" at line")
                    .next()
                    .unwrap_or(rest)
                    .trim_matches('"')
                    .to_owned(),
            ),
            None => BundleError::Json(msg),
        }
    })?;
    de.end().map_err(|e| BundleError::Json(e.to_string()))?;
    Ok(v.0)
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictValue(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            let StrictValue(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}
