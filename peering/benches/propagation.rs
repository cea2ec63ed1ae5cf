//! Benchmark (not a test): how long an export change takes to become visible at the peer, over
//! a real mTLS peering stream on loopback, and how much memory an imported service costs.
//! Appends a section to `bench/RESULTS.md`. `make bench-peering`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // benchmark code

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshfed_core::import::RemoteService;
use meshfed_core::session::SessionConfig;
use meshfed_core::stream::{ImportState, Limits};
use meshfed_core::{Hostname, Protocol, ServicePort, TrustDomain};
use meshfed_peering::client::{self, ImporterConfig};
use meshfed_peering::server::{ExportPeer, Exporter, ExporterConfig, ExporterOptions};
use meshfed_peering::tls;
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{
    self, Expect, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use tokio::sync::{mpsc, watch};

const CHANGES: usize = 300;

fn td(s: &str) -> TrustDomain {
    s.parse().unwrap()
}

fn service(i: usize, port: u16) -> RemoteService {
    RemoteService {
        exported_name: format!("svc-{i}.shop.svc.beta-mesh-exports.local")
            .parse()
            .unwrap(),
        key: format!("shop/svc-{i}").parse().unwrap(),
        ports: vec![ServicePort {
            name: "http".into(),
            port,
            protocol: Protocol::Http,
        }],
        service_accounts: vec![
            format!("spiffe://alpha.local/ns/shop/sa/svc-{i}")
                .parse()
                .unwrap(),
        ],
    }
}

fn view(n: usize) -> BTreeMap<Hostname, RemoteService> {
    (0..n)
        .map(|i| service(i, 8080))
        .map(|s| (s.exported_name.clone(), s))
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn propagation(base: usize) -> Vec<Duration> {
    let now = SystemTime::now();
    let a = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let b = CertificateAuthority::new(td("beta.local"), now).unwrap();
    let mut set = TrustBundleSet::new();
    set.insert(a.bundle(1).unwrap()).unwrap();
    set.insert(b.bundle(1).unwrap()).unwrap();
    let bundles = verify::shared(set);
    let p = verify::provider();
    let importer_id = "spiffe://beta.local/ns/beta-system/sa/egress";
    let s_svid = a
        .issue(
            &"spiffe://alpha.local/ns/a/sa/peering".parse().unwrap(),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let c_svid = b
        .issue(
            &importer_id.parse().unwrap(),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let server_tls = Arc::new(
        verify::server_config(
            Arc::new(SvidResolver::new(&s_svid, p.clone()).unwrap()),
            Arc::new(SpiffeClientVerifier::new(
                bundles.clone(),
                Expect::domain(td("beta.local")),
                p.clone(),
            )),
            p.clone(),
        )
        .unwrap(),
    );
    let client_tls = Arc::new(
        verify::client_config(
            Arc::new(SvidResolver::new(&c_svid, p.clone()).unwrap()),
            Arc::new(SpiffeServerVerifier::new(
                bundles,
                Expect::domain(td("alpha.local")),
                p.clone(),
            )),
            p,
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (fail_tx, _fail_rx) = mpsc::channel(16);
    let incoming = tls::incoming(listener, server_tls, fail_tx);
    let mut current = view(base);
    let (config, rx) = watch::channel(Arc::new(ExporterConfig {
        mesh: "alpha".into(),
        trust_domain: td("alpha.local"),
        peers: vec![ExportPeer {
            name: "beta-mesh".parse().unwrap(),
            client_id: importer_id.parse().unwrap(),
            view: current.clone(),
            health: Default::default(),
        }],
        bundle: None,
    }));
    let (ev_tx, _ev_rx) = mpsc::channel(1024);
    let exporter = Exporter::new(rx, ExporterOptions::default(), 1, ev_tx);
    tokio::spawn(async move { exporter.serve(incoming, std::future::pending()).await });
    let mut imp = client::spawn(
        ImporterConfig {
            mesh: "beta".into(),
            trust_domain: td("beta.local"),
            peer: "alpha-mesh".parse().unwrap(),
            peer_trust_domain: td("alpha.local"),
            address: addr,
            session: SessionConfig::default(),
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(5),
            bundles: None,
            trust_store: None,
            replica: String::new(),
        },
        client_tls,
        None,
    );
    while imp.imports.borrow_and_update().services().len() != current.len() {
        imp.imports.changed().await.unwrap();
    }
    let mut samples = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        // Alternate: update one service's port, add a service, remove it again.
        let changed = match i % 3 {
            0 => {
                let s = service(i % base.max(1), 9000 + (i % 1000) as u16);
                current.insert(s.exported_name.clone(), s.clone());
                s.exported_name
            }
            1 => {
                let s = service(base + i, 8080);
                current.insert(s.exported_name.clone(), s.clone());
                s.exported_name
            }
            _ => {
                let s = service(base + i - 1, 8080);
                current.remove(&s.exported_name);
                s.exported_name
            }
        };
        let want = current.get(&changed).cloned();
        let started = Instant::now();
        config.send_modify(|c| Arc::make_mut(c).peers[0].view = current.clone());
        loop {
            if imp.imports.borrow_and_update().services().get(&changed) == want.as_ref() {
                break;
            }
            imp.imports.changed().await.unwrap();
        }
        samples.push(started.elapsed());
    }
    imp.stop().await;
    samples.sort();
    samples
}

/// Bytes per imported service held by an importer's state: the RSS growth from generating
/// `n` services and applying them (they are moved, not copied, into the state). Earlier states
/// are kept alive so no measurement reuses another's freed memory.
fn memory_per_service(n: usize, keep: &mut Vec<ImportState>) -> f64 {
    let limits = Limits::default();
    let before = rss_kib();
    let mut state = ImportState::default();
    let mut chunk = Vec::with_capacity(1000);
    let mut index = 0u32;
    for i in 0..n {
        chunk.push(service(1_000_000 * keep.len() + i, 8080));
        if chunk.len() == 1000 || i + 1 == n {
            let c = meshfed_core::stream::SnapshotChunk {
                epoch: 1,
                version: 1,
                chunk: index,
                last: i + 1 == n,
                services: std::mem::take(&mut chunk),
            };
            state.apply_snapshot(c, &limits).unwrap();
            index += 1;
        }
    }
    let after = rss_kib();
    assert_eq!(state.services().len(), n);
    keep.push(state);
    (after.saturating_sub(before) as f64 * 1024.0) / n as f64
}

fn main() {
    // Memory first, on a fresh heap.
    let mut keep = Vec::new();
    let mut mem = String::from(
        "\n| Imported services | bytes per imported service (importer state, RSS growth) |\n|---|---|\n",
    );
    for n in [10_000usize, 50_000] {
        mem.push_str(&format!(
            "| {n} | {:.0} |\n",
            memory_per_service(n, &mut keep)
        ));
    }
    drop(keep);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut table = String::from("| Metric | p50 | p99 | max |\n|---|---|---|---|\n");
    for base in [10usize, 1_000, 10_000] {
        eprintln!("propagation with {base} exported services…");
        let s = rt.block_on(propagation(base));
        table.push_str(&format!(
            "| export change → visible at peer, {base} services exported ({CHANGES} changes) | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            percentile(&s, 0.5).as_secs_f64() * 1e3,
            percentile(&s, 0.99).as_secs_f64() * 1e3,
            s.last().unwrap().as_secs_f64() * 1e3
        ));
    }
    println!("{table}{mem}");
    meshfed_bench::record(
        "peering: propagation and import memory",
        "exporter and importer in one process on loopback over mTLS (TLS 1.3, aws-lc-rs), default session timings; each change (update a port / add / remove, in turn) timed from the exporter's config change to the importer's published state; memory is the RSS growth of an importer state holding N services; `cargo bench -p meshfed-peering --bench propagation`",
        &format!("{table}{mem}"),
    );
}
