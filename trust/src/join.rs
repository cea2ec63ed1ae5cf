//! Join credentials: what a workload presents for its first certificate in embedded mode.
//!
//! Each credential is bound to one workload (namespace and name) of the mesh, or to a few of
//! one namespace (a gateway process serves the ingress and the egress of a peer, two
//! workloads of the control-plane namespace), and yields only those workloads' identities. It is a
//! 256-bit random secret, valid until it expires (a workload that restarts within that time
//! joins again with it), or for one certificate only. The control plane keeps no secret: the
//! CA folder holds, per credential, a record named by the secret's SHA-256 under `joins/`
//! (mode 0600, the folder 0700), so `meshfed join create` and a running control plane share
//! them through the folder, and deleting a record revokes the credential. SPIRE's join tokens
//! and Consul's ACL tokens bound to a service identity are the models.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ca::{create_private_dir, write_file};

/// Longest lifetime a credential may have.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Length of a secret in hex characters (32 random bytes).
const SECRET_HEX: usize = 64;

/// What a credential record says (the secret itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRecord {
    pub namespace: String,
    /// The workloads of `namespace` it may join as (at least one).
    pub workloads: Vec<String>,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    /// Valid for one certificate only.
    pub once: bool,
}

/// A minted credential: its secret (given to the workload, never stored) and its record.
#[derive(Clone)]
pub struct Minted {
    pub secret: String,
    pub record: JoinRecord,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Why a credential was not minted or not accepted. The control plane tells an anonymous
/// caller none of this; it logs it.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no such join credential (never minted, revoked, or already used)")]
    Unknown,
    #[error("the join credential expired")]
    Expired,
    #[error("the join credential is for {namespace}/{{{}}}, not {asked}", workloads.join(","))]
    WrongWorkload {
        namespace: String,
        workloads: Vec<String>,
        asked: String,
    },
    #[error("a join credential names at least one workload, and a once-only one exactly one")]
    BadWorkloads,
    #[error("a join credential's lifetime must be between 1s and {}d", MAX_TTL.as_secs() / 86400)]
    BadTtl,
    #[error("{what} {value:?} is not a valid name")]
    BadName { what: &'static str, value: String },
    #[error("the join credential record {}: {detail}", path.display())]
    BadRecord { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("the system random source failed")]
    Random,
}

impl JoinError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown => "UnknownCredential",
            Self::Expired => "CredentialExpired",
            Self::WrongWorkload { .. } => "WrongWorkload",
            Self::BadTtl => "BadTtl",
            Self::BadWorkloads => "BadWorkloads",
            Self::BadName { .. } => "BadName",
            Self::BadRecord { .. } => "BadRecord",
            Self::Io { .. } => "IoFailed",
            Self::Ca(e) => e.reason(),
            Self::Random => "RandomFailed",
        }
    }
}

/// The credential records of one CA folder.
#[derive(Debug, Clone)]
pub struct JoinStore {
    dir: PathBuf,
}

impl JoinStore {
    /// The records under `<ca_dir>/joins`.
    pub fn new(ca_dir: &Path) -> Self {
        Self {
            dir: ca_dir.join("joins"),
        }
    }

