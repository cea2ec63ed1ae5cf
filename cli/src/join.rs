//! `meshfed join …`: per-workload join credentials for embedded mode.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use meshfed_app::join::{self, JoinRequest};

use crate::trust::{DirArg, parse_duration};
use crate::{emit, note};

#[derive(Subcommand, Debug)]
pub enum JoinCommand {
    /// Mint a join credential bound to one workload (a gateway is a workload of the
    /// control-plane namespace, named as in spec.gateways) and write that workload's bootstrap
    /// file: the control plane's file plus the credential. The credential yields only this
    /// workload's identity; it is kept nowhere but in the written file (mode 0600).
    Create {
        #[command(flatten)]
        dir: DirArg,
        /// The control plane's bootstrap file (`meshfed control --bootstrap-out`).
        #[arg(long, value_name = "FILE")]
        bootstrap: PathBuf,
        #[arg(long)]
        namespace: String,
        /// The workload it may join as; repeat it for a gateway process serving more than one
        /// (`--workload ingress-beta --workload egress-beta`).
        #[arg(long = "workload", required = true)]
        workloads: Vec<String>,
        /// How long the credential may be used (a workload that restarts within it joins
        /// again with it).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Valid for one certificate only.
        #[arg(long)]
        once: bool,
        /// The workload's bootstrap file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Revoke every join credential of a workload (its certificates stay valid until they
    /// expire).
    Revoke {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        workload: String,
    },
    /// List the join credentials recorded in the CA folder.
    List {
        #[command(flatten)]
        dir: DirArg,
    },
}

pub fn run(cmd: JoinCommand) -> Result<ExitCode> {
    match cmd {
        JoinCommand::Create {
            dir,
            bootstrap,
            namespace,
            workloads,
            ttl,
            once,
            out,
        } => {
            let record = join::create(&JoinRequest {
                dir: dir.dir,
                template: bootstrap,
                namespace,
                workloads,
                ttl,
                once,
                out: out.clone(),
            })?;
            note(&format!(
                "wrote {} for {}/{}: give it to that workload only",
                out.display(),
                record.namespace,
                record.workloads.join(",")
            ));
        }
        JoinCommand::Revoke {
            dir,
            namespace,
            workload,
        } => {
            let n = join::revoke(&dir.dir, &namespace, &workload)?;
            emit(&format!(
                "revoked {n} join credential(s) of {namespace}/{workload}\n"
            ))?;
        }
        JoinCommand::List { dir } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut t = crate::table::Table::new(&["WORKLOAD", "EXPIRES IN", "USE"]);
            for r in join::list(&dir.dir)? {
                t.row(vec![
                    format!("{}/{}", r.namespace, r.workloads.join(",")),
                    match r.expires_at.checked_sub(now) {
                        Some(s) if s > 0 => format!("{s}s"),
                        _ => "expired".to_owned(),
                    },
                    if r.once { "once" } else { "until expiry" }.to_owned(),
                ]);
            }
            emit(&t.render(""))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
