//! What a run shows: the requests bucketed over time (by serving mesh, errors, latency), the
//! figures (success ratio, failover and fail-back times, requests failed during each switch),
//! the scenario's expectations checked against them, and the JSON and self-contained HTML
//! reports (inline SVG charts with the timeline's steps marked).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use meshfed_crds::scenario::{Action, Component, Expectation, ScenarioPlan};
use serde::Serialize;

use crate::load::Sample;

/// Width of a bucket.
pub const BUCKET_MS: f64 = 250.0;
/// The window a switch must hold for, and the share that counts as switched.
const SWITCH_WINDOW_MS: f64 = 1000.0;
const SWITCHED: f64 = 0.99;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub t_ms: f64,
    pub requests: u32,
    pub ok: u32,
    pub by_mesh: BTreeMap<String, u32>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub requests: usize,
    pub ok: usize,
    /// Answered with an error status.
    pub failed: usize,
    /// Never answered (refused, reset, timed out).
    pub lost: usize,
    pub success_ratio: f64,
    /// Faults and repairs the timeline played (every play of a repeated step).
    pub faults: usize,
    /// From the first `kill` to ≥ 99 % of requests served by another mesh (for 1 s).
    pub failover_ms: Option<f64>,
    pub failed_during_failover: Option<usize>,
    /// From the first `start` to ≥ 99 % served by the caller's mesh again.
    pub failback_ms: Option<f64>,
    pub failed_during_failback: Option<usize>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub expectation: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub started_at: String,
    pub caller_mesh: String,
    pub rps: u32,
    pub duration_ms: f64,
    pub steps: Vec<(f64, String)>,
    pub figures: Figures,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub buckets: Vec<Bucket>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Requests bucketed by when they were due.
pub fn buckets(samples: &[Sample], duration_ms: f64) -> Vec<Bucket> {
    let n = (duration_ms / BUCKET_MS).ceil().max(1.0) as usize;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut out: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            t_ms: i as f64 * BUCKET_MS,
            requests: 0,
            ok: 0,
            by_mesh: BTreeMap::new(),
            p50_ms: 0.0,
            p99_ms: 0.0,
        })
        .collect();
    for s in samples {
        let i = ((s.t_ms / BUCKET_MS) as usize).min(n - 1);
        let b = &mut out[i];
        b.requests += 1;
        if s.ok() {
            b.ok += 1;
            *b.by_mesh
                .entry(s.mesh.clone().unwrap_or_else(|| "?".into()))
                .or_default() += 1;
        }
        lat[i].push(s.latency_ms);
    }
    for (b, mut l) in out.iter_mut().zip(lat) {
        l.sort_by(f64::total_cmp);
        b.p50_ms = percentile(&l, 0.5);
        b.p99_ms = percentile(&l, 0.99);
    }
    out
}

/// Time from `from_ms` until a 1 s window in which ≥ 99 % of all requests succeeded and were
/// served by a mesh `served` accepts; `None` if that never happens.
fn switch_ms(sorted: &[Sample], from_ms: f64, served: impl Fn(&str) -> bool) -> Option<f64> {
    let start = sorted.partition_point(|s| s.t_ms < from_ms);
    let end_of_run = sorted.last()?.t_ms;
    for i in start..sorted.len() {
        let t = sorted[i].t_ms;
        if t + SWITCH_WINDOW_MS > end_of_run {
            return None;
        }
        let window: Vec<&Sample> = sorted[i..]
            .iter()
            .take_while(|s| s.t_ms < t + SWITCH_WINDOW_MS)
            .collect();
        let good = window
            .iter()
            .filter(|s| s.ok() && s.mesh.as_deref().is_some_and(&served))
            .count();
        if !window.is_empty() && good as f64 >= SWITCHED * window.len() as f64 {
            return Some(t - from_ms);
        }
    }
    None
}

fn failed_between(sorted: &[Sample], from: f64, to: f64) -> usize {
    sorted
        .iter()
        .filter(|s| s.t_ms >= from && s.t_ms < to && !s.ok())
        .count()
}

