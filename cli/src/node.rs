//! `meshfed peering run`: the peering part of a mesh's control plane, for one mesh file (the
//! node itself is `meshfed_app::node`), with a loopback admin endpoint serving its status;
//! and `meshfed status`, which reads that endpoint (or a control plane's) and renders it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;
use meshfed_app::node::{Node, StandaloneConfig};
use meshfed_app::status::{NodeStatus, unix_ms};

use crate::emit;
use crate::trust::{DirArg, parse_duration};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The mesh file (a Mesh document and its federation resources).
    #[arg(long)]
    mesh: PathBuf,
    #[command(flatten)]
    dir: DirArg,
    /// Where peers reach our peering endpoint (in production, behind the ingress gateway's
    /// discovery port).
    #[arg(long, default_value = "127.0.0.1:8188")]
    listen: SocketAddr,
    /// Loopback address of the admin endpoint (status, health).
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    /// Directory of the persisted imports (a rebuildable cache).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Heartbeat interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Silence after which a peer is Failing.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    liveness: Duration,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Admin address of a running `meshfed peering run`.
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    #[arg(long, short, value_enum, default_value_t = crate::OutputFormat::Table)]
    output: crate::OutputFormat,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (node, _admin) = Node::standalone(StandaloneConfig {
            mesh: args.mesh,
            ca_dir: args.dir.dir,
            listen: args.listen,
            admin: args.admin,
            store: args.store,
            heartbeat: args.heartbeat,
            liveness: args.liveness,
        })
        .await?;
        let failed = crate::until_stopped(node.failed()).await?;
        node.stop().await;
        crate::exit(failed)
    })
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let st = rt.block_on(meshfed_app::status::fetch(
        args.admin,
        Duration::from_secs(5),
    ))?;
    match args.output {
        crate::OutputFormat::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&st)?))?,
        crate::OutputFormat::Yaml => emit(&serde_saphyr::to_string(&st)?)?,
        crate::OutputFormat::Table => emit(&render(&st, unix_ms(SystemTime::now())))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(ms: Option<u64>, now: u64) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let s = now.saturating_sub(ms) / 1000;
    if s < 120 {
        format!("{s}s ago")
    } else if s < 7200 {
        format!("{}m ago", s / 60)
    } else {
        format!("{}h ago", s / 3600)
    }
}

fn render(st: &NodeStatus, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Mesh {} ({}), peering on {}",
        st.mesh, st.trust_domain, st.listen
    );
    let mut t = crate::table::Table::new(&[
        "IMPORTING FROM",
        "STATE",
        "SERVICES",
        "VERSION",
        "STALE",
        "LAST SYNC",
        "LAST HEARTBEAT",
        "CONDITIONS",
    ]);
    for i in &st.imports {
        let p = &i.status;
        let conds: Vec<String> = p
            .conditions
            .iter()
            .map(|c| {
                format!(
                    "{}={}({})",
                    c.type_,
                    if c.status { "True" } else { "False" },
                    c.reason
                )
            })
            .collect();
        t.row(vec![
            p.peer.clone(),
            format!("{:?}", p.state),
            p.imported_services.to_string(),
            p.imported_version.map_or("-".into(), |x| x.to_string()),
            p.stale.to_string(),
            ago(p.last_full_sync_ms, now),
            ago(p.last_heartbeat_ms, now),
            conds.join(" "),
        ]);
    }
    out.push_str(&t.render("  "));
    let mut t = crate::table::Table::new(&[
        "EXPORTING TO",
        "CONNECTED",
        "SERVICES",
        "ACKED VERSION",
        "LAST CLOSE",
        "LAST NACK",
    ]);
    for (peer, e) in &st.exports {
        t.row(vec![
            peer.clone(),
            e.connected.to_string(),
            e.exported_services.to_string(),
            e.last_acked_version.map_or("-".into(), |x| x.to_string()),
            e.last_close_reason.clone().unwrap_or_else(|| "-".into()),
            e.last_nack_reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&t.render("  "));
    for r in &st.refused {
        let _ = writeln!(out, "  refused: {} ({})", r.from, r.reason);
    }
    out
}
