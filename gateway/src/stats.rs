//! A gateway's counters: for `/status` (JSON) and `/metrics` (Prometheus / OpenMetrics text).
//!
//! Labels are bounded: the role (`ingress`, `egress`, `discovery`), configured peer names (`-`
//! when the caller is not a known peer), fixed refusal reasons and byte directions — never
//! addresses, server names or identities.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
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

/// A counter of the families below (`u64`, monotonic).
pub type Count = Counter<u64, AtomicU64>;
/// A gauge of the families below.
pub type Level = Gauge<u64, AtomicU64>;

/// The gateway metric families of one process, registered once: every [`GatewayStats`]
/// built on them (ingress, egress, discovery) holds handles to its own series, which the data
/// path bumps directly, and a scrape only encodes ([`GatewayMetrics::encode`]).
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    accepted: Family<RoleLabels, Count>,
    active: Family<RoleLabels, Level>,
    upstream: Family<RoleLabels, Count>,
    streams: Family<PeerLabels, Count>,
    active_streams: Family<PeerLabels, Level>,
    bytes: Family<BytesLabels, Count>,
    denials: Family<DenialLabels, Count>,
    probes: Family<ProbeLabels, Count>,
    reachable: Family<ReachLabels, Level>,
    rtt: Family<ReachLabels, Gauge<f64, AtomicU64>>,
}

