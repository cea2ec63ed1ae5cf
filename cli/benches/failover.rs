//! Failover figures (`make bench-failover`): the failover scenario run `BENCH_REPS` times (3)
//! in the embedded lab with default settings; the medians (min–max) of the time from the local
//! endpoints failing to ≥ 99 % of requests served by the peer, the requests failed during that
//! switch, and the fail-back time, recorded in bench/RESULTS.md. Goal: failover ≤ 3 s with
//! < 0.1 % failed requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // a harness: fail loudly

use std::process::Command;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let meshfed = env!("CARGO_BIN_EXE_meshfed");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scenario = root.join("scenarios/failover.yaml");
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for rep in 0..reps {
        eprintln!("repetition {}/{reps}", rep + 1);
        let out = std::env::temp_dir().join(format!(
            "meshfed-bench-failover-{}-{rep}",
            std::process::id()
        ));
        let status = Command::new(meshfed)
            .args(["scenario", "run"])
            .arg(&scenario)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("failover.json")).unwrap())
                .unwrap();
        eprintln!("  {status}: {}", report["figures"]);
        rows.push(report["figures"].clone());
    }
    let stat = |key: &str| {
        let mut v: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        match v.as_slice() {
            [] => "—".to_owned(),
            [x] => format!("{x:.0}"),
            _ => format!("{:.0} ({:.0}–{:.0})", v[v.len() / 2], v[0], v[v.len() - 1]),
        }
    };
    let body = format!(
        "| Metric | median (min–max) over {reps} runs | Goal |\n|---|---|---|\n\
         | failover: kill → ≥ 99 % served by the peer (ms) | {} | ≤ 3000 |\n\
         | requests failed during the failover switch | {} | < 0.1 % of the run's |\n\
         | fail-back: start → ≥ 99 % served locally again (ms) | {} | |\n\
         | requests failed during the fail-back switch | {} | 0 |\n\
         | requests in the run | {} | |\n\
         | success ratio over the run | {} | ≥ 0.999 |\n",
        stat("failoverMs"),
        stat("failedDuringFailover"),
        stat("failbackMs"),
        stat("failedDuringFailback"),
        stat("requests"),
        rows.iter()
            .filter_map(|r| r["successRatio"].as_f64())
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    eprintln!("{body}");
    meshfed_bench::record(
        "Failover in the embedded lab (scenarios/failover.yaml, default settings)",
        "`make bench-failover`: two meshes as processes on loopback (control planes with peering, \
         gateways over the TCP tunnel, sidecars, echo apps; meshfed built with the bench profile); \
         100 rps of new connections through alpha's ui sidecar to orders.shop.svc.cluster.local; \
         alpha's two orders apps killed at 4 s (SIGKILL) and started at 10 s; beta's orders \
         imported with importAsLocal. Failover/fail-back time = from the step to the first 1 s \
         window with ≥ 99 % of requests answered by the other/own mesh.",
        &body,
    );
}
