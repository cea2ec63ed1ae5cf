//! meshfed's persisted state: a sled database used as a *rebuildable cache* of what peers last
//! exported to us, so that after a restart with a peer unreachable the last-known imports are
//! served at once (flagged stale) — static stability.
//!
//! Nothing here is trusted: every record carries a schema version and is decoded defensively;
//! a record that does not decode is dropped and reported, the others kept. A store that does
//! not open, or was written by a newer schema, is moved aside with a reason and rebuilt empty
//! from peers — never a crash loop. Because release builds abort on panic, an `opening`
//! marker beside the directory records an open in progress: if a previous open never finished
//! (sled crashed on a corrupt file), the next start quarantines the store before touching it.
//!
//! Only this crate touches sled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use meshfed_core::PeerName;
use meshfed_core::import::RemoteService;
use serde::{Deserialize, Serialize};

/// The record schema this build writes and reads.
pub const SCHEMA: u32 = 1;
const META_SCHEMA: &[u8] = b"schema";
const IMPORTS: &str = "imports/v1";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("store: {0}")]
    Sled(String),
    #[error("encoding a record: {0}")]
    Encode(String),
    #[error("{path} is in use by another process or handle: {detail}")]
    Locked { path: PathBuf, detail: String },
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io { .. } => "StoreIo",
            Self::Sled(_) => "StoreBackend",
            Self::Encode(_) => "StoreEncode",
            Self::Locked { .. } => "StoreLocked",
        }
    }
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Sled(e.to_string())
}

/// Why a store was moved aside and rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Stable token: `StoreUnreadable`, `SchemaTooNew`, `InterruptedOpen`.
    pub reason: &'static str,
    pub detail: String,
    /// Where the old directory now is.
    pub moved_to: PathBuf,
}

/// A record that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub key: String,
    /// Stable token: `BadKey`, `Undecodable`, `SchemaTooNew`, `InvalidRecord` (it decodes, but
    /// holds what no peer could have sent: port 0, an identity that names no workload).
    pub reason: &'static str,
    pub detail: String,
}

/// Decodes one imports record as stored under `key`: the peer it belongs to and what it
/// holds, or why it cannot be used. Pure: the store's own bytes are read as hostile ones.
pub fn decode_record(key: &[u8], value: &[u8]) -> Result<(PeerName, ImportRecord), Dropped> {
    let key = String::from_utf8_lossy(key).into_owned();
    let drop = |key: String, reason: &'static str, detail: String| Dropped {
        key,
        reason,
        detail,
    };
    let Ok(peer) = key.parse::<PeerName>() else {
        return Err(drop(key, "BadKey", "not a peer name".into()));
    };
    // The schema first: a newer record's body may have another shape.
    let env = serde_json::from_slice::<Envelope<serde_json::Value>>(value)
        .map_err(|e| drop(key.clone(), "Undecodable", e.to_string()))?;
    if env.schema > SCHEMA {
        return Err(drop(
            key,
            "SchemaTooNew",
            format!("record schema {}", env.schema),
        ));
    }
    let rec = serde_json::from_value::<ImportRecord>(env.body)
        .map_err(|e| drop(key.clone(), "Undecodable", e.to_string()))?;
    if let Some(detail) = invalid_service(&rec) {
        return Err(drop(key, "InvalidRecord", detail));
    }
    Ok((peer, rec))
}

/// What makes a decoded record one no peer could have sent (the peering stream refuses the
/// same): the types check names and identities as they decode, not these.
fn invalid_service(rec: &ImportRecord) -> Option<String> {
    rec.services.iter().find_map(|s| {
        if let Some(p) = s.ports.iter().find(|p| p.port == 0) {
            return Some(format!("{}: port {:?} is 0", s.exported_name, p.name));
        }
        s.service_accounts
            .iter()
            .find(|id| !id.is_workload())
            .map(|id| format!("{}: {id} names no workload", s.exported_name))
    })
}

/// The last imports received from one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportRecord {
    /// The exporter epoch and version these services are at.
    pub epoch: u64,
    pub version: u64,
    pub services: Vec<RemoteService>,
    /// When they were saved, seconds since the Unix epoch.
    pub saved_at: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    schema: u32,
    body: T,
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    imports: sled::Tree,
}

fn marker(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".opening");
    PathBuf::from(p)
}

