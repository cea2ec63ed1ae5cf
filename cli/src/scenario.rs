//! `meshfed scenario run FILE` and `meshfed lab up FILE`: the embedded lab (`lab/`) from the
//! command line. A scenario file is validated like any other (line and field for every
//! problem) before anything starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meshfed_crds::scenario::ScenarioPlan;

use crate::note;

#[derive(Subcommand, Debug)]
pub enum ScenarioCommand {
    /// Build the scenario's meshes on loopback, send the load, play the timeline, print
    /// progress, and write a JSON and an HTML report. Several files run one after the other
    /// (all are validated first) and end with a summary table. Exit code 0 when every
    /// expectation holds, 1 when one does not, 2 when a run could not happen.
    Run(RunArgs),
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the scenario's meshes on loopback and keep them running (no load, no timeline)
    /// until Ctrl-C; prints every address.
    Up(UpArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The scenario files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where the reports go.
    #[arg(long, default_value = "target/lab")]
    out: PathBuf,
    /// Working folder for mesh files, CAs and component logs (default: OUT/NAME-work; one
    /// file only).
    #[arg(long)]
    work: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The scenario file (its load, steps and expectations are not used).
    file: PathBuf,
    #[arg(long, default_value = "target/lab")]
    out: PathBuf,
}

/// Reads and validates a scenario file; every problem is printed, none is skipped.
fn load(file: &Path) -> Result<ScenarioPlan> {
    meshfed_lab::load_plan(file).map_err(|e| {
        if let meshfed_lab::PlanError::Invalid { diagnostics, .. } = &e {
            for d in diagnostics {
                note(&d.to_string());
            }
        }
        e.into()
    })
}

fn options(out: &Path, work: PathBuf) -> Result<meshfed_lab::Options> {
    Ok(meshfed_lab::Options {
        exe: std::env::current_exe().context("finding the meshfed binary")?,
        work,
        out: out.to_owned(),
        say: Arc::new(|line: &str| println!("{line}")),
    })
}

pub fn run(cmd: ScenarioCommand) -> Result<ExitCode> {
    let ScenarioCommand::Run(args) = cmd;
    if args.work.is_some() && args.files.len() > 1 {
        anyhow::bail!("--work names one run's folder; leave it out with several files");
    }
    // Every file is checked before anything starts.
    let plans = args
        .files
        .iter()
        .map(|f| load(f))
        .collect::<Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for plan in &plans {
        let work = args
            .work
            .clone()
            .unwrap_or_else(|| args.out.join(format!("{}-work", plan.name)));
        let opts = options(&args.out, work)?;
        println!(
            "scenario {}: {}",
            plan.name,
            if plan.description.is_empty() {
                "-"
            } else {
                &plan.description
            }
        );
        let outcome = rt.block_on(meshfed_lab::run(plan, &opts))?;
        print_outcome(&outcome);
        reports.push(outcome.report);
    }
    if reports.len() > 1 {
        print!("{}", meshfed_lab::report::summary_table(&reports));
    }
    Ok(if reports.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_outcome(outcome: &meshfed_lab::Outcome) {
    let f = &outcome.report.figures;
    println!(
        "{} requests, {} succeeded ({:.4}), {} failed, {} lost; {} fault(s) played; failover {}; fail-back {}",
        f.requests,
        f.ok,
        f.success_ratio,
        f.failed,
        f.lost,
        f.faults,
        f.failover_ms.map_or("-".into(), |x| format!(
            "{x:.0} ms ({} failed)",
            f.failed_during_failover.unwrap_or(0)
        )),
        f.failback_ms.map_or("-".into(), |x| format!(
            "{x:.0} ms ({} failed)",
            f.failed_during_failback.unwrap_or(0)
        )),
    );
    for c in &outcome.report.checks {
        println!(
            "  {} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.expectation,
            c.detail
        );
    }
    println!(
        "{}; reports: {} and {}",
        if outcome.report.passed {
            "PASSED"
        } else {
            "FAILED"
        },
        outcome.json.display(),
        outcome.html.display()
    );
}

pub fn lab(cmd: LabCommand) -> Result<ExitCode> {
    let LabCommand::Up(args) = cmd;
    let plan = load(&args.file)?;
    let opts = options(&args.out, args.out.join(format!("{}-lab", plan.name)))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let lab = meshfed_lab::Lab::up(&plan, &opts).await?;
        print!("{}", lab.describe());
        println!("running; Ctrl-C stops everything");
        tokio::signal::ctrl_c().await?;
        drop(lab);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
