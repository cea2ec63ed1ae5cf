//! What flows over a peering stream, sans-IO: the exporter turns its export view into a
//! chunked snapshot and then versioned deltas ([`ExportStream`]); the importer applies them to
//! its last good state or NACKs with a reason, never applying half a message
//! ([`ImportState`]).
//!
//! Versions rise within an exporter *epoch* (a random number per exporter start). A snapshot
//! or delta that does not move the version forward in the same epoch is refused, so a replayed
//! old snapshot can never bring back a withdrawn export (invariant I3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::Hostname;
use crate::import::RemoteService;

/// Bounds the importer enforces on what a peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most services one peer may export to us. Default 50,000.
    pub max_services: usize,
    /// Most ports per service. Default 64.
    pub max_ports: usize,
    /// Most service accounts per service. Default 32.
    pub max_accounts: usize,
    /// Most services per snapshot chunk or delta. Default 1,000.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: 50_000,
            max_ports: 64,
            max_accounts: 32,
            max_batch: 1_000,
        }
    }
}

/// One chunk of a full snapshot; chunk numbers start at 0, the last is marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub epoch: u64,
    pub version: u64,
    pub chunk: u32,
    pub last: bool,
    pub services: Vec<RemoteService>,
}

/// Changes from version `base` to `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub epoch: u64,
    pub base: u64,
    pub version: u64,
    pub upserts: Vec<RemoteService>,
    pub removals: Vec<Hostname>,
}

/// Why the importer refused a message; sent back as a NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {version}: {reason}: {detail}")]
pub struct Nack {
    pub version: u64,
    /// Stable token: `DeltaBeforeSnapshot`, `EpochMismatch`, `VersionGap`, `VersionRegression`,
    /// `ChunkOutOfOrder`, `DuplicateService`, `TooManyServices`, `TooManyPorts`,
    /// `TooManyAccounts`, `BatchTooLarge`.
    pub reason: &'static str,
    pub detail: String,
}

fn nack(version: u64, reason: &'static str, detail: impl Into<String>) -> Nack {
    Nack {
        version,
        reason,
        detail: detail.into(),
    }
}

/// What applying a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A snapshot chunk was buffered; the state changes at the last chunk.
    Buffered,
    /// The state moved to this version; ACK it.
    Version(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Assembly {
    epoch: u64,
    version: u64,
    next: u32,
    services: BTreeMap<Hostname, RemoteService>,
}

/// The importer's view of one peer's exports: the last good state, and whether it is stale.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportState {
    epoch: Option<u64>,
    version: Option<u64>,
    services: BTreeMap<Hostname, RemoteService>,
    stale: bool,
    /// A snapshot being received in chunks; not persisted.
    #[serde(skip)]
    assembling: Option<Box<Assembly>>,
}