    /// Mints a credential for the `workloads` of `namespace`, valid for `ttl` from `now` (or
    /// for one certificate with `once`, which names one workload), and records it.
    pub fn mint(
        &self,
        namespace: &str,
        workloads: &[&str],
        ttl: Duration,
        once: bool,
        now: SystemTime,
    ) -> Result<Minted, JoinError> {
        if workloads.is_empty() || (once && workloads.len() > 1) {
            return Err(JoinError::BadWorkloads);
        }
        let named = std::iter::once(("namespace", namespace))
            .chain(workloads.iter().map(|w| ("workload", *w)));
        for (what, value) in named {
            if !valid_name(value) {
                return Err(JoinError::BadName {
                    what,
                    value: value.chars().take(64).collect(),
                });
            }
        }
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            return Err(JoinError::BadTtl);
        }
        let mut b = [0u8; SECRET_HEX / 2];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| JoinError::Random)?;
        let secret: String = b.iter().map(|b| format!("{b:02x}")).collect();
        let record = JoinRecord {
            namespace: namespace.to_owned(),
            workloads: workloads.iter().map(|w| (*w).to_owned()).collect(),
            expires_at: unix(now + ttl),
            once,
        };
        create_private_dir(&self.dir).map_err(|source| JoinError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let body = serde_json::to_vec_pretty(&record).map_err(|e| JoinError::BadRecord {
            path: self.dir.clone(),
            detail: e.to_string(),
        })?;
        write_file(&self.path_of(&secret), &body, 0o600)?;
        Ok(Minted { secret, record })
    }

    /// Accepts `secret` for a first certificate of `namespace/workload` at `now`: it must be
    /// a recorded, unexpired credential for exactly that workload. A once-only credential is
    /// used up by this call; call it only when a certificate is about to be issued ([`check`]
    /// otherwise).
    ///
    /// [`check`]: JoinStore::check
    pub fn redeem(
        &self,
        secret: &str,
        namespace: &str,
        workload: &str,
        now: SystemTime,
    ) -> Result<JoinRecord, JoinError> {
        let record = self.check(secret, namespace, workload, now)?;
        if record.once {
            // Whoever removes the record first used it; a second caller finds nothing.
            match std::fs::remove_file(self.path_of(secret)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(JoinError::Unknown);
                }
                Err(source) => {
                    return Err(JoinError::Io {
                        path: self.path_of(secret),
                        source,
                    });
                }
            }
        }
        Ok(record)
    }

    /// [`JoinStore::redeem`]'s checks, using nothing up.
    pub fn check(
        &self,
        secret: &str,
        namespace: &str,
        workload: &str,
        now: SystemTime,
    ) -> Result<JoinRecord, JoinError> {
        if secret.len() != SECRET_HEX || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinError::Unknown);
        }
        let path = self.path_of(secret);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(JoinError::Unknown),
            Err(source) => return Err(JoinError::Io { path, source }),
        };
        let record: JoinRecord =
            serde_json::from_slice(&text).map_err(|e| JoinError::BadRecord {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if unix(now) >= record.expires_at {
            return Err(JoinError::Expired);
        }
        if record.namespace != namespace || !record.workloads.iter().any(|w| w == workload) {
            return Err(JoinError::WrongWorkload {
                namespace: record.namespace,
                workloads: record.workloads,
                asked: format!(
                    "{}/{}",
                    namespace.chars().take(64).collect::<String>(),
                    workload.chars().take(64).collect::<String>()
                ),
            });
        }
        Ok(record)
    }

    /// Revokes every credential that may join as `namespace/workload`; how many there were.
    pub fn revoke(&self, namespace: &str, workload: &str) -> Result<usize, JoinError> {
        let mut n = 0;
        for (path, record) in self.list()? {
            if record.namespace == namespace && record.workloads.iter().any(|w| w == workload) {
                match std::fs::remove_file(&path) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(JoinError::Io { path, source }),
                }
            }
        }
        Ok(n)
    }

    /// Every record (unreadable ones are skipped), with its file.
    pub fn list(&self) -> Result<Vec<(PathBuf, JoinRecord)>, JoinError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(JoinError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json")
                && let Ok(text) = std::fs::read(&path)
                && let Ok(r) = serde_json::from_slice::<JoinRecord>(&text)
            {
                out.push((path, r));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn path_of(&self, secret: &str) -> PathBuf {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
        let name: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }
}

/// A Kubernetes-style name: 1–253 of `a-z 0-9 - .`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `s` refuses `secret` for `ns/w` at `at` (`None`: accepted).
    fn refusal(
        s: &JoinStore,
        secret: &str,
        ns: &str,
        w: &str,
        at: SystemTime,
    ) -> Option<&'static str> {
        s.redeem(secret, ns, w, at).err().map(|e| e.reason())
    }

    fn store(name: &str) -> (PathBuf, JoinStore) {
        let dir = std::env::temp_dir().join(format!("meshfed-join-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (dir.clone(), JoinStore::new(&dir))
    }

    #[test]
    fn a_credential_yields_only_its_workload_until_it_expires() {
        let (dir, s) = store("bound");
        let now = SystemTime::now();
        let m = s
            .mint("shop", &["echo-1"], Duration::from_secs(60), false, now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.redeem(&m.secret, "shop", "echo-1", now).is_ok());
        // Reusable until it expires (a restarted workload joins again).
        assert!(s.redeem(&m.secret, "shop", "echo-1", now).is_ok());
        for (ns, w) in [
            ("shop", "echo-2"),
            ("meshfed-system", "egress-beta"),
            ("web", "echo-1"),
        ] {
            let e = refusal(&s, &m.secret, ns, w, now);
            assert_eq!(e, Some("WrongWorkload"), "{ns}/{w}");
        }
        let later = now + Duration::from_secs(61);
        let e = refusal(&s, &m.secret, "shop", "echo-1", later);
        assert_eq!(e, Some("CredentialExpired"));
        for bad in [
            "",
            "00",
            &"g".repeat(64),
            &m.secret[..63],
            &format!("{}0", m.secret),
        ] {
            let e = refusal(&s, bad, "shop", "echo-1", now);
            assert_eq!(e, Some("UnknownCredential"), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_once_only_credential_is_used_up_and_records_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, s) = store("once");
        let now = SystemTime::now();
        let m = s
            .mint("shop", &["echo-1"], Duration::from_secs(60), true, now)
            .unwrap_or_else(|e| panic!("{e}"));
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        assert_eq!(mode(&dir.join("joins")), Some(0o700));
        let listed = s.list().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.len(), 1);
        assert_eq!(mode(&listed[0].0), Some(0o600));
        // The secret itself is kept nowhere.
        let text = std::fs::read_to_string(&listed[0].0).unwrap_or_default();
        assert!(!text.contains(&m.secret));
        // Checking uses nothing up; redeeming does, once.
        assert!(s.check(&m.secret, "shop", "echo-1", now).is_ok());
        assert!(s.redeem(&m.secret, "shop", "echo-1", now).is_ok());
        let e = refusal(&s, &m.secret, "shop", "echo-1", now);
        assert_eq!(e, Some("UnknownCredential"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn revoking_removes_every_credential_of_a_workload_and_bad_input_is_refused() {
        let (dir, s) = store("revoke");
        let now = SystemTime::now();
        let ttl = Duration::from_secs(60);
        let a = s
            .mint("shop", &["echo-1"], ttl, false, now)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = s
            .mint("shop", &["echo-1"], ttl, false, now)
            .unwrap_or_else(|e| panic!("{e}"));
        let c = s
            .mint("shop", &["echo-2"], ttl, false, now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.revoke("shop", "echo-1").ok(), Some(2));
        for m in [&a, &b] {
            assert!(s.redeem(&m.secret, "shop", "echo-1", now).is_err());
        }
        assert!(s.redeem(&c.secret, "shop", "echo-2", now).is_ok());
        for (ns, w, ttl, once, reason) in [
            ("Shop", &["echo"][..], ttl, false, "BadName"),
            ("shop", &[""], ttl, false, "BadName"),
            ("shop", &["a/b"], ttl, false, "BadName"),
            ("shop", &["echo", "A"], ttl, false, "BadName"),
            ("shop", &[], ttl, false, "BadWorkloads"),
            ("shop", &["a", "b"], ttl, true, "BadWorkloads"),
            ("shop", &["echo"], Duration::ZERO, false, "BadTtl"),
            ("shop", &["echo"], MAX_TTL * 2, false, "BadTtl"),
        ] {
            let e = s.mint(ns, w, ttl, once, now).err().map(|e| e.reason());
            assert_eq!(e, Some(reason), "{ns}/{w:?}");
        }
        // A gateway's credential: its ingress and egress, nothing else.
        let gw = s
            .mint(
                "alpha-system",
                &["ingress-beta", "egress-beta"],
                ttl,
                false,
                now,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        for w in ["ingress-beta", "egress-beta"] {
            assert!(s.redeem(&gw.secret, "alpha-system", w, now).is_ok());
        }
        assert!(
            s.redeem(&gw.secret, "alpha-system", "egress-gamma", now)
                .is_err()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
