//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does: every replica serves proxies, but only the holder of the Lease writes to the API
//! (CRD status, Events, the bootstrap Secrets), so two replicas never fight over a status.
//!
//! A candidate tries every `retry`: it creates the Lease when there is none, renews it when it
//! holds it, and takes it over when the holder has not renewed it for `duration`. Every write
//! carries the `resourceVersion` it read, so of two candidates racing for one Lease only one
//! wins (the other gets a conflict).
//!
//! Time is client-go's *observed time*: a candidate never compares the holder's wall clock
//! (`renewTime`) with its own — clocks of two nodes may be minutes apart. It notes, on its own
//! monotonic clock, when it last saw the Lease record change, and takes over only `duration`
//! after that. The holder steps down when it has not renewed for `renew_deadline`, which is
//! shorter than `duration`: it has stopped writing before anyone may take over, so two
//! replicas never lead at once ([`Observed`], [`Holding`], pure and tested with a paused
//! leader and skewed clocks).
//!
//! A replica that stops ([`Campaign::release`], on SIGTERM) steps down and gives the Lease up
//! (holder cleared, as client-go's `ReleaseOnCancel`), so the next replica takes over at its
//! next try instead of waiting out the lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How a candidate runs.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's name (in the control-plane namespace).
    pub lease: String,
    /// This replica (the pod's name, unique).
    pub identity: String,
    /// How long a Lease holds without renewal: others take over this long after they last saw
    /// it change.
    pub duration: Duration,
    /// How long the holder may fail to renew before it steps down (less than `duration`).
    pub renew_deadline: Duration,
    /// How often to try.
    pub retry: Duration,
}

impl Election {
    /// The defaults of client-go's leader election: 15 s lease, 10 s renew deadline, retries
    /// every 2 s.
    pub fn new(identity: &str) -> Self {
        Self {
            lease: "meshfed-control".into(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a candidate last saw of the Lease record, and when on its own clock.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// (holder, renew time, transitions) as last read: any change restarts the clock.
    record: Option<(Option<String>, Option<String>, Option<i32>)>,
    at: Option<Instant>,
}

impl Observed {
    /// Notes the record read at `now`.
    pub fn see(&mut self, spec: &LeaseSpec, now: Instant) {
        let record = Some((
            spec.holder_identity.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
            spec.lease_transitions,
        ));
        if record != self.record {
            self.record = record;
            self.at = Some(now);
        }
    }

    /// Whether `me` may write the Lease at `now`: it holds it, nobody does, or the holder's
    /// record has not changed for `duration` of our own clock.
    pub fn may_take(&self, me: &str, spec: &LeaseSpec, duration: Duration, now: Instant) -> bool {
        match spec.holder_identity.as_deref() {
            None | Some("") => true,
            Some(h) if h == me => true,
            Some(_) => self.at.is_none_or(|at| now.duration_since(at) >= duration),
        }
    }
}

/// The holder's side: when it last renewed, on its own clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holding {
    renewed: Option<Instant>,
}

impl Holding {
    pub fn renewed(&mut self, now: Instant) {
        self.renewed = Some(now);
    }

    pub fn lost(&mut self) {
        self.renewed = None;
    }

    /// Whether we may act as the leader at `now`: we renewed within `renew_deadline`.
    pub fn leads(&self, renew_deadline: Duration, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now.duration_since(at) < renew_deadline)
    }
}

/// One round: true when we hold the Lease afterwards.
async fn round(
    api: &Api<Lease>,
    e: &Election,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration = i32::try_from(e.duration.as_secs()).unwrap_or(15);
    let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(e.identity.clone()),
        lease_duration_seconds: Some(duration),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(&e.lease).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(e.lease.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(mine(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let seen = Instant::now();
            observed.see(&spec, seen);
            let held = spec.holder_identity.as_deref() == Some(e.identity.as_str());
            if !observed.may_take(&e.identity, &spec, e.duration, seen) {
                return Ok(false);
            }
            let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held);
            let acquired = held.then_some(spec.acquire_time).flatten();
            lease.spec = Some(mine(transitions, acquired));
            // replace carries the resourceVersion we read: a racing writer gets a conflict.
            match api.replace(&e.lease, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
    }
}

/// Gives the Lease up if we hold it: the holder is cleared and the lease made 1 s, so the
/// next candidate may take it at once. True when it was ours.
async fn release(api: &Api<Lease>, e: &Election) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&e.lease).await? else {
        return Ok(false);
    };
    let spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(e.identity.as_str()) {
        return Ok(false);
    }
    let now = MicroTime(Timestamp::now());
    lease.spec = Some(LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        ..spec
    });
    api.replace(&e.lease, &PostParams::default(), &lease)
        .await?;
    Ok(true)
}

/// Campaigns for as long as `leader`'s receivers live; `leader` says whether we hold the
/// Lease now.
pub async fn run(api: Api<Lease>, e: Election, leader: watch::Sender<bool>) {
    run_until(api, e, leader, CancellationToken::new()).await;
}

