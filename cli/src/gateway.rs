//! `meshfed gateway`: the arguments of one mesh's federation gateways for one peer (built and
//! run by `meshfed_app::gateway`), from mesh files or joined to the control plane. SIGTERM or
//! Ctrl-C drains them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use meshfed_app::gateway::Transport;
use meshfed_app::gateway::{GatewayMode, GatewayOptions, Gateways};

use crate::trust::DirArg;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Run from this mesh's file (and --peer-mesh for the egress), with SVIDs from the CA in
    /// --dir.
    #[arg(
        long,
        conflicts_with = "bootstrap",
        required_unless_present = "bootstrap"
    )]
    mesh: Option<PathBuf>,
    /// Join the control plane with this bootstrap file (written by `meshfed control`): the
    /// gateways' certificates and configuration (what the peer may reach, what it exports to
    /// us) come from it and follow its changes.
    #[arg(long)]
    bootstrap: Option<PathBuf>,
    /// With --bootstrap: the ingress gateway's name in `spec.gateways` (default
    /// `ingress-<peer>`).
    #[arg(long, requires = "bootstrap")]
    ingress_name: Option<String>,
    /// With --bootstrap: the egress gateway's name in `spec.gateways` (default
    /// `egress-<peer>`).
    #[arg(long, requires = "bootstrap")]
    egress_name: Option<String>,
    /// The `ServiceMeshPeer` (by name) these gateways serve.
    #[arg(long)]
    peer: String,
    /// The peer mesh's file: what it exports to us and the identity of its ingress gateway
    /// (needed for --egress).
    #[arg(long)]
    peer_mesh: Option<PathBuf>,
    #[command(flatten)]
    dir: DirArg,
    /// Serve the ingress: the peer's egress reaches it at the `spec.remote.addresses` and
    /// `servicePort` of its `ServiceMeshPeer` for this mesh. Without ADDR, at the address
    /// `spec.gateways` gives the peer's ingress gateway (`ingress-<peer>` by default).
    #[arg(long, num_args = 0..=1, value_name = "ADDR")]
    ingress: Option<Option<SocketAddr>>,
    /// Serve the egress, for this mesh's sidecars. Without ADDR, at the address
    /// `spec.gateways` gives the peer's egress gateway (`egress-<peer>` by default).
    #[arg(long, num_args = 0..=1, value_name = "ADDR")]
    egress: Option<Option<SocketAddr>>,
    /// The egress's tunnel to the peer's ingress: `tcp` (TCP + TLS, a connection per stream)
    /// or `quic` (multiplexed streams on one connection). The ingress always serves both.
    #[arg(long, default_value = "tcp")]
    tunnel: Transport,
    /// How often the egress probes the peer's ingress (reachability and tunnel RTT in
    /// `/status` and `/metrics`); `0s` turns probing off.
    #[arg(long, value_parser = crate::trust::parse_duration_or_zero, default_value = "5s")]
    probe_interval: std::time::Duration,
    /// Serve the discovery port (the peer's `spec.remote.discoveryPort`): connections are
    /// forwarded, still encrypted, to the local peering service at --discovery-upstream.
    /// Without ADDR, at the ingress gateway's `discoveryAddress` in `spec.gateways`.
    #[arg(long, num_args = 0..=1, value_name = "ADDR", requires = "discovery_upstream")]
    discovery: Option<Option<SocketAddr>>,
    /// The local peering service (`meshfed peering run --listen`, or the control plane's
    /// `--peering`), `HOST:PORT`; a name is resolved when the forwarder starts.
    #[arg(long, requires = "discovery", value_name = "HOST:PORT")]
    discovery_upstream: Option<String>,
    /// Admin endpoint: `GET /status` (loopback callers only; JSON counts per gateway: accepted, active and
    /// upstream connections, refusals by peer and reason, per-peer streams, bytes, reachability
    /// and RTT), `GET /metrics` (Prometheus) and `GET /healthz`.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// On SIGTERM or Ctrl-C: stop accepting, then let connections in flight finish for up to
    /// this long (Istio's `terminationDrainDuration` default).
    #[arg(long, value_parser = crate::trust::parse_duration, default_value = "5s")]
    drain_timeout: std::time::Duration,
    /// Worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
}

pub fn run(args: GatewayArgs) -> Result<ExitCode> {
    crate::runtime(args.workers)?.block_on(run_async(args))
}

async fn run_async(args: GatewayArgs) -> Result<ExitCode> {
    let mode = match (args.bootstrap, args.mesh) {
        (Some(bootstrap), _) => GatewayMode::Joined {
            bootstrap,
            ingress_name: args.ingress_name,
            egress_name: args.egress_name,
        },
        (None, Some(mesh)) => GatewayMode::File {
            mesh,
            peer_mesh: args.peer_mesh,
        },
        (None, None) => bail!("pass --mesh FILE or --bootstrap FILE"),
    };
    let gateways = Gateways::build(GatewayOptions {
        mode,
        peer: args.peer,
        dir: args.dir.dir,
        ingress: args.ingress,
        egress: args.egress,
        discovery: args.discovery,
        discovery_upstream: args.discovery_upstream,
        tunnel: args.tunnel,
        probe_interval: args.probe_interval,
        admin: args.admin,
    })
    .await?;
    let failed = crate::until_stopped(gateways.failed()).await?;
    gateways.drain(args.drain_timeout).await;
    crate::exit(failed)
}