impl ImportState {
    /// The state restored from the store: served at once, flagged stale until the peer speaks.
    pub fn restored(epoch: u64, version: u64, services: Vec<RemoteService>) -> Self {
        Self {
            epoch: Some(epoch),
            version: Some(version),
            services: services
                .into_iter()
                .map(|s| (s.exported_name.clone(), s))
                .collect(),
            stale: true,
            assembling: None,
        }
    }

    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    pub fn services(&self) -> &BTreeMap<Hostname, RemoteService> {
        &self.services
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Marks the imports stale (peer silent or gone) or fresh.
    pub fn set_stale(&mut self, stale: bool) {
        self.stale = stale;
    }

    fn check_service(s: &RemoteService, version: u64, limits: &Limits) -> Result<(), Nack> {
        if s.ports.len() > limits.max_ports {
            return Err(nack(
                version,
                "TooManyPorts",
                format!("{}: {} ports", s.exported_name, s.ports.len()),
            ));
        }
        if s.service_accounts.len() > limits.max_accounts {
            return Err(nack(
                version,
                "TooManyAccounts",
                format!("{}: {} accounts", s.exported_name, s.service_accounts.len()),
            ));
        }
        Ok(())
    }

    /// Applies one snapshot chunk. A bad chunk drops the partial snapshot; the last good state
    /// stays in force.
    pub fn apply_snapshot(&mut self, c: SnapshotChunk, limits: &Limits) -> Result<Applied, Nack> {
        let v = c.version;
        let result = self.snapshot_inner(c, limits);
        if result.is_err() {
            self.assembling = None;
        }
        result.map_err(|mut e| {
            e.version = v;
            e
        })
    }

    fn snapshot_inner(&mut self, c: SnapshotChunk, limits: &Limits) -> Result<Applied, Nack> {
        if c.services.len() > limits.max_batch {
            return Err(nack(
                c.version,
                "BatchTooLarge",
                format!("{} services in one chunk", c.services.len()),
            ));
        }
        if c.chunk == 0 {
            self.assembling = Some(Box::new(Assembly {
                epoch: c.epoch,
                version: c.version,
                next: 0,
                services: BTreeMap::new(),
            }));
        }
        let asm = match self.assembling.as_mut() {
            Some(a) if a.epoch == c.epoch && a.version == c.version && a.next == c.chunk => a,
            _ => {
                return Err(nack(
                    c.version,
                    "ChunkOutOfOrder",
                    format!("unexpected chunk {}", c.chunk),
                ));
            }
        };
        for s in c.services {
            Self::check_service(&s, c.version, limits)?;
            let name = s.exported_name.clone();
            if asm.services.insert(name.clone(), s).is_some() {
                return Err(nack(
                    c.version,
                    "DuplicateService",
                    format!("{name} appears twice"),
                ));
            }
            if asm.services.len() > limits.max_services {
                return Err(nack(
                    c.version,
                    "TooManyServices",
                    format!("more than {} services", limits.max_services),
                ));
            }
        }
        asm.next = asm.next.saturating_add(1);
        if !c.last {
            return Ok(Applied::Buffered);
        }
        let Some(asm) = self.assembling.take() else {
            return Err(nack(
                c.version,
                "ChunkOutOfOrder",
                "no snapshot in progress",
            ));
        };
        if self.epoch == Some(asm.epoch) && self.version.is_some_and(|cur| asm.version <= cur) {
            return Err(nack(
                asm.version,
                "VersionRegression",
                format!(
                    "snapshot version {} is not above {}",
                    asm.version,
                    self.version.unwrap_or(0)
                ),
            ));
        }
        self.epoch = Some(asm.epoch);
        self.version = Some(asm.version);
        self.services = asm.services;
        self.stale = false;
        Ok(Applied::Version(asm.version))
    }

    /// Applies a delta atomically, or refuses it whole.
    pub fn apply_delta(&mut self, d: Delta, limits: &Limits) -> Result<Applied, Nack> {
        let (Some(epoch), Some(cur)) = (self.epoch, self.version) else {
            return Err(nack(
                d.version,
                "DeltaBeforeSnapshot",
                "no snapshot yet; send one",
            ));
        };
        if self.stale {
            // Restored or silent state: only a fresh snapshot re-establishes the base.
            return Err(nack(
                d.version,
                "DeltaBeforeSnapshot",
                "state is stale; send a snapshot",
            ));
        }
        if d.epoch != epoch {
            return Err(nack(
                d.version,
                "EpochMismatch",
                "the exporter restarted; send a snapshot",
            ));
        }
        if d.base != cur {
            return Err(nack(
                d.version,
                "VersionGap",
                format!("delta from {} but we are at {cur}", d.base),
            ));
        }
        if d.version <= d.base {
            return Err(nack(
                d.version,
                "VersionRegression",
                format!("delta to {} from {}", d.version, d.base),
            ));
        }
        if d.upserts.len() + d.removals.len() > limits.max_batch {
            return Err(nack(
                d.version,
                "BatchTooLarge",
                "too many changes in one delta",
            ));
        }
        // Validate everything first, then change the state in place: O(changes), not O(state).
        let mut seen = std::collections::BTreeSet::new();
        for s in &d.upserts {
            Self::check_service(s, d.version, limits)?;
            if !seen.insert(&s.exported_name) {
                return Err(nack(
                    d.version,
                    "DuplicateService",
                    format!("{} appears twice", s.exported_name),
                ));
            }
        }
        let added = d
            .upserts
            .iter()
            .filter(|s| !self.services.contains_key(&s.exported_name))
            .count();
        let removed = d
            .removals
            .iter()
            .filter(|r| self.services.contains_key(*r) && !seen.contains(r))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if self.services.len() + added - removed > limits.max_services {
            return Err(nack(
                d.version,
                "TooManyServices",
                format!("more than {} services", limits.max_services),
            ));
        }
        for s in d.upserts {
            self.services.insert(s.exported_name.clone(), s);
        }
        for r in d.removals {
            self.services.remove(&r);
        }
        self.version = Some(d.version);
        Ok(Applied::Version(d.version))
    }
}

/// Upserts and removals that turn `old` into `new`.
pub fn diff(
    old: &BTreeMap<Hostname, RemoteService>,
    new: &BTreeMap<Hostname, RemoteService>,
) -> (Vec<RemoteService>, Vec<Hostname>) {
    let upserts = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let removals = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (upserts, removals)
}

/// Hands out an exporter's versions within its epoch: every message of every stream gets a
/// number above all handed out before, so a stream that follows another to the same peer (a
/// reconnect after a partition) never starts again at a version the importer already holds
/// — which it would refuse as a regression. Cloning shares the clock.
#[derive(Debug, Clone, Default)]
pub struct VersionClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl VersionClock {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

/// The exporter's side of one stream: what the peer was last sent, and its last version.
#[derive(Debug, Clone)]
pub struct ExportStream {
    epoch: u64,
    version: u64,
    clock: VersionClock,
    sent: BTreeMap<Hostname, RemoteService>,
    batch: usize,
}

impl ExportStream {
    /// A stream in exporter epoch `epoch`, sending at most `batch` services per message, with
    /// a version clock of its own (the exporter's only stream of the epoch).
    pub fn new(epoch: u64, batch: usize) -> Self {
        Self::with_clock(epoch, batch, VersionClock::default())
    }

