//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does: every replica serves proxies, but only the holder of the Lease writes to the API
//! (CRD status, Events, the bootstrap Secrets), so two replicas never fight over a status.
//!
//! A candidate tries every `retry`: it creates the Lease when there is none, renews it when it
//! holds it, and takes it over when the holder has not renewed it for `duration`. Every write
//! carries the `resourceVersion` it read, so of two candidates racing for one Lease only one
//! wins (the other gets a conflict). A holder that cannot renew within `duration` steps down.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// How a candidate runs.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's name (in the control-plane namespace).
    pub lease: String,
    /// This replica (the pod's name, unique).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// How often to try.
    pub retry: Duration,
}

impl Election {
    /// The defaults of client-go's leader election: 15 s lease, retries every 2 s.
    pub fn new(identity: &str) -> Self {
        Self {
            lease: "meshfed-control".into(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    now.as_second() > renewed.as_second() + secs
}

/// One round: true when we hold the Lease afterwards.
async fn round(api: &Api<Lease>, e: &Election) -> Result<bool, kube::Error> {
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
            let held = spec.holder_identity.as_deref() == Some(e.identity.as_str());
            if !held && !expired(&spec, now) {
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

/// Campaigns for as long as `leader`'s receivers live; `leader` says whether we hold the
/// Lease now.
pub async fn run(api: Api<Lease>, e: Election, leader: watch::Sender<bool>) {
    let mut last_renewed: Option<tokio::time::Instant> = None;
    let mut said = String::new();
    loop {
        match round(&api, &e).await {
            Ok(true) => {
                said.clear();
                last_renewed = Some(tokio::time::Instant::now());
                if !*leader.borrow() {
                    tracing::info!("{} now leads (Lease {})", e.identity, e.lease);
                    leader.send_replace(true);
                }
            }
            Ok(false) => {
                said.clear();
                last_renewed = None;
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
                // Unable to renew for the lease's duration: another replica may take over.
                if *leader.borrow() && last_renewed.is_none_or(|t| t.elapsed() >= e.duration) {
                    tracing::info!("{} steps down: the Lease could not be renewed", e.identity);
                    leader.send_replace(false);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(e.retry) => {}
            () = leader.closed() => return,
        }
    }
}

/// Starts campaigning for `e` in `namespace`; the receiver says whether this replica leads.
pub fn start(client: &kube::Client, namespace: &str, e: Election) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(run(Api::namespaced(client.clone(), namespace), e, tx));
    rx
}
