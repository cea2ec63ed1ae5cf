//! Where a mesh keeps what peering leaves behind: its peers' trust bundles (from tokens,
//! redemptions and the peering stream) and its token [`Ledger`]. Embedded mode keeps them beside
//! the CA ([`DirStore`]: `<dir>/bundles/<td>.json`, `pending-tokens.json`,
//! `accepted-tokens.json`); Kubernetes mode keeps them in a ConfigMap and a Secret of the
//! control-plane namespace (`meshfed_k8s::trust_store`), where a CA Secret mounted read-only
//! could not take them and where every replica sees them. Both stores apply the same rules —
//! [`TrustBundleSet::insert`] for bundles, [`Ledger`] for tokens — and write nothing when a
//! check fails. The token steps that span a store are here too, so both modes run them alike:
//! [`record_pending`], [`redeem`], [`accept`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use meshfed_core::TrustDomain;

use crate::bundle::{Applied, BundleError, TrustBundle, TrustBundleSet};
use crate::token::{self, Ledger, Pending, TokenError, Verified};

/// A boxed, sendable future (the store is used behind `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A change to the ledger; it may run more than once when writers race (the store re-reads
/// and retries), so it must depend only on the ledger it is given.
pub type LedgerChange<'a> = &'a mut (dyn FnMut(&mut Ledger) -> Result<(), TokenError> + Send);

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{at}: {source}")]
    Bundle { at: String, source: BundleError },
    #[error("trust domain {0} is this mesh's own; a peer bundle cannot replace it")]
    OwnDomain(String),
    #[error("{at}: {detail}")]
    Io { at: String, detail: String },
    #[error("{at}: another writer kept changing it; gave up after {tries} tries")]
    Contended { at: String, tries: u32 },
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Bundle { source, .. } => source.reason(),
            Self::OwnDomain(_) => "OwnTrustDomain",
            Self::Io { .. } => "StoreIo",
            Self::Contended { .. } => "StoreContended",
            Self::Token(e) => e.reason(),
        }
    }
}

/// A mesh's store of peer bundles and token records.
pub trait TrustStore: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages (a folder, or `ConfigMap ns/name`).
    fn location(&self) -> String;
    /// Every stored peer bundle. A stored entry that does not parse is an error naming it.
    fn peer_bundles(&self) -> BoxFuture<'_, Result<Vec<TrustBundle>, StoreError>>;
    /// Stores a peer's bundle, checked against the others stored ([`check_peer_bundle`]);
    /// a bundle equal to the stored one writes nothing.
    fn save_peer_bundle<'a>(
        &'a self,
        bundle: &'a TrustBundle,
    ) -> BoxFuture<'a, Result<Applied, StoreError>>;
    /// The token ledger.
    fn ledger(&self) -> BoxFuture<'_, Result<Ledger, StoreError>>;
    /// Reads the ledger, lets `change` edit it, writes it back — once, even when several
    /// processes share the store. Nothing is written when `change` fails.
    fn update_ledger<'a>(
        &'a self,
        change: LedgerChange<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Checks `bundle` against the peer bundles stored: never a falling sequence, never the same
/// sequence with other roots, never a root another domain holds.
pub fn check_peer_bundle(
    stored: &[TrustBundle],
    bundle: &TrustBundle,
) -> Result<Applied, BundleError> {
    let mut set = TrustBundleSet::new();
    for b in stored {
        // Stored entries were checked when written; one that now conflicts is replaced.
        let _ = set.insert(b.clone());
    }
    set.insert(bundle.clone())
}

/// Records a token the issuer created.
pub async fn record_pending(store: &dyn TrustStore, pending: Pending) -> Result<(), StoreError> {
    let now = SystemTime::now();
    store
        .update_ledger(&mut |l| {
            l.record(pending.clone(), now);
            Ok(())
        })
        .await
}