    /// [`ExportStream::new`], numbering its messages from the exporter's shared `clock`.
    pub fn with_clock(epoch: u64, batch: usize, clock: VersionClock) -> Self {
        Self {
            epoch,
            version: 0,
            clock,
            sent: BTreeMap::new(),
            batch: batch.max(1),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// A full snapshot of `view` as the next version, in chunks.
    pub fn snapshot(&mut self, view: &BTreeMap<Hostname, RemoteService>) -> Vec<SnapshotChunk> {
        self.version = self.clock.next();
        self.sent = view.clone();
        let all: Vec<RemoteService> = view.values().cloned().collect();
        let mut chunks: Vec<SnapshotChunk> = all
            .chunks(self.batch)
            .enumerate()
            .map(|(i, c)| SnapshotChunk {
                epoch: self.epoch,
                version: self.version,
                chunk: u32::try_from(i).unwrap_or(u32::MAX),
                last: false,
                services: c.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(SnapshotChunk {
                epoch: self.epoch,
                version: self.version,
                chunk: 0,
                last: true,
                services: vec![],
            });
        }
        if let Some(l) = chunks.last_mut() {
            l.last = true;
        }
        chunks
    }

    /// The deltas that bring the peer from what it was sent to `view` (none if unchanged).
    /// A change too large for one message becomes several consecutive deltas.
    pub fn deltas(&mut self, view: &BTreeMap<Hostname, RemoteService>) -> Vec<Delta> {
        let (upserts, removals) = diff(&self.sent, view);
        let mut changes: Vec<(Option<RemoteService>, Option<Hostname>)> =
            upserts.into_iter().map(|u| (Some(u), None)).collect();
        changes.extend(removals.into_iter().map(|r| (None, Some(r))));
        let mut out = Vec::new();
        for batch in changes.chunks(self.batch) {
            let base = self.version;
            self.version = self.clock.next();
            out.push(Delta {
                epoch: self.epoch,
                base,
                version: self.version,
                upserts: batch.iter().filter_map(|(u, _)| u.clone()).collect(),
                removals: batch.iter().filter_map(|(_, r)| r.clone()).collect(),
            });
        }
        self.sent = view.clone();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, port: u16) -> RemoteService {
        RemoteService {
            exported_name: format!("{name}.shop.svc.p-exports.local").parse().unwrap(),
            key: format!("shop/{name}").parse().unwrap(),
            ports: vec![crate::ServicePort {
                name: "http".into(),
                port,
                protocol: crate::Protocol::Http,
            }],
            service_accounts: vec![],
        }
    }

    fn view(items: &[(&str, u16)]) -> BTreeMap<Hostname, RemoteService> {
        items
            .iter()
            .map(|(n, p)| svc(n, *p))
            .map(|s| (s.exported_name.clone(), s))
            .collect()
    }

    fn sync(exp: &mut ExportStream, imp: &mut ImportState, v: &BTreeMap<Hostname, RemoteService>) {
        let limits = Limits::default();
        for c in exp.snapshot(v) {
            imp.apply_snapshot(c, &limits).unwrap();
        }
    }

    #[test]
    fn snapshot_then_deltas() {
        let limits = Limits {
            max_batch: 2,
            ..Limits::default()
        };
        let mut exp = ExportStream::new(42, 2);
        let mut imp = ImportState::default();
        let v1 = view(&[("a", 1), ("b", 1), ("c", 1)]);
        let chunks = exp.snapshot(&v1);
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            imp.apply_snapshot(chunks[0].clone(), &limits),
            Ok(Applied::Buffered)
        );
        assert!(
            imp.services().is_empty(),
            "nothing applied before the last chunk"
        );
        assert_eq!(
            imp.apply_snapshot(chunks[1].clone(), &limits),
            Ok(Applied::Version(1))
        );
        assert_eq!(imp.services(), &v1);
        let v2 = view(&[("a", 2), ("c", 1), ("d", 1)]);
        let deltas = exp.deltas(&v2);
        for d in deltas {
            assert!(matches!(
                imp.apply_delta(d, &limits),
                Ok(Applied::Version(_))
            ));
        }
        assert_eq!(imp.services(), &v2);
        assert!(exp.deltas(&v2).is_empty());
    }

    #[test]
    fn refusals_keep_the_last_good_state() {
        let limits = Limits::default();
        let mut imp = ImportState::default();
        let d = Delta {
            epoch: 1,
            base: 0,
            version: 1,
            upserts: vec![svc("a", 1)],
            removals: vec![],
        };
        assert_eq!(
            imp.apply_delta(d.clone(), &limits).unwrap_err().reason,
            "DeltaBeforeSnapshot"
        );
        let mut exp = ExportStream::new(1, 100);
        let v1 = view(&[("a", 1)]);
        sync(&mut exp, &mut imp, &v1);
        let good = imp.clone();
        // Gap, regression, other epoch, duplicates.
        let gap = Delta {
            epoch: 1,
            base: 5,
            version: 6,
            upserts: vec![],
            removals: vec![],
        };
        assert_eq!(
            imp.apply_delta(gap, &limits).unwrap_err().reason,
            "VersionGap"
        );
        let back = Delta {
            epoch: 1,
            base: 1,
            version: 1,
            upserts: vec![],
            removals: vec![],
        };
        assert_eq!(
            imp.apply_delta(back, &limits).unwrap_err().reason,
            "VersionRegression"
        );
        let other = Delta {
            epoch: 2,
            base: 1,
            version: 2,
            upserts: vec![],
            removals: vec![],
        };
        assert_eq!(
            imp.apply_delta(other, &limits).unwrap_err().reason,
            "EpochMismatch"
        );
        let dup = Delta {
            epoch: 1,
            base: 1,
            version: 2,
            upserts: vec![svc("b", 1), svc("b", 2)],
            removals: vec![],
        };
        assert_eq!(
            imp.apply_delta(dup, &limits).unwrap_err().reason,
            "DuplicateService"
        );
        assert_eq!(imp, good);
        // Snapshot faults: out of order, duplicates, too many, replay of an old version.
        let c = SnapshotChunk {
            epoch: 1,
            version: 9,
            chunk: 1,
            last: true,
            services: vec![],
        };
        assert_eq!(
            imp.apply_snapshot(c, &limits).unwrap_err().reason,
            "ChunkOutOfOrder"
        );
        let c = SnapshotChunk {
            epoch: 1,
            version: 9,
            chunk: 0,
            last: true,
            services: vec![svc("x", 1), svc("x", 1)],
        };
        assert_eq!(
            imp.apply_snapshot(c, &limits).unwrap_err().reason,
            "DuplicateService"
        );
        let small = Limits {
            max_services: 1,
            ..limits
        };
        let c = SnapshotChunk {
            epoch: 1,
            version: 9,
            chunk: 0,
            last: true,
            services: vec![svc("x", 1), svc("y", 1)],
        };
        assert_eq!(
            imp.apply_snapshot(c, &small).unwrap_err().reason,
            "TooManyServices"
        );
        let replay = SnapshotChunk {
            epoch: 1,
            version: 1,
            chunk: 0,
            last: true,
            services: vec![svc("withdrawn", 1)],
        };
        assert_eq!(
            imp.apply_snapshot(replay, &limits).unwrap_err().reason,
            "VersionRegression"
        );
        assert_eq!(imp, good);
        // A new epoch (exporter restarted) starts over.
        let fresh = SnapshotChunk {
            epoch: 2,
            version: 1,
            chunk: 0,
            last: true,
            services: vec![svc("z", 1)],
        };
        assert_eq!(imp.apply_snapshot(fresh, &limits), Ok(Applied::Version(1)));
        assert_eq!(imp.services().len(), 1);
    }

    #[test]
    fn restored_state_is_stale_until_a_snapshot() {
        let limits = Limits::default();
        let mut imp = ImportState::restored(7, 3, vec![svc("a", 1)]);
        assert!(imp.is_stale());
        assert_eq!(imp.services().len(), 1, "served at once");
        let d = Delta {
            epoch: 7,
            base: 3,
            version: 4,
            upserts: vec![],
            removals: vec![],
        };
        assert_eq!(
            imp.apply_delta(d, &limits).unwrap_err().reason,
            "DeltaBeforeSnapshot"
        );
        let s = SnapshotChunk {
            epoch: 8,
            version: 1,
            chunk: 0,
            last: true,
            services: vec![svc("b", 1)],
        };
        assert_eq!(imp.apply_snapshot(s, &limits), Ok(Applied::Version(1)));
        assert!(!imp.is_stale());
        assert!(imp.services().contains_key(&svc("b", 1).exported_name));
    }

    #[test]
    fn empty_views_still_send_one_chunk() {
        let mut exp = ExportStream::new(1, 10);
        let chunks = exp.snapshot(&BTreeMap::new());
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].last);
    }
}