/// [`run`] until `stop` is cancelled; then steps down and releases the Lease.
async fn run_until(
    api: Api<Lease>,
    e: Election,
    leader: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut holding = Holding::default();
    let mut observed = Observed::default();
    let mut said = String::new();
    loop {
        let started = Instant::now();
        let result = round(&api, &e, &mut observed).await;
        // A renewal counts from when it was sent: the write may have taken long.
        match result {
            Ok(true) => {
                said.clear();
                holding.renewed(started);
                if !*leader.borrow() {
                    tracing::info!("{} now leads (Lease {})", e.identity, e.lease);
                    leader.send_replace(true);
                }
            }
            Ok(false) => {
                said.clear();
                holding.lost();
                if *leader.borrow() {
                    tracing::warn!("{} lost the Lease {}", e.identity, e.lease);
                    leader.send_replace(false);
                }
            }
            Err(err) => {
                let msg = err.to_string();
                if msg != said {
                    tracing::info!("leader election: {msg}");
                    said = msg;
                }
            }
        }
        // Unable to renew within the renew deadline (shorter than the lease): step down
        // before another replica may take over.
        if *leader.borrow() && !holding.leads(e.renew_deadline, Instant::now()) {
            tracing::warn!(
                reason = "RenewDeadlineExceeded",
                "{} steps down: the Lease could not be renewed within {:?}",
                e.identity,
                e.renew_deadline
            );
            leader.send_replace(false);
        }
        tokio::select! {
            () = tokio::time::sleep(e.retry) => {}
            () = leader.closed() => return,
            () = stop.cancelled() => break,
        }
    }
    // Stop acting as the leader before anyone else may.
    leader.send_replace(false);
    match release(&api, &e).await {
        Ok(true) => tracing::info!("{} released the Lease {}", e.identity, e.lease),
        Ok(false) => {}
        Err(err) => tracing::warn!(
            reason = "LeaseReleaseFailed",
            "{} could not release the Lease {} (others take over when it expires): {err}",
            e.identity,
            e.lease
        ),
    }
}

/// A replica's campaign: it runs until released or dropped (dropping stops it without
/// releasing the Lease).
#[derive(Debug)]
pub struct Campaign {
    leader: watch::Receiver<bool>,
    stop: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl Campaign {
    /// Whether this replica leads now, and its changes.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Steps down and gives the Lease up (waits at most `timeout` for the API).
    pub async fn release(self, timeout: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            tracing::warn!(
                reason = "LeaseReleaseFailed",
                "the Lease was not released within {timeout:?}"
            );
        }
    }
}

/// Starts campaigning for `e` in `namespace`.
pub fn start(client: &kube::Client, namespace: &str, e: Election) -> Campaign {
    let (tx, rx) = watch::channel(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_until(
        Api::namespaced(client.clone(), namespace),
        e,
        tx,
        stop.clone(),
    ));
    Campaign {
        leader: rx,
        stop,
        task: AbortOnDropHandle::new(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    const LEASE: Duration = Duration::from_secs(15);
    const DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_renewing_holder_keeps_the_lease_whatever_the_clocks_say() {
        // b's wall clock is an hour ahead of a's: a's renewTime looks an hour old to b. Only
        // the record changing matters.
        let mut b = Observed::default();
        let t0 = Instant::now();
        for i in 0..20u64 {
            let now = t0 + Duration::from_secs(2 * i);
            let renewed = format!("2026-01-01T00:00:{:02}Z", 2 * i);
            b.see(&spec("a", &renewed), now);
            assert!(
                !b.may_take("b", &spec("a", &renewed), LEASE, now),
                "round {i}"
            );
        }
        // b's clock an hour behind: the same.
        let mut c = Observed::default();
        c.see(&spec("a", "2030-01-01T00:00:00Z"), t0);
        assert!(!c.may_take("c", &spec("a", "2030-01-01T00:00:00Z"), LEASE, t0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_leader_steps_down_before_anyone_takes_over() {
        let t0 = Instant::now();
        let mut a = Holding::default();
        a.renewed(t0);
        let record = spec("a", "2026-01-01T00:00:00Z");
        let mut b = Observed::default();
        b.see(&record, t0);
        // a is paused (no renewal) from t0. Walk time in steps of 100 ms: at no instant may
        // both lead.
        let mut stepped_down = None;
        let mut taken = None;
        for ms in (0..30_000u64).step_by(100) {
            let now = t0 + Duration::from_millis(ms);
            b.see(&record, now);
            let a_leads = a.leads(DEADLINE, now);
            let b_may = b.may_take("b", &record, LEASE, now);
            assert!(!(a_leads && b_may), "two leaders at {ms} ms");
            if !a_leads && stepped_down.is_none() {
                stepped_down = Some(ms);
            }
            if b_may && taken.is_none() {
                taken = Some(ms);
            }
        }
        assert_eq!(
            stepped_down,
            Some(10_000),
            "a steps down at its renew deadline"
        );
        assert_eq!(
            taken,
            Some(15_000),
            "b takes over a lease's duration after it last changed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_or_own_lease_may_be_taken_at_once() {
        let now = Instant::now();
        let o = Observed::default();
        assert!(o.may_take("b", &LeaseSpec::default(), LEASE, now));
        assert!(o.may_take("b", &spec("", "2026-01-01T00:00:00Z"), LEASE, now));
        assert!(o.may_take("b", &spec("b", "2026-01-01T00:00:00Z"), LEASE, now));
        // A holder never seen before: the clock starts now.
        let mut o = Observed::default();
        o.see(&spec("a", "2026-01-01T00:00:00Z"), now);
        assert!(!o.may_take("b", &spec("a", "2026-01-01T00:00:00Z"), LEASE, now));
    }
}
