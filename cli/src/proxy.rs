//! `meshfed proxy`: the arguments of one workload's sidecar (built and run by
//! `meshfed_app::sidecar`): joined to the control plane with `--bootstrap`, or from a local
//! mesh file with `--mesh` and the mesh CA in `--dir` (tests and quick experiments). SIGTERM
//! drains, a second signal stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use meshfed_app::sidecar::Workload;
use meshfed_app::sidecar::{DnsOptions, Mode, Sidecar, SidecarOptions};

use crate::trust::DirArg;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Join the control plane with this bootstrap file (written by `meshfed control`).
    #[arg(long, conflicts_with = "mesh", required_unless_present = "mesh")]
    bootstrap: Option<PathBuf>,
    /// Run from this mesh file instead (its `workloads` give routes and addresses).
    #[arg(long)]
    mesh: Option<PathBuf>,
    /// The workload this sidecar serves.
    #[arg(long)]
    workload: String,
    /// The workload's namespace (required with --bootstrap; with --mesh only if the name is
    /// not unique).
    #[arg(long)]
    namespace: Option<String>,
    #[command(flatten)]
    dir: DirArg,
    /// Where the local app sends outbound requests (plaintext HTTP; omit for inbound only).
    #[arg(long)]
    outbound: Option<SocketAddr>,
    /// The admin listener: /healthz/live, /healthz/ready, /metrics (plaintext; keep it on
    /// loopback or a pod-local address).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Forward a TCP service port to a local listener: `SERVICE:PORT=LISTEN`, where SERVICE
    /// is the service's hostname or `name.namespace`, e.g. `db.data:5432=127.0.0.1:15432`.
    /// The port must be a TCP or TLS port of the service. Repeatable.
    #[arg(long = "tcp", value_name = "SERVICE:PORT=LISTEN")]
    tcp: Vec<String>,
    /// With --mesh: a peer mesh's file (repeatable). What it exports to this mesh is imported
    /// through this mesh's `ImportedServiceSet` for it and called through this mesh's egress
    /// gateway for that peer (its address from `spec.gateways`, or --egress). (Joined to the
    /// control plane, imports come from peering instead.)
    #[arg(long, requires = "mesh")]
    peer_mesh: Vec<PathBuf>,
    /// The egress gateway for every peer, instead of the addresses in `spec.gateways`: calls
    /// to imported services go there, with the peer's exported name as the TLS server name.
    #[arg(long, requires = "peer_mesh")]
    egress: Option<SocketAddr>,
    /// Run a DNS proxy here (UDP and TCP), e.g. `127.0.0.1:15053`, where `meshfed redirect`
    /// sends the pod's DNS: it answers the names this sidecar routes (imported ones, which no
    /// cluster DNS knows) with addresses the outbound capture maps back, and forwards every
    /// other query to --dns-upstream.
    #[arg(long, value_name = "ADDR")]
    dns: Option<SocketAddr>,
    /// With --dns: the resolver other queries go to (repeatable; default: the name servers
    /// of /etc/resolv.conf, the pod's own).
    #[arg(long, requires = "dns", value_name = "ADDR")]
    dns_upstream: Vec<SocketAddr>,
    /// Joined to a control plane: on SIGTERM, report the workload not ready at once and keep
    /// serving this long before exiting (so callers move away first, like Istio's
    /// terminationDrainDuration); a second signal exits at once. `0s`: exit at once.
    #[arg(long, default_value = "5s", value_parser = crate::trust::parse_duration_or_zero)]
    drain: Duration,
    /// Worker threads (Istio's sidecar default concurrency is 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
}

pub fn run(args: ProxyArgs) -> Result<ExitCode> {
    crate::runtime(args.workers)?.block_on(run_async(args))
}

async fn run_async(args: ProxyArgs) -> Result<ExitCode> {
    let mode = match (args.bootstrap, args.mesh) {
        (Some(bootstrap), _) => Mode::Joined { bootstrap },
        (None, Some(mesh)) => Mode::File {
            mesh,
            dir: args.dir.dir,
            peer_meshes: args.peer_mesh,
            egress: args.egress,
        },
        (None, None) => bail!("pass --bootstrap FILE (join the control plane) or --mesh FILE"),
    };
    let file_mode = matches!(mode, Mode::File { .. });
    let sidecar = Sidecar::build(SidecarOptions {
        mode,
        workload: Workload {
            name: args.workload,
            namespace: args.namespace,
            outbound: args.outbound,
            admin: args.admin,
            tcp: args.tcp,
        },
        drain: args.drain,
        dns: args.dns.map(|listen| {
            let (servers, search) = meshfed_app::sidecar::resolv_conf();
            DnsOptions {
                listen,
                upstream: if args.dns_upstream.is_empty() {
                    servers
                } else {
                    args.dns_upstream
                },
                search,
            }
        }),
    })
    .await?;
    // The first signal drains (joined: not ready at once, serving for the drain time); a
    // second one, or a sidecar from a mesh file, stops at once.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut draining = false;
    let failed = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = sidecar.done() => break None,
            f = sidecar.failed() => break Some(f),
        }
        if draining || file_mode || args.drain.is_zero() {
            break None;
        }
        draining = true;
        sidecar.drain();
    };
    sidecar.stop().await;
    crate::exit(failed)
}
