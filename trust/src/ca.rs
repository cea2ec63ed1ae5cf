//! The mesh certificate authority: one or more roots (the first signs; the others are kept
//! during a rotation), workload SVID issuance from CSRs, and persistence in a directory with
//! private keys readable by the owner only.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshfed_core::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use serde::{Deserialize, Serialize};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundle;
use crate::svid::{self, Role};

/// Default workload SVID lifetime.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest workload SVID lifetime the CA issues.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default root lifetime.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Back-dating of `notBefore`, to tolerate clock skew between meshes.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating a certificate failed: {0}")]
    Generate(String),
    #[error("CSR rejected: {0}")]
    InvalidCsr(String),
    #[error(
        "CSR must carry exactly one URI SAN, the caller's SPIFFE ID {expected}; it carries {found}"
    )]
    CsrIdentity { expected: String, found: String },
    #[error("{what}: SVID lifetime {ttl:?} is outside 1 minute–{MAX_SVID_TTL:?}")]
    BadTtl { what: &'static str, ttl: Duration },
    #[error("SPIFFE ID {0} is not in this CA's trust domain {1}")]
    ForeignId(String, String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{0} already holds a CA; pass --force to replace it")]
    Exists(PathBuf),
}

impl CaError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Generate(_) => "CertificateGeneration",
            Self::InvalidCsr(_) => "InvalidCsr",
            Self::CsrIdentity { .. } => "CsrIdentityMismatch",
            Self::BadTtl { .. } => "BadTtl",
            Self::ForeignId(..) => "ForeignTrustDomain",
            Self::Io { .. } => "StoreIo",
            Self::Corrupt { .. } => "StoreCorrupt",
            Self::Exists(_) => "AlreadyInitialized",
        }
    }
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(svid::unix_seconds(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros; serials then still differ by the fallback below.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes.copy_from_slice(&nanos.to_be_bytes());
    }
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from(bytes.to_vec())
}

/// A workload credential: its SPIFFE ID, certificate chain (leaf first, no root) and key.
#[derive(Clone)]
pub struct Svid {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    pub fn new(
        id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Self {
        Self {
            id,
            chain,
            key_pkcs8,
            not_before,
            not_after,
        }
    }

    /// The private key, for a rustls config.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// True once half the lifetime has passed: renew then, well before expiry.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        now >= self.not_before + life / 2
    }

    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.key_pkcs8)
    }
}

/// PEM-encodes DER with a label.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Generates a key pair and a CSR for `id`, as a workload does; the key never leaves it.
pub fn workload_csr(
    id: &SpiffeId,
) -> Result<(KeyPair, CertificateSigningRequestDer<'static>), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(gen_err)?)];
    let csr = params.serialize_request(&key).map_err(gen_err)?;
    Ok((key, csr.der().clone()))
}

struct Root {
    name: String,
    cert: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A mesh CA. `roots[0]` signs; older roots stay trusted until retired.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    roots: Vec<Root>,
    generation: u32,
    /// Rises on every change of the root set; the bundle's `spiffe_sequence`.
    sequence: u64,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain.as_str())
            .field(
                "roots",
                &self
                    .roots
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    version: u32,
    trust_domain: String,
    generation: u32,
    #[serde(default)]
    sequence: u64,
    /// Root names, the signing root first.
    roots: Vec<String>,
}

const MANIFEST: &str = "ca.json";

fn root_params(
    td: &TrustDomain,
    generation: u32,
    now: SystemTime,
    ttl: Duration,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshfed");
    dn.push(DnType::CommonName, format!("{td} root {generation}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{td}").try_into().map_err(gen_err)?,
    )];
    p.not_before = offset(now - BACKDATE);
    p.not_after = offset(now + ttl);
    p.serial_number = Some(random_serial());
    Ok(p)
}

