//! The mesh CA as a running control plane holds it, across root rotations.
//!
//! `meshfed trust rotate` adds a root to the CA folder and makes it the signing one. Were the
//! control plane to sign with it at once, a workload renewing first would present a
//! certificate its callers — in this mesh and, above all, in peer meshes — do not trust yet.
//! So a new signing root goes through two stages:
//!
//! 1. **Trusted**: the new bundle (old and new roots) is served at once — in snapshots to this
//!    mesh's proxies, and by the peering exporter to every peer, whose control planes pass it
//!    on to theirs. Certificates are still signed by the old root.
//! 2. **Signing**, after the rotation grace: certificates come from the new root, snapshots name
//!    it (`signing_root`), and every proxy holding a certificate from another root renews at
//!    once; the control plane's own identities are reissued.
//!
//! `meshfed trust rotate --retire` (dropping the old root) changes no signing root, so it is
//! served at once. This mirrors the order Istio documents for a manual root change (trust
//! both, then switch issuers, then drop the old one) without the manual steps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{self, SharedBundles};

/// The default time between serving a new root and signing with it.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(10);

/// Why the CA folder's new content was not taken (the running CA stays).
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(
        "the CA is now for {found}, not {expected}; a trust domain cannot change while running"
    )]
    TrustDomainChanged {
        found: meshfed_core::TrustDomain,
        expected: meshfed_core::TrustDomain,
    },
    #[error(transparent)]
    Load(#[from] meshfed_trust::ca::CaError),
    #[error("the CA's bundle: {0}")]
    Bundle(#[from] meshfed_trust::bundle::BundleError),
}

impl RotationError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TrustDomainChanged { .. } => "TrustDomainChanged",
            Self::Load(e) => e.reason(),
            Self::Bundle(e) => e.reason(),
        }
    }
}

/// The CA a control plane trusts and the one it signs with.
pub struct MeshCa {
    /// What the CA folder holds now: every root, served in the bundles.
    trusted: ArcSwap<CertificateAuthority>,
    /// What signs: the trusted CA once a new root has been served for the grace.
    signing: ArcSwap<CertificateAuthority>,
    /// The own-domain bundle the control plane's TLS verifies proxies with.
    own: SharedBundles,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", self.trusted.load().trust_domain())
            .field("signing_root", &self.signing_root())
            .finish_non_exhaustive()
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// The roots changed, the signing root did not (a retirement): in force at once.
    Bundle,
    /// A new signing root: trusted now, signing after [`MeshCa::promote`].
    NewRoot,
}

impl MeshCa {
    /// Holds `ca`, trusting and signing with it.
    pub fn new(
        ca: impl Into<Arc<CertificateAuthority>>,
    ) -> Result<Arc<Self>, meshfed_trust::bundle::BundleError> {
        let ca: Arc<CertificateAuthority> = ca.into();
        let mut own = TrustBundleSet::new();
        own.insert(ca.current_bundle()?)?;
        Ok(Arc::new(Self {
            trusted: ArcSwap::new(ca.clone()),
            signing: ArcSwap::new(ca),
            own: verify::shared(own),
        }))
    }

    /// Every root the mesh trusts now.
    pub fn trusted(&self) -> Arc<CertificateAuthority> {
        self.trusted.load_full()
    }

    /// The CA that signs certificates now.
    pub fn signing(&self) -> Arc<CertificateAuthority> {
        self.signing.load_full()
    }

    /// The own-domain bundle set, kept current (for the control plane's client verifier).
    pub fn own_bundles(&self) -> SharedBundles {
        self.own.clone()
    }

    /// Fingerprint of the root that signs now.
    pub fn signing_root(&self) -> String {
        self.signing.load().signing_root_fingerprint()
    }

    /// Takes `loaded` (the CA folder as it is now) as the trusted CA.
    pub fn take(&self, loaded: CertificateAuthority) -> Result<Change, RotationError> {
        let cur = self.trusted.load();
        if loaded.trust_domain() != cur.trust_domain() {
            return Err(RotationError::TrustDomainChanged {
                found: loaded.trust_domain().clone(),
                expected: cur.trust_domain().clone(),
            });
        }
        if loaded.roots() == cur.roots() && loaded.sequence() == cur.sequence() {
            return Ok(Change::None);
        }
        let bundle = loaded.current_bundle()?;
        let mut own = TrustBundleSet::new();
        own.insert(bundle)?;
        let new_root = loaded.signing_root_fingerprint() != self.signing_root();
        let loaded = Arc::new(loaded);
        self.own.store(Arc::new(own));
        self.trusted.store(loaded.clone());
        if new_root {
            Ok(Change::NewRoot)
        } else {
            self.signing.store(loaded);
            Ok(Change::Bundle)
        }
    }

    /// Signs with the trusted CA from now on; true if the signing root changed.
    pub fn promote(&self) -> bool {
        let before = self.signing_root();
        self.signing.store(self.trusted.load_full());
        self.signing_root() != before
    }
}

/// What [`watch_dir`] tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The trusted roots changed (serve the new bundle).
    Trusted,
    /// The signing root changed (reissue the control plane's own certificates).
    Signing,
}

