//! When an exporter cuts an importer's stream, pure: a NACK storm (more NACKs in a minute than
//! allowed — a peer that refuses every snapshot would otherwise get one resent forever) and a
//! stale stream (no message from the importer within the liveness timeout). Time is passed in
//! as the time since the stream started; nothing here reads a clock.

use std::collections::VecDeque;
use std::time::Duration;

/// The window NACKs are counted in.
pub const NACK_WINDOW: Duration = Duration::from_secs(60);

/// Why a stream is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutOff {
    /// More than the allowed NACKs within [`NACK_WINDOW`] (how many).
    NackStorm(usize),
    /// Nothing received within the liveness timeout.
    StreamStale,
}

impl CutOff {
    /// The stable reason sent in the stream's close message.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NackStorm(_) => "NackStorm",
            Self::StreamStale => "StreamStale",
        }
    }
}

/// One stream's watch: what it received and when.
#[derive(Debug, Clone)]
pub struct StreamWatch {
    liveness: Duration,
    max_nacks: usize,
    last_rx: Duration,
    nacks: VecDeque<Duration>,
}

impl StreamWatch {
    /// A stream that started at `now` (time since an origin of the caller's choosing).
    pub fn new(liveness: Duration, max_nacks_per_minute: u32, now: Duration) -> Self {
        Self {
            liveness,
            max_nacks: max_nacks_per_minute as usize,
            last_rx: now,
            nacks: VecDeque::new(),
        }
    }

    /// A message arrived from the importer.
    pub fn received(&mut self, now: Duration) {
        self.last_rx = self.last_rx.max(now);
    }

    /// The message was a NACK: cut when there were too many within the window.
    pub fn nacked(&mut self, now: Duration) -> Result<(), CutOff> {
        self.received(now);
        while self
            .nacks
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= NACK_WINDOW)
        {
            self.nacks.pop_front();
        }
        self.nacks.push_back(now);
        if self.nacks.len() > self.max_nacks {
            return Err(CutOff::NackStorm(self.nacks.len()));
        }
        Ok(())
    }

    /// At a heartbeat: cut when nothing arrived within the liveness timeout.
    pub fn check(&self, now: Duration) -> Result<(), CutOff> {
        if now.saturating_sub(self.last_rx) >= self.liveness {
            return Err(CutOff::StreamStale);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn nacks_beyond_the_limit_within_a_minute_cut_the_stream() {
        let mut w = StreamWatch::new(S(15), 3, S(0));
        for t in 0..3 {
            assert_eq!(w.nacked(S(t)), Ok(()));
        }
        assert_eq!(w.nacked(S(3)), Err(CutOff::NackStorm(4)));
    }

    #[test]
    fn nacks_spread_over_more_than_a_minute_do_not() {
        let mut w = StreamWatch::new(S(15), 3, S(0));
        for t in (0..600).step_by(21) {
            assert_eq!(w.nacked(S(t)), Ok(()), "at {t} s");
        }
    }

    #[test]
    fn silence_past_the_liveness_timeout_is_stale() {
        let mut w = StreamWatch::new(S(15), 20, S(0));
        assert_eq!(w.check(S(14)), Ok(()));
        w.received(S(10));
        assert_eq!(w.check(S(24)), Ok(()));
        assert_eq!(w.check(S(25)), Err(CutOff::StreamStale));
        assert_eq!(CutOff::StreamStale.reason(), "StreamStale");
    }
}
