//! The mesh CA folder (`meshfed trust …`): create the CA, issue SVIDs, export our bundle,
//! import a peer's, rotate and retire roots. Private keys are written at mode 0600.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_trust::bundle::{Applied, BundleError, TrustBundle};
use meshfed_trust::ca::{self, CaError, CertificateAuthority};
use meshfed_trust::dir::{self, DirError};
use meshfed_trust::pem::{self, PemError};
use meshfed_trust::svid::{self, Inspection, Role, SvidViolation};

/// Why a CA folder operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaDirError {
    #[error("loading the CA in {} (run `meshfed trust init` first?): {source}", dir.display())]
    Load { dir: PathBuf, source: CaError },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Pem { path: PathBuf, source: PemError },
    #[error("{}: {source}", path.display())]
    Bundle { path: PathBuf, source: BundleError },
    #[error("{}: cannot tell the bundle's trust domain; pass --trust-domain", path.display())]
    BundleDomain { path: PathBuf },
    #[error("{}: {source}", path.display())]
    RootCert {
        path: PathBuf,
        source: meshfed_crds::peer::RootCertError,
    },
}

impl CaDirError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Load { source, .. } | Self::Ca(source) => source.reason(),
            Self::Dir(e) => e.reason(),
            Self::Read { .. } => "ReadFailed",
            Self::Pem { source, .. } => source.reason(),
            Self::Bundle { source, .. } => source.reason(),
            Self::BundleDomain { .. } => "BundleDomainUnknown",
            Self::RootCert { source, .. } => source.reason(),
        }
    }
}

/// The CA in `dir`.
pub fn load(dir: &Path) -> Result<CertificateAuthority, CaDirError> {
    CertificateAuthority::load(dir).map_err(|source| CaDirError::Load {
        dir: dir.to_owned(),
        source,
    })
}

/// Creates a CA for `td` in `dir`; an existing one is replaced only with `force`.
pub fn init(dir: &Path, td: TrustDomain, force: bool) -> Result<CertificateAuthority, CaDirError> {
    if CertificateAuthority::exists(dir) && !force {
        return Err(CaError::Exists(dir.to_owned()).into());
    }
    let ca = CertificateAuthority::new(td, SystemTime::now())?;
    ca.save(dir)?;
    Ok(ca)
}

/// The files an issued SVID was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// `PREFIX.pem`: the chain.
    pub cert: PathBuf,
    /// `PREFIX-key.pem` (0600), when the key was made here (no CSR).
    pub key: Option<PathBuf>,
}

/// Issues an SVID for `id`: for the CSR at `csr` (the key never leaves the workload), or with
/// a new key written beside the certificate.
pub fn issue(
    dir: &Path,
    id: &SpiffeId,
    ttl: Duration,
    csr: Option<&Path>,
    out: &Path,
) -> Result<Issued, CaDirError> {
    let ca = load(dir)?;
    let now = SystemTime::now();
    let cert = out.with_extension("pem");
    let Some(csr) = csr else {
        let svid = ca.issue(id, ttl, now)?;
        ca::write_file(&cert, svid.chain_pem().as_bytes(), 0o644)?;
        let key = PathBuf::from(format!("{}-key.pem", out.display()));
        ca::write_file(&key, svid.key_pem().as_bytes(), 0o600)?;
        return Ok(Issued {
            cert,
            key: Some(key),
        });
    };
    let bytes = std::fs::read(csr).map_err(|source| CaDirError::Read {
        path: csr.to_owned(),
        source,
    })?;
    let der = pem::csr_from_bytes(&bytes).map_err(|source| CaDirError::Pem {
        path: csr.to_owned(),
        source,
    })?;
    let chain = ca.sign_csr(&der.into(), id, ttl, now)?;
    let pem: String = chain
        .iter()
        .map(|c| ca::pem_encode("CERTIFICATE", c))
        .collect();
    ca::write_file(&cert, pem.as_bytes(), 0o644)?;
    Ok(Issued { cert, key: None })
}

/// This mesh's SPIFFE bundle (JSON).
pub fn bundle_json(dir: &Path) -> Result<serde_json::Value, CaDirError> {
    let ca = load(dir)?;
    let bundle = ca.current_bundle().map_err(|source| CaDirError::Bundle {
        path: dir.to_owned(),
        source,
    })?;
    Ok(bundle.to_json())
}

/// What importing a peer's bundle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub applied: Applied,
    pub roots: usize,
    /// Keys of a SPIFFE bundle that were skipped, and why.
    pub warnings: Vec<String>,
}

