//! `meshfed proxy`: one workload's sidecar in local-file mode — routes and identities come
//! from the mesh file, the SVID from the mesh CA (the control-plane stream comes later).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Args;
use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_proxy::sidecar::{self, Endpoint, OutboundService, SidecarConfig};
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::verify::{self, Expect, SvidResolver};

use crate::note;
use crate::trust::DirArg;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The mesh file (its `workloads` give routes and addresses).
    #[arg(long)]
    mesh: PathBuf,
    /// The workload this sidecar serves.
    #[arg(long)]
    workload: String,
    /// The workload's namespace, if its name is not unique.
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
}

pub fn run(args: ProxyArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: ProxyArgs) -> Result<ExitCode> {
    let mesh = crate::node::load_mesh(&args.mesh)?;
    let ca = CertificateAuthority::load(&args.dir.dir)
        .with_context(|| format!("loading the CA in {}", args.dir.dir.display()))?;
    if ca.trust_domain() != &mesh.trust_domain {
        bail!(
            "the CA in {} is for {}, the mesh is {}",
            args.dir.dir.display(),
            ca.trust_domain(),
            mesh.trust_domain
        );
    }
    let matches: Vec<_> = mesh
        .catalog
        .workloads()
        .filter(|w| {
            w.name == args.workload
                && args
                    .namespace
                    .as_deref()
                    .is_none_or(|n| w.namespace.as_str() == n)
        })
        .collect();
    let w = match matches.as_slice() {
        [w] => *w,
        [] => {
            let known: Vec<String> = mesh
                .catalog
                .workloads()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect();
            bail!(
                "no workload {:?} in {}; workloads: {}",
                args.workload,
                args.mesh.display(),
                known.join(", ")
            );
        }
        _ => bail!(
            "workload {:?} exists in several namespaces; pass --namespace",
            args.workload
        ),
    };
    let held = meshfed_trust::dir::load_bundles(&args.dir.dir, &ca)?;
    let allow: BTreeSet<TrustDomain> = held.domains().cloned().collect();
    let identity = |ns: &meshfed_core::Namespace, sa: &str| {
        SpiffeId::for_service_account(&mesh.trust_domain, ns, sa)
    };
    let mut services = Vec::new();
    for svc in mesh.catalog.iter() {
        let endpoints = mesh
            .catalog
            .endpoints_of(&svc.key)
            .map(|e| {
                Ok(Endpoint {
                    addr: e.inbound,
                    identity: identity(&e.namespace, &e.service_account)?,
                })
            })
            .collect::<Result<Vec<_>, meshfed_core::id::SpiffeIdError>>()?;
        services.push(OutboundService {
            host: mesh.catalog.hostname_of(&svc.key)?,
            endpoints,
            traffic: mesh.traffic_for(&svc.key),
        });
    }
    let id = identity(&w.namespace, &w.service_account)?;
    let svid = ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())?;
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    let cfg = SidecarConfig {
        outbound: args.outbound,
        inbound: Some(w.inbound),
        app: Some(w.app),
        allow: Expect::TrustDomains(allow),
        services,
        policies: mesh.policies_for(&w.service),
        service: w.service.to_string(),
        admin: args.admin,
    };
    let running = sidecar::start(cfg, resolver.clone(), verify::shared(held)).await?;
    note(&format!(
        "sidecar for {}/{} as {id}: inbound mTLS on {}, app {}{}{}",
        w.namespace,
        w.name,
        running.inbound.map_or("-".into(), |a| a.to_string()),
        w.app,
        running
            .outbound
            .map_or(String::new(), |a| format!(", outbound on {a}")),
        running
            .admin
            .map_or(String::new(), |a| format!(", admin on http://{a}")),
    ));
    // Renew the SVID at half life.
    let ca_dir = args.dir.dir.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(DEFAULT_SVID_TTL / 2).await;
            if let Ok(ca) = CertificateAuthority::load(&ca_dir)
                && let Ok(svid) = ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())
            {
                let _ = resolver.set(&svid);
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(running);
    Ok(ExitCode::SUCCESS)
}
