//! The CA (issuance rules, persistence, corruption) and trust bundles (SPIFFE format rules,
//! sequence handling, one domain per root).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use meshfed_trust::bundle::{Applied, TrustBundle, TrustBundleSet, strict_json};
use meshfed_trust::ca::{self, CertificateAuthority};
use meshfed_trust::svid::{self, Role};
use rcgen::{CertificateParams, SanType};
use support::*;

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn issued_svids_follow_the_spiffe_rules() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let who = id("spiffe://alpha.local/ns/shop/sa/orders");
    let svid = ca.issue(&who, ca::DEFAULT_SVID_TTL, now).unwrap();
    assert_eq!(svid::check_leaf(&svid.chain[0], now).unwrap(), who);
    let ins = svid::inspect(&svid.chain[0], Role::Leaf, now).unwrap();
    assert!(ins.violations.is_empty(), "{:?}", ins.violations);
    assert_eq!(ins.key, "ECDSA P-256");
    assert!(!svid.needs_renewal(now));
    assert!(svid.needs_renewal(now + Duration::from_secs(13 * 3600)));
    let root = svid::inspect(ca.signing_root().unwrap(), Role::Signing, now).unwrap();
    assert!(root.violations.is_empty(), "{:?}", root.violations);
    assert_eq!(root.spiffe_id.unwrap().to_string(), "spiffe://alpha.local");
}

#[test]
fn csrs_must_name_exactly_the_caller() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let caller = id("spiffe://alpha.local/ns/shop/sa/orders");
    let (_, csr) = ca::workload_csr(&id("spiffe://alpha.local/ns/shop/sa/admin")).unwrap();
    assert_eq!(
        ca.sign_csr(&csr, &caller, HOUR, now).unwrap_err().reason(),
        "CsrIdentityMismatch"
    );
    // Two URI SANs (Consul CVE-2022-40716).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        SanType::URI(caller.to_string().try_into().unwrap()),
        SanType::URI(
            "spiffe://alpha.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
    ];
    let two = p.serialize_request(&key).unwrap().der().clone();
    assert_eq!(
        ca.sign_csr(&two, &caller, HOUR, now).unwrap_err().reason(),
        "CsrIdentityMismatch"
    );
    // A caller of another trust domain, a bad lifetime, garbage.
    let (_, csr) = ca::workload_csr(&id("spiffe://beta.local/ns/x/sa/y")).unwrap();
    assert_eq!(
        ca.sign_csr(&csr, &id("spiffe://beta.local/ns/x/sa/y"), HOUR, now)
            .unwrap_err()
            .reason(),
        "ForeignTrustDomain"
    );
    let (_, csr) = ca::workload_csr(&caller).unwrap();
    assert_eq!(
        ca.sign_csr(&csr, &caller, Duration::from_secs(90 * 86400), now)
            .unwrap_err()
            .reason(),
        "BadTtl"
    );
    let junk =
        rustls_pki_types::CertificateSigningRequestDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert_eq!(
        ca.sign_csr(&junk, &caller, HOUR, now).unwrap_err().reason(),
        "InvalidCsr"
    );
    assert!(ca.sign_csr(&csr, &caller, HOUR, now).is_ok());
}

#[test]
fn the_ca_persists_with_private_keys_for_the_owner_only() {
    let now = SystemTime::now();
    let scratch = meshfed_test_support::scratch("ca");
    let dir = scratch.join("nested").join("ca");
    let mut ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    ca.rotate(now).unwrap();
    ca.save(&dir).unwrap();
    // The folders it creates are the owner's alone, whatever the umask.
    for d in [scratch.join("nested"), dir.clone()] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".key") {
            assert_eq!(
                entry.metadata().unwrap().permissions().mode() & 0o777,
                0o600,
                "{name}"
            );
        }
    }
    let loaded = CertificateAuthority::load(&dir).unwrap();
    assert_eq!(loaded.roots(), ca.roots());
    assert_eq!(loaded.trust_domain().as_str(), "alpha.local");
    // The loaded CA signs leaves that chain to the same signing root.
    let svid = loaded
        .issue(&id("spiffe://alpha.local/ns/a/sa/b"), HOUR, now)
        .unwrap();
    let b = ca.bundle(1).unwrap();
    let v = meshfed_trust::SpiffeClientVerifier::new(
        meshfed_trust::verify::shared({
            let mut s = TrustBundleSet::new();
            s.insert(b).unwrap();
            s
        }),
        meshfed_trust::Expect::AnyKnownDomain,
        meshfed_trust::verify::provider(),
    );
    assert!(
        v.check(&svid.chain[0], &[], rustls_pki_types::UnixTime::now())
            .is_ok()
    );
}

