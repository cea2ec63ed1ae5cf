//! The peering session, sans-IO: a state machine that takes events and the current time and
//! returns actions, for the thin tokio driver to carry out. States follow the design:
//! `Pending → Establishing → Active ⇄ Failing → Terminated`, each transition with a reason.
//!
//! Time is a [`Duration`] since an arbitrary start, passed in by the caller; nothing here reads
//! a clock. Reconnect jitter comes from a seeded generator, so runs are reproducible.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a peering relationship stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerState {
    /// Configured, not yet dialed.
    Pending,
    /// Dialing or handshaking.
    Establishing,
    /// Stream up, heartbeats arriving.
    Active,
    /// Stream down or silent past the liveness timeout; imports kept, flagged stale.
    Failing,
    /// The relationship ended (peer deleted); nothing more happens.
    Terminated,
}

/// Timing of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// How often we send a heartbeat. Default 5 s.
    pub heartbeat_interval: Duration,
    /// Silence after which the peer is `Failing`. Default 15 s.
    pub liveness_timeout: Duration,
    /// First reconnect delay. Default 500 ms.
    pub backoff_base: Duration,
    /// Longest reconnect delay. Default 10 s: after a partition heals, the importer is back
    /// within it (a reconnect attempt costs one TLS handshake).
    pub backoff_max: Duration,
    /// Seed for reconnect jitter.
    pub seed: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(15),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start (or restart after a config change) the relationship.
    Start,
    /// The transport is connected and authenticated; the hello exchange begins.
    Connected,
    /// The peer's hello was accepted.
    HelloAccepted,
    /// Any valid message from the peer (heartbeat, snapshot, delta, ack…).
    Received,
    /// The stream ended or failed, with a stable reason token.
    Disconnected { reason: &'static str },
    /// The relationship ends, with a stable reason: `PeerDeleted` (the ServiceMeshPeer is
    /// gone), `PeerChanged` (restarted with a new configuration), `Stopped` (the node stops).
    Terminate { reason: &'static str },
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open the transport to the peer.
    Dial,
    /// Send our hello.
    SendHello,
    /// Send a heartbeat.
    SendHeartbeat,
    /// Close the stream with a reason.
    Close { reason: &'static str },
    /// The state changed; record it in status.
    Transition {
        from: PeerState,
        to: PeerState,
        reason: &'static str,
    },
}

/// One peering relationship's session.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    state: PeerState,
    /// When the peer last sent anything valid.
    last_received: Option<Duration>,
    /// When we last sent a heartbeat.
    last_heartbeat: Option<Duration>,
    /// When to dial next, while not connected.
    dial_at: Option<Duration>,
    /// Failed connection attempts in a row.
    failures: u32,
    connected: bool,
    rng: u64,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            state: PeerState::Pending,
            last_received: None,
            last_heartbeat: None,
            dial_at: None,
            failures: 0,
            connected: false,
            rng: config.seed | 1,
        }
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    /// Failed attempts since the last successful hello.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn transition(&mut self, to: PeerState, reason: &'static str, out: &mut Vec<Action>) {
        if self.state != to {
            out.push(Action::Transition {
                from: self.state,
                to,
                reason,
            });
            self.state = to;
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Delay before reconnect attempt `n` (1-based): exponential from the base, capped, then
    /// jittered down by up to half (never above the cap) so that many importers do not
    /// reconnect in step.
    pub fn backoff(&mut self, n: u32) -> Duration {
        let exp = self
            .config
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20));
        let capped = exp.min(self.config.backoff_max);
        let unit =
            f64::from(u32::try_from(self.next_random() >> 40).unwrap_or(0)) / f64::from(1u32 << 24);
        capped.mul_f64(0.5 + unit / 2.0)
    }

    fn schedule_dial(&mut self, now: Duration) {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff(self.failures);
        self.dial_at = Some(now + delay);
    }

    /// Feeds an event at time `now`.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == PeerState::Terminated {
            return out;
        }
        match event {
            Event::Start => {
                if !self.connected && self.dial_at.is_none() {
                    self.transition(PeerState::Establishing, "Dialing", &mut out);
                    out.push(Action::Dial);
                    self.dial_at = None;
                }
            }
            Event::Connected => {
                self.connected = true;
                self.dial_at = None;
                if self.state != PeerState::Failing {
                    self.transition(PeerState::Establishing, "Handshaking", &mut out);
                }
                out.push(Action::SendHello);
            }
            Event::HelloAccepted => {
                self.failures = 0;
                self.last_received = Some(now);
                self.last_heartbeat = Some(now);
                self.transition(PeerState::Active, "Connected", &mut out);
                out.push(Action::SendHeartbeat);
            }
            Event::Received => {
                self.last_received = Some(now);
                if self.state == PeerState::Failing && self.connected {
                    self.transition(PeerState::Active, "HeartbeatResumed", &mut out);
                }
            }
            Event::Disconnected { reason } => {
                self.connected = false;
                let to = match self.state {
                    PeerState::Pending | PeerState::Establishing => PeerState::Establishing,
                    _ => PeerState::Failing,
                };
                self.transition(to, reason, &mut out);
                self.schedule_dial(now);
            }
            Event::Terminate { reason } => {
                if self.connected {
                    out.push(Action::Close { reason });
                }
                self.connected = false;
                self.dial_at = None;
                self.transition(PeerState::Terminated, reason, &mut out);
            }
        }
        out
    }

    /// Runs the timers at `now`: reconnects, heartbeats, liveness.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == PeerState::Terminated {
            return out;
        }
        if !self.connected {
            if let Some(at) = self.dial_at
                && now >= at
            {
                self.dial_at = None;
                out.push(Action::Dial);
            }
            return out;
        }
        if self.state == PeerState::Active
            && let Some(last) = self.last_received
            && now.saturating_sub(last) >= self.config.liveness_timeout
        {
            // A silent peer is failing; close the stream so a fresh one is dialed.
            self.transition(PeerState::Failing, "StreamStale", &mut out);
            out.push(Action::Close {
                reason: "StreamStale",
            });
            self.connected = false;
            self.schedule_dial(now);
            return out;
        }
        if matches!(self.state, PeerState::Active | PeerState::Failing)
            && self
                .last_heartbeat
                .is_none_or(|h| now.saturating_sub(h) >= self.config.heartbeat_interval)
        {
            self.last_heartbeat = Some(now);
            out.push(Action::SendHeartbeat);
        }
        out
    }

    /// The next time [`Self::poll`] has something to do, for the driver's timer.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.state == PeerState::Terminated {
            return None;
        }
        if !self.connected {
            return self.dial_at;
        }
        let hb = self
            .last_heartbeat
            .map(|h| h + self.config.heartbeat_interval);
        let live = match self.state {
            PeerState::Active => self.last_received.map(|r| r + self.config.liveness_timeout),
            _ => None,
        };
        match (hb, live) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn transitions(actions: &[Action]) -> Vec<(PeerState, &'static str)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Transition { to, reason, .. } => Some((*to, *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn happy_path_and_heartbeats() {
        let mut x = Session::new(SessionConfig::default());
        assert_eq!(x.state(), PeerState::Pending);
        assert!(x.handle(s(0), Event::Start).contains(&Action::Dial));
        assert!(
            x.handle(s(0), Event::Connected)
                .contains(&Action::SendHello)
        );
        let a = x.handle(s(1), Event::HelloAccepted);
        assert_eq!(transitions(&a), vec![(PeerState::Active, "Connected")]);
        assert_eq!(x.next_deadline(), Some(s(6)));
        assert!(x.poll(s(3)).is_empty());
        assert_eq!(x.poll(s(6)), vec![Action::SendHeartbeat]);
        x.handle(s(7), Event::Received);
        assert_eq!(x.poll(s(11)), vec![Action::SendHeartbeat]);
        assert_eq!(x.state(), PeerState::Active);
    }

    #[test]
    fn silence_marks_failing_within_the_liveness_timeout() {
        let mut x = Session::new(SessionConfig::default());
        x.handle(s(0), Event::Start);
        x.handle(s(0), Event::Connected);
        x.handle(s(0), Event::HelloAccepted);
        x.poll(s(5));
        x.poll(s(10));
        let a = x.poll(s(15));
        assert_eq!(transitions(&a), vec![(PeerState::Failing, "StreamStale")]);
        assert!(a.contains(&Action::Close {
            reason: "StreamStale"
        }));
        // Reconnects after a backoff, and heals.
        let at = x.next_deadline().unwrap();
        assert!(
            at > s(15) && at <= s(15) + Duration::from_millis(750),
            "{at:?}"
        );
        assert_eq!(x.poll(at), vec![Action::Dial]);
        x.handle(at, Event::Connected);
        assert_eq!(
            x.state(),
            PeerState::Failing,
            "still failing until the hello"
        );
        let a = x.handle(at, Event::HelloAccepted);
        assert_eq!(transitions(&a), vec![(PeerState::Active, "Connected")]);
        assert_eq!(x.failures(), 0);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut x = Session::new(SessionConfig::default());
        let delays: Vec<Duration> = (1..=12).map(|n| x.backoff(n)).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= Duration::from_millis(500));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(10)),
            "never above the cap"
        );
        assert!(
            delays[11] >= Duration::from_secs(5),
            "capped at 10 s, jittered down by up to half"
        );
        // After 10 failures, at most one attempt per second (R-FLAP-1).
        assert!(delays[9..].iter().all(|d| *d >= Duration::from_secs(1)));
        // Deterministic for a seed; different seeds differ.
        let mut y = Session::new(SessionConfig::default());
        assert_eq!((1..=12).map(|n| y.backoff(n)).collect::<Vec<_>>(), delays);
        let mut z = Session::new(SessionConfig {
            seed: 7,
            ..SessionConfig::default()
        });
        assert_ne!((1..=12).map(|n| z.backoff(n)).collect::<Vec<_>>(), delays);
    }

    #[test]
    fn failed_dials_back_off_and_termination_is_final() {
        let mut x = Session::new(SessionConfig::default());
        x.handle(s(0), Event::Start);
        let a = x.handle(
            s(1),
            Event::Disconnected {
                reason: "GatewayUnreachable",
            },
        );
        assert_eq!(x.state(), PeerState::Establishing);
        assert!(transitions(&a).is_empty());
        let d1 = x.next_deadline().unwrap();
        x.poll(d1);
        x.handle(
            d1,
            Event::Disconnected {
                reason: "GatewayUnreachable",
            },
        );
        let d2 = x.next_deadline().unwrap();
        assert!(d2 - d1 > Duration::from_millis(400));
        let a = x.handle(
            d2,
            Event::Terminate {
                reason: "PeerDeleted",
            },
        );
        assert_eq!(
            transitions(&a),
            vec![(PeerState::Terminated, "PeerDeleted")]
        );
        assert!(x.poll(d2 + s(100)).is_empty());
        assert!(x.handle(d2, Event::Start).is_empty());
        assert_eq!(x.next_deadline(), None);
    }
}
