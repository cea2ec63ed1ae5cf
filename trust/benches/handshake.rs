//! Benchmark (not a test): full TLS 1.3 mutual-TLS handshakes per second in memory, with
//! meshfed's SPIFFE verifiers on both sides versus rustls's stock webpki verifiers, on the same
//! ECDSA P-256 certificates, key exchange (X25519) and provider (aws-lc-rs). Also the cost of
//! one certificate verification alone. Runs alternate order; medians of 5 runs are reported
//! and appended to `bench/RESULTS.md`.
//!
//! `make bench-trust` (or `cargo bench -p meshfed-trust --bench handshake`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfed_trust::bundle::{TrustBundle, TrustBundleSet};
use meshfed_trust::verify::{
    self, Expect, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

const RUNS: usize = 5;
const RUN_TIME: Duration = Duration::from_millis(1500);

struct Creds {
    root: CertificateDer<'static>,
    server: (Vec<CertificateDer<'static>>, Vec<u8>),
    client: (Vec<CertificateDer<'static>>, Vec<u8>),
}

fn creds() -> Creds {
    let mut rp = CertificateParams::default();
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    rp.subject_alt_names = vec![SanType::URI("spiffe://alpha.local".try_into().unwrap())];
    let rk = KeyPair::generate().unwrap();
    let root = rp.self_signed(&rk).unwrap().der().clone();
    let issuer = Issuer::from_params(&rp, &rk);
    let leaf = |uri: &str, dns: &str| {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![
            SanType::DnsName(dns.try_into().unwrap()),
            SanType::URI(uri.try_into().unwrap()),
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let k = KeyPair::generate().unwrap();
        (
            vec![p.signed_by(&k, &issuer).unwrap().der().clone()],
            k.serialize_der(),
        )
    };
    Creds {
        root,
        server: leaf(
            "spiffe://alpha.local/ns/shop/sa/orders",
            "orders.alpha.local",
        ),
        client: leaf("spiffe://alpha.local/ns/web/sa/ui", "ui.alpha.local"),
    }
}

fn key(der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
}

fn meshfed_configs(c: &Creds) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let p = verify::provider();
    let mut set = TrustBundleSet::new();
    set.insert(TrustBundle::new("alpha.local".parse().unwrap(), vec![c.root.clone()], 1).unwrap())
        .unwrap();
    let bundles = verify::shared(set);
    let s = verify::server_config(
        Arc::new(
            SvidResolver::from_chain(c.server.0.clone(), key(&c.server.1), p.clone()).unwrap(),
        ),
        Arc::new(SpiffeClientVerifier::new(
            bundles.clone(),
            Expect::AnyKnownDomain,
            p.clone(),
        )),
        p.clone(),
    )
    .unwrap();
    let cl = verify::client_config(
        Arc::new(
            SvidResolver::from_chain(c.client.0.clone(), key(&c.client.1), p.clone()).unwrap(),
        ),
        Arc::new(SpiffeServerVerifier::new(
            bundles,
            Expect::id("spiffe://alpha.local/ns/shop/sa/orders".parse().unwrap()),
            p.clone(),
        )),
        p,
    )
    .unwrap();
    (Arc::new(s), Arc::new(cl))
}

fn stock_configs(c: &Creds) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let p = verify::provider();
    let mut roots = RootCertStore::empty();
    roots.add(c.root.clone()).unwrap();
    let roots = Arc::new(roots);
    let cv = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
        .build()
        .unwrap();
    let mut s = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(cv)
        .with_single_cert(c.server.0.clone(), key(&c.server.1))
        .unwrap();
    s.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    s.send_tls13_tickets = 0;
    let mut cl = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(c.client.0.clone(), key(&c.client.1))
        .unwrap();
    cl.resumption = rustls::client::Resumption::disabled();
    (Arc::new(s), Arc::new(cl))
}

/// One full handshake in memory; panics on failure (a benchmark must not measure errors).
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) {
    let mut c = ClientConnection::new(
        client.clone(),
        ServerName::try_from("orders.alpha.local").unwrap(),
    )
    .unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return;
        }
    }
    panic!("handshake did not finish");
}

fn rate(f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN_TIME {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let c = creds();
    let (ms, mc) = meshfed_configs(&c);
    let (ss, sc) = stock_configs(&c);
    // Warm-up, and a check that both setups really complete handshakes.
    for _ in 0..50 {
        handshake(&ms, &mc);
        handshake(&ss, &sc);
    }
    // Verification alone: meshfed's client-cert check vs webpki path validation.
    let p = verify::provider();
    let mut set = TrustBundleSet::new();
    set.insert(TrustBundle::new("alpha.local".parse().unwrap(), vec![c.root.clone()], 1).unwrap())
        .unwrap();
    let v = SpiffeClientVerifier::new(verify::shared(set), Expect::AnyKnownDomain, p.clone());
    let anchor = webpki::anchor_from_trusted_cert(&c.root)
        .unwrap()
        .to_owned();
    let now = UnixTime::now();
    let leaf = c.client.0[0].clone();
    let (mut hm, mut hs, mut vm, mut vs) = (vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        let mut m = || handshake(&ms, &mc);
        let mut s = || handshake(&ss, &sc);
        let mut vmf = || {
            v.check(&leaf, &[], now).unwrap();
        };
        let mut vsf = || {
            let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
            ee.verify_for_usage(
                p.signature_verification_algorithms.all,
                std::slice::from_ref(&anchor),
                &[],
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .unwrap();
        };
        if run % 2 == 0 {
            hm.push(rate(&mut m));
            hs.push(rate(&mut s));
            vm.push(rate(&mut vmf));
            vs.push(rate(&mut vsf));
        } else {
            hs.push(rate(&mut s));
            hm.push(rate(&mut m));
            vs.push(rate(&mut vsf));
            vm.push(rate(&mut vmf));
        }
        eprintln!("run {}/{RUNS} done", run + 1);
    }
    let rows = [
        (
            "mTLS handshakes/s (both sides verify)",
            median(hm),
            median(hs),
        ),
        ("client-certificate verifications/s", median(vm), median(vs)),
    ];
    let mut table = String::from(
        "| Metric | meshfed SPIFFE verifiers | stock rustls webpki | ratio |\n|---|---|---|---|\n",
    );
    for (name, m, s) in &rows {
        table.push_str(&format!(
            "| {name} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2} |\n",
            m.0,
            m.1,
            m.2,
            s.0,
            s.1,
            s.2,
            m.0 / s.0
        ));
    }
    println!("{table}");
    meshfed_bench::record(
        "trust: mTLS handshake cost",
        &format!(
            "in-memory TLS 1.3 mutual handshakes (ECDSA P-256 leaves under one root, X25519, aws-lc-rs, no resumption), {RUNS} runs of {:.1} s alternating order, median (min–max); `cargo bench -p meshfed-trust --bench handshake`",
            RUN_TIME.as_secs_f64()
        ),
        &table,
    );
}