/// Re-reads the CA in `dir` every `every`: a changed CA is taken at once, a new signing root
/// signs `grace` later. A CA that does not load is refused (logged once) and the current one
/// stays. Runs until `on` returns false.
pub async fn watch_dir(
    ca: Arc<MeshCa>,
    dir: PathBuf,
    grace: Duration,
    every: Duration,
    mut on: impl FnMut(Event) -> bool + Send + 'static,
) {
    let mut seen = manifest(&dir);
    let mut promote_at: Option<tokio::time::Instant> = None;
    let mut said = String::new();
    loop {
        let wake = promote_at.map_or(every, |at| {
            at.saturating_duration_since(tokio::time::Instant::now())
                .min(every)
        });
        tokio::time::sleep(wake).await;
        if let Some(at) = promote_at
            && tokio::time::Instant::now() >= at
        {
            promote_at = None;
            if ca.promote() {
                tracing::info!(
                    "signing with the new root {} from now on; proxies renew their certificates",
                    short(&ca.signing_root())
                );
                if !on(Event::Signing) {
                    return;
                }
            }
        }
        let now = manifest(&dir);
        if now == seen {
            continue;
        }
        let result = CertificateAuthority::load(&dir)
            .map_err(RotationError::from)
            .and_then(|loaded| ca.take(loaded));
        match result {
            Err(e) => {
                let text = e.to_string();
                if text != said {
                    tracing::warn!(
                        reason = e.reason(),
                        "keeping the current CA: {}: {e}",
                        dir.join("ca.json").display()
                    );
                    said = text;
                }
                // Retried on the next change of the manifest.
                seen = now;
            }
            Ok(change) => {
                seen = now;
                said.clear();
                match change {
                    Change::None => {}
                    Change::Bundle => {
                        tracing::info!("the CA's roots changed; serving the new bundle");
                        if !on(Event::Trusted) {
                            return;
                        }
                    }
                    Change::NewRoot => {
                        tracing::info!(
                            "a new root {} is trusted; it signs in {grace:?}, once proxies and peers hold it",
                            short(&ca.trusted().signing_root_fingerprint())
                        );
                        promote_at = Some(tokio::time::Instant::now() + grace);
                        if !on(Event::Trusted) {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The manifest's bytes (a rotation always rewrites it, last).
fn manifest(dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(dir.join("ca.json")).ok()
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    /// A CA saved in a fresh folder: `load` gives independent copies of it.
    fn saved() -> (tempfile::TempDir, CertificateAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            CertificateAuthority::new("rot.local".parse().unwrap(), SystemTime::now()).unwrap();
        ca.save(dir.path()).unwrap();
        (dir, ca)
    }

    #[test]
    fn a_new_root_is_trusted_before_it_signs() {
        let (dir, ca) = saved();
        let mc = MeshCa::new(ca).unwrap();
        let old = mc.signing_root();
        let load = || CertificateAuthority::load(dir.path()).unwrap();
        let mut c = load();
        c.rotate(SystemTime::now()).unwrap();
        c.save(dir.path()).unwrap();
        assert_eq!(mc.take(load()).unwrap(), Change::NewRoot);
        assert_eq!(mc.trusted().roots().len(), 2);
        let td = c.trust_domain().clone();
        assert_eq!(mc.own_bundles().load().get(&td).unwrap().roots().len(), 2);
        assert_eq!(mc.signing_root(), old, "still signing with the old root");
        assert!(mc.promote());
        assert_ne!(mc.signing_root(), old);
        assert!(!mc.promote(), "a second promotion changes nothing");
        // Retiring the old root keeps the signing root: in force at once.
        c.retire();
        c.save(dir.path()).unwrap();
        assert_eq!(mc.take(load()).unwrap(), Change::Bundle);
        assert_eq!(mc.signing().roots().len(), 1);
        assert_eq!(mc.take(load()).unwrap(), Change::None);
    }

    #[tokio::test]
    async fn the_watcher_serves_a_new_root_then_signs_with_it() {
        let (dir, ca) = saved();
        let mc = MeshCa::new(ca).unwrap();
        let old = mc.signing_root();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(watch_dir(
            mc.clone(),
            dir.path().to_owned(),
            Duration::from_millis(300),
            Duration::from_millis(50),
            move |e| tx.send(e).is_ok(),
        ));
        let mut c = CertificateAuthority::load(dir.path()).unwrap();
        // A broken manifest is refused and the CA kept.
        std::fs::write(dir.path().join("ca.json"), b"{").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(mc.trusted().roots().len(), 1);
        c.rotate(SystemTime::now()).unwrap();
        c.save(dir.path()).unwrap();
        assert_eq!(rx.recv().await, Some(Event::Trusted));
        assert_eq!(mc.signing_root(), old);
        assert_eq!(rx.recv().await, Some(Event::Signing));
        assert_ne!(mc.signing_root(), old);
    }

    #[test]
    fn another_trust_domain_is_refused() {
        let (_dir, ca) = saved();
        let mc = MeshCa::new(ca).unwrap();
        let other =
            CertificateAuthority::new("other.local".parse().unwrap(), SystemTime::now()).unwrap();
        let e = mc.take(other).unwrap_err();
        assert!(e.to_string().contains("other.local"), "{e}");
        assert_eq!(e.reason(), "TrustDomainChanged");
        assert_eq!(mc.trusted().trust_domain().to_string(), "rot.local");
    }
}
