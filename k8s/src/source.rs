//! The Kubernetes config source: reflectors on Services, EndpointSlices, Pods and Nodes
//! (cluster-wide) and on the three federation CRDs and ConfigMaps (in the control-plane
//! namespace). Any
//! change re-renders the mesh file ([`crate::render`]) and, when it differs, publishes the next
//! snapshot — the path embedded mode's file watcher takes. A watch that fails is restarted
//! with backoff by kube-runtime and re-lists; the stores replace their contents on a re-list,
//! so nothing is duplicated and nothing deleted meanwhile survives.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource};
use meshfed_control::Snapshot;
use meshfed_control::server::StatusCell;
use meshfed_control::source::{TrustFn, next_snapshot, publish};
use meshfed_core::TrustDomain;
use tokio::sync::{Notify, watch};
use tokio_util::task::AbortOnDropHandle;

use crate::render::{Cluster, Rendered, Settings, render};

/// The stores the source reads.
#[derive(Clone)]
pub struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    configmaps: Store<ConfigMap>,
    federation: Vec<Store<DynamicObject>>,
    /// The watches feeding the stores: they stop when the last clone of the stores is dropped.
    _watches: Arc<Vec<AbortOnDropHandle<()>>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// The `ApiResource` of each federation kind.
pub fn federation_resources() -> [ApiResource; 3] {
    [
        ApiResource::erase::<meshfed_crds::ServiceMeshPeer>(&()),
        ApiResource::erase::<meshfed_crds::ExportedServiceSet>(&()),
        ApiResource::erase::<meshfed_crds::ImportedServiceSet>(&()),
    ]
}

/// How a failed watch is retried: 0.5 s, doubling, at most [`WatchBackoff::MAX`], each
/// delay cut by up to a fifth at random (so replicas do not retry in step), from the start
/// again once events flow. kube-runtime's default grows to 30 s and resets only after two
/// quiet minutes, so a 20 s API server outage kept the control plane blind for ~50 s.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    attempt: u32,
    seed: u64,
}

impl WatchBackoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new(seed: u64) -> Self {
        Self {
            attempt: 0,
            seed: seed | 1,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let full = Self::FIRST
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let cut = full.mul_f64((self.seed % 1000) as f64 / 5000.0);
        Some(full - cut)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn backoff() -> WatchBackoff {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    WatchBackoff::new(nanos ^ u64::from(std::process::id()).rotate_left(32))
}

/// Starts a reflector on `api`; `changed` is notified on every event. Watch errors are
/// logged (once per distinct message) and retried with [`WatchBackoff`].
fn reflect<K>(
    api: Api<K>,
    changed: Arc<Notify>,
    watches: &mut Vec<AbortOnDropHandle<()>>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .backoff(backoff())
        .boxed();
    watches.push(AbortOnDropHandle::new(tokio::spawn(run_stream(
        stream, changed,
    ))));
    reader
}

/// Same as [`reflect`] for dynamically typed objects.
fn reflect_dynamic(
    api: Api<DynamicObject>,
    ar: ApiResource,
    changed: Arc<Notify>,
    watches: &mut Vec<AbortOnDropHandle<()>>,
) -> Store<DynamicObject> {
    let writer = Writer::new(ar);
    let reader = writer.as_reader();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .backoff(backoff())
        .boxed();
    watches.push(AbortOnDropHandle::new(tokio::spawn(run_stream(
        stream, changed,
    ))));
    reader
}

async fn run_stream<T>(
    mut stream: futures::stream::BoxStream<'static, Result<watcher::Event<T>, watcher::Error>>,
    changed: Arc<Notify>,
) {
    let mut said = String::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => {
                said.clear();
                changed.notify_one();
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != said {
                    tracing::warn!("watch failed (retrying): {msg}");
                    said = msg;
                }
            }
        }
    }
}

impl Stores {
    /// Starts every reflector; `changed` is notified on each event.
    pub fn start(client: &Client, namespace: &str, changed: &Arc<Notify>) -> Self {
        let mut w = Vec::new();
        let federation = federation_resources()
            .into_iter()
            .map(|ar| {
                let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar);
                reflect_dynamic(api, ar, changed.clone(), &mut w)
            })
            .collect();
        Self {
            services: reflect(Api::all(client.clone()), changed.clone(), &mut w),
            slices: reflect(Api::all(client.clone()), changed.clone(), &mut w),
            pods: reflect(Api::all(client.clone()), changed.clone(), &mut w),
            nodes: reflect(Api::all(client.clone()), changed.clone(), &mut w),
            configmaps: reflect(
                Api::namespaced(client.clone(), namespace),
                changed.clone(),
                &mut w,
            ),
            federation,
            _watches: Arc::new(w),
        }
    }

    /// Waits until every store has its first full list.
    pub async fn ready(&self) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.configmaps.wait_until_ready().await?;
        for f in &self.federation {
            f.wait_until_ready().await?;
        }
        Ok(())
    }

    /// What the stores hold now.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            services: self
                .services
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            slices: self.slices.state().iter().map(|o| (**o).clone()).collect(),
            pods: self.pods.state().iter().map(|o| (**o).clone()).collect(),
            nodes: self.nodes.state().iter().map(|o| (**o).clone()).collect(),
            configmaps: self
                .configmaps
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            federation: self
                .federation
                .iter()
                .flat_map(|s| s.state())
                .filter_map(|o| serde_json::to_value(&*o).ok())
                .collect(),
        }
    }
}