#[test]
fn a_corrupt_ca_directory_is_reported_not_used() {
    let now = SystemTime::now();
    let dir = meshfed_test_support::scratch("ca");
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    ca.save(&dir).unwrap();
    let other = meshfed_test_support::scratch("ca");
    CertificateAuthority::new(td("alpha.local"), now)
        .unwrap()
        .save(&other)
        .unwrap();
    // Key of another CA.
    std::fs::copy(other.join("root-1.key"), dir.join("root-1.key")).unwrap();
    let err = CertificateAuthority::load(&dir).unwrap_err();
    assert_eq!(err.reason(), "StoreCorrupt");
    assert!(err.to_string().contains("does not match"), "{err}");
    // Garbage manifest, missing file.
    std::fs::write(dir.join("ca.json"), b"{not json").unwrap();
    assert_eq!(
        CertificateAuthority::load(&dir).unwrap_err().reason(),
        "StoreCorrupt"
    );
    std::fs::write(
        dir.join("ca.json"),
        br#"{"version":1,"trustDomain":"alpha.local","generation":1,"roots":["../etc"]}"#,
    )
    .unwrap();
    assert_eq!(
        CertificateAuthority::load(&dir).unwrap_err().reason(),
        "StoreCorrupt"
    );
    std::fs::write(
        dir.join("ca.json"),
        br#"{"version":1,"trustDomain":"alpha.local","generation":1,"roots":["root-9"]}"#,
    )
    .unwrap();
    assert_eq!(
        CertificateAuthority::load(&dir).unwrap_err().reason(),
        "StoreIo"
    );
    assert_eq!(
        CertificateAuthority::load(&meshfed_test_support::scratch("ca"))
            .unwrap_err()
            .reason(),
        "StoreIo"
    );
}

#[test]
fn bundles_round_trip_through_the_spiffe_format() {
    let now = SystemTime::now();
    let mut ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    ca.rotate(now).unwrap();
    let mut b = ca.bundle(7).unwrap();
    b.refresh_hint = Duration::from_secs(600);
    let doc = b.to_json();
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["keys"].as_array().unwrap().len(), 2);
    assert_eq!(doc["keys"][0]["use"], "x509-svid");
    assert_eq!(doc["keys"][0]["kty"], "EC");
    assert_eq!(doc["keys"][0]["crv"], "P-256");
    let (back, warnings) = TrustBundle::from_json(td("alpha.local"), &doc.to_string()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(back, b);
    assert_eq!(back.refresh_hint, Duration::from_secs(600));
}