impl CertificateAuthority {
    /// A new CA with one freshly generated ECDSA P-256 root.
    pub fn new(trust_domain: TrustDomain, now: SystemTime) -> Result<Self, CaError> {
        let mut ca = Self {
            trust_domain,
            roots: Vec::new(),
            generation: 0,
            sequence: 0,
        };
        ca.rotate(now)?;
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Adds a new root that signs from now on; the old ones stay trusted until [`Self::retire`].
    pub fn rotate(&mut self, now: SystemTime) -> Result<(), CaError> {
        self.generation += 1;
        let params = root_params(&self.trust_domain, self.generation, now, DEFAULT_ROOT_TTL)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let key_pem = key.serialize_pem();
        let root = Root {
            name: format!("root-{}", self.generation),
            cert: cert.der().clone(),
            key_pem,
            issuer: Issuer::new(params, key),
        };
        self.roots.insert(0, root);
        self.sequence += 1;
        Ok(())
    }

    /// Drops every root but the signing one; returns how many were dropped.
    pub fn retire(&mut self) -> usize {
        let n = self.roots.len().saturating_sub(1);
        self.roots.truncate(1);
        if n > 0 {
            self.sequence += 1;
        }
        n
    }

    /// The bundle's current sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// This CA's bundle at its current sequence.
    pub fn current_bundle(&self) -> Result<TrustBundle, crate::bundle::BundleError> {
        self.bundle(self.sequence)
    }

    /// All trusted roots, the signing root first.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.iter().map(|r| r.cert.clone()).collect()
    }