/// `4s`, `7.5s`.
fn secs(d: std::time::Duration) -> String {
    format!("{}s", (d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Analyses a run of `plan`.
/// When each `peerStatus` expectation (by its index in the plan's) was first seen to hold,
/// in ms from the start of the load.
pub type Reached = BTreeMap<usize, f64>;

pub fn analyse(
    plan: &ScenarioPlan,
    samples: &[Sample],
    reached: &Reached,
    started_at: String,
) -> Report {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    let home = plan.load.mesh.clone();
    let duration_ms = plan.duration.as_secs_f64() * 1e3;
    let ok = sorted.iter().filter(|s| s.ok()).count();
    let mut lat: Vec<f64> = sorted.iter().map(|s| s.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let lost = sorted.iter().filter(|s| s.status == 0).count();
    let mut f = Figures {
        requests: sorted.len(),
        ok,
        failed: sorted.len() - ok - lost,
        lost,
        faults: plan.steps.len(),
        success_ratio: if sorted.is_empty() {
            0.0
        } else {
            ok as f64 / sorted.len() as f64
        },
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        ..Figures::default()
    };
    let at_ms = |pred: fn(&Action) -> bool| {
        plan.steps
            .iter()
            .find(|s| pred(&s.action))
            .map(|s| s.at.as_secs_f64() * 1e3)
    };
    // A switch is measured from the first step that takes the service away (its apps killed,
    // a link cut) and from the first that brings it back.
    let kill = at_ms(|a| {
        matches!(
            a,
            Action::Kill(Component::Apps { .. })
                | Action::Scale { replicas: 0, .. }
                | Action::Cut { .. }
                | Action::Blackhole { .. }
        )
    });
    let start = at_ms(|a| {
        matches!(
            a,
            Action::Start(Component::Apps { .. }) | Action::Heal { .. }
        ) || matches!(a, Action::Scale { replicas, .. } if *replicas > 0)
    });
    // Failover and fail-back are about the caller's own mesh: measured only when, before the
    // first fault, its own mesh served the calls.
    let first_fault = kill.unwrap_or(duration_ms);
    let before: Vec<&Sample> = sorted.iter().filter(|s| s.t_ms < first_fault).collect();
    let home_first = !before.is_empty()
        && before
            .iter()
            .filter(|s| s.ok() && s.mesh.as_deref() == Some(home.as_str()))
            .count() as f64
            >= SWITCHED * before.len() as f64;
    let (kill, start) = if home_first {
        (kill, start)
    } else {
        (None, None)
    };
    if let Some(k) = kill {
        f.failover_ms = switch_ms(&sorted, k, |m| m != home);
        f.failed_during_failover = Some(failed_between(
            &sorted,
            k,
            k + f.failover_ms.unwrap_or(duration_ms) + SWITCH_WINDOW_MS,
        ));
    }
    if let Some(s) = start {
        f.failback_ms = switch_ms(&sorted, s, |m| m == home);
        f.failed_during_failback = Some(failed_between(
            &sorted,
            s,
            s + f.failback_ms.unwrap_or(duration_ms) + SWITCH_WINDOW_MS,
        ));
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let checks: Vec<Check> = plan
        .expect
        .iter()
        .enumerate()
        .map(|(i, e)| match e {
            Expectation::SuccessRatio(min) => Check {
                expectation: format!("successRatio ≥ {min}"),
                passed: f.success_ratio >= *min,
                detail: format!(
                    "{} of {} succeeded ({:.4})",
                    f.ok, f.requests, f.success_ratio
                ),
            },
            Expectation::SuccessRatioAtMost(max) => Check {
                expectation: format!("successRatio ≤ {max}"),
                passed: f.success_ratio <= *max,
                detail: format!(
                    "{} of {} succeeded ({:.4})",
                    f.ok, f.requests, f.success_ratio
                ),
            },
            Expectation::FailoverWithin(d) => Check {
                expectation: format!("failover within {}", secs(*d)),
                passed: f.failover_ms.is_some_and(|x| x <= ms(*d)),
                detail: f.failover_ms.map_or("no failover seen".into(), |x| {
                    format!(
                        "{x:.0} ms, {} request(s) failed during the switch",
                        f.failed_during_failover.unwrap_or(0)
                    )
                }),
            },
            Expectation::FailbackWithin(d) => Check {
                expectation: format!("fail-back within {}", secs(*d)),
                passed: f.failback_ms.is_some_and(|x| x <= ms(*d)),
                detail: f.failback_ms.map_or("no fail-back seen".into(), |x| {
                    format!(
                        "{x:.0} ms, {} request(s) failed during the switch",
                        f.failed_during_failback.unwrap_or(0)
                    )
                }),
            },
            Expectation::ServedBy {
                mesh,
                from,
                to,
                at_least,
            } => {
                let window: Vec<&Sample> = sorted
                    .iter()
                    .filter(|s| s.t_ms >= ms(*from) && s.t_ms < ms(*to))
                    .collect();
                let by = window
                    .iter()
                    .filter(|s| s.ok() && s.mesh.as_deref() == Some(mesh.as_str()))
                    .count();
                let share = if window.is_empty() {
                    0.0
                } else {
                    by as f64 / window.len() as f64
                };
                Check {
                    expectation: format!(
                        "served by {mesh} from {} to {}: ≥ {at_least}",
                        secs(*from),
                        secs(*to)
                    ),
                    passed: share >= *at_least,
                    detail: format!("{by} of {} ({share:.4})", window.len()),
                }
            }
            Expectation::SuccessBetween {
                from,
                to,
                at_least,
                at_most,
            } => {
                let window: Vec<&Sample> = sorted
                    .iter()
                    .filter(|s| s.t_ms >= ms(*from) && s.t_ms < ms(*to))
                    .collect();
                let ok = window.iter().filter(|s| s.ok()).count();
                let share = if window.is_empty() {
                    0.0
                } else {
                    ok as f64 / window.len() as f64
                };
                let bounds: Vec<String> = [
                    at_least.map(|v| format!("≥ {v}")),
                    at_most.map(|v| format!("≤ {v}")),
                ]
                .into_iter()
                .flatten()
                .collect();
                Check {
                    expectation: format!(
                        "success from {} to {}: {}",
                        secs(*from),
                        secs(*to),
                        bounds.join(" and ")
                    ),
                    passed: !window.is_empty()
                        && at_least.is_none_or(|v| share >= v)
                        && at_most.is_none_or(|v| share <= v),
                    detail: format!("{ok} of {} succeeded ({share:.4})", window.len()),
                }
            }
            Expectation::CertificatesIssued {
                mesh,
                from,
                at_least,
            } => {
                let at = reached.get(&i).copied();
                Check {
                    expectation: format!(
                        "{mesh} signs ≥ {at_least} certificate(s) from {}",
                        secs(*from)
                    ),
                    passed: at.is_some(),
                    detail: at.map_or_else(
                        || "not so many signed".to_owned(),
                        |t| format!("reached at {:.1}s", t / 1e3),
                    ),
                }
            }
            Expectation::PeerStatus(c) => {
                let at = reached.get(&i).copied();
                let limit = c.by.map_or(duration_ms, ms);
                Check {
                    expectation: c.describe(),
                    passed: at.is_some_and(|t| t <= limit),
                    detail: at.map_or_else(
                        || "never seen".to_owned(),
                        |t| format!("first seen at {:.1}s", t / 1e3),
                    ),
                }
            }
        })
        .collect();
    let passed = checks.iter().all(|c| c.passed);
    Report {
        scenario: plan.name.clone(),
        description: plan.description.clone(),
        started_at,
        caller_mesh: home,
        rps: plan.load.rps,
        duration_ms,
        steps: plan
            .steps
            .iter()
            .map(|s| (s.at.as_secs_f64() * 1e3, s.label.clone()))
            .collect(),
        figures: f,
        checks,
        passed,
        buckets: buckets(&sorted, duration_ms),
    }
}

/// The summary of several runs: per scenario its length, the faults it played, the requests
/// sent, failed (an error answer) and lost (no answer), and whether it passed; then the
/// totals.
pub fn summary_table(reports: &[Report]) -> String {
    let mut out = format!(
        "{:<28} {:>8} {:>7} {:>9} {:>7} {:>6}  {}\n",
        "scenario", "length", "faults", "requests", "failed", "lost", "result"
    );
    let (mut faults, mut requests, mut failed, mut lost, mut ms) = (0, 0, 0, 0, 0.0);
    for r in reports {
        let f = &r.figures;
        let _ = writeln!(
            out,
            "{:<28} {:>7.0}s {:>7} {:>9} {:>7} {:>6}  {}",
            r.scenario,
            r.duration_ms / 1e3,
            f.faults,
            f.requests,
            f.failed,
            f.lost,
            if r.passed { "passed" } else { "FAILED" }
        );
        faults += f.faults;
        requests += f.requests;
        failed += f.failed;
        lost += f.lost;
        ms += r.duration_ms;
    }
    let passed = reports.iter().filter(|r| r.passed).count();
    let _ = writeln!(
        out,
        "{:<28} {:>7.0}s {:>7} {:>9} {:>7} {:>6}  {passed} of {} passed",
        "total",
        ms / 1e3,
        faults,
        requests,
        failed,
        lost,
        reports.len()
    );
    out
}

/// One chart line: label, color, points (ms, value).
type Series = (String, String, Vec<(f64, f64)>);

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line chart as inline SVG: `series` of (label, color, points in (ms, value)).
fn chart(
    title: &str,
    unit: &str,
    series: &[Series],
    steps: &[(f64, String)],
    x_max_ms: f64,
) -> String {
    let (w, h, l, r, t, b) = (900.0, 240.0, 60.0, 20.0, 30.0, 40.0);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let x = |ms: f64| l + (w - l - r) * ms / x_max_ms.max(1.0);
    let y = |v: f64| h - b - (h - t - b) * v / y_max;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<text x=\"{l}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        esc(title)
    );
    // Axes and grid.
    let _ = write!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#333\"/>",
        h - b,
        w - r,
        h - b,
        h - b
    );
    for k in 0..=4 {
        let v = y_max / 1.1 * f64::from(k) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"end\">{4}</text>",
            y(v),
            w - r,
            l - 6.0,
            y(v) + 4.0,
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    let secs = (x_max_ms / 1000.0).ceil() as u32;
    let step = (secs / 10).max(1);
    for sec in (0..=secs).step_by(step as usize) {
        let px = x(f64::from(sec) * 1000.0);
        let _ = write!(
            s,
            "<text x=\"{px:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{sec}s</text>",
            h - b + 16.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"14\" y=\"{}\" font-size=\"11\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        (h - b + t) / 2.0,
        (h - b + t) / 2.0,
        esc(unit)
    );
    // Fault markers.
    for (at, label) in steps {
        let px = x(*at);
        let _ = write!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{t}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"11\" fill=\"#d62728\">{}</text>",
            h - b,
            px + 3.0,
            t + 12.0,
            esc(label)
        );
    }
    for (i, (label, color, pts)) in series.iter().enumerate() {
        let d: Vec<String> = pts
            .iter()
            .map(|(ms, v)| format!("{:.1},{:.1}", x(*ms), y(*v)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            d.join(" ")
        );
        let lx = w - r - 150.0;
        let ly = t + 14.0 * (i as f64 + 1.0);
        let _ = write!(
            s,
            "<rect x=\"{lx}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{ly:.1}\" font-size=\"11\">{}</text>",
            ly - 9.0,
            lx + 14.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// The self-contained HTML report.
pub fn html(r: &Report) -> String {
    // Rates per half second (two buckets, not overlapping): a single bucket holds too few
    // requests at low rates to draw a steady line, a sliding window would smear the switch.
    let pairs: Vec<usize> = (0..r.buckets.len()).step_by(2).collect();
    let rate = |i: usize, f: &dyn Fn(&Bucket) -> u32| {
        let group = &r.buckets[i..(i + 2).min(r.buckets.len())];
        let n: u32 = group.iter().map(f).sum();
        f64::from(n) * 1000.0 / (group.len() as f64 * BUCKET_MS)
    };
    let end = |i: usize| r.buckets[i].t_ms + BUCKET_MS.min(r.duration_ms - r.buckets[i].t_ms);
    let mid = |b: &Bucket| b.t_ms + BUCKET_MS / 2.0;
    let meshes: Vec<String> = {
        let mut m: Vec<String> = r
            .buckets
            .iter()
            .flat_map(|b| b.by_mesh.keys().cloned())
            .collect();
        m.sort();
        m.dedup();
        m
    };
    let mut served: Vec<Series> = meshes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                format!("served by {m}"),
                COLORS[i % COLORS.len()].to_owned(),
                pairs
                    .iter()
                    .map(|&i| (end(i), rate(i, &|b| *b.by_mesh.get(m).unwrap_or(&0))))
                    .collect(),
            )
        })
        .collect();
    served.push((
        "failed".into(),
        "#d62728".into(),
        pairs
            .iter()
            .map(|&i| (end(i), rate(i, &|b| b.requests - b.ok)))
            .collect(),
    ));
    let errors = vec![(
        "failed %".to_owned(),
        "#d62728".to_owned(),
        r.buckets
            .iter()
            .map(|b| {
                let pct = if b.requests == 0 {
                    0.0
                } else {
                    100.0 * f64::from(b.requests - b.ok) / f64::from(b.requests)
                };
                (mid(b), pct)
            })
            .collect(),
    )];
    let latency = vec![
        (
            "p50".to_owned(),
            COLORS[0].to_owned(),
            r.buckets.iter().map(|b| (mid(b), b.p50_ms)).collect(),
        ),
        (
            "p99".to_owned(),
            COLORS[1].to_owned(),
            r.buckets.iter().map(|b| (mid(b), b.p99_ms)).collect(),
        ),
    ];
    let f = &r.figures;
    let opt = |v: Option<f64>| v.map_or("—".into(), |x| format!("{x:.0} ms"));
    let optn = |v: Option<usize>| v.map_or("—".into(), |x| x.to_string());
    let mut checks = String::new();
    for c in &r.checks {
        let _ = write!(
            checks,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.passed { "pass" } else { "fail" },
            if c.passed { "✔ passed" } else { "✘ failed" },
            esc(&c.expectation),
            esc(&c.detail)
        );
    }
    format!(
        "<!DOCTYPE html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>meshfed scenario {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
tr.pass td:first-child {{ color: #2ca02c; font-weight: bold; }}
tr.fail td:first-child {{ color: #d62728; font-weight: bold; }}
.verdict {{ font-size: 1.3em; font-weight: bold; color: {vcolor}; }}
</style></head><body>
<h1>Scenario {name}</h1>
<p>{desc}</p>
<p class=\"verdict\" id=\"verdict\">{verdict}</p>
<p>Started {started}; {rps} requests per second from mesh {home} for {dur:.0} s.</p>
<table><tr><th>Requests</th><th>Succeeded</th><th>Failed</th><th>Lost</th><th>Faults</th><th>Failover</th><th>Failed during failover</th><th>Fail-back</th><th>Failed during fail-back</th><th>p50</th><th>p99</th></tr>
<tr><td>{req}</td><td>{ok} ({ratio:.4})</td><td>{failed}</td><td>{lost}</td><td>{faults}</td><td>{fo}</td><td>{fof}</td><td>{fb}</td><td>{fbf}</td><td>{p50:.1} ms</td><td>{p99:.1} ms</td></tr></table>
<table><tr><th></th><th>Expectation</th><th>Measured</th></tr>{checks}</table>
{c1}
{c2}
{c3}
</body></html>
",
        name = esc(&r.scenario),
        desc = esc(&r.description),
        vcolor = if r.passed { "#2ca02c" } else { "#d62728" },
        verdict = if r.passed { "PASSED" } else { "FAILED" },
        started = esc(&r.started_at),
        rps = r.rps,
        home = esc(&r.caller_mesh),
        dur = r.duration_ms / 1000.0,
        req = f.requests,
        failed = f.failed,
        lost = f.lost,
        faults = f.faults,
        ok = f.ok,
        ratio = f.success_ratio,
        fo = opt(f.failover_ms),
        fof = optn(f.failed_during_failover),
        fb = opt(f.failback_ms),
        fbf = optn(f.failed_during_failback),
        p50 = f.p50_ms,
        p99 = f.p99_ms,
        c1 = chart("Requests per second by serving mesh", "req/s", &served, &r.steps, r.duration_ms),
        c2 = chart("Failed requests", "%", &errors, &r.steps, r.duration_ms),
        c3 = chart("Latency", "ms", &latency, &r.steps, r.duration_ms),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use meshfed_crds::scenario::{PlanLoad, PlanStep, ScenarioPlan};

    use super::*;

    fn plan(steps: Vec<PlanStep>, expect: Vec<Expectation>) -> ScenarioPlan {
        ScenarioPlan {
            name: "t".into(),
            description: String::new(),
            meshes: vec![],
            load: PlanLoad {
                mesh: "alpha".into(),
                namespace: "web".into(),
                service: "ui".into(),
                host: "orders.shop.svc.cluster.local".into(),
                rps: 100,
                path: "/".into(),
            },
            duration: Duration::from_secs(10),
            svid_ttl: None,
            steps,
            expect,
        }
    }

    fn apps(action: fn(Component) -> Action, at: u64) -> PlanStep {
        PlanStep {
            at: Duration::from_secs(at),
            action: action(Component::Apps {
                mesh: "alpha".into(),
                namespace: "shop".into(),
                service: "orders".into(),
            }),
            label: "x".into(),
        }
    }

    /// 100 rps for 10 s: alpha until 3.2 s, two failures, beta until 7.5 s, alpha after.
    fn samples() -> Vec<Sample> {
        (0..1000)
            .map(|k| {
                let t_ms = f64::from(k) * 10.0;
                let (status, mesh) = match t_ms {
                    t if t < 3000.0 => (200, Some("alpha")),
                    t if t < 3020.0 => (503, None),
                    t if t < 3200.0 => (200, Some("alpha")),
                    t if t < 7500.0 => (200, Some("beta")),
                    _ => (200, Some("alpha")),
                };
                Sample {
                    t_ms,
                    latency_ms: 1.0,
                    status,
                    mesh: mesh.map(str::to_owned),
                    error: None,
                }
            })
            .collect()
    }

    #[test]
    fn switches_are_timed_from_the_steps_and_checked() {
        let p = plan(
            vec![apps(Action::Kill, 3), apps(Action::Start, 7)],
            vec![
                Expectation::SuccessRatio(0.999),
                Expectation::FailoverWithin(Duration::from_millis(500)),
                Expectation::FailbackWithin(Duration::from_millis(400)),
                Expectation::ServedBy {
                    mesh: "beta".into(),
                    from: Duration::from_secs(4),
                    to: Duration::from_secs(7),
                    at_least: 0.99,
                },
            ],
        );
        let r = analyse(&p, &samples(), &Reached::new(), String::new());
        assert_eq!(r.figures.requests, 1000);
        assert_eq!(r.figures.ok, 998);
        // The first 1 s window with ≥ 99 % served by beta starts one request early.
        assert_eq!(r.figures.failover_ms, Some(190.0));
        assert_eq!(r.figures.failed_during_failover, Some(2));
        assert_eq!(r.figures.failback_ms, Some(490.0));
        let passed: Vec<bool> = r.checks.iter().map(|c| c.passed).collect();
        // 998/1000 < 0.999; failover 190 ms ≤ 500; fail-back 490 ms > 400; beta served.
        assert_eq!(passed, vec![false, true, false, true]);
        assert!(!r.passed);
        assert_eq!(r.buckets.len(), 40);
        assert_eq!(r.buckets[12].requests, 25);
        assert_eq!(r.buckets[12].ok, 23);
        let html = html(&r);
        assert!(html.contains("FAILED") && html.matches("<svg").count() == 3);
    }

    #[test]
    fn failed_and_lost_requests_faults_and_the_summary_table() {
        let mut s = samples();
        // Two more calls never answered.
        for x in s.iter_mut().skip(500).take(2) {
            x.status = 0;
            x.mesh = None;
        }
        let p = plan(
            vec![apps(Action::Kill, 3), apps(Action::Start, 7)],
            vec![Expectation::CertificatesIssued {
                mesh: "alpha".into(),
                from: Duration::from_secs(5),
                at_least: 2,
            }],
        );
        let mut reached = Reached::new();
        let r = analyse(&p, &s, &reached, String::new());
        assert_eq!(
            (r.figures.failed, r.figures.lost, r.figures.faults),
            (2, 2, 2)
        );
        assert!(
            !r.checks[0].passed,
            "certificates never counted: {:?}",
            r.checks
        );
        reached.insert(0, 6_100.0);
        let ok = analyse(&p, &s, &reached, String::new());
        assert!(ok.checks[0].passed, "{:?}", ok.checks);
        let table = summary_table(&[r, ok]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].contains("faults") && lines[0].contains("lost"),
            "{table}"
        );
        assert!(
            lines[1].contains("FAILED") && lines[2].contains("passed"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("total")
                && lines[3].contains("2000")
                && lines[3].ends_with("1 of 2 passed"),
            "{table}"
        );
    }

    #[test]
    fn no_switch_is_claimed_when_the_callers_mesh_never_served() {
        let mut s = samples();
        for x in &mut s {
            x.mesh = Some("beta".into());
        }
        let p = plan(
            vec![apps(Action::Kill, 3)],
            vec![Expectation::FailoverWithin(Duration::from_secs(3))],
        );
        let r = analyse(&p, &s, &Reached::new(), String::new());
        assert_eq!(r.figures.failover_ms, None);
        assert!(!r.checks[0].passed);
    }
}