/// Spends a token's secret once; returns the token id.
pub async fn redeem(
    store: &dyn TrustStore,
    secret: &str,
    now: SystemTime,
) -> Result<String, StoreError> {
    let mut id = String::new();
    store
        .update_ledger(&mut |l| {
            id = l.redeem(secret, now)?;
            Ok(())
        })
        .await?;
    Ok(id)
}

/// The acceptor's checks, before anything is sent or stored: the token verifies, is not from
/// our own domain, was not accepted before, and its bundle fits the bundles held (`held`: our
/// own and every peer's).
pub async fn check_token(
    store: &dyn TrustStore,
    held: &TrustBundleSet,
    own: &TrustDomain,
    token: &str,
    now: SystemTime,
) -> Result<Verified, StoreError> {
    let v = token::verify(token, now)?;
    if &v.trust_domain == own {
        return Err(TokenError::OwnTrustDomain(own.to_string()).into());
    }
    store.ledger().await?.check_new(&v.id)?;
    let mut held = held.clone();
    held.insert(v.bundle.clone())
        .map_err(|source| StoreError::Bundle {
            at: "the token's bundle".into(),
            source,
        })?;
    Ok(v)
}

/// Accepts a checked token: stores the issuer's bundle and records the token as accepted.
pub async fn accept(store: &dyn TrustStore, v: &Verified) -> Result<(), StoreError> {
    store.save_peer_bundle(&v.bundle).await?;
    store.update_ledger(&mut |l| l.accept(&v.id)).await
}

/// The store in a CA folder (embedded mode, and `meshfed trust`/`peering token` with `--dir`).
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
    own: TrustDomain,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>, own: TrustDomain) -> Self {
        Self {
            dir: dir.into(),
            own,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn bundles(&self) -> Result<Vec<TrustBundle>, StoreError> {
        crate::dir::read_peer_bundles(&self.dir).map_err(|e| match e {
            crate::dir::DirError::Bundle { path, source } => StoreError::Bundle {
                at: path.display().to_string(),
                source,
            },
            other => StoreError::Io {
                at: self.dir.display().to_string(),
                detail: other.to_string(),
            },
        })
    }

    pub(crate) fn save(&self, bundle: &TrustBundle) -> Result<Applied, StoreError> {
        if bundle.trust_domain() == &self.own {
            return Err(StoreError::OwnDomain(self.own.to_string()));
        }
        let stored = self.bundles()?;
        let at = || {
            self.dir
                .join("bundles")
                .join(format!("{}.json", bundle.trust_domain()))
                .display()
                .to_string()
        };
        let applied = check_peer_bundle(&stored, bundle)
            .map_err(|source| StoreError::Bundle { at: at(), source })?;
        if applied == Applied::Unchanged && stored.iter().any(|b| b == bundle) {
            return Ok(applied);
        }
        crate::dir::write_peer_bundle(&self.dir, bundle).map_err(|e| StoreError::Io {
            at: at(),
            detail: e.to_string(),
        })?;
        Ok(applied)
    }

    fn change(&self, change: LedgerChange<'_>) -> Result<(), StoreError> {
        let before = token::read_ledger(&self.dir)?;
        let mut after = before.clone();
        change(&mut after)?;
        token::write_ledger(&self.dir, &before, &after)?;
        Ok(())
    }
}

impl TrustStore for DirStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn peer_bundles(&self) -> BoxFuture<'_, Result<Vec<TrustBundle>, StoreError>> {
        Box::pin(std::future::ready(self.bundles()))
    }

    fn save_peer_bundle<'a>(
        &'a self,
        bundle: &'a TrustBundle,
    ) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(std::future::ready(self.save(bundle)))
    }

    fn ledger(&self) -> BoxFuture<'_, Result<Ledger, StoreError>> {
        Box::pin(std::future::ready(
            token::read_ledger(&self.dir).map_err(StoreError::from),
        ))
    }

    fn update_ledger<'a>(
        &'a self,
        change: LedgerChange<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(self.change(change)))
    }
}