    /// The root that signs new SVIDs.
    pub fn signing_root(&self) -> Option<&CertificateDer<'static>> {
        self.roots.first().map(|r| &r.cert)
    }

    /// SHA-256 (lowercase hex) of the root that signs new SVIDs: what a proxy compares to
    /// learn whether its certificate comes from the current root.
    pub fn signing_root_fingerprint(&self) -> String {
        self.signing_root()
            .map(|c| crate::token::sha256_hex(c.as_ref()))
            .unwrap_or_default()
    }

    /// This CA's bundle at `sequence`.
    pub fn bundle(&self, sequence: u64) -> Result<TrustBundle, crate::bundle::BundleError> {
        TrustBundle::new(self.trust_domain.clone(), self.roots(), sequence)
    }

    /// Signs the signing root's key over `msg` (ECDSA P-256, ASN.1 signature).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        use rcgen::SigningKey;
        let root = self
            .roots
            .first()
            .ok_or_else(|| CaError::Generate("no root".into()))?;
        root.issuer.key().sign(msg).map_err(gen_err)
    }

    /// Signs a workload CSR. The CSR must be self-signed (proof of possession) and carry
    /// exactly one URI SAN equal to `caller`, the identity the control plane authenticated.
    pub fn sign_csr(
        &self,
        csr_der: &CertificateSigningRequestDer<'_>,
        caller: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        if caller.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignId(
                caller.to_string(),
                self.trust_domain.to_string(),
            ));
        }
        if !caller.is_workload() {
            return Err(CaError::CsrIdentity {
                expected: "a workload ID".into(),
                found: caller.to_string(),
            });
        }
        if ttl < Duration::from_secs(60) || ttl > MAX_SVID_TTL {
            return Err(CaError::BadTtl {
                what: "requested",
                ttl,
            });
        }
        let (_, parsed) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let mut uris = Vec::new();
        for ext in parsed.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        uris.push((*u).to_owned());
                    }
                }
            }
        }
        if uris.len() != 1 || uris[0] != caller.to_string() {
            return Err(CaError::CsrIdentity {
                expected: caller.to_string(),
                found: format!("{uris:?}"),
            });
        }
        let csr = CertificateSigningRequestParams::from_der(csr_der)
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let root = self
            .roots
            .first()
            .ok_or_else(|| CaError::Generate("no root".into()))?;
        let root_not_after = x509_parser::parse_x509_certificate(&root.cert)
            .map(|(_, c)| c.validity().not_after.timestamp())
            .unwrap_or(i64::MAX);
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshfed");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            caller.to_string().try_into().map_err(gen_err)?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = offset(now - BACKDATE);
        let not_after = offset(now + ttl);
        p.not_after = match time::OffsetDateTime::from_unix_timestamp(root_not_after) {
            Ok(r) if r < not_after => r,
            _ => not_after,
        };
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        let leaf = p
            .signed_by(&csr.public_key, &root.issuer)
            .map_err(gen_err)?;
        Ok(vec![leaf.der().clone()])
    }

    /// Issues an SVID for `id`, generating the key locally (the lab and tests use this; a
    /// real workload sends a CSR from [`workload_csr`]).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration, now: SystemTime) -> Result<Svid, CaError> {
        let (key, csr) = workload_csr(id)?;
        let chain = self.sign_csr(&csr, id, ttl, now)?;
        let not_after = now + ttl;
        Ok(Svid::new(
            id.clone(),
            chain,
            key.serialize_der(),
            now - BACKDATE,
            not_after,
        ))
    }

    /// Writes the CA into `dir`: `ca.json`, `<root>.pem`, and `<root>.key` with mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        create_private_dir(dir).map_err(|source| CaError::Io {
            path: dir.to_owned(),
            source,
        })?;
        for r in &self.roots {
            write_file(
                &dir.join(format!("{}.pem", r.name)),
                pem_encode("CERTIFICATE", &r.cert).as_bytes(),
                0o644,
            )?;
            write_file(
                &dir.join(format!("{}.key", r.name)),
                r.key_pem.as_bytes(),
                0o600,
            )?;
        }
        let manifest = Manifest {
            version: 1,
            trust_domain: self.trust_domain.to_string(),
            generation: self.generation,
            sequence: self.sequence,
            roots: self.roots.iter().map(|r| r.name.clone()).collect(),
        };
        let body =
            serde_json::to_vec_pretty(&manifest).map_err(|e| CaError::Generate(e.to_string()))?;
        write_file(&dir.join(MANIFEST), &body, 0o644)
    }

    /// True when `dir` already holds a CA.
    pub fn exists(dir: &Path) -> bool {
        dir.join(MANIFEST).exists()
    }

    /// Reads a CA written by [`Self::save`], checking that every root is a CA certificate of
    /// the recorded trust domain and that every key matches its certificate.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let mpath = dir.join(MANIFEST);
        let corrupt = |path: &Path, detail: String| CaError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let raw = fs::read(&mpath).map_err(|source| CaError::Io {
            path: mpath.clone(),
            source,
        })?;
        let m: Manifest =
            serde_json::from_slice(&raw).map_err(|e| corrupt(&mpath, e.to_string()))?;
        if m.version != 1 {
            return Err(corrupt(
                &mpath,
                format!("unsupported version {}", m.version),
            ));
        }
        let trust_domain: TrustDomain = m
            .trust_domain
            .parse()
            .map_err(|e| corrupt(&mpath, format!("trustDomain: {e}")))?;
        if m.roots.is_empty() {
            return Err(corrupt(&mpath, "no roots listed".into()));
        }
        let mut roots = Vec::new();
        for name in &m.roots {
            if name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(corrupt(&mpath, format!("bad root name {name:?}")));
            }
            let cpath = dir.join(format!("{name}.pem"));
            let kpath = dir.join(format!("{name}.key"));
            let cert_pem = fs::read_to_string(&cpath).map_err(|source| CaError::Io {
                path: cpath.clone(),
                source,
            })?;
            let key_pem = fs::read_to_string(&kpath).map_err(|source| CaError::Io {
                path: kpath.clone(),
                source,
            })?;
            let cert = crate::pem::certificates(&cert_pem)
                .map_err(|e| corrupt(&cpath, e.to_string()))?
                .into_iter()
                .next()
                .ok_or_else(|| corrupt(&cpath, "no certificate".into()))?;
            let ins = svid::inspect(&cert, Role::Signing, SystemTime::UNIX_EPOCH)
                .map_err(|e| corrupt(&cpath, e.to_string()))?;
            if let Some(v) = ins.violations.iter().find(|v| {
                matches!(
                    v,
                    svid::SvidViolation::IssuerNotCa | svid::SvidViolation::IssuerCannotSign
                )
            }) {
                return Err(corrupt(&cpath, v.to_string()));
            }
            if ins
                .spiffe_id
                .as_ref()
                .is_some_and(|id| id.trust_domain() != &trust_domain)
            {
                return Err(corrupt(
                    &cpath,
                    format!("root names another trust domain than {trust_domain}"),
                ));
            }
            let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&kpath, e.to_string()))?;
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
                .map_err(|e| corrupt(&cpath, e.to_string()))?;
            if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(corrupt(
                    &kpath,
                    format!("key does not match {}", cpath.display()),
                ));
            }
            let issuer =
                Issuer::from_ca_cert_der(&cert, key).map_err(|e| corrupt(&cpath, e.to_string()))?;
            roots.push(Root {
                name: name.clone(),
                cert,
                key_pem,
                issuer,
            });
        }
        Ok(Self {
            trust_domain,
            roots,
            generation: m.generation,
            sequence: m.sequence.max(1),
        })
    }
}

/// Creates `dir` (and its missing parents) with mode 0700 whatever the umask; an existing
/// folder keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `body` to `path` atomically (temporary file, then rename) with `mode`.
pub fn write_file(path: &Path, body: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(body).and_then(|()| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
