//! The full cross-mesh path (P4) against HAProxy and nginx chains built the same way, as
//! separate processes on loopback, measured in one run (`make bench-crossmesh`;
//! `../shared/design/performance.md`, P4 and P4-Q).
//!
//! - P0: generator → origin.
//! - P4: generator → client proxy —mTLS→ egress —mTLS→ ingress —mTLS→ server proxy → origin.
//!   HAProxy and nginx terminate and re-originate TLS at every hop (four instances, each with
//!   its own certificate, every hop verifying the next). meshfed's client and server sidecars
//!   hold one mTLS session end to end, carried by the gateways inside their own mTLS tunnel
//!   (TCP + rustls, or QUIC: P4-Q), so the gateways never decrypt it: one more layer of
//!   encryption on the gateway hop than the peers pay, and two meshes with their own CAs.
//!
//! Every process runs one worker thread; TLS 1.3, X25519, ECDSA P-256, no resumption,
//! keep-alive everywhere. Figures: closed-loop peak rps (`oha -c 16`), added p50/p99/p99.9 at
//! 1,000 rps with latency correction, vCPU per 1,000 rps for the whole chain, and bulk
//! throughput (1 MiB POST bodies over 4 connections). Repetitions rotate the system order;
//! medians with min–max. Knobs: `BENCH_REPS` (3), `BENCH_SECS` (10), `BENCH_WARMUP` (3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // a harness: fail loudly

mod harness;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use harness::{
    Figures, Gen, HOST, Proc, Target, free, haproxy_cfg, knob, nginx_cfg, peer_cert, run,
    wait_listening, which,
};

const RATE: u32 = 1_000;
const IMPORTED: &str = "echo.shop.svc.beta-imports.local";
const BULK_BYTES: usize = 1 << 20;
const BULK_CONNS: u32 = 4;

/// One system: where the generator sends P4 (and bulk), and the chain's processes.
struct Chain {
    name: &'static str,
    entry: Option<SocketAddr>,
    host: &'static str,
    procs: Vec<Proc>,
}

fn trust(meshfed: &str, dir: &Path) {
    for (ca, td) in [("a", "alpha.local"), ("b", "beta.local")] {
        run(Command::new(meshfed).current_dir(dir).args([
            "trust",
            "init",
            "--dir",
            ca,
            "--trust-domain",
            td,
        ]));
    }
    for (from, to, td) in [("a", "b", "alpha.local"), ("b", "a", "beta.local")] {
        let bundle = run(Command::new(meshfed)
            .current_dir(dir)
            .args(["trust", "bundle", "export", "--dir", from]));
        std::fs::write(dir.join(format!("{from}.json")), bundle).unwrap();
        run(Command::new(meshfed).current_dir(dir).args([
            "trust",
            "bundle",
            "import",
            "--dir",
            to,
            "--trust-domain",
            td,
            &format!("{from}.json"),
        ]));
    }
}

