//! Peer bundles kept beside the CA: `<dir>/bundles/<trust-domain>.json`, one SPIFFE bundle
//! document per peer domain. Imports keep the per-domain rules of [`TrustBundleSet`]: never our
//! own domain, never a root shared with another domain, never a falling sequence.

use std::path::{Path, PathBuf};

use meshfed_core::TrustDomain;

use crate::bundle::{Applied, BundleError, TrustBundle, TrustBundleSet};
use crate::ca::{CaError, CertificateAuthority, write_file};

/// Why a peer bundle could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Bundle { path: PathBuf, source: BundleError },
    #[error("trust domain {0} is this mesh's own; a peer bundle cannot replace it")]
    OwnDomain(String),
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl DirError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io { .. } => "StoreIo",
            Self::Bundle { source, .. } => source.reason(),
            Self::OwnDomain(_) => "OwnTrustDomain",
            Self::Ca(e) => e.reason(),
        }
    }
}

fn bundles_dir(dir: &Path) -> PathBuf {
    dir.join("bundles")
}

/// Every stored peer bundle, plus our own (from `ca`), as one set.
pub fn load_bundles(dir: &Path, ca: &CertificateAuthority) -> Result<TrustBundleSet, DirError> {
    let mut set = TrustBundleSet::new();
    let own = ca.current_bundle().map_err(|source| DirError::Bundle {
        path: dir.to_owned(),
        source,
    })?;
    set.insert(own).map_err(|source| DirError::Bundle {
        path: dir.to_owned(),
        source,
    })?;
    for bundle in read_peer_bundles(dir)? {
        let path = bundles_dir(dir).join(format!("{}.json", bundle.trust_domain()));
        set.insert(bundle)
            .map_err(|source| DirError::Bundle { path, source })?;
    }
    Ok(set)
}

/// Every stored peer bundle, in file-name order.
pub fn read_peer_bundles(dir: &Path) -> Result<Vec<TrustBundle>, DirError> {
    let bdir = bundles_dir(dir);
    let entries = match std::fs::read_dir(&bdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DirError::Io { path: bdir, source }),
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let td: TrustDomain = match path.file_stem().and_then(|s| s.to_str()).map(str::parse) {
            Some(Ok(td)) => td,
            _ => continue,
        };
        let text = std::fs::read_to_string(&path).map_err(|source| DirError::Io {
            path: path.clone(),
            source,
        })?;
        let (bundle, _) = TrustBundle::from_json(td, &text).map_err(|source| DirError::Bundle {
            path: path.clone(),
            source,
        })?;
        out.push(bundle);
    }
    Ok(out)
}

/// Stores a peer's bundle after checking it against everything already held.
pub fn import_bundle(
    dir: &Path,
    ca: &CertificateAuthority,
    bundle: TrustBundle,
) -> Result<Applied, DirError> {
    if bundle.trust_domain() == ca.trust_domain() {
        return Err(DirError::OwnDomain(bundle.trust_domain().to_string()));
    }
    let mut set = load_bundles(dir, ca)?;
    let path = bundles_dir(dir).join(format!("{}.json", bundle.trust_domain()));
    let applied = set
        .insert(bundle.clone())
        .map_err(|source| DirError::Bundle {
            path: path.clone(),
            source,
        })?;
    crate::ca::create_private_dir(&bundles_dir(dir)).map_err(|source| DirError::Io {
        path: bundles_dir(dir),
        source,
    })?;
    let body = serde_json::to_vec_pretty(&bundle.to_json()).map_err(|e| DirError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    write_file(&path, &body, 0o644)?;
    Ok(applied)
}

/// The sequence a new bundle of `td` with `roots` should carry: the held one when the roots
/// are unchanged, one above it when they changed, 1 for a new domain.
pub fn next_sequence(
    dir: &Path,
    ca: &CertificateAuthority,
    td: &TrustDomain,
    roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<u64, DirError> {
    let set = load_bundles(dir, ca)?;
    Ok(match set.get(td) {
        Some(b) if b.roots() == roots => b.sequence,
        Some(b) => b.sequence + 1,
        None => 1,
    })
}

/// Writes a peer bundle that the caller already checked (the peering importer, after applying
/// it to its live set). Our own domain is never written here.
pub fn write_peer_bundle(dir: &Path, bundle: &TrustBundle) -> Result<(), DirError> {
    let bdir = bundles_dir(dir);
    crate::ca::create_private_dir(&bdir).map_err(|source| DirError::Io {
        path: bdir.clone(),
        source,
    })?;
    let path = bdir.join(format!("{}.json", bundle.trust_domain()));
    let body = serde_json::to_vec_pretty(&bundle.to_json()).map_err(|e| DirError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    Ok(write_file(&path, &body, 0o644)?)
}
