//! The embedded-mode config source: the mesh file, re-read when it changes. A file that does
//! not load — bad YAML, unknown fields, invalid values, another trust domain — is refused
//! whole with every error, and the previous snapshot stays served.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshfed_core::TrustDomain;
use meshfed_crds::validate;
use tokio::sync::watch;

use crate::Snapshot;
use crate::server::StatusCell;

/// What the mesh's trust puts into a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// SPIFFE bundle JSON per trust domain: the mesh's own and its peers'.
    pub bundles: Vec<(TrustDomain, String)>,
    /// Fingerprint of the root certificates come from now (see [`crate::rotation`]).
    pub signing_root: String,
}

/// Reads the trust to serve, as it is now.
pub type TrustFn = Arc<dyn Fn() -> Result<Trust, SourceError> + Send + Sync>;

/// Why a configuration was refused (the previous one stays served).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not UTF-8 text (invalid byte at offset {offset})", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error(transparent)]
    Invalid(#[from] validate::MeshLoadError),
    #[error(
        "{file}: spec.trustDomain is {found}, but this control plane's CA is for {expected}; \
         a trust domain cannot change while running"
    )]
    TrustDomainChanged {
        file: String,
        found: TrustDomain,
        expected: TrustDomain,
    },
    #[error("no trust bundle for the mesh's own domain {0}")]
    NoOwnBundle(TrustDomain),
    #[error("the trust bundles: {0}")]
    Trust(#[from] meshfed_trust::dir::DirError),
    #[error("the cluster: {0}")]
    Cluster(String),
}

impl SourceError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } => "ReadFailed",
            Self::NotUtf8 { .. } => "NotUtf8",
            Self::Invalid(_) => "InvalidMesh",
            Self::TrustDomainChanged { .. } => "TrustDomainChanged",
            Self::NoOwnBundle(_) => "NoOwnBundle",
            Self::Trust(e) => e.reason(),
            Self::Cluster(_) => "ClusterUnavailable",
        }
    }
}

/// Loads `text` (from `file`) as the next configuration after `prev` (if any): `Ok(None)`
/// when nothing changed.
pub fn next_snapshot(
    prev: Option<&Snapshot>,
    file: &str,
    text: &str,
    trust_domain: &TrustDomain,
    trust: Trust,
) -> Result<Option<Snapshot>, SourceError> {
    let next = snapshot(prev, file, text, trust_domain, trust)?;
    Ok(match prev {
        Some(p) if p.same_content(&next) => None,
        _ => Some(next),
    })
}

/// `text` (from `file`) as the first snapshot.
pub fn first_snapshot(
    file: &str,
    text: &str,
    trust_domain: &TrustDomain,
    trust: Trust,
) -> Result<Snapshot, SourceError> {
    snapshot(None, file, text, trust_domain, trust)
}

/// `text` as the snapshot after `prev`, changed or not.
fn snapshot(
    prev: Option<&Snapshot>,
    file: &str,
    text: &str,
    trust_domain: &TrustDomain,
    trust: Trust,
) -> Result<Snapshot, SourceError> {
    let loaded = validate::load_mesh(file, text)?;
    if &loaded.mesh.trust_domain != trust_domain {
        return Err(SourceError::TrustDomainChanged {
            file: file.to_owned(),
            found: loaded.mesh.trust_domain.clone(),
            expected: trust_domain.clone(),
        });
    }
    if !trust.bundles.iter().any(|(td, _)| td == trust_domain) {
        return Err(SourceError::NoOwnBundle(trust_domain.clone()));
    }
    let next = Snapshot {
        version: prev.map_or_else(Snapshot::first_version, |p| p.version + 1),
        mesh: Arc::new(loaded.mesh),
        mesh_json: loaded.mesh_json.into(),
        bundles: trust.bundles,
        signing_root: trust.signing_root.into(),
        imports: prev.map(|p| p.imports.clone()).unwrap_or_default(),
        unready: prev.map(|p| p.unready.clone()).unwrap_or_default(),
    };
    Ok(next)
}

/// Loads the first snapshot from `path`.
pub fn initial(
    path: &Path,
    trust_domain: &TrustDomain,
    trust: &TrustFn,
) -> Result<Snapshot, SourceError> {
    let text = read_text(path)?;
    snapshot(
        None,
        &path.display().to_string(),
        &text,
        trust_domain,
        trust()?,
    )
}

/// A file's text, which must be UTF-8; the error names the file (and the first bad byte).
pub fn read_text(path: &Path) -> Result<String, SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| SourceError::NotUtf8 {
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Re-reads `path` and the trust every `every`; publishes each new valid configuration and
/// records refusals in `status` (the served version is [`crate::imports`]'s to record). Runs
/// until the receivers are gone.
pub async fn watch_file(
    path: PathBuf,
    trust_domain: TrustDomain,
    trust: TrustFn,
    tx: watch::Sender<Arc<Snapshot>>,
    status: StatusCell,
    every: Duration,
) {
    let mut last_seen: Option<(String, Trust)> = None;
    loop {
        tokio::time::sleep(every).await;
        if tx.is_closed() {
            return;
        }
        let input = read_text(&path).and_then(|t| Ok((t, trust()?)));
        let result = match input {
            Err(e) => Err(e),
            Ok(input) if last_seen.as_ref() == Some(&input) => continue,
            Ok((text, b)) => {
                last_seen = Some((text.clone(), b.clone()));
                let prev = tx.borrow().clone();
                next_snapshot(
                    Some(&prev),
                    &path.display().to_string(),
                    &text,
                    &trust_domain,
                    b,
                )
            }
        };
        let changed = format!("loaded the changed {}", path.display());
        publish(result, &tx, &status, &changed, None);
    }
}

/// Publishes the outcome of reading a source: a new snapshot goes to `tx` (with `changed`
/// logged); a refusal is kept in `status` as the config error (logged once) while the served
/// version stays; `left_out` is what a valid configuration still left out (Kubernetes mode's
/// refused resources), shown as the config error otherwise.
pub fn publish(
    result: Result<Option<Snapshot>, SourceError>,
    tx: &watch::Sender<Arc<Snapshot>>,
    status: &StatusCell,
    changed: &str,
    left_out: Option<String>,
) {
    match result {
        Ok(Some(snap)) => {
            tracing::info!("{changed}");
            status.update_if(|st| set(&mut st.config_error, left_out));
            tx.send_replace(Arc::new(snap));
        }
        Ok(None) => status.update_if(|st| set(&mut st.config_error, left_out)),
        Err(e) => {
            let text = e.to_string();
            status.update_if(|st| {
                if st.config_error.as_deref() == Some(text.as_str()) {
                    return false;
                }
                tracing::warn!(reason = e.reason(), "keeping version {}: {e}", st.version);
                st.config_error = Some(text);
                true
            });
        }
    }
}

/// Sets `slot` to `value`; true when that changed it.
fn set<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}
