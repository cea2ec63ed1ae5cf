//! The Secrets Kubernetes mode keeps: the join secret every replica shares (so a restart
//! keeps the bootstrap files valid), and the bootstrap Secret sidecars and gateways mount in
//! each namespace with injected pods (written by the leader, by server-side apply).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::render::injected;

/// The Secret holding the join secret, in the control-plane namespace.
pub const JOIN_SECRET: &str = "meshfed-join-token";
/// The Secret holding `bootstrap.json`, in every namespace with injected pods.
pub const BOOTSTRAP_SECRET: &str = "meshfed-bootstrap";

/// The mesh's join secret: the one in the control-plane namespace, or `fresh()` stored
/// there first (when two replicas race, the second reads the first's).
pub async fn join_token(
    client: &kube::Client,
    namespace: &str,
    fresh: impl Fn() -> String,
) -> Result<String, crate::KubeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("token"))
            .and_then(|t| String::from_utf8(t.0.clone()).ok())
            .filter(|t| !t.is_empty())
    };
    for _ in 0..3 {
        match api.get_opt(JOIN_SECRET).await? {
            Some(s) => {
                return read(&s).ok_or_else(|| crate::KubeError::NoToken {
                    namespace: namespace.to_owned(),
                    name: JOIN_SECRET.to_owned(),
                });
            }
            None => {
                let token = fresh();
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(JOIN_SECRET.into()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/part-of".to_owned(),
                            "meshfed".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(
                        "token".to_owned(),
                        ByteString(token.clone().into_bytes()),
                    )])),
                    ..Secret::default()
                };
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => return Ok(token),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(crate::KubeError::SecretRace {
        namespace: namespace.to_owned(),
        name: JOIN_SECRET.to_owned(),
    })
}

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
