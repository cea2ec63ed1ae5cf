//! Every shipped scenario (`scenarios/*.yaml` of kind Scenario) runs in the embedded lab and
//! passes its own expectations; its JSON and HTML reports are written and show the run; then
//! the fault suite's short form (`scenarios/faults/`) runs as one command with its summary
//! table. A broken scenario file is refused before anything starts, with line and field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{bin, tempdir};

fn scenarios() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains("kind: Scenario")
        })
        .collect();
    out.sort();
    out
}

/// `meshfed scenario run FILES --out out`, every meshfed line at debug (the libraries beneath
/// at info) to be searched for secrets; its stdout. It must pass.
fn run_scenarios(files: &[PathBuf], out: &std::path::Path) -> String {
    let o = Command::new(bin())
        .args(["scenario", "run"])
        .args(files)
        .arg("--out")
        .arg(out)
        .env("MESHFED_LOG", DEBUG_LOG)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{files:?}: {}\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

#[test]
fn every_shipped_scenario_passes_and_writes_its_reports() {
    let all = scenarios();
    assert!(!all.is_empty(), "no scenarios found");
    for file in all {
        let out = tempdir(&format!(
            "scenario-{}",
            file.file_stem().unwrap().to_string_lossy()
        ));
        let stdout = run_scenarios(std::slice::from_ref(&file), &out);
        // Progress was printed while it ran.
        assert!(stdout.contains("req/s"), "{stdout}");
        let name = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .expect("a JSON report");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&name).unwrap()).unwrap();
        assert_eq!(report["passed"], true, "{}", report["checks"]);
        assert!(report["samples"].as_array().is_some_and(|s| !s.is_empty()));
        let html = std::fs::read_to_string(name.with_extension("html")).unwrap();
        assert!(html.contains("<svg") && html.contains("PASSED"), "{html}");
        assert!(html.contains("Requests per second by serving mesh"));
        no_secret_in_logs(&out);
    }
    // The fault suite's short form (the long form is `make soak`), in one run: its summary
    // table counts the faults played and the requests sent, failed and lost.
    let faults: Vec<PathBuf> =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/faults"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
    assert!(faults.len() >= 3, "{faults:?}");
    let out = tempdir("scenario-faults");
    let stdout = run_scenarios(&faults, &out);
    let summary = format!("{} of {} passed", faults.len(), faults.len());
    assert!(
        stdout.contains("faults") && stdout.contains("lost") && stdout.contains(&summary),
        "{stdout}"
    );
    no_secret_in_logs(&out);
}

/// meshfed's own crates at debug; the HTTP/2, TLS and QUIC libraries at info.
const DEBUG_LOG: &str = "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,rustls=info,quinn=info,quinn_proto=info,kube=info";

/// Files under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// No log line of a lab run carries a key, a join secret or a token secret; and the lines
/// carry the span fields.
fn no_secret_in_logs(out: &std::path::Path) {
    let all = files(out);
    let logs: Vec<(PathBuf, String)> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap()))
        .collect();
    assert!(logs.len() > 3, "the lab's component logs: {all:?}");
    let mut secrets = Vec::new();
    for p in &all {
        let name = p.file_name().unwrap().to_string_lossy();
        let text = std::fs::read_to_string(p).unwrap_or_default();
        // Every workload's and gateway's join credential (the control planes' own bootstrap
        // files are templates without one).
        if name.contains("-join-") && name.ends_with(".json") {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            secrets.push(v["token"].as_str().unwrap().to_owned());
        }
        if name.ends_with("bootstrap.json") {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(
                v.get("token").is_none(),
                "{name}: a template carries no secret"
            );
        }
        // Each private key's body, line by line.
        if text.contains("PRIVATE KEY-----") {
            secrets.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_owned),
            );
        }
    }
    assert!(
        secrets.iter().any(|s| s.len() >= 16) && secrets.len() > 2,
        "found the run's secrets to look for: {secrets:?}"
    );
    let mut components = 0;
    for (path, text) in &logs {
        assert!(!text.contains("PRIVATE KEY"), "{}: a key", path.display());
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{} carries a secret ({}…)",
                path.display(),
                &s[..6]
            );
        }
        if text.contains("component{component=") {
            components += 1;
        }
    }
    assert!(
        components >= 2,
        "control planes log inside their component span: {:?}",
        logs.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
}

#[test]
fn a_broken_scenario_is_refused_with_line_and_field_before_anything_starts() {
    let dir = tempdir("scenario-broken");
    let good = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/failover.yaml"),
    )
    .unwrap();
    let bad = good
        .replace("rps: 100", "rps: 0")
        .replace("action: kill", "action: explode");
    std::fs::write(dir.join("bad.yaml"), bad).unwrap();
    let o = Command::new(bin())
        .args(["scenario", "run", "bad.yaml", "--out", "out"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.yaml:")
            && err.contains("error[InvalidRate]")
            && err.contains("spec.load.rps"),
        "{err}"
    );
    assert!(
        err.contains("error[UnknownAction]") && err.contains("spec.steps[0].action"),
        "{err}"
    );
    assert!(!dir.join("out").exists(), "something was started");
}
