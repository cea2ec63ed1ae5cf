//! `meshfed control --kube`: the Kubernetes client and source.

use std::time::Duration;

use anyhow::{Context, Result};
use meshfed_core::TrustDomain;
use meshfed_k8s::render::Settings;
use meshfed_k8s::source::KubeSource;

use crate::control::ControlArgs;

/// How long the first lists may take.
const FIRST_LIST: Duration = Duration::from_secs(60);

/// Connects (KUBECONFIG, else in-cluster) and starts the reflectors.
pub(crate) async fn start(
    args: &ControlArgs,
    td: &TrustDomain,
) -> Result<(KubeSource, kube::Client)> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or the pod's service account)")?;
    let namespace = args
        .namespace()
        .map(str::to_owned)
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "meshfed-system".to_owned());
    let mesh = args.mesh_name().map_or_else(
        || {
            namespace
                .strip_suffix("-system")
                .unwrap_or(&namespace)
                .to_owned()
        },
        str::to_owned,
    );
    let settings = Settings {
        mesh,
        namespace,
        trust_domain: td.to_string(),
        cluster_domain: args.cluster_domain().map(str::to_owned),
    };
    let log: meshfed_control::Log = std::sync::Arc::new(|l: &str| crate::note(l));
    let source = KubeSource::start(&client, settings, FIRST_LIST, &log)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((source, client))
}
