//! `meshfed trust …` and `meshfed peering token …`: the mesh CA, SVIDs, bundles, rotation and
//! peering tokens from the command line. The CA lives in a directory (`--dir`, or
//! `MESHFED_TRUST_DIR`) with private keys at mode 0600.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use meshfed_core::{PeerName, SpiffeId, TrustDomain};
use meshfed_crds::peer::{ServiceMeshPeerRemote, ServiceMeshPeerSecurity};
use meshfed_crds::{ObjectMeta, ServiceMeshPeer, ServiceMeshPeerSpec};
use meshfed_trust::bundle::TrustBundle;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::ca::{self, CertificateAuthority};
use meshfed_trust::store::{self, DirStore, TrustStore};
use meshfed_trust::svid::{self, Role};
use meshfed_trust::{dir, pem, token};

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

/// The store the token commands use: the CA directory, or the cluster's.
async fn token_store(
    kube: bool,
    namespace: &str,
    dir: &Path,
    own: &TrustDomain,
) -> Result<std::sync::Arc<dyn TrustStore>> {
    if !kube {
        return Ok(std::sync::Arc::new(DirStore::new(dir, own.clone())));
    }
    let client = meshfed_k8s::connect()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or the pod's service account)")?;
    Ok(std::sync::Arc::new(
        meshfed_k8s::trust_store::KubeTrustStore::new(client, namespace, own.clone()),
    ))
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

fn load_ca(dir: &Path) -> Result<CertificateAuthority> {
    CertificateAuthority::load(dir).with_context(|| {
        format!(
            "loading the CA in {} (run `meshfed trust init` first?)",
            dir.display()
        )
    })
}

pub fn run_trust(cmd: TrustCommand) -> Result<ExitCode> {
    let now = SystemTime::now();
    match cmd {
        TrustCommand::Init {
            dir,
            trust_domain,
            force,
        } => {
            let td: TrustDomain = trust_domain
                .parse()
                .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
            if CertificateAuthority::exists(&dir.dir) && !force {
                bail!(
                    "{} already holds a CA; pass --force to replace it",
                    dir.dir.display()
                );
            }
            let ca = CertificateAuthority::new(td, now)?;
            ca.save(&dir.dir)?;
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
            let ca = load_ca(&dir.dir)?;
            let id = SpiffeId::parse_workload(&id).with_context(|| format!("--id {id:?}"))?;
            let cert_path = out.with_extension("pem");
            match csr {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let der = pem::csr_from_bytes(&bytes)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    let chain = ca.sign_csr(&der.into(), &id, ttl, now)?;
                    let pem: String = chain
                        .iter()
                        .map(|c| ca::pem_encode("CERTIFICATE", c))
                        .collect();
                    ca::write_file(&cert_path, pem.as_bytes(), 0o644)?;
                }
                None => {
                    let svid = ca.issue(&id, ttl, now)?;
                    ca::write_file(&cert_path, svid.chain_pem().as_bytes(), 0o644)?;
                    let key_path = PathBuf::from(format!("{}-key.pem", out.display()));
                    ca::write_file(&key_path, svid.key_pem().as_bytes(), 0o600)?;
                    note(&format!("wrote {}", key_path.display()));
                }
            }
            emit(&format!(
                "issued {id} for {}; wrote {}\n",
                humanize(ttl),
                cert_path.display()
            ))?;
        }
        TrustCommand::Show { file, trust_domain } => {
            return show(&file, trust_domain.as_deref(), now);
        }
        TrustCommand::Bundle {
            command: BundleCommand::Export { dir },
        } => {
            let ca = load_ca(&dir.dir)?;
            let b = ca.current_bundle()?;
            emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&b.to_json())?
            ))?;
        }
        TrustCommand::Bundle {
            command:
                BundleCommand::Import {
                    dir,
                    trust_domain,
                    file,
                },
        } => {
            let ca = load_ca(&dir.dir)?;
            let td: TrustDomain = trust_domain
                .parse()
                .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let bundle = if text.trim_start().starts_with('{') {
                let (bundle, warnings) = TrustBundle::from_json(td, &text)
                    .with_context(|| file.display().to_string())?;
                for w in warnings {
                    note(&format!("warning: {}: {w}", file.display()));
                }
                bundle
            } else {
                // A PEM file, or a Maistra root ConfigMap (data.root-cert.pem).
                let pem_text = if text.contains("ConfigMap") {
                    configmap_root(&text, &file)?
                } else {
                    text
                };
                let roots = pem::certificates(&pem_text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let seq = dir::next_sequence(&dir.dir, &ca, &td, &roots)?;
                TrustBundle::new(td, roots, seq).with_context(|| file.display().to_string())?
            };
            let roots = bundle.roots().len();
            let applied = dir::import_bundle(&dir.dir, &ca, bundle)?;
            emit(&format!(
                "{applied:?}: bundle of {trust_domain} with {roots} root(s)\n"
            ))?;
        }
        TrustCommand::Rotate { dir, retire } => {
            let mut ca = load_ca(&dir.dir)?;
            let msg = if retire {
                let n = ca.retire();
                format!("retired {n} root(s); bundle sequence {}\n", ca.sequence())
            } else {
                ca.rotate(now)?;
                format!(
                    "added a new signing root; both roots are trusted (bundle sequence {}). Publish the bundle to every peer, reissue SVIDs, then run `meshfed trust rotate --retire`\n",
                    ca.sequence()
                )
            };
            ca.save(&dir.dir)?;
            emit(&msg)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `data["root-cert.pem"]` of a ConfigMap document (Maistra's `certificateChain`).
fn configmap_root(text: &str, file: &Path) -> Result<String> {
    let stream = meshfed_crds::yaml::load(text);
    if let Some(e) = stream.fatal {
        bail!("{}: {e}", file.display());
    }
    let root = stream
        .documents
        .into_iter()
        .find_map(|d| d.root)
        .context("empty ConfigMap file")?;
    if root.str_at("kind") != Some("ConfigMap") {
        bail!("{}: not a ConfigMap", file.display());
    }
    root.get("data")
        .and_then(|d| d.str_at("root-cert.pem"))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{}: the ConfigMap has no data.root-cert.pem (Maistra's key for the peer root)",
                file.display()
            )
        })
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
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut out = String::new();
    let mut broken = 0;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let text = String::from_utf8_lossy(&bytes);
        let td = match trust_domain {
            Some(t) => t
                .parse::<TrustDomain>()
                .with_context(|| format!("--trust-domain {t:?}"))?,
            None => TrustBundle::domain_hint(&text)
                .context("cannot tell the bundle's trust domain; pass --trust-domain")?,
        };
        let (bundle, warnings) = TrustBundle::from_json(td.clone(), &text)
            .with_context(|| file.display().to_string())?;
        let _ = writeln!(
            out,
            "SPIFFE bundle for {td}: {} root(s), sequence {}, refresh hint {}s",
            bundle.roots().len(),
            bundle.sequence,
            bundle.refresh_hint.as_secs()
        );
        for w in &warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        broken += warnings.len();
        for (i, r) in bundle.roots().iter().enumerate() {
            broken += describe(&mut out, &format!("root {i}"), r, Role::Signing, now);
        }
    } else {
        let certs = pem::certificates_from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for (i, c) in certs.iter().enumerate() {
            let (label, role) = match (i, is_ca(c)) {
                (0, false) => ("leaf".to_owned(), Role::Leaf),
                (0, true) => ("certificate".to_owned(), Role::Signing),
                _ => (format!("chain[{i}]"), Role::Signing),
            };
            broken += describe(&mut out, &label, c, role, now);
        }
    }
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

fn is_ca(der: &[u8]) -> bool {
    x509_is_ca(der).unwrap_or(false)
}

fn x509_is_ca(der: &[u8]) -> Option<bool> {
    let ins = svid::inspect(der, Role::Signing, SystemTime::UNIX_EPOCH).ok()?;
    Some(ins.is_ca)
}

/// Writes a summary of one certificate; returns how many rules it breaks.
fn describe(out: &mut String, label: &str, der: &[u8], role: Role, now: SystemTime) -> usize {
    match svid::inspect(der, role, now) {
        Err(e) => {
            let _ = writeln!(out, "{label}: [{}] {e}", e.reason());
            1
        }
        Ok(i) => {
            let kind = if role == Role::Leaf {
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
            i.violations.len()
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
    let now = SystemTime::now();
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
            let ca = load_ca(&dir.dir)?;
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
                bundle_sequence: ca.sequence(),
            };
            let (tok, pending) = token::create(&ca, &req, now)?;
            let namespace = kube_namespace(kube.namespace.as_deref());
            let store = token_store(kube.kube, &namespace, &dir.dir, ca.trust_domain()).await?;
            store::record_pending(&*store, pending)
                .await
                .with_context(|| format!("recording the token in {}", store.location()))?;
            note(&format!(
                "token valid for {}, recorded in {}; give it to the peer over a trusted channel; it can be accepted once",
                humanize(ttl),
                store.location()
            ));
            emit(&format!("{tok}\n"))?;
        }
        TokenCommand::Accept {
            dir,
            namespace,
            mesh_name,
            no_redeem,
            kube,
            token: tok,
        } => {
            let ca = load_ca(&dir.dir)?;
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
            let store = token_store(
                kube,
                namespace.as_deref().unwrap_or_default(),
                &dir.dir,
                ca.trust_domain(),
            )
            .await?;
            // Every check runs before anything is sent or stored.
            let mut held = TrustBundleSet::new();
            held.insert(ca.current_bundle()?)?;
            for b in store
                .peer_bundles()
                .await
                .with_context(|| format!("reading the peer bundles in {}", store.location()))?
            {
                held.insert(b)?;
            }
            let v = store::check_token(&*store, &held, ca.trust_domain(), &text, now).await?;
            if !no_redeem {
                redeem_at_issuer(&ca, &v, namespace.as_deref(), mesh_name).await?;
            }
            store::accept(&*store, &v)
                .await
                .with_context(|| format!("storing the token's bundle in {}", store.location()))?;
            let peer = ServiceMeshPeer {
                metadata: kube_meta(v.peer_name.as_str(), namespace, &v.id),
                spec: ServiceMeshPeerSpec {
                    remote: Some(ServiceMeshPeerRemote {
                        addresses: Some(v.addresses.clone()),
                        discovery_port: Some(i32::from(v.discovery_port)),
                        service_port: Some(i32::from(v.service_port)),
                    }),
                    gateways: Some(meshfed_crds::peer::ServiceMeshPeerGateways {
                        ingress: Some(meshfed_crds::peer::LocalObjectReference {
                            name: Some(format!("ingress-{}", v.peer_name)),
                        }),
                        egress: Some(meshfed_crds::peer::LocalObjectReference {
                            name: Some(format!("egress-{}", v.peer_name)),
                        }),
                    }),
                    security: Some(ServiceMeshPeerSecurity {
                        client_id: Some(v.client_id.to_client_id()),
                        trust_domain: Some(v.trust_domain.to_string()),
                        certificate_chain: None,
                    }),
                },
                status: None,
            };
            note(&format!(
                "stored the bundle of {} in {}",
                v.trust_domain,
                store.location()
            ));
            emit(&serde_saphyr::to_string(&peer)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kube_meta(name: &str, namespace: Option<String>, token_id: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace,
        annotations: Some([("meshfed.io/peering-token".to_owned(), token_id.to_owned())].into()),
        ..Default::default()
    }
}

/// Redeems the token at its issuer, sending our bundle and our egress identity.
async fn redeem_at_issuer(
    ca: &CertificateAuthority,
    v: &token::Verified,
    namespace: Option<&str>,
    mesh_name: String,
) -> Result<()> {
    let ns_str = namespace.context(
        "--namespace is needed to redeem the token (our egress identity lives there), or pass --no-redeem",
    )?;
    let ns: meshfed_core::Namespace = ns_str
        .parse()
        .with_context(|| format!("--namespace {ns_str:?}"))?;
    let client_id = SpiffeId::for_service_account(
        ca.trust_domain(),
        &ns,
        &format!("egress-{}-service-account", v.peer_name),
    )?;
    let request = meshfed_api::peering::RedeemRequest {
        secret: v.secret.clone(),
        mesh: mesh_name,
        trust_domain: ca.trust_domain().to_string(),
        spiffe_bundle_json: ca.current_bundle()?.to_json().to_string(),
        client_id: client_id.to_client_id(),
    };
    let host = v.addresses.first().cloned().unwrap_or_default();
    let port = v.discovery_port;
    let (server_id, bundle) = (v.server_id.clone(), v.bundle.clone());
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    meshfed_peering::redeem::redeem(addr, server_id, bundle, request, Duration::from_secs(10))
        .await
        .map_err(|e| {
            anyhow::anyhow!("redeeming the token at {addr} failed: {e}; nothing was stored")
        })?;
    note(&format!(
        "token redeemed at {}: it now holds our bundle",
        v.trust_domain
    ));
    Ok(())
}