/// The Kubernetes source of one control plane.
pub struct KubeSource {
    pub stores: Stores,
    pub settings: Settings,
    changed: Arc<Notify>,
    /// The refusals of the last render (for the status writer).
    pub rendered: watch::Sender<Arc<Rendered>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Starts the reflectors and waits for their first lists (up to `timeout`).
    pub async fn start(
        client: &Client,
        settings: Settings,
        timeout: Duration,
    ) -> Result<Self, crate::KubeError> {
        let changed = Arc::new(Notify::new());
        let stores = Stores::start(client, &settings.namespace, &changed);
        tokio::time::timeout(timeout, stores.ready())
            .await
            .map_err(|_| crate::KubeError::ListTimeout(timeout))??;
        let rendered = render(&stores.cluster(), &settings);
        Ok(Self {
            stores,
            settings,
            changed,
            rendered: watch::channel(Arc::new(rendered)).0,
        })
    }

    /// The first snapshot.
    pub fn initial(
        &self,
        trust_domain: &TrustDomain,
        trust: &TrustFn,
    ) -> Result<Snapshot, meshfed_control::source::SourceError> {
        let r = self.rendered.borrow().clone();
        meshfed_control::source::first_snapshot("kubernetes", &r.text, trust_domain, trust()?)
    }

    /// Re-renders on every change (and re-reads the trust every `every`); publishes each new
    /// configuration into `tx` and records refusals in `status`. Runs until the receivers are
    /// gone.
    pub async fn run(
        self,
        trust_domain: TrustDomain,
        trust: TrustFn,
        tx: watch::Sender<Arc<Snapshot>>,
        status: StatusCell,
        every: Duration,
    ) {
        let mut last_trust = trust().ok();
        let first = left_out(&self.rendered.borrow());
        status.update(|st| st.config_error = first);
        loop {
            tokio::select! {
                () = self.changed.notified() => {
                    // Let a burst of events settle into one render.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                () = tokio::time::sleep(every) => {
                    let now = trust().ok();
                    if now == last_trust {
                        continue;
                    }
                    last_trust = now;
                }
                () = tx.closed() => return,
            }
            let rendered = render(&self.stores.cluster(), &self.settings);
            let text = rendered.text.clone();
            let refusals = left_out(&rendered);
            self.rendered.send_if_modified(|cur| {
                if **cur == rendered {
                    return false;
                }
                *cur = Arc::new(rendered);
                true
            });
            let result = trust().and_then(|t| {
                let prev = tx.borrow().clone();
                next_snapshot(Some(&prev), "kubernetes", &text, &trust_domain, t)
            });
            publish(
                result,
                &tx,
                &status,
                "the cluster changed; serving its new configuration",
                refusals,
            );
        }
    }
}

impl KubeSource {
    /// Keeps the bootstrap Secret (`bootstrap_json`, rewritten when it changes, e.g. after a
    /// root rotation) in the control-plane namespace and in every namespace with injected
    /// pods, while `leader` says this replica leads.
    pub fn bootstrap_writer(
        &self,
        client: Client,
        mut bootstrap_json: watch::Receiver<String>,
        mut leader: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stores = self.stores.clone();
        let namespace = self.settings.namespace.clone();
        async move {
            let mut done: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
            let mut written = String::new();
            loop {
                let json = bootstrap_json.borrow_and_update().clone();
                if json != written {
                    done.clear();
                    written.clone_from(&json);
                }
                if *leader.borrow_and_update() {
                    // Only the pods are needed, not a copy of the whole cluster.
                    let pods = stores.pods.state();
                    let want =
                        crate::secrets::bootstrap_namespaces(pods.iter().map(|p| &**p), &namespace);
                    for ns in want.difference(&done).cloned().collect::<Vec<_>>() {
                        match crate::secrets::apply_bootstrap(&client, &ns, &json).await {
                            Ok(()) => {
                                done.insert(ns);
                            }
                            Err(e) => tracing::warn!(
                                "writing the bootstrap Secret in {ns} failed (retrying): {e}"
                            ),
                        }
                    }
                } else {
                    done.clear();
                }
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { return },
                    _ = bootstrap_json.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// The federation resources a render left out, for the control plane's `/status`.
fn left_out(r: &Rendered) -> Option<String> {
    let v: Vec<String> = r
        .refused
        .iter()
        .map(|f| format!("{} {}: {}", f.kind, f.name, f.reason))
        .chain(r.bundle_problems.iter().cloned())
        .collect();
    (!v.is_empty()).then(|| format!("left out: {}", v.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn a_failed_watch_is_retried_within_five_seconds_and_from_the_start_once_it_flows() {
        let mut b = WatchBackoff::new(42);
        let delays: Vec<Duration> = b.by_ref().take(8).collect();
        for (d, full) in delays.iter().zip([0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]) {
            let full = Duration::from_secs_f64(full);
            assert!(*d <= full && *d >= full.mul_f64(0.8), "{delays:?}");
        }
        b.reset();
        assert!(b.next().unwrap() <= WatchBackoff::FIRST);
    }
}
