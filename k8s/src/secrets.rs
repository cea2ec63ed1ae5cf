//! The bootstrap Secret sidecars and gateways mount in the control-plane namespace and each
//! namespace with injected pods (written by the leader, by server-side apply). It holds no
//! secret: where the control plane is, its identity and bundle, and where the pod's projected
//! ServiceAccount token is (`token_review`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::render::injected;

/// The Secret holding `bootstrap.json`, in every namespace with injected pods.
pub const BOOTSTRAP_SECRET: &str = "meshfed-bootstrap";

/// Where the bootstrap Secret must be: the control-plane namespace (gateways) and every
/// namespace with an injected pod.
pub fn bootstrap_namespaces<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    control_namespace: &str,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = pods
        .into_iter()
        .filter(|p| injected(p))
        .filter_map(|p| p.metadata.namespace.clone())
        .collect();
    out.insert(control_namespace.to_owned());
    out
}

/// Applies the bootstrap Secret holding `bootstrap_json` in `namespace`.
pub async fn apply_bootstrap(
    client: &kube::Client,
    namespace: &str,
    bootstrap_json: &str,
) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": BOOTSTRAP_SECRET,
                     "labels": {"app.kubernetes.io/part-of": "meshfed"}},
        "stringData": {"bootstrap.json": bootstrap_json},
    });
    api.patch(
        BOOTSTRAP_SECRET,
        &PatchParams::apply(crate::status::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}
