//! A gateway's counters: for `/status` (JSON) and `/metrics` (Prometheus / OpenMetrics text).
//!
//! Labels are bounded: the role (`ingress`, `egress`, `discovery`), configured peer names (`-`
//! when the caller is not a known peer), fixed refusal reasons and byte directions — never
//! addresses, server names or identities.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The last probe of a peer's ingress (egress only).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub at: SystemTime,
    /// The tunnel's round-trip time: QUIC's smoothed estimate, or the TCP connect time.
    pub rtt: Option<Duration>,
    /// Why the probe failed; `None` when the peer's ingress answered and authenticated.
    pub error: Option<String>,
}

/// Per-peer counters, shared by every stream of that peer.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Streams relayed (accepted by the ingress / carried by the egress).
    pub streams: AtomicU64,
    pub active: AtomicU64,
    pub bytes_to_peer: AtomicU64,
    pub bytes_from_peer: AtomicU64,
    pub probes_ok: AtomicU64,
    pub probes_failed: AtomicU64,
    probe: Mutex<Option<Probe>>,
}

impl PeerCounters {
    /// The last probe, if any ran.
    pub fn probe(&self) -> Option<Probe> {
        self.probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record_probe(&self, p: Probe) {
        if p.error.is_none() {
            self.probes_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.probes_failed.fetch_add(1, Ordering::Relaxed);
        }
        *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(p);
    }

    /// The last probe reached the peer.
    pub fn reachable(&self) -> Option<bool> {
        self.probe().map(|p| p.error.is_none())
    }
}

/// One gateway's counts.
#[derive(Debug)]
pub struct GatewayStats {
    /// `ingress`, `egress` or `discovery`.
    pub role: &'static str,
    /// Connections (TCP) or QUIC streams accepted.
    pub accepted: AtomicU64,
    /// Connections or streams being handled now.
    pub active: AtomicU64,
    /// Upstream connections opened (to local endpoints at an ingress, tunnels at an egress).
    pub upstream_connections: AtomicU64,
    /// Refusals by (peer, reason); the peer is `-` when unknown.
    pub denials: Mutex<BTreeMap<(String, String), u64>>,
    peers: Mutex<BTreeMap<String, Arc<PeerCounters>>>,
}

impl GatewayStats {
    pub fn new(role: &'static str) -> Self {
        Self {
            role,
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            upstream_connections: AtomicU64::new(0),
            denials: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn deny(&self, peer: &str, reason: &str) {
        *self
            .denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((peer.to_owned(), reason.to_owned()))
            .or_default() += 1;
    }

    /// The counters of `peer` (created on first use; peers are configured names).
    pub fn peer(&self, peer: &str) -> Arc<PeerCounters> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(peer.to_owned())
            .or_default()
            .clone()
    }

    /// The peers with counters.
    pub fn peer_names(&self) -> Vec<String> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn peer_list(&self) -> Vec<(String, Arc<PeerCounters>)> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Refusals with `reason`, across peers.
    pub fn denied(&self, reason: &str) -> u64 {
        self.denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((_, r), _)| r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// The counts as JSON (the gateway's `/status`).
    pub fn to_json(&self) -> serde_json::Value {
        let denials: Vec<serde_json::Value> = self
            .denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((peer, reason), n)| serde_json::json!({"peer": peer, "reason": reason, "count": n}))
            .collect();
        let peers: serde_json::Map<String, serde_json::Value> = self
            .peer_list()
            .into_iter()
            .map(|(name, c)| {
                let mut v = serde_json::json!({
                    "streams": c.streams.load(Ordering::Relaxed),
                    "activeStreams": c.active.load(Ordering::Relaxed),
                    "bytesToPeer": c.bytes_to_peer.load(Ordering::Relaxed),
                    "bytesFromPeer": c.bytes_from_peer.load(Ordering::Relaxed),
                });
                if let Some(p) = c.probe() {
                    v["reachable"] = p.error.is_none().into();
                    v["rttMs"] = p.rtt.map(|d| d.as_secs_f64() * 1e3).into();
                    v["probeError"] = p.error.clone().into();
                    v["probedAt"] =
                        p.at.duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                            .into();
                }
                (name, v)
            })
            .collect();
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "active": self.active.load(Ordering::Relaxed),
            "upstreamConnections": self.upstream_connections.load(Ordering::Relaxed),
            "denials": denials,
            "peers": peers,
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    role: &'static str,
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    role: &'static str,
    peer: String,
    /// `to_peer` or `from_peer`.
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    role: &'static str,
    peer: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    peer: String,
    /// `ok` or `failed`.
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReachLabels {
    peer: String,
}

/// Every gateway's counts in the OpenMetrics text format (`/metrics`).
pub fn encode_metrics(all: &[&GatewayStats]) -> String {
    let mut reg = Registry::with_prefix("meshfed_gateway");
    let accepted = Family::<RoleLabels, Counter>::default();
    let active = Family::<RoleLabels, Gauge>::default();
    let upstream = Family::<RoleLabels, Counter>::default();
    let streams = Family::<PeerLabels, Counter>::default();
    let active_streams = Family::<PeerLabels, Gauge>::default();
    let bytes = Family::<BytesLabels, Counter>::default();
    let denials = Family::<DenialLabels, Counter>::default();
    let probes = Family::<ProbeLabels, Counter>::default();
    let reachable = Family::<ReachLabels, Gauge>::default();
    let rtt = Family::<ReachLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for s in all {
        let role = RoleLabels { role: s.role };
        accepted
            .get_or_create(&role)
            .inc_by(s.accepted.load(Ordering::Relaxed));
        active
            .get_or_create(&role)
            .set(i64::try_from(s.active.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        upstream
            .get_or_create(&role)
            .inc_by(s.upstream_connections.load(Ordering::Relaxed));
        for ((peer, reason), n) in s
            .denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            denials
                .get_or_create(&DenialLabels {
                    role: s.role,
                    peer: peer.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
        for (peer, c) in s.peer_list() {
            let pl = PeerLabels {
                role: s.role,
                peer: peer.clone(),
            };
            streams
                .get_or_create(&pl)
                .inc_by(c.streams.load(Ordering::Relaxed));
            active_streams
                .get_or_create(&pl)
                .set(i64::try_from(c.active.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
            for (direction, n) in [
                ("to_peer", &c.bytes_to_peer),
                ("from_peer", &c.bytes_from_peer),
            ] {
                bytes
                    .get_or_create(&BytesLabels {
                        role: s.role,
                        peer: peer.clone(),
                        direction,
                    })
                    .inc_by(n.load(Ordering::Relaxed));
            }
            if let Some(p) = c.probe() {
                for (result, n) in [("ok", &c.probes_ok), ("failed", &c.probes_failed)] {
                    probes
                        .get_or_create(&ProbeLabels {
                            peer: peer.clone(),
                            result,
                        })
                        .inc_by(n.load(Ordering::Relaxed));
                }
                let rl = ReachLabels { peer: peer.clone() };
                reachable
                    .get_or_create(&rl)
                    .set(i64::from(p.error.is_none()));
                if let Some(d) = p.rtt {
                    rtt.get_or_create(&rl).set(d.as_secs_f64());
                }
            }
        }
    }
    reg.register(
        "accepted_connections",
        "Connections (TCP) and QUIC streams accepted",
        accepted,
    );
    reg.register(
        "active_connections",
        "Connections and streams being handled",
        active,
    );
    reg.register(
        "upstream_connections",
        "Upstream connections opened (local endpoints at an ingress, tunnels at an egress)",
        upstream,
    );
    reg.register("streams", "Streams relayed per peer", streams);
    reg.register("active_streams", "Streams open per peer", active_streams);
    reg.register(
        "bytes",
        "Bytes relayed per peer, to and from the peer",
        bytes,
    );
    reg.register(
        "denials",
        "Refusals by peer and reason (no upstream connection was opened)",
        denials,
    );
    reg.register("probes", "Probes of each peer's ingress gateway", probes);
    reg.register(
        "peer_reachable",
        "1 when the last probe of the peer's ingress succeeded",
        reachable,
    );
    reg.register(
        "tunnel_rtt_seconds",
        "Round-trip time to the peer's ingress (QUIC estimate or TCP connect time)",
        rtt,
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// A stream that counts the bytes read from it.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    pub inner: S,
    pub read: Arc<PeerCounters>,
    pub to_peer: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let c = if self.to_peer {
                &self.read.bytes_to_peer
            } else {
                &self.read.bytes_from_peer
            };
            c.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metrics_name_roles_peers_and_reasons_only() {
        let s = GatewayStats::new("ingress");
        s.accepted.fetch_add(3, Ordering::Relaxed);
        s.deny("alpha", "NotExportedToPeer");
        s.deny("-", "UnknownPeer");
        let p = s.peer("alpha");
        p.bytes_to_peer.fetch_add(10, Ordering::Relaxed);
        p.streams.fetch_add(2, Ordering::Relaxed);
        let e = GatewayStats::new("egress");
        e.peer("beta").record_probe(Probe {
            at: SystemTime::now(),
            rtt: Some(Duration::from_micros(250)),
            error: None,
        });
        let text = encode_metrics(&[&s, &e]);
        for line in [
            "meshfed_gateway_accepted_connections_total{role=\"ingress\"} 3",
            "meshfed_gateway_denials_total{role=\"ingress\",peer=\"alpha\",reason=\"NotExportedToPeer\"} 1",
            "meshfed_gateway_bytes_total{role=\"ingress\",peer=\"alpha\",direction=\"to_peer\"} 10",
            "meshfed_gateway_streams_total{role=\"ingress\",peer=\"alpha\"} 2",
            "meshfed_gateway_peer_reachable{peer=\"beta\"} 1",
            "meshfed_gateway_tunnel_rtt_seconds{peer=\"beta\"} 0.00025",
            "meshfed_gateway_probes_total{peer=\"beta\",result=\"ok\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let j = s.to_json();
        assert_eq!(j["peers"]["alpha"]["bytesToPeer"], 10);
        assert_eq!(e.to_json()["peers"]["beta"]["reachable"], true);
    }
}