fn mesh_files(dir: &Path, origin: SocketAddr, a: &BTreeMap<&str, SocketAddr>) {
    std::fs::write(
        dir.join("alpha.yaml"),
        format!(
            "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: alpha, namespace: alpha-system}}
spec:
  trustDomain: alpha.local
  services: [{{name: ui, namespace: web, ports: [{{name: http, port: 8080}}]}}]
  workloads:
  - {{name: ui-1, namespace: web, service: ui, serviceAccount: ui, inbound: \"{}\", app: \"{}\"}}
  - {{name: ui-2, namespace: web, service: ui, serviceAccount: ui, inbound: \"{}\", app: \"{}\"}}
---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: beta, namespace: alpha-system}}
spec:
  remote: {{addresses: [{}], servicePort: {}}}
  security: {{trustDomain: beta.local, clientID: beta.local/ns/beta-system/sa/egress-alpha-service-account}}
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: beta, namespace: alpha-system}}
spec:
  importRules: [{{type: NameSelector, nameSelector: {{namespace: shop, name: echo}}}}]
",
            a["ui_in"],
            a["ui_app"],
            a["ui2_in"],
            a["ui2_app"],
            a["ingress"].ip(),
            a["ingress"].port(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("beta.yaml"),
        format!(
            "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: beta, namespace: beta-system}}
spec:
  trustDomain: beta.local
  services: [{{name: echo, namespace: shop, serviceAccounts: [echo], ports: [{{name: http, port: 8080}}]}}]
  workloads:
  - {{name: echo-1, namespace: shop, service: echo, serviceAccount: echo, inbound: \"{}\", app: \"{origin}\"}}
---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: alpha, namespace: beta-system}}
spec:
  remote: {{addresses: [127.0.60.1]}}
  security: {{trustDomain: alpha.local, clientID: alpha.local/ns/alpha-system/sa/egress-beta-service-account}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: alpha, namespace: beta-system}}
spec:
  exportRules: [{{type: NameSelector, nameSelector: {{namespace: shop, name: echo}}}}]
",
            a["echo_in"],
        ),
    )
    .unwrap();
}

/// The meshfed chain: beta's server sidecar and ingress (shared by both tunnels), then per
/// tunnel alpha's egress and a client sidecar.
fn meshfed_chains(meshfed: &str, dir: &Path, origin: SocketAddr) -> (Vec<Proc>, Chain, Chain) {
    trust(meshfed, dir);
    let a: BTreeMap<&str, SocketAddr> = [
        ("ui_in", free("127.0.60.2")),
        ("ui_app", free("127.0.60.2")),
        ("ui2_in", free("127.0.60.4")),
        ("ui2_app", free("127.0.60.4")),
        ("echo_in", free("127.0.61.2")),
        ("ingress", free("127.0.61.1")),
    ]
    .into();
    mesh_files(dir, origin, &a);
    let spawn = |name: &str, args: &[&str]| {
        Proc::spawn(
            dir,
            name,
            Command::new(meshfed).args(args).args(["--workers", "1"]),
        )
    };
    let server = spawn(
        "meshfed-server",
        &[
            "proxy",
            "--mesh",
            "beta.yaml",
            "--dir",
            "b",
            "--workload",
            "echo-1",
        ],
    );
    let ingress_addr = a["ingress"].to_string();
    let ingress = spawn(
        "meshfed-ingress",
        &[
            "gateway",
            "--mesh",
            "beta.yaml",
            "--peer",
            "alpha",
            "--dir",
            "b",
            "--ingress",
            &ingress_addr,
        ],
    );
    wait_listening(a["echo_in"], "meshfed-server", dir);
    wait_listening(a["ingress"], "meshfed-ingress", dir);
    let chain = |tunnel: &str, workload: &str, name: &'static str| {
        let (egress, out) = (free("127.0.60.1"), free("127.0.60.3"));
        let eg = spawn(
            &format!("meshfed-egress-{tunnel}"),
            &[
                "gateway",
                "--mesh",
                "alpha.yaml",
                "--peer",
                "beta",
                "--peer-mesh",
                "beta.yaml",
                "--dir",
                "a",
                "--egress",
                &egress.to_string(),
                "--tunnel",
                tunnel,
            ],
        );
        let client = spawn(
            &format!("meshfed-client-{tunnel}"),
            &[
                "proxy",
                "--mesh",
                "alpha.yaml",
                "--dir",
                "a",
                "--workload",
                workload,
                "--outbound",
                &out.to_string(),
                "--peer-mesh",
                "beta.yaml",
                "--egress",
                &egress.to_string(),
            ],
        );
        wait_listening(egress, &format!("meshfed-egress-{tunnel}"), dir);
        wait_listening(out, &format!("meshfed-client-{tunnel}"), dir);
        Chain {
            name,
            entry: Some(out),
            host: IMPORTED,
            procs: vec![client, eg],
        }
    };
    let tcp = chain("tcp", "ui-1", "meshfed TCP");
    let quic = chain("quic", "ui-2", "meshfed QUIC");
    (vec![server, ingress], tcp, quic)
}