#[test]
fn bundle_documents_follow_the_format_rules() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let good = ca.bundle(1).unwrap().to_json();
    let key = good["keys"][0].clone();
    let parse = |v: serde_json::Value| TrustBundle::from_json(td("alpha.local"), &v.to_string());
    let with_key = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut k = key.clone();
        edit(&mut k);
        serde_json::json!({"keys": [k], "spiffe_sequence": 1})
    };
    // Skipped keys, each with a warning; no usable key leaves an empty bundle.
    for (name, doc) in [
        (
            "no kty",
            with_key(&|k| {
                k.as_object_mut().unwrap().remove("kty");
            }),
        ),
        (
            "no use",
            with_key(&|k| {
                k.as_object_mut().unwrap().remove("use");
            }),
        ),
        ("unknown use", with_key(&|k| k["use"] = "X509-SVID".into())),
        ("kid on x509-svid", with_key(&|k| k["kid"] = "k1".into())),
        (
            "x5c missing",
            with_key(&|k| {
                k.as_object_mut().unwrap().remove("x5c");
            }),
        ),
        ("x5c empty", with_key(&|k| k["x5c"] = serde_json::json!([]))),
        (
            "x5c not base64",
            with_key(&|k| k["x5c"] = serde_json::json!(["!!"])),
        ),
    ] {
        let (b, warnings) = parse(doc).unwrap();
        assert!(b.roots().is_empty(), "{name}");
        assert!(!warnings.is_empty(), "{name}: no warning");
    }
    // jwt-svid keys are ignored silently.
    let (b, _) = parse(with_key(&|k| k["use"] = "jwt-svid".into())).unwrap();
    assert!(b.roots().is_empty());
    // A leaf in x5c is not a root.
    let leaf = ca
        .issue(&id("spiffe://alpha.local/ns/a/sa/b"), HOUR, now)
        .unwrap();
    let leaf_b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        leaf.chain[0].as_ref(),
    );
    let (b, w) = parse(with_key(&|k| {
        k["x5c"] = serde_json::json!([leaf_b64.clone()])
    }))
    .unwrap();
    assert!(
        b.roots().is_empty() && w.iter().any(|w| w.contains("not a CA")),
        "{w:?}"
    );
    // Errors.
    let err = |doc: &str| {
        TrustBundle::from_json(td("alpha.local"), doc)
            .unwrap_err()
            .reason()
    };
    assert_eq!(err("{}"), "BundleMissingKeys");
    assert_eq!(err("[]"), "BundleJson");
    assert_eq!(err("{\"keys\": {}}"), "BundleBadField");
    assert_eq!(err("{\"keys\": [], \"keys\": []}"), "BundleDuplicateKey");
    assert_eq!(
        err("{\"keys\": [], \"spiffe_sequence\": -1}"),
        "BundleBadField"
    );
    assert_eq!(err("{\"keys\": []} trailing"), "BundleJson");
    assert_eq!(err(&"[".repeat(10_000)), "BundleJson");
    assert_eq!(err(&" ".repeat(2 << 20)), "BundleTooLarge");
    // Empty keys are allowed (and trust nothing); refresh hints are clamped.
    let (b, w) = TrustBundle::from_json(
        td("alpha.local"),
        "{\"keys\": [], \"spiffe_refresh_hint\": 0}",
    )
    .unwrap();
    assert!(b.roots().is_empty());
    assert!(!w.is_empty());
    let (b, _) = TrustBundle::from_json(
        td("alpha.local"),
        "{\"keys\": [], \"spiffe_refresh_hint\": 1000000000000000000}",
    )
    .unwrap();
    assert_eq!(b.refresh_hint, meshfed_trust::bundle::MAX_REFRESH_HINT);
    assert!(strict_json("{\"a\": {\"b\": 1, \"b\": 2}}").is_err());
}

#[test]
fn bundle_sets_keep_domains_apart_and_sequences_rising() {
    let now = SystemTime::now();
    let a = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let b = CertificateAuthority::new(td("beta.local"), now).unwrap();
    let mut set = TrustBundleSet::new();
    assert_eq!(set.insert(a.bundle(1).unwrap()).unwrap(), Applied::Added);
    assert_eq!(
        set.insert(a.bundle(1).unwrap()).unwrap(),
        Applied::Unchanged
    );
    assert_eq!(set.insert(b.bundle(1).unwrap()).unwrap(), Applied::Added);
    // A's root claimed for another domain (a peer root in our bundle, or ours in a peer's).
    let stolen = TrustBundle::new(td("gamma.local"), a.roots(), 1).unwrap();
    assert_eq!(set.insert(stolen).unwrap_err().reason(), "RootInTwoDomains");
    // Sequences.
    let mut a2 = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    a2.rotate(now).unwrap();
    assert_eq!(
        set.insert(TrustBundle::new(td("alpha.local"), a2.roots(), 1).unwrap())
            .unwrap_err()
            .reason(),
        "BundleSequenceReused"
    );
    assert_eq!(
        set.insert(TrustBundle::new(td("alpha.local"), a2.roots(), 0).unwrap())
            .unwrap_err()
            .reason(),
        "BundleStale"
    );
    assert_eq!(
        set.insert(TrustBundle::new(td("alpha.local"), a2.roots(), 2).unwrap())
            .unwrap(),
        Applied::Updated
    );
    assert_eq!(set.get(&td("alpha.local")).unwrap().roots().len(), 2);
    assert!(set.remove(&td("beta.local")).is_some());
    assert_eq!(set.len(), 1);
    // A leaf is not a root.
    let leaf = a
        .issue(&id("spiffe://alpha.local/ns/a/sa/b"), HOUR, now)
        .unwrap();
    assert_eq!(
        TrustBundle::new(td("alpha.local"), leaf.chain.clone(), 1)
            .unwrap_err()
            .reason(),
        "BundleBadRoot"
    );
}
