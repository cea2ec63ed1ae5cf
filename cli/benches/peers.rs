//! The sidecar against HAProxy and nginx in the same positions, as separate processes on
//! loopback, measured in one run (`make bench-peers`; `../shared/design/performance.md`).
//!
//! Paths, all ending at the same origin (`meshfed echo`, one thread):
//! - P0: generator → origin.
//! - P1: generator —mTLS→ proxy → origin (the server-side hop: client certificate verified).
//! - P2: generator → client proxy —mTLS→ server proxy → origin (the sidecar pair).
//! - P5: P1 with a new connection, so a full mTLS handshake, for every request.
//!
//! Every proxy runs one worker thread; TLS 1.3 with X25519 and ECDSA P-256 certificates from
//! the same mesh CA; no session resumption; access logs off; keep-alive to the origin and
//! between the proxies. Load comes from `oha` over 16 keep-alive HTTP/1.1 connections:
//! closed-loop for peak rps, fixed-rate with latency correction for percentiles (timed from
//! when each request was due). CPU is utime+stime of the proxy processes over each fixed-rate
//! window; at peak it is also given per request, for each proxy and for the whole machine
//! (`/proc/stat`), since with everything on two vCPUs the peak follows the machine's CPU per
//! request, of which the proxy is a part. RSS is read idle (after start, before any request) and as the high-water mark at the
//! end. Each repetition rotates the order of the systems; the median of the repetitions is
//! reported with its min–max; with 4 or more repetitions, the one with the slowest request is
//! left out of each fixed-rate point first (Linkerd's method). Each goal row is judged as
//! performance.md §6 says: pass or fail on the median ratio, "within noise" where the spreads
//! overlap; fixed rates above a quarter of a system's peak are marked near saturation.
//! Knobs: `BENCH_REPS` (3), `BENCH_SECS` (10), `BENCH_WARMUP` (3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // a harness: fail loudly

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod harness;

use harness::{
    CONNS, Figures, Gen, HOST, Proc, RATES, TD, Target, free, haproxy_cfg, knob, nginx_cfg,
    peer_cert, run, wait_listening, which,
};