/// Stores the bundle of peer domain `td` from `file`: a SPIFFE bundle (JSON), PEM root
/// certificates, or a Maistra root ConfigMap (`data.root-cert.pem`). It is checked against
/// every bundle held before anything is written.
pub fn import_bundle(dir: &Path, td: TrustDomain, file: &Path) -> Result<Imported, CaDirError> {
    let ca = load(dir)?;
    let text = std::fs::read_to_string(file).map_err(|source| CaDirError::Read {
        path: file.to_owned(),
        source,
    })?;
    let bad = |source| CaDirError::Bundle {
        path: file.to_owned(),
        source,
    };
    let (bundle, warnings) = if text.trim_start().starts_with('{') {
        TrustBundle::from_json(td, &text).map_err(bad)?
    } else {
        let pem_text = if text.contains("ConfigMap") {
            meshfed_crds::peer::root_cert_from_yaml(&text).map_err(|source| {
                CaDirError::RootCert {
                    path: file.to_owned(),
                    source,
                }
            })?
        } else {
            text
        };
        let roots = pem::certificates(&pem_text).map_err(|source| CaDirError::Pem {
            path: file.to_owned(),
            source,
        })?;
        let seq = dir::next_sequence(dir, &ca, &td, &roots)?;
        (TrustBundle::new(td, roots, seq).map_err(bad)?, Vec::new())
    };
    let roots = bundle.roots().len();
    let applied = dir::import_bundle(dir, &ca, bundle)?;
    Ok(Imported {
        applied,
        roots,
        warnings,
    })
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// A new signing root was added; the old ones stay trusted.
    Added { sequence: u64 },
    /// Every root but the signing one was dropped.
    Retired { roots: usize, sequence: u64 },
}

/// Adds a new signing root, or (`retire`) drops every other root.
pub fn rotate(dir: &Path, retire: bool) -> Result<Rotation, CaDirError> {
    let mut ca = load(dir)?;
    let rotation = if retire {
        let roots = ca.retire();
        Rotation::Retired {
            roots,
            sequence: ca.sequence(),
        }
    } else {
        ca.rotate(SystemTime::now())?;
        Rotation::Added {
            sequence: ca.sequence(),
        }
    };
    ca.save(dir)?;
    Ok(rotation)
}

/// One certificate of an inspected file, as the SPIFFE rules see it in its role.
#[derive(Debug)]
pub struct Inspected {
    /// `leaf`, `certificate`, `chain[1]`, `root 0`…
    pub label: String,
    pub role: Role,
    /// Its fields and every rule it breaks, or why it could not be read at all.
    pub result: Result<Inspection, SvidViolation>,
}

/// What a certificate, chain or SPIFFE bundle file holds (`meshfed trust show`).
#[derive(Debug)]
pub struct FileInspection {
    /// A bundle file's trust domain, roots, sequence, refresh hint and format warnings.
    pub bundle: Option<(TrustBundle, Vec<String>)>,
    pub certificates: Vec<Inspected>,
}

impl FileInspection {
    /// How many SPIFFE rules the file breaks (bundle warnings included).
    pub fn broken(&self) -> usize {
        let warnings = self.bundle.as_ref().map_or(0, |(_, w)| w.len());
        warnings
            + self
                .certificates
                .iter()
                .map(|c| c.result.as_ref().map_or(1, |i| i.violations.len()))
                .sum::<usize>()
    }
}

/// Reads a PEM certificate or chain, or a SPIFFE bundle (JSON; its trust domain `td` or read
/// from its roots), and checks each certificate against the SPIFFE rules of its role at `now`:
/// a chain's first certificate is a leaf unless it is a CA, the rest signing certificates.
pub fn inspect_file(
    path: &Path,
    td: Option<TrustDomain>,
    now: SystemTime,
) -> Result<FileInspection, CaDirError> {
    let bytes = std::fs::read(path).map_err(|source| CaDirError::Read {
        path: path.to_owned(),
        source,
    })?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let text = String::from_utf8_lossy(&bytes);
        let td = td
            .or_else(|| TrustBundle::domain_hint(&text))
            .ok_or_else(|| CaDirError::BundleDomain {
                path: path.to_owned(),
            })?;
        let (bundle, warnings) =
            TrustBundle::from_json(td, &text).map_err(|source| CaDirError::Bundle {
                path: path.to_owned(),
                source,
            })?;
        let certificates = bundle
            .roots()
            .iter()
            .enumerate()
            .map(|(i, r)| Inspected {
                label: format!("root {i}"),
                role: Role::Signing,
                result: svid::inspect(r, Role::Signing, now),
            })
            .collect();
        return Ok(FileInspection {
            bundle: Some((bundle, warnings)),
            certificates,
        });
    }
    let certs = pem::certificates_from_bytes(&bytes).map_err(|source| CaDirError::Pem {
        path: path.to_owned(),
        source,
    })?;
    let certificates = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let is_ca =
                svid::inspect(c, Role::Signing, SystemTime::UNIX_EPOCH).is_ok_and(|i| i.is_ca);
            let (label, role) = match (i, is_ca) {
                (0, false) => ("leaf".to_owned(), Role::Leaf),
                (0, true) => ("certificate".to_owned(), Role::Signing),
                _ => (format!("chain[{i}]"), Role::Signing),
            };
            Inspected {
                label,
                role,
                result: svid::inspect(c, role, now),
            }
        })
        .collect();
    Ok(FileInspection {
        bundle: None,
        certificates,
    })
}
