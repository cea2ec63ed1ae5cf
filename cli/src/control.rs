//! `meshfed control`: the arguments of the mesh's control plane (built and run by
//! `meshfed_app::control`), and its exit: SIGTERM or Ctrl-C stops it, a failed task ends it non-zero.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use meshfed_app::control::{Control, ControlConfig, KubeOptions, PeeringOptions, Source};

use crate::trust::{DirArg, parse_duration};

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// The mesh file: services, workloads, traffic and authorization policies. Re-read when
    /// it changes; a file with errors is refused whole and the previous version stays served.
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
    mesh: Option<PathBuf>,
    /// Kubernetes mode: the cluster is the config source — Services, EndpointSlices, injected
    /// Pods and Nodes cluster-wide, the federation CRDs in --namespace — and CRD status is
    /// written by server-side apply. The client comes from KUBECONFIG or the pod's service
    /// account.
    #[arg(long)]
    kube: bool,
    /// With --kube: the control-plane namespace (default: $POD_NAMESPACE, else
    /// meshfed-system).
    #[arg(long, requires = "kube")]
    namespace: Option<String>,
    /// With --kube: the mesh's name (default: the namespace without `-system`).
    #[arg(long, requires = "kube")]
    mesh_name: Option<String>,
    /// With --kube: the cluster's DNS domain.
    #[arg(long, requires = "kube")]
    cluster_domain: Option<String>,
    #[command(flatten)]
    dir: DirArg,
    /// The config and certificate endpoint (mTLS).
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// The address proxies reach the config endpoint at, `HOST:PORT` (written into the
    /// bootstrap file); default the --listen address. In Kubernetes, the control plane's
    /// Service, e.g. `meshfed-control.meshfed-system.svc:15012`.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Admin endpoint: GET /healthz/live, GET /healthz/ready; GET /status (JSON) to loopback
    /// callers on a loopback address only.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Where to write the bootstrap file proxies join with (address, identity, bundle and the
    /// join secret; mode 0600). Default: `bootstrap.json` in the CA directory.
    #[arg(long)]
    bootstrap_out: Option<PathBuf>,
    /// Lifetime of workload certificates, e.g. `24h`.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    svid_ttl: Duration,
    /// Run the mesh's peering here too (what `meshfed peering run` does: serve each peer its
    /// exports, import from every peer): imports reach the proxies in their snapshots, routed
    /// through the egress gateways `spec.gateways` declares. Peers reach it through the
    /// ingress gateway's discovery port.
    #[arg(long)]
    peering: Option<SocketAddr>,
    /// With --peering: the directory of persisted imports (a rebuildable cache).
    #[arg(long, requires = "peering")]
    store: Option<PathBuf>,
    /// With --peering: heartbeat interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// With --peering: silence after which a peer is Failing.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    liveness: Duration,
    /// After `meshfed trust rotate` adds a root, how long the control plane serves it (to its
    /// proxies and, with --peering, to its peers) before signing with it; proxies then renew.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    rotation_grace: Duration,
}

pub fn run(args: ControlArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: ControlArgs) -> Result<ExitCode> {
    let config = ControlConfig {
        source: match (args.mesh, args.kube) {
            (Some(path), _) => Source::File(path),
            (None, true) => Source::Kube(KubeOptions {
                namespace: args.namespace,
                mesh_name: args.mesh_name,
                cluster_domain: args.cluster_domain,
            }),
            (None, false) => bail!("--mesh or --kube is required"),
        },
        dir: args.dir.dir,
        listen: args.listen,
        advertise: args.advertise,
        admin: args.admin,
        bootstrap_out: args.bootstrap_out,
        svid_ttl: args.svid_ttl,
        peering: args.peering.map(|listen| PeeringOptions {
            listen,
            store: args.store,
            heartbeat: args.heartbeat,
            liveness: args.liveness,
        }),
        rotation_grace: args.rotation_grace,
    };
    let control = Control::build(config).await?;
    let failed = crate::until_stopped(control.failed()).await?;
    control.stop().await;
    crate::exit(failed)
}
