//! Benchmark (not a test): what the sidecar pair adds to a request on loopback.
//! P0 is client → echo; P2 is client → client sidecar → mTLS → server sidecar → echo, both with
//! 16 keep-alive connections. Peak rps in a closed loop, then latency at fixed rates measured
//! from each request's scheduled start (no coordinated omission). The sidecars and echo run on
//! a 2-worker runtime, the load generator on its own 1-worker runtime, in one process.
//! Appends a section to `bench/RESULTS.md`. `make bench-proxy`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meshfed_proxy::echo;
use meshfed_trust::CertificateAuthority;
use meshfed_trust::verify::Expect;

const CONNECTIONS: usize = 16;
const PEAK_SECS: u64 = 5;
const RATE_SECS: u64 = 5;
const RATES: [u64; 2] = [1_000, 10_000];

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// One GET; its status (0 on a transport error).
async fn call(s: &mut Sender) -> u16 {
    let req = hyper::Request::get("/bench")
        .header(hyper::header::HOST, HOST)
        .body(Empty::new())
        .unwrap();
    match s.send_request(req).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let _ = r.into_body().collect().await;
            status
        }
        Err(_) => 0,
    }
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Closed loop for `secs`: requests per second and errors.
async fn peak(addr: SocketAddr, secs: u64) -> (f64, usize) {
    let end = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect(addr).await;
                let (mut n, mut errors) = (0usize, 0usize);
                while Instant::now() < end {
                    if call(&mut s).await != 200 {
                        errors += 1;
                    }
                    n += 1;
                }
                (n, errors)
            })
        })
        .collect();
    let (mut n, mut errors) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        n += a;
        errors += b;
    }
    #[allow(clippy::cast_precision_loss)]
    let rps = n as f64 / t0.elapsed().as_secs_f64();
    (rps, errors)
}

/// `rate` requests per second for `secs`, spread over the connections: latencies in µs from
/// each request's scheduled start, sorted, and errors.
async fn at_rate(addr: SocketAddr, rate: u64, secs: u64) -> (Vec<u64>, usize) {
    let total = rate * secs;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let tasks: Vec<_> = (0..CONNECTIONS as u64)
        .map(|k| {
            tokio::spawn(async move {
                let mut s = connect(addr).await;
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                let mut i = k;
                while i < total {
                    let due = start + gap * u32::try_from(i).unwrap_or(u32::MAX);
                    tokio::time::sleep_until(due).await;
                    if call(&mut s).await != 200 {
                        errors += 1;
                    }
                    lat.push(u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX));
                    i += CONNECTIONS as u64;
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    (all, errors)
}

fn main() {
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ca = CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
    // P0's echo, and P2's echo behind a server sidecar with a client sidecar in front.
    let (direct, _tasks, _srv, cli) = servers.block_on(async {
        let (direct, d) = echo::start(any(), echo_config("direct")).await.unwrap();
        let (srv, e) =
            echo_server(&ca, echo_config("echo-1"), Expect::AnyKnownDomain, vec![]).await;
        let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
        (direct, (d, e), srv, cli)
    });
    let paths = [
        ("P0 direct", direct),
        ("P2 sidecar pair, mTLS", cli.outbound.unwrap()),
    ];
    let mut rows = Vec::new();
    let mut peaks = Vec::new();
    for (name, addr) in paths {
        println!("{name}: closed loop, {CONNECTIONS} connections, {PEAK_SECS} s…");
        let (rps, errors) = load.block_on(peak(addr, PEAK_SECS));
        println!("  {rps:.0} rps, {errors} errors");
        peaks.push(rps);
        rows.push(format!(
            "| {name} | peak (closed loop) | {rps:.0} rps | {errors} |"
        ));
    }
    let mut measured = Vec::new();
    for rate in RATES {
        for ((name, addr), peak) in paths.iter().zip(&peaks) {
            #[allow(clippy::cast_precision_loss)]
            let over = rate as f64 > 0.8 * peak;
            if over {
                rows.push(format!(
                    "| {name} | {rate} rps | over 80 % of peak, not run | – |"
                ));
                continue;
            }
            println!("{name}: {rate} rps for {RATE_SECS} s…");
            let (lat, errors) = load.block_on(at_rate(*addr, rate, RATE_SECS));
            let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
            println!("  p50 {p50} µs, p99 {p99} µs, {errors} errors");
            measured.push((rate, p50, p99));
            rows.push(format!(
                "| {name} | {rate} rps | p50 {p50} µs, p99 {p99} µs, max {} µs | {errors} |",
                lat.last().copied().unwrap_or(0)
            ));
        }
    }
    let mut summary = String::new();
    for rate in RATES {
        let at: Vec<_> = measured.iter().filter(|m| m.0 == rate).collect();
        if let [p0, p2] = at.as_slice() {
            summary.push_str(&format!(
                "- added by the sidecar pair at {rate} rps: p50 {} µs, p99 {} µs\n",
                p2.1.saturating_sub(p0.1),
                p2.2.saturating_sub(p0.2)
            ));
        }
    }
    if let [p0, p2] = peaks.as_slice() {
        summary.push_str(&format!("- P2 peak / P0 peak: {:.2}\n", p2 / p0));
    }
    println!("{summary}");
    let body = format!(
        "| path | load | result | errors |\n|---|---|---|---|\n{}\n\n{summary}\nPeers (HAProxy, \
         nginx in the same positions) are not measured yet.\n",
        rows.join("\n")
    );
    meshfed_bench::record(
        "Data path: sidecar pair vs direct (P0, P2)",
        &format!(
            "one process: echo and sidecars on a 2-worker tokio runtime, the load generator on a \
             1-worker runtime; HTTP/1.1 GET, {CONNECTIONS} keep-alive connections, ~100 B JSON \
             answers; closed loop {PEAK_SECS} s per path; fixed rates {RATE_SECS} s each, \
             latency from each request's scheduled start (tokio's 1 ms timer adds up to 1 ms to \
             both paths alike)"
        ),
        &body,
    );
}