/// One system's two paths (or just P0 for the direct system).
struct System {
    name: &'static str,
    p1: Option<(Target, Vec<Proc>)>,
    p2: Option<(Target, Vec<Proc>)>,
    p0: Option<Target>,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let (Some(haproxy), Some(nginx), Some(oha)) = (which("haproxy"), which("nginx"), which("oha"))
    else {
        eprintln!("bench-peers needs haproxy, nginx and oha on PATH: run `make bench-tools`");
        std::process::exit(2);
    };
    let meshfed = env!("CARGO_BIN_EXE_meshfed");
    let reps = knob("BENCH_REPS", 3) as usize;
    let dir = std::env::temp_dir().join(format!("meshfed-bench-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    eprintln!("bench-peers in {}", dir.display());

    // Certificates: the mesh CA, SVIDs for meshfed and the generator, peer certificates.
    run(Command::new(meshfed).current_dir(&dir).args([
        "trust",
        "init",
        "--dir",
        "ca",
        "--trust-domain",
        TD,
    ]));
    run(Command::new(meshfed).current_dir(&dir).args([
        "trust",
        "issue",
        "--dir",
        "ca",
        "--id",
        &format!("spiffe://{TD}/ns/web/sa/ui"),
        "--out",
        "ui",
    ]));
    std::fs::copy(dir.join("ca/root-1.pem"), dir.join("root.pem")).unwrap();
    peer_cert(
        &dir,
        "server",
        &format!("spiffe://{TD}/ns/shop/sa/echo"),
        "echo.bench.local",
    );
    peer_cert(
        &dir,
        "client",
        &format!("spiffe://{TD}/ns/web/sa/ui"),
        "ui.bench.local",
    );

    // The origin.
    let origin = free("127.0.50.1");
    let _origin = Proc::spawn(
        &dir,
        "origin",
        Command::new(meshfed).args([
            "echo",
            "--listen",
            &origin.to_string(),
            "--mesh",
            "bench",
            "--instance",
            "origin",
        ]),
    );
    wait_listening(origin, "origin", &dir);

    // meshfed: the echo workload's sidecar (P1 and the server half of P2) and ui's (client half).
    let (m_in, m_out, m_ui_in, m_ui_app) = (
        free("127.0.50.2"),
        free("127.0.50.3"),
        free("127.0.50.3"),
        free("127.0.50.3"),
    );
    std::fs::write(
        dir.join("mesh.yaml"),
        format!(
            "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: bench, namespace: bench-system}}
spec:
  trustDomain: {TD}
  services:
  - {{name: echo, namespace: shop, ports: [{{name: http, port: 8080}}]}}
  - {{name: ui, namespace: web, ports: [{{name: http, port: 8080}}]}}
  workloads:
  - {{name: echo-1, namespace: shop, service: echo, inbound: \"{m_in}\", app: \"{origin}\"}}
  - {{name: ui-1, namespace: web, service: ui, inbound: \"{m_ui_in}\", app: \"{m_ui_app}\"}}
"
        ),
    )
    .unwrap();
    let sidecar = |name: &str, workload: &str, out: Option<SocketAddr>| {
        let mut c = Command::new(meshfed);
        c.args([
            "proxy",
            "--mesh",
            "mesh.yaml",
            "--dir",
            "ca",
            "--workers",
            "1",
        ])
        .args(["--workload", workload]);
        if let Some(o) = out {
            c.args(["--outbound", &o.to_string()]);
        }
        Proc::spawn(&dir, name, &mut c)
    };
    let m_server = sidecar("meshfed-server", "echo-1", None);
    let m_client = sidecar("meshfed-client", "ui-1", Some(m_out));
    wait_listening(m_in, "meshfed-server", &dir);
    wait_listening(m_out, "meshfed-client", &dir);

    // HAProxy pair.
    let (h_in, h_out) = (free("127.0.50.4"), free("127.0.50.5"));
    let d = dir.display();
    std::fs::write(
        dir.join("haproxy-server.cfg"),
        haproxy_cfg(
            &format!("bind {h_in} ssl crt {d}/server.pem ca-file {d}/root.pem verify required ssl-min-ver TLSv1.3 curves X25519 no-tls-tickets"),
            &format!("server o {origin}"),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("haproxy-client.cfg"),
        haproxy_cfg(
            &format!("bind {h_out}"),
            &format!("server s {h_in} ssl crt {d}/client.pem ca-file {d}/root.pem verify required verifyhost echo.bench.local sni str(echo.bench.local) ssl-min-ver TLSv1.3 no-ssl-reuse"),
        ),
    )
    .unwrap();
    // Every process stays in the foreground (HAProxy `-db`, nginx `daemon off`): a daemon
    // calls setsid, and with the kernel's autogroup scheduling (on by default) a new session
    // is a scheduling group of its own, which gets as much CPU as the whole group of the
    // generator, the origin and the other proxies — measured on loopback, a daemonized HAProxy
    // was preempted 3× less and showed ~10 % more peak rps than the same HAProxy in the group.
    let h_server = Proc::spawn(
        &dir,
        "haproxy-server",
        Command::new(&haproxy).args(["-db", "-f", "haproxy-server.cfg"]),
    );
    let h_client = Proc::spawn(
        &dir,
        "haproxy-client",
        Command::new(&haproxy).args(["-db", "-f", "haproxy-client.cfg"]),
    );
    wait_listening(h_in, "haproxy-server", &dir);
    wait_listening(h_out, "haproxy-client", &dir);

    // nginx pair.
    let (n_in, n_out) = (free("127.0.50.6"), free("127.0.50.7"));
    std::fs::write(
        dir.join("nginx-server.conf"),
        nginx_cfg(
            &dir,
            "nginx-server",
            &format!("listen {n_in} ssl; ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key; ssl_client_certificate {d}/root.pem; ssl_verify_client on; ssl_protocols TLSv1.3; ssl_ecdh_curve X25519; ssl_session_tickets off; ssl_session_cache off;"),
            &origin.to_string(),
            "http://up",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("nginx-client.conf"),
        nginx_cfg(
            &dir,
            "nginx-client",
            &format!("listen {n_out};"),
            &n_in.to_string(),
            "https://up",
        ),
    )
    .unwrap();
    let nginx_run = |name: &str| {
        Proc::spawn(
            &dir,
            name,
            Command::new(&nginx)
                .args(["-e", "stderr", "-p"])
                .arg(&dir)
                .arg("-c")
                .arg(dir.join(format!("{name}.conf"))),
        )
    };
    let n_server = nginx_run("nginx-server");
    let n_client = nginx_run("nginx-client");
    wait_listening(n_in, "nginx-server", &dir);
    wait_listening(n_out, "nginx-client", &dir);

    // Idle memory, before any request.
    let mut idle = BTreeMap::new();
    for p in [
        &m_server, &m_client, &h_server, &h_client, &n_server, &n_client,
    ] {
        idle.insert(p.name.clone(), p.mem_kib("VmRSS"));
    }

    let tls = |addr: SocketAddr| Target {
        url: format!("https://{addr}/"),
        host: HOST.into(),
        body: None,
        conns: None,
        tls: true,
        fresh: false,
    };
    let plain = |addr: SocketAddr| Target {
        url: format!("http://{addr}/"),
        host: HOST.into(),
        body: None,
        conns: None,
        tls: false,
        fresh: false,
    };
    let mut systems = vec![
        System {
            name: "direct",
            p0: Some(plain(origin)),
            p1: None,
            p2: None,
        },
        System {
            name: "HAProxy",
            p0: None,
            p1: Some((tls(h_in), vec![h_server])),
            p2: Some((plain(h_out), vec![h_client])),
        },
        System {
            name: "nginx",
            p0: None,
            p1: Some((tls(n_in), vec![n_server])),
            p2: Some((plain(n_out), vec![n_client])),
        },
        System {
            name: "meshfed",
            p0: None,
            p1: Some((tls(m_in), vec![m_server])),
            p2: Some((plain(m_out), vec![m_client])),
        },
    ];
    let mut load = Gen {
        oha,
        dir: dir.clone(),
        raw: Vec::new(),
    };
    let mut figs = Figures::default();
    let started = Instant::now();
    for rep in 0..reps {
        systems.rotate_left(1);
        for s in &systems {
            eprintln!(
                "repetition {}/{reps}: {} ({:.0} s elapsed)",
                rep + 1,
                s.name,
                started.elapsed().as_secs_f64()
            );
            if let Some(t) = &s.p0 {
                measure(&mut load, &mut figs, s.name, "P0", t, &[]);
            }
            let server: Vec<&Proc> = s.p1.iter().flat_map(|(_, p)| p).collect();
            if let Some((t, _)) = &s.p1 {
                measure(&mut load, &mut figs, s.name, "P1", t, &server);
            }
            if let Some((t, procs)) = &s.p2 {
                // P2's CPU counts both proxies: the server one is P1's.
                let both: Vec<&Proc> = procs.iter().chain(server.iter().copied()).collect();
                measure(&mut load, &mut figs, s.name, "P2", t, &both);
            }
        }
    }
    let mut hwm = BTreeMap::new();
    for s in &systems {
        for (_, procs) in s.p1.iter().chain(s.p2.iter()) {
            for p in procs {
                hwm.insert(p.name.clone(), p.mem_kib("VmHWM"));
            }
        }
    }
    // Linkerd's method (performance.md §2): with enough repetitions, the one with the slowest
    // request is left out of each fixed-rate point.
    let dropped = if reps >= 4 {
        figs.drop_slowest_repetition()
    } else {
        0
    };
    let report = format!(
        "{}\n{}\n",
        report(&figs, &idle, &hwm, reps),
        harness::layout_line(meshfed)
    );
    eprintln!("{report}");
    let raw_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-raw");
    let _ = std::fs::create_dir_all(&raw_dir);
    let raw_file = raw_dir.join(format!("peers-{}.json", std::process::id()));
    std::fs::write(&raw_file, serde_json::to_string_pretty(&load.raw).unwrap()).unwrap();
    let versions = format!(
        "{}; {}; oha {}",
        run(Command::new(&haproxy).arg("-v"))
            .lines()
            .next()
            .unwrap_or(""),
        String::from_utf8_lossy(&Command::new(&nginx).arg("-v").output().unwrap().stderr).trim(),
        run(Command::new(&load.oha).arg("--version")).trim(),
    );
    meshfed_bench::record(
        "Data path vs HAProxy and nginx (processes, mTLS)",
        &format!(
            "`make bench-peers`: processes on loopback; origin `meshfed echo` (one thread); every \
             proxy one worker thread; TLS 1.3, X25519, ECDSA P-256 from one mesh CA, no \
             resumption, access logs off, keep-alive everywhere. P1 = generator —mTLS→ proxy → \
             origin; P2 = generator → client proxy —mTLS→ server proxy → origin. `oha -c {CONNS}` \
             closed loop {secs} s for peak, `-q RATE --latency-correction` {secs} s for \
             percentiles, {warm} s warm-up per path; {reps} repetitions rotating the system \
             order; median (min–max){drop}. Result: pass or fail on the median ratio, \
             \"within noise\" where meshfed's min–max overlaps the best peer's scaled by the goal \
             (performance.md §6); a fixed rate above a quarter of a system's peak is marked \
             near saturation (it measures queueing). Added latency = path minus P0 in the same run. CPU = \
             utime+stime of the path's proxies over the fixed-rate window; at peak, also per \
             request, for each proxy and (from /proc/stat) for the whole machine. P5 = P1 with \
             `--disable-keepalive`: a new connection and a full mTLS handshake per request \
             (HAProxy `no-tls-tickets` and no session cache, nginx tickets and cache off, \
             meshfed never resumes), closed loop {secs} s. {versions}. Raw \
             generator JSON: target/bench-raw/ (not committed).",
            secs = knob("BENCH_SECS", 10),
            warm = knob("BENCH_WARMUP", 3),
            drop = if dropped > 0 {
                ", of the repetitions left after dropping, per system, path and rate, the one \
                 with the slowest request"
            } else {
                ""
            },
        ),
        &report,
    );
}

fn measure(load: &mut Gen, figs: &mut Figures, sys: &str, path: &str, t: &Target, procs: &[&Proc]) {
    let secs = knob("BENCH_SECS", 10);
    let warm = knob("BENCH_WARMUP", 3);
    let tck = harness::clock_ticks();
    let ticks = || procs.iter().map(|p| p.cpu_ticks()).sum::<u64>();
    // CPU µs per request over a run: each proxy's (when there are proxies) and the machine's.
    let per_request = |cpu: u64, r: &harness::Run, elapsed: f64, n: usize| {
        cpu as f64 / tck * 1e6 / (r.rps * elapsed) / n as f64
    };
    eprintln!("  {sys} {path}: warm-up, peak");
    load.oha(&format!("{sys} {path} warm-up"), t, None, warm);
    let (before, machine, t0) = (ticks(), harness::machine_busy_ticks(), Instant::now());
    let peak = load.oha(&format!("{sys} {path} peak"), t, None, secs);
    let elapsed = t0.elapsed().as_secs_f64();
    figs.push(sys, path, "peak rps", peak.rps);
    figs.push(sys, path, "peak failed %", peak.failed * 100.0);
    let machine = harness::machine_busy_ticks() - machine;
    figs.push(
        sys,
        path,
        "peak machine µs",
        per_request(machine, &peak, elapsed, 1),
    );
    if !procs.is_empty() {
        let us = per_request(ticks() - before, &peak, elapsed, procs.len());
        figs.push(sys, path, "peak proxy µs", us);
    }
    for rate in RATES {
        eprintln!("  {sys} {path}: {rate} rps");
        let before = ticks();
        let t0 = Instant::now();
        let r = load.oha(&format!("{sys} {path} {rate} rps"), t, Some(rate), secs);
        let vcpu = (ticks() - before) as f64 / tck / t0.elapsed().as_secs_f64();
        for (m, x) in [
            ("p50", r.p50),
            ("p99", r.p99),
            ("p99.9", r.p999),
            ("max", r.max),
        ] {
            figs.push(sys, path, &format!("{m} µs @{rate}"), x);
        }
        figs.push(sys, path, &format!("failed % @{rate}"), r.failed * 100.0);
        figs.push(sys, path, &format!("achieved rps @{rate}"), r.rps);
        if !procs.is_empty() {
            let per_proxy = vcpu / procs.len() as f64 / (f64::from(rate) / 1000.0);
            figs.push(
                sys,
                path,
                &format!("vCPU per 1k rps per proxy @{rate}"),
                per_proxy,
            );
        }
    }
    // P5 at the mTLS listener (performance.md §5): a new connection, so a full handshake (no
    // system resumes sessions), for every request; closed loop.
    if t.tls && !procs.is_empty() {
        eprintln!("  {sys} {path}: a new connection per request");
        let fresh = Target {
            fresh: true,
            ..t.clone()
        };
        let (before, t0) = (ticks(), Instant::now());
        let h = load.oha(&format!("{sys} {path} new connections"), &fresh, None, secs);
        let us = per_request(
            ticks() - before,
            &h,
            t0.elapsed().as_secs_f64(),
            procs.len(),
        );
        figs.push(sys, path, "new conns/s", h.rps);
        figs.push(sys, path, "new conns failed %", h.failed * 100.0);
        figs.push(sys, path, "new conn proxy µs", us);
    }
}

fn report(
    figs: &Figures,
    idle: &BTreeMap<String, u64>,
    hwm: &BTreeMap<String, u64>,
    reps: usize,
) -> String {
    let mut out = String::new();
    let fmt = |x: Option<(f64, f64, f64)>, digits: usize| match x {
        Some((m, lo, hi)) if reps > 1 => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        Some((m, _, _)) => format!("{m:.digits$}"),
        None => "—".into(),
    };
    let _ = writeln!(
        out,
        "| Path | Metric | direct | HAProxy | nginx | meshfed | meshfed / best peer | Goal | Result |\n|---|---|---|---|---|---|---|---|---|"
    );
    let peers = ["HAProxy", "nginx"];
    // The better peer by median (higher or lower is better) and its (median, min, max).
    let best_of = |vals: [Option<(f64, f64, f64)>; 2], higher: bool| {
        vals.into_iter().flatten().reduce(|a, b| {
            if (b.0 > a.0) == higher && b.0 != a.0 {
                b
            } else {
                a
            }
        })
    };
    let row = |out: &mut String,
               path: &str,
               metric: &str,
               cells: [String; 4],
               ours: Option<(f64, f64, f64)>,
               best: Option<(f64, f64, f64)>,
               goal: f64,
               higher: bool,
               note: &str| {
        let (ratio, result) = match (ours, best) {
            (Some(o), Some(b)) => (
                format!("{:.2}", o.0 / b.0),
                harness::judge(o, b, goal, higher).to_owned(),
            ),
            _ => ("—".into(), "—".into()),
        };
        let sign = if higher { "≥" } else { "≤" };
        let [direct, hap, ngx, mf] = cells;
        let _ = writeln!(
            out,
            "| {path} | {metric} | {direct} | {hap} | {ngx} | {mf} | {ratio} | {sign} {goal:.2} | {result}{note} |"
        );
    };
    // A rate (higher is better) against the best peer's, with its goal.
    let rate_row = |out: &mut String, path: &str, label: &str, direct: String, m: &str, goal| {
        let cells = ["HAProxy", "nginx", "meshfed"].map(|s| fmt(figs.get(s, path, m), 0));
        let [hap, ngx, mf] = cells;
        let best = best_of(peers.map(|p| figs.get(p, path, m)), true);
        let ours = figs.get("meshfed", path, m);
        row(
            out,
            path,
            label,
            [direct, hap, ngx, mf],
            ours,
            best,
            goal,
            true,
            "",
        );
    };
    // A figure shown with its ratio to the best peer (lower is better) but no goal of its own.
    let info = |out: &mut String, path: &str, label: &str, direct: String, m: &str, digits| {
        let ours = figs.get("meshfed", path, m);
        let ratio = match (ours, best_of(peers.map(|p| figs.get(p, path, m)), false)) {
            (Some(o), Some(b)) => format!("{:.2}", o.0 / b.0),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {path} | {label} | {direct} | {} | {} | {} | {ratio} | | |",
            fmt(figs.get("HAProxy", path, m), digits),
            fmt(figs.get("nginx", path, m), digits),
            fmt(ours, digits),
        );
    };
    for path in ["P1", "P2"] {
        // Peak rps: higher is better.
        let m = "peak rps";
        let peaks: Vec<f64> = ["HAProxy", "nginx", "meshfed"]
            .iter()
            .filter_map(|s| figs.get(s, path, m).map(|x| x.0))
            .collect();
        let direct = fmt(figs.get("direct", "P0", m), 0);
        rate_row(&mut out, path, "peak rps", direct, m, 1.10);
        let m = "peak failed %";
        let _ = writeln!(
            out,
            "| {path} | failed % in the peak run | {} | {} | {} | {} | | 0 | |",
            fmt(figs.get("direct", "P0", m), 2),
            fmt(figs.get("HAProxy", path, m), 2),
            fmt(figs.get("nginx", path, m), 2),
            fmt(figs.get("meshfed", path, m), 2),
        );
        // Where the peak's CPU went: with generator, origin and proxies sharing the machine,
        // peak rps follows the machine's CPU per request, of which a proxy is a part.
        for (m, label, direct) in [
            (
                "peak proxy µs",
                "CPU µs per request per proxy at peak",
                false,
            ),
            (
                "peak machine µs",
                "machine CPU µs per request at peak",
                true,
            ),
        ] {
            info(
                &mut out,
                path,
                label,
                if direct {
                    fmt(figs.get("direct", "P0", m), 1)
                } else {
                    "—".into()
                },
                m,
                1,
            );
        }
        for rate in RATES {
            // Above a quarter of a system's peak, a fixed rate measures queueing (§1).
            let load = |p: f64| 100.0 * f64::from(rate) / p;
            let note = if peaks.iter().any(|&p| load(p) > 25.0) {
                let (lo, hi) = peaks.iter().fold((f64::MAX, 0.0_f64), |(lo, hi), &p| {
                    (lo.min(load(p)), hi.max(load(p)))
                });
                format!("; near saturation ({lo:.0}–{hi:.0} % of peak)")
            } else {
                String::new()
            };
            for (pct, goal) in [("p50", 0.90), ("p99", 1.00), ("p99.9", 1.00)] {
                let m = format!("{pct} µs @{rate}");
                let base = figs.get("direct", "P0", &m).map_or(f64::NAN, |x| x.0);
                let added = |s: &str| {
                    figs.get(s, path, &m)
                        .map(|(v, lo, hi)| (v - base, lo - base, hi - base))
                };
                let cell = |s: &str| {
                    added(s).map_or("—".into(), |(v, lo, hi)| {
                        if reps > 1 {
                            format!("+{v:.0} ({lo:.0}–{hi:.0})")
                        } else {
                            format!("+{v:.0}")
                        }
                    })
                };
                row(
                    &mut out,
                    path,
                    &format!("added {pct} µs @ {rate} rps"),
                    [
                        fmt(figs.get("direct", "P0", &m), 0),
                        cell("HAProxy"),
                        cell("nginx"),
                        cell("meshfed"),
                    ],
                    added("meshfed"),
                    best_of(peers.map(added), false),
                    goal,
                    false,
                    &note,
                );
            }
            let m = format!("vCPU per 1k rps per proxy @{rate}");
            row(
                &mut out,
                path,
                &format!("vCPU per 1k rps per proxy @ {rate} rps"),
                [
                    "—".into(),
                    fmt(figs.get("HAProxy", path, &m), 3),
                    fmt(figs.get("nginx", path, &m), 3),
                    fmt(figs.get("meshfed", path, &m), 3),
                ],
                figs.get("meshfed", path, &m),
                best_of(peers.map(|p| figs.get(p, path, &m)), false),
                1.00,
                false,
                "",
            );
            let m = format!("failed % @{rate}");
            let _ = writeln!(
                out,
                "| {path} | failed % @ {rate} rps | {} | {} | {} | {} | | 0 | |",
                fmt(figs.get("direct", "P0", &m), 2),
                fmt(figs.get("HAProxy", path, &m), 2),
                fmt(figs.get("nginx", path, &m), 2),
                fmt(figs.get("meshfed", path, &m), 2),
            );
        }
        // P5: a new connection and full mTLS handshake per request (the mTLS listener only).
        let m = "new conns/s";
        if figs.get("meshfed", path, m).is_some() {
            let label = "new mTLS connections/s (P5, closed loop)";
            rate_row(&mut out, path, label, "—".into(), m, 1.30);
            let m = "new conns failed %";
            let _ = writeln!(
                out,
                "| {path} | failed % in the new-connection run | — | {} | {} | {} | | 0 | |",
                fmt(figs.get("HAProxy", path, m), 2),
                fmt(figs.get("nginx", path, m), 2),
                fmt(figs.get("meshfed", path, m), 2),
            );
            let m = "new conn proxy µs";
            info(
                &mut out,
                path,
                "CPU µs per new connection per proxy",
                "—".into(),
                m,
                0,
            );
        }
    }
    let mb = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    let _ = writeln!(
        out,
        "\n| Process | idle RSS MB | peak RSS MB (VmHWM) |\n|---|---|---|"
    );
    for (name, k) in idle {
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            mb(*k),
            hwm.get(name).map_or("—".into(), |h| mb(*h))
        );
    }
    let worst = idle
        .iter()
        .filter(|(n, _)| n.starts_with("meshfed"))
        .map(|(_, k)| *k)
        .max();
    let _ = writeln!(
        out,
        "\nGoal for an idle sidecar: ≤ 10 MB RSS: {}.",
        match worst {
            Some(k) if k <= 10 * 1024 => format!("pass ({} MB at most)", mb(k)),
            Some(k) => format!("fail ({} MB)", mb(k)),
            None => "not measured".into(),
        }
    );
    out
}
