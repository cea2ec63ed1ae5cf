//! `meshfed explain`: load mesh files, compute the federation explanation, render it.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use meshfed_core::PeerName;
use meshfed_core::export::ExportView;
use meshfed_core::federation::{Explanation, ImportSide, MeshFederation, PeerExplanation};
use meshfed_core::import::{ImportConflict, ImportPlan};

use crate::OutputFormat;
use crate::table::Table;

pub fn run(
    files: &[PathBuf],
    peer: Option<&str>,
    all: bool,
    output: OutputFormat,
) -> Result<ExitCode> {
    let only = peer
        .map(|p| {
            p.parse::<PeerName>()
                .with_context(|| format!("--peer {p:?}"))
        })
        .transpose()?;
    let explained = meshfed_app::explain::explain_files(files, only.as_ref(), all)?;
    for d in &explained.report.diagnostics {
        crate::note(&format!("{d}"));
    }
    let explanations: Vec<&Explanation> = explained.meshes.iter().map(|(e, _)| e).collect();
    let first = explanations.first().context("no mesh file given")?;
    let text = match output {
        OutputFormat::Json if all => format!("{}\n", serde_json::to_string_pretty(&explanations)?),
        OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(first)?),
        OutputFormat::Yaml if all => serde_saphyr::to_string(&explanations)?,
        OutputFormat::Yaml => serde_saphyr::to_string(first)?,
        OutputFormat::Table => explained
            .meshes
            .iter()
            .map(|(e, mesh)| render(e, mesh))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    crate::emit(&text)?;
    Ok(if explained.report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn render(e: &Explanation, mesh: &MeshFederation) -> String {
    let mut out = String::new();
    let services = mesh.catalog.len();
    let _ = writeln!(
        out,
        "Mesh {} (trust domain {}, control plane namespace {}, {} local service(s), {} peer(s))",
        e.mesh,
        e.trust_domain,
        e.namespace,
        services,
        mesh.peers.len()
    );
    for p in &e.peers {
        out.push('\n');
        render_peer(&mut out, p);
    }
    out.push('\n');
    render_plan(&mut out, &e.imports);
    let total = e.conflict_count();
    let _ = writeln!(out, "\n{} conflict(s).", total);
    out
}

fn render_peer(out: &mut String, p: &PeerExplanation) {
    let remote = p.remote_mesh.as_ref().map_or_else(
        || "configuration not given".to_owned(),
        |m| format!("mesh {m}"),
    );
    let _ = writeln!(
        out,
        "Peer {} — trust domain {}, client {}, {}",
        p.peer,
        p.trust_domain,
        p.client_id.to_client_id(),
        remote
    );
    render_exports(out, &p.exports);
    if !p.exports_not_imported.is_empty() {
        let _ = writeln!(
            out,
            "  Exported but not imported by {} (ExportNotImported):",
            p.peer
        );
        for h in &p.exports_not_imported {
            let _ = writeln!(out, "    {h}");
        }
    }
    match &p.imports {
        ImportSide::NoImportedServiceSet => {
            let _ = writeln!(
                out,
                "  Imports from {}: none (no ImportedServiceSet named {})",
                p.peer, p.peer
            );
        }
        ImportSide::PeerExportsUnknown => {
            let _ = writeln!(
                out,
                "  Imports from {}: unknown — pass the peer's mesh file with another --mesh",
                p.peer
            );
        }
        ImportSide::PeerDoesNotPeerBack => {
            let _ = writeln!(
                out,
                "  Imports from {}: none — the peer has no ServiceMeshPeer for this mesh",
                p.peer
            );
        }
        ImportSide::Mapped(m) => {
            let _ = writeln!(out, "  Imports from {} ({}):", p.peer, m.imports.len());
            if !m.imports.is_empty() {
                let mut t = Table::new(&["EXPORTED NAME", "LOCAL HOSTNAME", "RULE", "MODE"]);
                for i in &m.imports {
                    let mode = if i.import_as_local {
                        "importAsLocal".to_owned()
                    } else {
                        "imported".to_owned()
                    };
                    let mode = match &i.locality {
                        Some(l) => format!("{mode}, locality {l}"),
                        None => mode,
                    };
                    t.row(vec![
                        i.exported_name.to_string(),
                        i.hostname.to_string(),
                        format!("importRules[{}]", i.rule),
                        mode,
                    ]);
                }
                out.push_str(&t.render("    "));
            }
            if !m.unmatched.is_empty() {
                let _ = writeln!(out, "  Not imported (no rule matches):");
                for h in &m.unmatched {
                    let _ = writeln!(out, "    {h}");
                }
            }
        }
    }
}

fn render_exports(out: &mut String, v: &ExportView) {
    let _ = writeln!(out, "  Exports to {} ({}):", v.peer, v.services.len());
    if !v.services.is_empty() {
        let mut t = Table::new(&["LOCAL SERVICE", "EXPORTED AS", "RULE"]);
        for s in v.services.values() {
            t.row(vec![
                s.local.to_string(),
                s.exported_name.to_string(),
                format!("exportRules[{}]", s.rule),
            ]);
        }
        out.push_str(&t.render("    "));
    }
    for s in &v.skipped {
        let _ = writeln!(
            out,
            "    not exported: {} (exportRules[{}] matched; {})",
            s.local, s.rule, s.reason
        );
    }
    for c in &v.conflicts {
        let _ = writeln!(
            out,
            "    conflict [DuplicateExportedName] {}: {} (exportRules[{}]) wins over {} (exportRules[{}]), which is not exported",
            c.exported_name, c.winner, c.winner_rule, c.loser, c.loser_rule
        );
    }
}

fn describe_conflict(c: &ImportConflict) -> String {
    match c {
        ImportConflict::DuplicateImportedHostname {
            hostname,
            winner_peer,
            winner,
            loser_peer,
            loser,
        } => {
            format!(
                "{hostname}: {winner} from {winner_peer} wins over {loser} from {loser_peer}, which is not imported"
            )
        }
        ImportConflict::ShadowsLocalService {
            hostname,
            peer,
            exported_name,
        } => {
            format!(
                "{exported_name} from {peer} would take the local name {hostname}; not imported (use importAsLocal to merge)"
            )
        }
        ImportConflict::ImportedNameTooLong {
            peer,
            exported_name,
        } => {
            format!(
                "{exported_name} from {peer}: the imported hostname would exceed DNS limits; not imported"
            )
        }
    }
}

fn render_plan(out: &mut String, plan: &ImportPlan) {
    let merges: Vec<_> = plan
        .services
        .values()
        .filter(|s| s.groups.iter().any(|g| g.import_as_local))
        .collect();
    if merges.is_empty() {
        let _ = writeln!(out, "importAsLocal merges: none");
    } else {
        let _ = writeln!(out, "importAsLocal merges ({}):", merges.len());
        let mut t = Table::new(&["HOSTNAME", "LOCAL ENDPOINTS", "PEER ENDPOINT GROUPS"]);
        for s in merges {
            let local = s
                .local
                .as_ref()
                .map_or_else(|| "none (no local service)".to_owned(), |k| k.to_string());
            let groups: Vec<String> = s
                .groups
                .iter()
                .map(|g| match &g.locality {
                    Some(l) => format!("{} ({l})", g.peer),
                    None => g.peer.to_string(),
                })
                .collect();
            t.row(vec![s.hostname.to_string(), local, groups.join(", ")]);
        }
        out.push_str(&t.render("  "));
    }
    if !plan.conflicts.is_empty() {
        let _ = writeln!(out, "Import conflicts:");
        for c in &plan.conflicts {
            let _ = writeln!(out, "  [{}] {}", c.reason(), describe_conflict(c));
        }
    }
}
