//! Failover figures (`make bench-failover`): the failover scenario (local apps killed) and the
//! drain scenario (local workloads scaled to zero gracefully), each run `BENCH_REPS` times (3)
//! in the embedded lab with default settings; the medians (min–max) of the time from the step
//! to ≥ 99 % of requests served by the peer, the requests failed during that switch, and the
//! fail-back time, recorded in bench/RESULTS.md. Goal: failover ≤ 3 s with < 0.1 % failed
//! requests, and none failed when the local endpoints drain gracefully.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // a harness: fail loudly

use std::process::Command;

/// Runs scenario `name` `reps` times; the figures of each run.
fn runs(name: &str, reps: usize) -> Vec<serde_json::Value> {
    let meshfed = env!("CARGO_BIN_EXE_meshfed");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scenario = root.join(format!("scenarios/{name}.yaml"));
    let mut rows = Vec::new();
    for rep in 0..reps {
        eprintln!("{name}: repetition {}/{reps}", rep + 1);
        let out =
            std::env::temp_dir().join(format!("meshfed-bench-{name}-{}-{rep}", std::process::id()));
        let status = Command::new(meshfed)
            .args(["scenario", "run"])
            .arg(&scenario)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        eprintln!("  {status}: {}", report["figures"]);
        rows.push(report["figures"].clone());
        let _ = std::fs::remove_dir_all(&out);
    }
    rows
}

/// Median (min–max) of `key` over `rows`.
fn stat(rows: &[serde_json::Value], key: &str) -> String {
    let mut v: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "—".to_owned(),
        [x] => format!("{x:.0}"),
        _ => format!("{:.0} ({:.0}–{:.0})", v[v.len() / 2], v[0], v[v.len() - 1]),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let kill = runs("failover", reps);
    let drain = runs("drain", reps);
    let ratios = |rows: &[serde_json::Value]| {
        rows.iter()
            .filter_map(|r| r["successRatio"].as_f64())
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let row = |label: &str, key: &str, goal: &str| {
        format!(
            "| {label} | {} | {} | {goal} |\n",
            stat(&kill, key),
            stat(&drain, key)
        )
    };
    let body = format!(
        "| Metric, median (min–max) over {reps} runs | apps killed (failover.yaml) | \
         workloads drained (drain.yaml) | Goal |\n|---|---|---|---|\n{}{}{}{}{}\
         | success ratio over the run | {} | {} | ≥ 0.999 killed; 1 drained |\n",
        row(
            "failover: step → ≥ 99 % served by the peer (ms)",
            "failoverMs",
            "≤ 3000"
        ),
        row(
            "requests failed during the failover switch",
            "failedDuringFailover",
            "< 0.1 % of the run's; 0 drained"
        ),
        row(
            "fail-back: step → ≥ 99 % served locally again (ms)",
            "failbackMs",
            ""
        ),
        row(
            "requests failed during the fail-back switch",
            "failedDuringFailback",
            "0"
        ),
        row("requests in the run", "requests", ""),
        ratios(&kill),
        ratios(&drain),
    );
    eprintln!("{body}");
    meshfed_bench::record(
        "Failover in the embedded lab (scenarios/failover.yaml and drain.yaml, default settings)",
        "`make bench-failover`: two meshes as processes on loopback (control planes with peering, \
         gateways over the TCP tunnel, sidecars, echo apps; meshfed built with the bench profile); \
         100 rps of new connections through alpha's ui sidecar to orders.shop.svc.cluster.local; \
         beta's orders imported with importAsLocal. failover.yaml kills alpha's two orders apps \
         at 4 s (SIGKILL) and starts them at 10 s; drain.yaml scales alpha's orders to 0 at 4 s \
         (each sidecar gets SIGTERM, reports not ready, serves 2 s, exits; then its app stops) \
         and back to 2 at 10 s. Failover/fail-back time = from the step to the first 1 s window \
         with ≥ 99 % of requests answered by the other/own mesh.",
        &body,
    );
}