fn haproxy_chain(haproxy: &Path, dir: &Path, origin: SocketAddr) -> Chain {
    let d = dir.display();
    let addrs: Vec<SocketAddr> = (0..4)
        .map(|i| free(&format!("127.0.62.{}", i + 1)))
        .collect();
    let tls_in = |a: SocketAddr| {
        format!(
            "bind {a} ssl crt {d}/server.pem ca-file {d}/root.pem verify required ssl-min-ver TLSv1.3 curves X25519 no-tls-tickets"
        )
    };
    let tls_out = |a: SocketAddr| {
        format!(
            "server s {a} ssl crt {d}/client.pem ca-file {d}/root.pem verify required verifyhost echo.bench.local sni str(echo.bench.local) ssl-min-ver TLSv1.3 no-ssl-reuse"
        )
    };
    let cfgs = [
        (format!("bind {}", addrs[0]), tls_out(addrs[1])),
        (tls_in(addrs[1]), tls_out(addrs[2])),
        (tls_in(addrs[2]), tls_out(addrs[3])),
        (tls_in(addrs[3]), format!("server o {origin}")),
    ];
    let mut procs = Vec::new();
    for (i, (front, back)) in cfgs.iter().enumerate() {
        let name = format!("haproxy-{i}");
        std::fs::write(dir.join(format!("{name}.cfg")), haproxy_cfg(front, back)).unwrap();
        procs.push(Proc::spawn(
            dir,
            &name,
            Command::new(haproxy).args(["-db", "-f", &format!("{name}.cfg")]),
        ));
    }
    for (i, a) in addrs.iter().enumerate() {
        wait_listening(*a, &format!("haproxy-{i}"), dir);
    }
    Chain {
        name: "HAProxy",
        entry: Some(addrs[0]),
        host: HOST,
        procs,
    }
}

