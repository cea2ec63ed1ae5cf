//! R-ROT-2: traffic flows through a root rotation — publish the new root, trust both, reissue
//! leaves, retire the old root — with zero failed handshakes. R-ROT-3: a careless rotation
//! (sign before publishing) fails only that peer's traffic and the rotation check flags it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{
    self, Expect, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use meshfed_trust::{CertificateAuthority, TrustBundle};
use rustls_pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PHASES: usize = 4;
const PER_PHASE: usize = 15;

fn set(bundles: &[TrustBundle]) -> TrustBundleSet {
    let mut s = TrustBundleSet::new();
    for b in bundles {
        s.insert(b.clone()).unwrap();
    }
    s
}

struct Counts {
    ok: [AtomicUsize; PHASES],
    failed: [AtomicUsize; PHASES],
    last_error: std::sync::Mutex<Option<String>>,
}

/// Serves mTLS echo on loopback until the runtime ends.
async fn serve(config: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        let _ = tls.write_all(b"pong").await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    addr
}

async fn one_call(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("orders.alpha.local").unwrap(), tcp)
        .await
        .map_err(|e| reason_of(&e))?;
    tls.write_all(b"ping").await.map_err(|e| reason_of(&e))?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| reason_of(&e))?;
    Ok(())
}

struct Pair {
    ca_a: CertificateAuthority,
    server_resolver: Arc<SvidResolver>,
    /// B's copy of A's bundle (what B verifies A's server with).
    b_holds: SharedBundles,
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
}

async fn pair() -> Pair {
    let now = SystemTime::now();
    let ca_a = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let ca_b = CertificateAuthority::new(td("beta.local"), now).unwrap();
    let server_id = id("spiffe://alpha.local/ns/shop/sa/orders");
    let server_svid = ca_a
        .issue(&server_id, Duration::from_secs(3600), now)
        .unwrap();
    let client_svid = ca_b
        .issue(
            &id("spiffe://beta.local/ns/shop/sa/frontend"),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let provider = verify::provider();
    let server_resolver = Arc::new(SvidResolver::new(&server_svid, provider.clone()).unwrap());
    // A trusts B (and itself); B trusts A.
    let a_holds = verify::shared(set(&[ca_a.bundle(1).unwrap(), ca_b.bundle(1).unwrap()]));
    let b_holds = verify::shared(set(&[ca_a.bundle(1).unwrap()]));
    let server_cfg = verify::server_config(
        server_resolver.clone(),
        Arc::new(SpiffeClientVerifier::new(
            a_holds,
            Expect::domain(td("beta.local")),
            provider.clone(),
        )),
        provider.clone(),
    )
    .unwrap();
    let client_cfg = verify::client_config(
        Arc::new(SvidResolver::new(&client_svid, provider.clone()).unwrap()),
        Arc::new(SpiffeServerVerifier::new(
            b_holds.clone(),
            Expect::id(server_id),
            provider.clone(),
        )),
        provider,
    )
    .unwrap();
    let addr = serve(Arc::new(server_cfg)).await;
    Pair {
        ca_a,
        server_resolver,
        b_holds,
        addr,
        client: Arc::new(client_cfg),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_continuous_traffic_fails_no_handshake() {
    let mut p = pair().await;
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts {
        ok: Default::default(),
        failed: Default::default(),
        last_error: std::sync::Mutex::new(None),
    });
    let traffic = {
        let (phase, stop, counts, client, addr) = (
            phase.clone(),
            stop.clone(),
            counts.clone(),
            p.client.clone(),
            p.addr,
        );
        tokio::spawn(async move {
            let mut total = 0;
            while !stop.load(Ordering::SeqCst) && total < 5_000 {
                let ph = phase.load(Ordering::SeqCst);
                match one_call(addr, client.clone()).await {
                    Ok(()) => counts.ok[ph].fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        *counts.last_error.lock().unwrap() = Some(format!("phase {ph}: {e}"));
                        counts.failed[ph].fetch_add(1, Ordering::SeqCst)
                    }
                };
                total += 1;
            }
        })
    };
    let wait_phase = |ph: usize| {
        let counts = counts.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while counts.ok[ph].load(Ordering::SeqCst) + counts.failed[ph].load(Ordering::SeqCst)
                < PER_PHASE
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "phase {ph} made no progress"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // Phase 0: old root signs, B trusts the old root.
    wait_phase(0).await;
    // Phase 1: A adds a new root and publishes both; nothing signs with the new one yet.
    let now = SystemTime::now();
    p.ca_a.rotate(now).unwrap();
    p.b_holds.store(Arc::new(set(&[p.ca_a.bundle(2).unwrap()])));
    phase.store(1, Ordering::SeqCst);
    wait_phase(1).await;
    // Phase 2: the server's leaf is reissued by the new root (both roots trusted).
    let held = p.b_holds.load().get(&td("alpha.local")).cloned().unwrap();
    held.check_signing_root(p.ca_a.signing_root().unwrap())
        .expect("rotation check: new root published");
    let svid = p
        .ca_a
        .issue(
            &id("spiffe://alpha.local/ns/shop/sa/orders"),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    p.server_resolver.set(&svid).unwrap();
    phase.store(2, Ordering::SeqCst);
    wait_phase(2).await;
    // Phase 3: the old root is retired everywhere.
    assert_eq!(p.ca_a.retire(), 1);
    p.b_holds.store(Arc::new(set(&[p.ca_a.bundle(3).unwrap()])));
    phase.store(3, Ordering::SeqCst);
    wait_phase(3).await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    let failed: Vec<usize> = counts
        .failed
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    let ok: Vec<usize> = counts.ok.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        failed,
        vec![0; PHASES],
        "ok per phase {ok:?}; last error {:?}",
        counts.last_error.lock().unwrap()
    );
    assert!(ok.iter().all(|&n| n >= PER_PHASE), "ok per phase {ok:?}");
    assert_eq!(
        p.b_holds
            .load()
            .get(&td("alpha.local"))
            .unwrap()
            .roots()
            .len(),
        1
    );
}

#[tokio::test]
async fn careless_rotation_fails_that_peer_and_is_flagged() {
    let mut p = pair().await;
    assert!(one_call(p.addr, p.client.clone()).await.is_ok());
    // Sign with a new root before publishing it (M22).
    let now = SystemTime::now();
    p.ca_a.rotate(now).unwrap();
    let held = p.b_holds.load().get(&td("alpha.local")).cloned().unwrap();
    let warning = held
        .check_signing_root(p.ca_a.signing_root().unwrap())
        .unwrap_err();
    assert_eq!(
        meshfed_trust::bundle::RotationWarning::REASON,
        "BundleLacksSigningRoot"
    );
    assert!(warning.to_string().contains("alpha.local"), "{warning}");
    let svid = p
        .ca_a
        .issue(
            &id("spiffe://alpha.local/ns/shop/sa/orders"),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    p.server_resolver.set(&svid).unwrap();
    assert_eq!(
        one_call(p.addr, p.client.clone()).await,
        Err("UnknownIssuer".to_string())
    );
    // Publishing the new root heals it on the next handshake.
    p.b_holds.store(Arc::new(set(&[p.ca_a.bundle(2).unwrap()])));
    assert!(one_call(p.addr, p.client.clone()).await.is_ok());
}
