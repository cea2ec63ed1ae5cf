//! The finalizer on `ServiceMeshPeer`s: the leader adds `federation.meshfed.io/peer-cleanup`
//! to every accepted peer (by server-side apply, so other controllers' finalizers are kept).
//! When a peer is deleted it leaves the model at once; the finalizer stays until the peer's
//! state is cleaned up (its importer stopped, its persisted imports removed; its trust bundle
//! stays, the operator's to withdraw), then it is released and Kubernetes removes the object.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::render::Rendered;

/// Our finalizer.
pub const FINALIZER: &str = "federation.meshfed.io/peer-cleanup";
/// The field manager that owns it (status has its own, `meshfed`).
const MANAGER: &str = "meshfed-finalizer";

/// Cleans up a deleted peer's state (by ServiceMeshPeer name).
pub type Cleanup = Arc<
    dyn Fn(
            String,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<(), Box<dyn std::error::Error + Send + Sync>>,
                    > + Send,
            >,
        > + Send
        + Sync,
>;

/// Adds and releases the finalizer while `leader` says this replica leads.
pub async fn run(
    client: Client,
    namespace: String,
    mut rendered: watch::Receiver<Arc<Rendered>>,
    mut leader: watch::Receiver<bool>,
    cleanup: Cleanup,
) {
    let ar = kube::api::ApiResource::erase::<meshfed_crds::ServiceMeshPeer>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &ar);
    let apply = |name: &str, finalizers: Vec<&str>| {
        json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "metadata": {"name": name, "finalizers": finalizers},
        })
    };
    let params = PatchParams::apply(MANAGER).force();
    let mut cleaned: BTreeSet<String> = BTreeSet::new();
    loop {
        let r = rendered.borrow_and_update().clone();
        if *leader.borrow_and_update() {
            for p in &r.peers {
                let ours = p.finalizers.iter().any(|f| f == FINALIZER);
                if p.deleting && ours {
                    if !cleaned.contains(&p.name) {
                        match cleanup(p.name.clone()).await {
                            Ok(()) => {
                                tracing::info!("peer {} deleted: its state is cleaned up", p.name);
                                cleaned.insert(p.name.clone());
                            }
                            Err(e) => {
                                tracing::warn!("cleaning up peer {} (retrying): {e}", p.name);
                                continue;
                            }
                        }
                    }
                    if let Err(e) = api
                        .patch(&p.name, &params, &Patch::Apply(apply(&p.name, vec![])))
                        .await
                    {
                        tracing::warn!("releasing the finalizer of {} failed: {e}", p.name);
                    }
                } else if p.accepted
                    && !p.deleting
                    && !ours
                    && let Err(e) = api
                        .patch(
                            &p.name,
                            &params,
                            &Patch::Apply(apply(&p.name, vec![FINALIZER])),
                        )
                        .await
                {
                    tracing::warn!("adding the finalizer to {} failed: {e}", p.name);
                }
            }
            cleaned.retain(|n| r.peers.iter().any(|p| &p.name == n));
        }
        tokio::select! {
            changed = rendered.changed() => if changed.is_err() { return },
            _ = leader.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