impl GatewayMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshfed_gateway");
        let m = Self {
            registry: Registry::default(),
            accepted: Family::default(),
            active: Family::default(),
            upstream: Family::default(),
            streams: Family::default(),
            active_streams: Family::default(),
            bytes: Family::default(),
            denials: Family::default(),
            probes: Family::default(),
            reachable: Family::default(),
            rtt: Family::default(),
        };
        registry.register(
            "accepted_connections",
            "Connections (TCP) and QUIC streams accepted",
            m.accepted.clone(),
        );
        registry.register(
            "active_connections",
            "Connections and streams being handled",
            m.active.clone(),
        );
        registry.register(
            "upstream_connections",
            "Upstream connections opened (local endpoints at an ingress, tunnels at an egress)",
            m.upstream.clone(),
        );
        registry.register("streams", "Streams relayed per peer", m.streams.clone());
        registry.register(
            "active_streams",
            "Streams open per peer",
            m.active_streams.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed per peer, to and from the peer",
            m.bytes.clone(),
        );
        registry.register(
            "denials",
            "Refusals by peer and reason (no upstream connection was opened)",
            m.denials.clone(),
        );
        registry.register(
            "probes",
            "Probes of each peer's ingress gateway",
            m.probes.clone(),
        );
        registry.register(
            "peer_reachable",
            "1 when the last probe of the peer's ingress succeeded",
            m.reachable.clone(),
        );
        registry.register(
            "tunnel_rtt_seconds",
            "Round-trip time to the peer's ingress (QUIC estimate or TCP connect time)",
            m.rtt.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    /// Every series in the OpenMetrics text format (`/metrics`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Per-peer counters, shared by every stream of that peer: handles to the peer's series.
#[derive(Debug)]
pub struct PeerCounters {
    /// Streams relayed (accepted by the ingress / carried by the egress).
    pub streams: Count,
    pub active: Level,
    pub bytes_to_peer: Count,
    pub bytes_from_peer: Count,
    name: String,
    metrics: Arc<GatewayMetrics>,
    probe: Mutex<Option<Probe>>,
}

impl PeerCounters {
    fn new(role: &'static str, name: &str, metrics: &Arc<GatewayMetrics>) -> Self {
        let peer = PeerLabels {
            role,
            peer: name.to_owned(),
        };
        let bytes = |direction| {
            metrics
                .bytes
                .get_or_create(&BytesLabels {
                    role,
                    peer: name.to_owned(),
                    direction,
                })
                .clone()
        };
        Self {
            streams: metrics.streams.get_or_create(&peer).clone(),
            active: metrics.active_streams.get_or_create(&peer).clone(),
            bytes_to_peer: bytes("to_peer"),
            bytes_from_peer: bytes("from_peer"),
            name: name.to_owned(),
            metrics: metrics.clone(),
            probe: Mutex::new(None),
        }
    }

    /// The last probe, if any ran.
    pub fn probe(&self) -> Option<Probe> {
        self.probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record_probe(&self, p: Probe) {
        let m = &self.metrics;
        let result = if p.error.is_none() { "ok" } else { "failed" };
        for r in ["ok", "failed"] {
            // Both series exist once the peer was probed, so a rate over either works.
            let c = m.probes.get_or_create(&ProbeLabels {
                peer: self.name.clone(),
                result: r,
            });
            if r == result {
                c.inc();
            }
        }
        let rl = ReachLabels {
            peer: self.name.clone(),
        };
        m.reachable
            .get_or_create(&rl)
            .set(u64::from(p.error.is_none()));
        if let Some(d) = p.rtt {
            m.rtt.get_or_create(&rl).set(d.as_secs_f64());
        }
        *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(p);
    }

    /// Probes of this peer that succeeded and failed.
    pub fn probes(&self) -> (u64, u64) {
        let get = |result| {
            self.metrics
                .probes
                .get(&ProbeLabels {
                    peer: self.name.clone(),
                    result,
                })
                .map_or(0, |c| c.get())
        };
        (get("ok"), get("failed"))
    }

    /// The last probe reached the peer.
    pub fn reachable(&self) -> Option<bool> {
        self.probe().map(|p| p.error.is_none())
    }
}

/// One gateway's counts: handles to its role's series in the shared [`GatewayMetrics`].
#[derive(Debug)]
pub struct GatewayStats {
    /// `ingress`, `egress` or `discovery`.
    pub role: &'static str,
    /// Connections (TCP) or QUIC streams accepted.
    pub accepted: Count,
    /// Connections or streams being handled now.
    pub active: Level,
    /// Upstream connections opened (to local endpoints at an ingress, tunnels at an egress).
    pub upstream_connections: Count,
    /// Refusals by (peer, reason); the peer is `-` when unknown.
    pub denials: Mutex<BTreeMap<(String, String), u64>>,
    metrics: Arc<GatewayMetrics>,
    peers: Mutex<BTreeMap<String, Arc<PeerCounters>>>,
}

impl GatewayStats {
    /// The counts of a gateway of `role`, on `metrics` (shared by the process's gateways).
    pub fn new(role: &'static str, metrics: &Arc<GatewayMetrics>) -> Self {
        let labels = RoleLabels { role };
        Self {
            role,
            accepted: metrics.accepted.get_or_create(&labels).clone(),
            active: metrics.active.get_or_create(&labels).clone(),
            upstream_connections: metrics.upstream.get_or_create(&labels).clone(),
            denials: Mutex::new(BTreeMap::new()),
            metrics: metrics.clone(),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The metric families these counts are part of.
    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    pub(crate) fn deny(&self, peer: &str, reason: &'static str) {
        self.metrics
            .denials
            .get_or_create(&DenialLabels {
                role: self.role,
                peer: peer.to_owned(),
                reason,
            })
            .inc();
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
            .or_insert_with(|| Arc::new(PeerCounters::new(self.role, peer, &self.metrics)))
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
                    "streams": c.streams.get(),
                    "activeStreams": c.active.get(),
                    "bytesToPeer": c.bytes_to_peer.get(),
                    "bytesFromPeer": c.bytes_from_peer.get(),
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
            "accepted": self.accepted.get(),
            "active": self.active.get(),
            "upstreamConnections": self.upstream_connections.get(),
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
    reason: &'static str,
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
            c.inc_by(n);
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
        let metrics = GatewayMetrics::new();
        let s = GatewayStats::new("ingress", &metrics);
        s.accepted.inc_by(3);
        s.deny("alpha", "NotExportedToPeer");
        s.deny("-", "UnknownPeer");
        let p = s.peer("alpha");
        p.bytes_to_peer.inc_by(10);
        p.streams.inc_by(2);
        let e = GatewayStats::new("egress", &metrics);
        e.peer("beta").record_probe(Probe {
            at: SystemTime::now(),
            rtt: Some(Duration::from_micros(250)),
            error: None,
        });
        let text = metrics.encode();
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