fn nginx_chain(nginx: &Path, dir: &Path, origin: SocketAddr) -> Chain {
    let d = dir.display();
    let addrs: Vec<SocketAddr> = (0..4)
        .map(|i| free(&format!("127.0.63.{}", i + 1)))
        .collect();
    let tls_in = |a: SocketAddr| {
        format!(
            "listen {a} ssl; ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key; ssl_client_certificate {d}/root.pem; ssl_verify_client on; ssl_protocols TLSv1.3; ssl_ecdh_curve X25519; ssl_session_tickets off; ssl_session_cache off;"
        )
    };
    let cfgs = [
        (
            format!("listen {};", addrs[0]),
            addrs[1].to_string(),
            "https://up",
        ),
        (tls_in(addrs[1]), addrs[2].to_string(), "https://up"),
        (tls_in(addrs[2]), addrs[3].to_string(), "https://up"),
        (tls_in(addrs[3]), origin.to_string(), "http://up"),
    ];
    let mut procs = Vec::new();
    for (i, (server, upstream, location)) in cfgs.iter().enumerate() {
        let name = format!("nginx-{i}");
        std::fs::write(
            dir.join(format!("{name}.conf")),
            nginx_cfg(dir, &name, server, upstream, location),
        )
        .unwrap();
        procs.push(Proc::spawn(
            dir,
            &name,
            Command::new(nginx)
                .args(["-e", "stderr", "-p"])
                .arg(dir)
                .arg("-c")
                .arg(dir.join(format!("{name}.conf"))),
        ));
    }
    for (i, a) in addrs.iter().enumerate() {
        wait_listening(*a, &format!("nginx-{i}"), dir);
    }
    Chain {
        name: "nginx",
        entry: Some(addrs[0]),
        host: HOST,
        procs,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let (Some(haproxy), Some(nginx), Some(oha)) = (which("haproxy"), which("nginx"), which("oha"))
    else {
        eprintln!("bench-crossmesh needs haproxy, nginx and oha on PATH: run `make bench-tools`");
        std::process::exit(2);
    };
    let meshfed = env!("CARGO_BIN_EXE_meshfed");
    let reps = knob("BENCH_REPS", 3) as usize;
    let secs = knob("BENCH_SECS", 10);
    let warm = knob("BENCH_WARMUP", 3);
    let dir = std::env::temp_dir().join(format!("meshfed-bench-crossmesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    eprintln!("bench-crossmesh in {}", dir.display());
    std::fs::write(dir.join("bulk.bin"), vec![b'x'; BULK_BYTES]).unwrap();

    // The peers' certificates come from one CA (`ca/`); meshfed's meshes have their own.
    run(Command::new(meshfed).current_dir(&dir).args([
        "trust",
        "init",
        "--dir",
        "ca",
        "--trust-domain",
        "bench.local",
    ]));
    std::fs::copy(dir.join("ca/root-1.pem"), dir.join("root.pem")).unwrap();
    peer_cert(
        &dir,
        "server",
        "spiffe://bench.local/ns/shop/sa/echo",
        "echo.bench.local",
    );
    peer_cert(
        &dir,
        "client",
        "spiffe://bench.local/ns/web/sa/ui",
        "ui.bench.local",
    );

    let origin = free("127.0.59.1");
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

    let (shared, m_tcp, m_quic) = meshfed_chains(meshfed, &dir, origin);
    let mut chains = vec![
        Chain {
            name: "direct",
            entry: Some(origin),
            host: HOST,
            procs: Vec::new(),
        },
        haproxy_chain(&haproxy, &dir, origin),
        nginx_chain(&nginx, &dir, origin),
        m_tcp,
        m_quic,
    ];
    let mut idle = BTreeMap::new();
    for p in chains
        .iter()
        .flat_map(|c| c.procs.iter())
        .chain(shared.iter())
    {
        idle.insert(p.name.clone(), p.mem_kib("VmRSS"));
    }
    let mut load = Gen {
        oha,
        dir: dir.clone(),
        raw: Vec::new(),
    };
    let mut figs = Figures::default();
    let tck = harness::clock_ticks();
    let started = Instant::now();
    for rep in 0..reps {
        chains.rotate_left(1);
        for c in &chains {
            eprintln!(
                "repetition {}/{reps}: {} ({:.0} s elapsed)",
                rep + 1,
                c.name,
                started.elapsed().as_secs_f64()
            );
            let Some(entry) = c.entry else { continue };
            let is_meshfed = c.name.starts_with("meshfed");
            let procs: Vec<&Proc> = c
                .procs
                .iter()
                .chain(shared.iter().filter(|_| is_meshfed))
                .collect();
            let t = Target {
                url: format!("http://{entry}/"),
                host: c.host.into(),
                body: None,
                conns: None,
                tls: false,
                fresh: false,
            };
            let path = if c.name == "direct" { "P0" } else { "P4" };
            eprintln!("  {}: warm-up, peak", c.name);
            load.oha(&format!("{} warm-up", c.name), &t, None, warm);
            let peak = load.oha(&format!("{} peak", c.name), &t, None, secs);
            figs.push(c.name, path, "peak rps", peak.rps);
            figs.push(c.name, path, "peak failed %", peak.failed * 100.0);
            eprintln!("  {}: {RATE} rps", c.name);
            let ticks = || procs.iter().map(|p| p.cpu_ticks()).sum::<u64>();
            let before = ticks();
            let t0 = Instant::now();
            let r = load.oha(&format!("{} {RATE} rps", c.name), &t, Some(RATE), secs);
            let vcpu = (ticks() - before) as f64 / tck / t0.elapsed().as_secs_f64();
            for (m, x) in [("p50", r.p50), ("p99", r.p99), ("p99.9", r.p999)] {
                figs.push(c.name, path, m, x);
            }
            figs.push(c.name, path, "failed %", r.failed * 100.0);
            if !procs.is_empty() {
                figs.push(
                    c.name,
                    path,
                    "vCPU per 1k rps",
                    vcpu / (f64::from(RATE) / 1000.0),
                );
            }
            eprintln!("  {}: bulk", c.name);
            let bulk = Target {
                body: Some(dir.join("bulk.bin")),
                conns: Some(BULK_CONNS),
                ..t
            };
            let b = load.oha(&format!("{} bulk", c.name), &bulk, None, secs);
            figs.push(
                c.name,
                path,
                "bulk MiB/s",
                b.rps * BULK_BYTES as f64 / f64::from(1 << 20),
            );
            figs.push(c.name, path, "bulk failed %", b.failed * 100.0);
        }
    }
    let mut hwm = BTreeMap::new();
    for p in chains
        .iter()
        .flat_map(|c| c.procs.iter())
        .chain(shared.iter())
    {
        hwm.insert(p.name.clone(), p.mem_kib("VmHWM"));
    }
    let report = format!(
        "{}\n{}\n",
        report(&figs, &idle, &hwm, reps),
        harness::layout_line(meshfed)
    );
    eprintln!("{report}");
    let raw_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-raw");
    let _ = std::fs::create_dir_all(&raw_dir);
    std::fs::write(
        raw_dir.join(format!("crossmesh-{}.json", std::process::id())),
        serde_json::to_string_pretty(&load.raw).unwrap(),
    )
    .unwrap();
    meshfed_bench::record(
        "Cross-mesh path P4 vs HAProxy and nginx chains (processes, mTLS on every hop)",
        &format!(
            "`make bench-crossmesh`: processes on loopback; origin `meshfed echo`; every process \
             one worker thread; TLS 1.3, X25519, ECDSA P-256, no resumption, keep-alive. P4 = \
             generator → client proxy —mTLS→ egress —mTLS→ ingress —mTLS→ server proxy → \
             origin. HAProxy/nginx: four instances terminating and re-originating TLS at each \
             hop. meshfed: alpha's ui sidecar → alpha egress → beta ingress → beta echo sidecar \
             (two meshes, two CAs); the sidecars' mTLS runs end to end inside the gateways' \
             tunnel (TCP+rustls, or QUIC), so the gateway hop is encrypted twice. `oha -c 16` \
             closed loop {secs} s for peak; `-q {RATE} --latency-correction` {secs} s for \
             percentiles; bulk = 1 MiB POST bodies, 4 connections, {secs} s; {warm} s warm-up; \
             {reps} repetitions rotating the order; median (min–max). Added latency = P4 − P0 \
             in the same run. vCPU = utime+stime of the chain's four processes."
        ),
        &report,
    );
}

fn report(
    figs: &Figures,
    idle: &BTreeMap<String, u64>,
    hwm: &BTreeMap<String, u64>,
    reps: usize,
) -> String {
    const SYSTEMS: [&str; 4] = ["HAProxy", "nginx", "meshfed TCP", "meshfed QUIC"];
    let mut out = String::new();
    let fmt = |x: Option<(f64, f64, f64)>, digits: usize| match x {
        Some((m, lo, hi)) if reps > 1 => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        Some((m, _, _)) => format!("{m:.digits$}"),
        None => "—".into(),
    };
    let median = |s: &str, m: &str| figs.get(s, "P4", m).map(|x| x.0);
    let _ = writeln!(
        out,
        "| Metric | direct | HAProxy | nginx | meshfed TCP | meshfed QUIC | TCP / best peer | QUIC / TCP | Goal |\n|---|---|---|---|---|---|---|---|---|"
    );
    let ratio = |a: Option<f64>, b: f64| a.map_or("—".into(), |a| format!("{:.2}", a / b));
    // Higher is better: peak and bulk.
    for (m, digits, goal) in [
        (
            "peak rps",
            0,
            "TCP ≥ 1.10 (G5); QUIC ≥ 1.00 to be the default (G15)",
        ),
        ("bulk MiB/s", 0, "QUIC ≥ 1.00 to be the default (G15)"),
    ] {
        let best = ["HAProxy", "nginx"]
            .iter()
            .filter_map(|s| median(s, m))
            .fold(f64::NAN, f64::max);
        let tcp = median("meshfed TCP", m);
        let _ = writeln!(
            out,
            "| {m} | {} | {} | {} | {} | {} | {} | {} | {goal} |",
            fmt(figs.get("direct", "P0", m), digits),
            fmt(figs.get(SYSTEMS[0], "P4", m), digits),
            fmt(figs.get(SYSTEMS[1], "P4", m), digits),
            fmt(figs.get(SYSTEMS[2], "P4", m), digits),
            fmt(figs.get(SYSTEMS[3], "P4", m), digits),
            ratio(tcp, best),
            ratio(median("meshfed QUIC", m), tcp.unwrap_or(f64::NAN)),
        );
    }
    // Lower is better: added latency at 1,000 rps.
    for (pct, goal) in [
        ("p50", "≤ 0.90"),
        ("p99", "≤ 0.90 and ≤ +500 µs (G4)"),
        ("p99.9", "≤ 1.00"),
    ] {
        let base = figs.get("direct", "P0", pct).map_or(f64::NAN, |x| x.0);
        let added = |s: &str| median(s, pct).map(|v| v - base);
        let best = [added("HAProxy"), added("nginx")]
            .into_iter()
            .flatten()
            .fold(f64::NAN, f64::min);
        let cell = |s: &str| {
            figs.get(s, "P4", pct).map_or("—".into(), |(v, lo, hi)| {
                if reps > 1 {
                    format!("+{:.0} ({:.0}–{:.0})", v - base, lo - base, hi - base)
                } else {
                    format!("+{:.0}", v - base)
                }
            })
        };
        let tcp = added("meshfed TCP");
        let _ = writeln!(
            out,
            "| added {pct} µs @ {RATE} rps | {} | {} | {} | {} | {} | {} | {} | {goal} |",
            fmt(figs.get("direct", "P0", pct), 0),
            cell(SYSTEMS[0]),
            cell(SYSTEMS[1]),
            cell(SYSTEMS[2]),
            cell(SYSTEMS[3]),
            ratio(tcp, best),
            ratio(added("meshfed QUIC"), tcp.unwrap_or(f64::NAN)),
        );
    }
    let m = "vCPU per 1k rps";
    let best = ["HAProxy", "nginx"]
        .iter()
        .filter_map(|s| median(s, m))
        .fold(f64::NAN, f64::min);
    let tcp = median("meshfed TCP", m);
    let _ = writeln!(
        out,
        "| vCPU per 1k rps, whole chain @ {RATE} rps | — | {} | {} | {} | {} | {} | {} | ≤ 1.00 |",
        fmt(figs.get(SYSTEMS[0], "P4", m), 3),
        fmt(figs.get(SYSTEMS[1], "P4", m), 3),
        fmt(figs.get(SYSTEMS[2], "P4", m), 3),
        fmt(figs.get(SYSTEMS[3], "P4", m), 3),
        ratio(tcp, best),
        ratio(median("meshfed QUIC", m), tcp.unwrap_or(f64::NAN)),
    );
    for m in ["peak failed %", "failed %", "bulk failed %"] {
        let _ = writeln!(
            out,
            "| {m} | {} | {} | {} | {} | {} | | | 0 |",
            fmt(figs.get("direct", "P0", m), 2),
            fmt(figs.get(SYSTEMS[0], "P4", m), 2),
            fmt(figs.get(SYSTEMS[1], "P4", m), 2),
            fmt(figs.get(SYSTEMS[2], "P4", m), 2),
            fmt(figs.get(SYSTEMS[3], "P4", m), 2),
        );
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
    out
}