fn quarantine(path: &Path, reason: &'static str, detail: String) -> Result<Rebuilt, StoreError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut n = 0;
    let moved_to = loop {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".quarantine-{stamp}-{n}"));
        let p = PathBuf::from(p);
        if !p.exists() {
            break p;
        }
        n += 1;
    };
    if path.exists() {
        std::fs::rename(path, &moved_to).map_err(|e| StoreError::Io {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(Rebuilt {
        reason,
        detail,
        moved_to,
    })
}

/// sled reports a held file lock as an I/O error with this text (and `WouldBlock` inside).
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl Store {
    /// Opens (or creates) the store at `path`. A store that cannot be used is moved aside and
    /// a fresh one created; the report says why. Errors only when even a fresh store cannot be
    /// created (disk full, read-only filesystem).
    pub fn open(path: &Path) -> Result<(Self, Option<Rebuilt>), StoreError> {
        let mut rebuilt = None;
        let mark = marker(path);
        if mark.exists() {
            rebuilt = Some(quarantine(
                path,
                "InterruptedOpen",
                "a previous open did not finish (crash on a corrupt store?)".into(),
            )?);
        }
        let write_mark = || {
            std::fs::write(&mark, b"").map_err(|e| StoreError::Io {
                path: mark.clone(),
                detail: e.to_string(),
            })
        };
        // The store and the folders made for it are the owner's alone, whatever the umask
        // (sled itself would follow it).
        let private = |dir: &Path| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StoreError::Io {
                    path: dir.to_owned(),
                    detail: e.to_string(),
                })
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            private(parent)?;
        }
        write_mark()?;
        private(path)?;
        let store = match Self::try_open(path) {
            Ok(s) => s,
            Err(("StoreLocked", detail)) => {
                let _ = std::fs::remove_file(&mark);
                return Err(StoreError::Locked {
                    path: path.to_owned(),
                    detail,
                });
            }
            Err((reason, detail)) => {
                rebuilt = Some(quarantine(path, reason, detail)?);
                Self::try_open(path).map_err(|(_, d)| StoreError::Sled(d))?
            }
        };
        let _ = std::fs::remove_file(&mark);
        Ok((store, rebuilt))
    }

    fn try_open(path: &Path) -> Result<Self, (&'static str, String)> {
        // A store locked by another handle or process is busy, not corrupt: wait a little,
        // and never quarantine it.
        let mut attempt = 0;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    attempt += 1;
                    if attempt > 60 {
                        return Err(("StoreLocked", e.to_string()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(("StoreUnreadable", e.to_string())),
            }
        };
        match db
            .get(META_SCHEMA)
            .map_err(|e| ("StoreUnreadable", e.to_string()))?
        {
            Some(v) => {
                let schema = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_le_bytes)
                    .map_err(|_| ("StoreUnreadable", "schema marker is not 4 bytes".to_owned()))?;
                if schema > SCHEMA {
                    return Err((
                        "SchemaTooNew",
                        format!("written by schema {schema}; this build reads up to {SCHEMA}"),
                    ));
                }
            }
            None => {
                db.insert(META_SCHEMA, &SCHEMA.to_le_bytes())
                    .map_err(|e| ("StoreUnreadable", e.to_string()))?;
            }
        }
        let imports = db
            .open_tree(IMPORTS)
            .map_err(|e| ("StoreUnreadable", e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            db,
            imports,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Saves one peer's imports and flushes them to disk.
    pub fn save_imports(&self, peer: &PeerName, record: &ImportRecord) -> Result<(), StoreError> {
        let body = serde_json::to_vec(&Envelope {
            schema: SCHEMA,
            body: record,
        })
        .map_err(|e| StoreError::Encode(e.to_string()))?;
        self.imports
            .insert(peer.as_str().as_bytes(), body)
            .map_err(sled_err)?;
        self.imports.flush().map_err(sled_err)?;
        Ok(())
    }

    /// Forgets a peer (it was deleted).
    pub fn remove_peer(&self, peer: &PeerName) -> Result<(), StoreError> {
        self.imports
            .remove(peer.as_str().as_bytes())
            .map_err(sled_err)?;
        self.imports.flush().map_err(sled_err)?;
        Ok(())
    }

    /// Every peer's saved imports; records that cannot be used are dropped and listed.
    pub fn load_imports(&self) -> (BTreeMap<PeerName, ImportRecord>, Vec<Dropped>) {
        let mut out = BTreeMap::new();
        let mut dropped = Vec::new();
        for item in self.imports.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    dropped.push(Dropped {
                        key: String::new(),
                        reason: "Undecodable",
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            match decode_record(&k, &v) {
                Ok((peer, rec)) => {
                    out.insert(peer, rec);
                }
                Err(d) => dropped.push(d),
            }
        }
        (out, dropped)
    }

    /// Writes raw bytes under a key (tests use it to plant corrupt records).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.imports.insert(key, value).map_err(sled_err)?;
        Ok(())
    }

    /// Flushes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(sled_err)?;
        Ok(())
    }
}
