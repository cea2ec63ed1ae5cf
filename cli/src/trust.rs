//! `meshfed trust …` and `meshfed peering token …`: the mesh CA, SVIDs, bundles, rotation and
//! peering tokens from the command line. The CA lives in a directory (`--dir`, or
//! `MESHFED_TRUST_DIR`) with private keys at mode 0600.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meshfed_app::ca;
use meshfed_app::token::{self, StoreAt};
use meshfed_core::{Namespace, PeerName, SpiffeId, TrustDomain};
use meshfed_trust::svid::Role;

use crate::{emit, note};

#[derive(Args, Debug)]
pub struct DirArg {
    /// CA directory.
    #[arg(long, env = "MESHFED_TRUST_DIR", default_value = "meshfed-trust")]
    pub dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// Create a mesh CA (ECDSA P-256 root) for a trust domain.
    Init {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        trust_domain: String,
        /// Replace an existing CA in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload SVID: from a CSR (`--csr`; the key never leaves the workload), or with a
    /// new key written beside the certificate.
    Issue {
        #[command(flatten)]
        dir: DirArg,
        /// The workload's SPIFFE ID, e.g. spiffe://alpha.local/ns/shop/sa/orders.
        #[arg(long)]
        id: String,
        /// Lifetime, e.g. 24h, 90m, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// PEM or DER CSR whose one URI SAN is `--id`.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Output prefix: writes PREFIX.pem (chain) and, without --csr, PREFIX-key.pem (0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Summarize a certificate, chain or SPIFFE bundle, listing every SPIFFE rule it breaks;
    /// exits 1 when it breaks any.
    Show {
        file: PathBuf,
        /// Trust domain of a bundle file (default: read from its roots).
        #[arg(long)]
        trust_domain: Option<String>,
    },
    /// Export this mesh's bundle, or import a peer's.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Add a new signing root (both stay trusted), or retire the old ones.
    Rotate {
        #[command(flatten)]
        dir: DirArg,
        /// Drop every root but the signing one (after all SVIDs they signed expired).
        #[arg(long)]
        retire: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Print this mesh's SPIFFE bundle (JSON).
    Export {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Store a peer's bundle under `<dir>/bundles/<trust-domain>.json`: a SPIFFE bundle (JSON),
    /// PEM root certificates, or a Maistra root ConfigMap (`data.root-cert.pem`).
    Import {
        #[command(flatten)]
        dir: DirArg,
        /// The peer's trust domain.
        #[arg(long)]
        trust_domain: String,
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum PeeringCommand {
    /// Peering tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run the peering service for one mesh file: serve its exports to each peer, import from
    /// each peer, keep status on a loopback admin endpoint (see `meshfed status`).
    Run(crate::node::RunArgs),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// On mesh A: create a signed one-time token for a peer to accept.
    Create {
        #[command(flatten)]
        dir: DirArg,
        /// The name the accepting mesh should give this mesh.
        #[arg(long)]
        peer_name: String,
        /// Addresses of this mesh's ingress gateway (repeatable).
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        #[arg(long, default_value_t = 8188)]
        discovery_port: u16,
        #[arg(long, default_value_t = 15443)]
        service_port: u16,
        /// This mesh's peering server identity.
        #[arg(long)]
        server_id: String,
        /// This mesh's egress gateway identity (the peer's clientID for us).
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        kube: KubeStoreArgs,
    },
    /// On mesh B: accept a token — redeem it at A (A receives B's bundle), store A's bundle,
    /// and print A's ServiceMeshPeer. Nothing is stored unless every step succeeds.
    Accept {
        #[command(flatten)]
        dir: DirArg,
        /// Our control-plane namespace: for the printed ServiceMeshPeer and our egress
        /// identity sent to A.
        #[arg(long)]
        namespace: Option<String>,
        /// Our mesh name, sent to A for its records.
        #[arg(long, default_value = "")]
        mesh_name: String,
        /// Do not contact A: store its bundle only (A must then import ours by hand).
        #[arg(long)]
        no_redeem: bool,
        /// Keep the token record and A's bundle in the cluster (the Secret
        /// `meshfed-peering-tokens` and the ConfigMap `meshfed-peer-bundles` in --namespace,
        /// where `meshfed control --kube` reads them) instead of the CA directory.
        #[arg(long)]
        kube: bool,
        /// The token, or `-` to read it from standard input.
        token: String,
    },
}

/// Where `peering token create` records a token: the CA directory, or the cluster.
#[derive(Args, Debug)]
pub struct KubeStoreArgs {
    /// Record the token in the cluster (the Secret `meshfed-peering-tokens` in
    /// --namespace, where `meshfed control --kube` redeems it) instead of the CA directory.
    /// The client comes from KUBECONFIG or the pod's service account, so this also runs in
    /// the control plane's pod (`kubectl exec … -- meshfed peering token create --kube --dir
    /// /etc/meshfed/ca …`): the CA key never leaves it.
    #[arg(long)]
    kube: bool,
    /// With --kube: the control-plane namespace (default: $POD_NAMESPACE, else
    /// meshfed-system).
    #[arg(long, requires = "kube")]
    namespace: Option<String>,
}

/// The control-plane namespace of the `--kube` token commands.
fn kube_namespace(namespace: Option<&str>) -> String {
    namespace.map_or_else(
        || std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "meshfed-system".to_owned()),
        str::to_owned,
    )
}

/// Parses `250ms`, `1.5s`, `90s`, `30m`, `24h`, `7d` (for clap).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    meshfed_core::traffic::parse_duration(s).map_err(|e| e.to_string())
}

/// [`parse_duration`], where zero (`0`, `0s`, `0ms`…) is allowed: for options where `0s` turns
/// something off.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    meshfed_core::traffic::parse_duration_or_zero(s).map_err(|e| e.to_string())
}

fn trust_domain(flag: &str, value: &str) -> Result<TrustDomain> {
    value.parse().with_context(|| format!("--{flag} {value:?}"))
}

pub fn run_trust(cmd: TrustCommand) -> Result<ExitCode> {
    match cmd {
        TrustCommand::Init {
            dir,
            trust_domain: td,
            force,
        } => {
            let ca = ca::init(&dir.dir, trust_domain("trust-domain", &td)?, force)?;
            emit(&format!(
                "created CA for {} in {} (signing root root-1)\n",
                ca.trust_domain(),
                dir.dir.display()
            ))?;
        }
        TrustCommand::Issue {
            dir,
            id,
            ttl,
            csr,
            out,
        } => {
            let id = SpiffeId::parse_workload(&id).with_context(|| format!("--id {id:?}"))?;
            let issued = ca::issue(&dir.dir, &id, ttl, csr.as_deref(), &out)?;
            if let Some(key) = &issued.key {
                note(&format!("wrote {}", key.display()));
            }
            emit(&format!(
                "issued {id} for {}; wrote {}\n",
                humanize(ttl),
                issued.cert.display()
            ))?;
        }
        TrustCommand::Show { file, trust_domain } => {
            return show(&file, trust_domain.as_deref(), SystemTime::now());
        }
        TrustCommand::Bundle {
            command: BundleCommand::Export { dir },
        } => {
            let b = ca::bundle_json(&dir.dir)?;
            emit(&format!("{}\n", serde_json::to_string_pretty(&b)?))?;
        }
        TrustCommand::Bundle {
            command:
                BundleCommand::Import {
                    dir,
                    trust_domain: td,
                    file,
                },
        } => {
            let imported = ca::import_bundle(&dir.dir, trust_domain("trust-domain", &td)?, &file)?;
            for w in &imported.warnings {
                note(&format!("warning: {}: {w}", file.display()));
            }
            emit(&format!(
                "{:?}: bundle of {td} with {} root(s)\n",
                imported.applied, imported.roots
            ))?;
        }
        TrustCommand::Rotate { dir, retire } => {
            emit(&match ca::rotate(&dir.dir, retire)? {
                ca::Rotation::Retired { roots, sequence } => {
                    format!("retired {roots} root(s); bundle sequence {sequence}\n")
                }
                ca::Rotation::Added { sequence } => format!(
                    "added a new signing root; both roots are trusted (bundle sequence {sequence}). Publish the bundle to every peer, reissue SVIDs, then run `meshfed trust rotate --retire`\n"
                ),
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

fn show(file: &Path, trust_domain: Option<&str>, now: SystemTime) -> Result<ExitCode> {
    let td = trust_domain
        .map(|t| {
            t.parse::<TrustDomain>()
                .with_context(|| format!("--trust-domain {t:?}"))
        })
        .transpose()?;
    let inspected = ca::inspect_file(file, td, now)?;
    let mut out = String::new();
    if let Some((bundle, warnings)) = &inspected.bundle {
        let _ = writeln!(
            out,
            "SPIFFE bundle for {}: {} root(s), sequence {}, refresh hint {}s",
            bundle.trust_domain(),
            bundle.roots().len(),
            bundle.sequence,
            bundle.refresh_hint.as_secs()
        );
        for w in warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
    }
    for c in &inspected.certificates {
        describe(&mut out, c);
    }
    let broken = inspected.broken();
    let _ = writeln!(
        out,
        "{}",
        if broken == 0 {
            "no SPIFFE rule broken".to_owned()
        } else {
            format!("{broken} problem(s)")
        }
    );
    emit(&out)?;
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes a summary of one certificate and the rules it breaks.
fn describe(out: &mut String, c: &ca::Inspected) {
    let label = &c.label;
    match &c.result {
        Err(e) => {
            let _ = writeln!(out, "{label}: [{}] {e}", e.reason());
        }
        Ok(i) => {
            let kind = if c.role == Role::Leaf {
                "workload SVID"
            } else {
                "signing certificate"
            };
            let _ = writeln!(out, "{label} ({kind}):");
            let id = i
                .spiffe_id
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), ToString::to_string);
            for (k, v) in [
                ("SPIFFE ID", id),
                ("subject", i.subject.clone()),
                ("issuer", i.issuer.clone()),
                ("serial", i.serial.clone()),
                ("valid", format!("{} to {}", i.not_before, i.not_after)),
                ("CA", i.is_ca.to_string()),
                ("key", i.key.clone()),
                ("signature", i.signature.clone()),
            ] {
                let _ = writeln!(out, "  {k:<10} {v}");
            }
            for v in &i.violations {
                let _ = writeln!(out, "  broken: [{}] {v}", v.reason());
            }
        }
    }
}

pub fn run_peering(cmd: PeeringCommand) -> Result<ExitCode> {
    let command = match cmd {
        PeeringCommand::Token { command } => command,
        PeeringCommand::Run(args) => return crate::node::run(args),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_token(command))
}

async fn run_token(command: TokenCommand) -> Result<ExitCode> {
    match command {
        TokenCommand::Create {
            dir,
            peer_name,
            addresses,
            discovery_port,
            service_port,
            server_id,
            client_id,
            ttl,
            kube,
        } => {
            let req = token::TokenRequest {
                peer_name: peer_name
                    .parse::<PeerName>()
                    .with_context(|| format!("--peer-name {peer_name:?}"))?,
                server_id: SpiffeId::parse_workload(&server_id)
                    .with_context(|| format!("--server-id {server_id:?}"))?,
                client_id: SpiffeId::from_client_id(&client_id)
                    .with_context(|| format!("--client-id {client_id:?}"))?,
                addresses,
                discovery_port,
                service_port,
                ttl,
                bundle_sequence: 0,
            };
            let at = if kube.kube {
                StoreAt::Kube {
                    namespace: kube_namespace(kube.namespace.as_deref()),
                }
            } else {
                StoreAt::Dir
            };
            let created = token::create(&dir.dir, req, &at).await?;
            note(&format!(
                "token valid for {}, recorded in {}; give it to the peer over a trusted channel; it can be accepted once",
                humanize(ttl),
                created.location
            ));
            emit(&format!("{}\n", created.token))?;
        }
        TokenCommand::Accept {
            dir,
            namespace,
            mesh_name,
            no_redeem,
            kube,
            token: tok,
        } => {
            let text = if tok == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("reading the token from standard input")?;
                s
            } else {
                tok
            };
            let namespace = if kube {
                Some(kube_namespace(namespace.as_deref()))
            } else {
                namespace
            };
            let ns: Option<Namespace> = namespace
                .as_deref()
                .map(|n| n.parse().with_context(|| format!("--namespace {n:?}")))
                .transpose()?;
            let accepted = token::accept(token::Accept {
                dir: dir.dir,
                token: text,
                namespace: ns.clone(),
                mesh_name,
                redeem: !no_redeem,
                store: match (kube, ns) {
                    (true, Some(ns)) => StoreAt::Kube {
                        namespace: ns.to_string(),
                    },
                    _ => StoreAt::Dir,
                },
            })
            .await?;
            if accepted.redeemed_at.is_some() {
                note(&format!(
                    "token redeemed at {}: it now holds our bundle",
                    accepted.trust_domain
                ));
            }
            note(&format!(
                "stored the bundle of {} in {}",
                accepted.trust_domain, accepted.location
            ));
            emit(&serde_saphyr::to_string(&accepted.peer)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
