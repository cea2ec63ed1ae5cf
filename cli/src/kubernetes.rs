//! `meshfed inject` and `meshfed redirect`: the sidecar added to Kubernetes workloads, and the
//! traffic redirection its init container installs.

use anyhow::{Context, Result};

/// `meshfed inject`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// YAML files (multi-document); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<std::path::PathBuf>,
    /// The meshfed image for the sidecar and init containers.
    #[arg(long, default_value = "meshfed:dev")]
    image: String,
    /// The Secret (in each workload's namespace) holding the control plane's `bootstrap.json`.
    #[arg(long, default_value = "meshfed-bootstrap")]
    bootstrap_secret: String,
}

/// Injects every document of every file and prints them; what was skipped is said on
/// standard error. A file that is not YAML is an error naming its line; nothing is printed.
pub(crate) fn inject(args: &InjectArgs) -> Result<std::process::ExitCode> {
    use meshfed_k8s::inject::{Options, Outcome};
    let opts = Options {
        image: args.image.clone(),
        bootstrap_secret: args.bootstrap_secret.clone(),
    };
    let mut out = String::new();
    for f in &args.files {
        let (name, text) = meshfed_app::files::read_input(f)?;
        let stream = meshfed_crds::yaml::load(&text);
        if let Some(e) = &stream.fatal {
            anyhow::bail!("{name}: {e}");
        }
        for doc in &stream.documents {
            if let Some(e) = doc.errors.first() {
                anyhow::bail!("{name}: document {}: {e}", doc.index + 1);
            }
            let Some(root) = &doc.root else { continue };
            let mut v = root.to_json();
            let what = format!(
                "{} {}",
                v["kind"].as_str().unwrap_or("object"),
                v["metadata"]["name"].as_str().unwrap_or("?")
            );
            if let Outcome::Skipped(why) = meshfed_k8s::inject::inject(&mut v, &opts) {
                crate::note(&format!("{name}: {what} left alone: {why}"));
            }
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&v).context("writing YAML")?);
        }
    }
    crate::emit(&out)?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{s:?} is not a port (1-65535)"))
}

/// `meshfed redirect`.
#[derive(clap::Args, Debug)]
pub struct RedirectArgs {
    /// The sidecar's user ID (its own traffic is not redirected).
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The sidecar's inbound mTLS port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// The sidecar's outbound listener.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound ports not redirected (comma-separated); they bypass the sidecar and its mTLS.
    #[arg(long, value_delimiter = ',', value_parser = port)]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound ports not redirected (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = port)]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound IPv4 networks not redirected (comma-separated `a.b.c.d/n`).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// The sidecar's DNS proxy: the pod's UDP and TCP traffic to port 53 goes there (but the
    /// sidecar's own, which reaches the pod's resolver).
    #[arg(long, default_value_t = 15053, value_parser = port)]
    dns_port: u16,
    /// Leave DNS alone (no DNS proxy in the sidecar).
    #[arg(long)]
    no_dns: bool,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
}

/// Builds the rules and installs them with `iptables-restore --noflush` (or prints them).
pub(crate) fn redirect(args: &RedirectArgs) -> Result<std::process::ExitCode> {
    use std::io::Write as _;
    let rules = meshfed_k8s::redirect::Redirect {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
        exclude_outbound_ports: args.exclude_outbound_ports.clone(),
        exclude_outbound_cidrs: args
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
        dns_port: (!args.no_dns).then_some(args.dns_port),
    }
    .rules()?;
    if args.dry_run {
        crate::emit(&rules)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let mut child = std::process::Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running iptables-restore (the init container needs it and NET_ADMIN)")?;
    child
        .stdin
        .take()
        .context("iptables-restore's input")?
        .write_all(rules.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        anyhow::bail!("iptables-restore failed ({status}); the rules were:\n{rules}");
    }
    crate::note("traffic redirection installed");
    Ok(std::process::ExitCode::SUCCESS)
}
