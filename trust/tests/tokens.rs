//! Peering tokens: a good token is accepted once; tampered, expired, reused or foreign-domain
//! tokens are refused with a clear reason and store nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::store::{self, DirStore, StoreError};
use meshfed_trust::token::{self, Pending, TokenRequest, Verified};
use support::*;

fn request() -> TokenRequest {
    TokenRequest {
        peer_name: "alpha-mesh".parse().unwrap(),
        server_id: id("spiffe://alpha.local/ns/alpha-system/sa/meshfed-control"),
        client_id: id("spiffe://alpha.local/ns/alpha-system/sa/egress-beta-mesh"),
        addresses: vec!["127.0.1.1".into()],
        discovery_port: 8188,
        service_port: 15443,
        ttl: Duration::from_secs(3600),
        bundle_sequence: 1,
    }
}

/// What the acceptor does (`meshfed peering token accept`): check the token, then store its
/// bundle and record it as accepted, in the CA folder `dir` of the mesh with trust domain
/// `own`.
async fn accept(dir: &Path, own: &str, tok: &str, now: SystemTime) -> Result<Verified, StoreError> {
    let store = DirStore::new(dir, td(own));
    let v = store::check_token(&store, &TrustBundleSet::new(), &td(own), tok, now).await?;
    store::accept(&store, &v).await?;
    Ok(v)
}

/// The issuer's folder store (alpha.local).
fn issuer(dir: &Path) -> DirStore {
    DirStore::new(dir, td("alpha.local"))
}

async fn record(dir: &Path, pending: Pending) {
    store::record_pending(&issuer(dir), pending).await.unwrap();
}

async fn redeem(dir: &Path, secret: &str, now: SystemTime) -> Result<String, StoreError> {
    store::redeem(&issuer(dir), secret, now).await
}

/// Every file under `dir` with its contents, to prove nothing was written.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_token_is_accepted_once_and_stores_the_bundle() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let (tok, pending) = token::create(&ca, &request(), now).unwrap();
    assert!(tok.starts_with("mfpt1."));
    let b_dir = meshfed_test_support::scratch("token");
    let v = accept(&b_dir, "beta.local", &tok, now).await.unwrap();
    assert_eq!(v.peer_name.as_str(), "alpha-mesh");
    assert_eq!(v.trust_domain.as_str(), "alpha.local");
    assert_eq!(
        v.client_id.to_client_id(),
        "alpha.local/ns/alpha-system/sa/egress-beta-mesh"
    );
    assert_eq!(v.bundle.roots(), ca.roots().as_slice());
    assert!(b_dir.join("bundles/alpha.local.json").exists());
    // Accepting it again is refused and changes nothing.
    let before = snapshot(&b_dir);
    let err = accept(&b_dir, "beta.local", &tok, now).await.unwrap_err();
    assert_eq!(err.reason(), "TokenAlreadyAccepted");
    assert_eq!(snapshot(&b_dir), before);
    // The issuer redeems the secret once.
    let a_dir = meshfed_test_support::scratch("token");
    record(&a_dir, pending.clone()).await;
    let raw = std::fs::read_to_string(a_dir.join("pending-tokens.json")).unwrap();
    assert!(
        !raw.contains(&v.secret),
        "the issuer stores only a hash of the secret"
    );
    assert_eq!(redeem(&a_dir, &v.secret, now).await.unwrap(), pending.id);
    assert_eq!(
        redeem(&a_dir, &v.secret, now).await.unwrap_err().reason(),
        "TokenReused"
    );
    assert_eq!(
        redeem(&a_dir, "not-a-secret", now)
            .await
            .unwrap_err()
            .reason(),
        "TokenUnknownSecret"
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_and_store_nothing() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let other = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let (tok, _) = token::create(&ca, &request(), now).unwrap();
    let parts: Vec<&str> = tok.split('.').collect();
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let reencode = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut p = payload.clone();
        edit(&mut p);
        format!(
            "mfpt1.{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&p).unwrap()),
            parts[2]
        )
    };
    let mut flipped = tok.clone().into_bytes();
    let mid = parts[0].len() + 1 + parts[1].len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let (other_tok, _) = token::create(&other, &request(), now).unwrap();
    let other_sig = other_tok.rsplit('.').next().unwrap();
    let cases: Vec<(&str, String, SystemTime, &str)> = vec![
        (
            "address changed",
            reencode(&|p| p["addresses"] = serde_json::json!(["10.9.9.9"])),
            now,
            "TokenBadSignature",
        ),
        (
            "expiry extended",
            reencode(&|p| p["expiresAt"] = serde_json::json!(9_999_999_999i64)),
            now,
            "TokenBadSignature",
        ),
        (
            "bundle swapped",
            {
                let b = other.bundle(1).unwrap().to_json();
                reencode(&|p| p["bundle"] = b.clone())
            },
            now,
            "TokenBadSignature",
        ),
        (
            "signature from another CA",
            format!("{}.{}.{other_sig}", parts[0], parts[1]),
            now,
            "TokenBadSignature",
        ),
        (
            "byte flipped",
            String::from_utf8(flipped).unwrap(),
            now,
            "*",
        ),
        (
            "truncated",
            tok[..tok.len() / 2].to_string(),
            now,
            "TokenMalformed",
        ),
        (
            "signature cut",
            format!("{}.{}.", parts[0], parts[1]),
            now,
            "TokenBadSignature",
        ),
        (
            "wrong prefix",
            tok.replacen("mfpt1", "mfpt9", 1),
            now,
            "TokenMalformed",
        ),
        ("four parts", format!("{tok}.x"), now, "TokenMalformed"),
        ("empty", String::new(), now, "TokenMalformed"),
        ("huge", "a".repeat(100_000), now, "TokenTooLarge"),
        (
            "unknown field",
            reencode(&|p| p["extra"] = serde_json::json!(1)),
            now,
            "TokenMalformed",
        ),
        (
            "expired",
            tok.clone(),
            now + Duration::from_secs(3601),
            "TokenExpired",
        ),
    ];
    for (name, t, when, expected) in cases {
        let dir = meshfed_test_support::scratch("token");
        let before = snapshot(&dir);
        let err = accept(&dir, "beta.local", &t, when).await.unwrap_err();
        if expected != "*" {
            assert_eq!(err.reason(), expected, "{name}: {err}");
        }
        assert!(!err.to_string().is_empty());
        assert_eq!(snapshot(&dir), before, "{name}: something was stored");
    }
    // A token of our own trust domain.
    let dir = meshfed_test_support::scratch("token");
    let err = accept(&dir, "alpha.local", &tok, now).await.unwrap_err();
    assert_eq!(err.reason(), "TokenOwnTrustDomain");
    assert!(snapshot(&dir).is_empty());
}

#[tokio::test]
async fn issuer_checks_its_own_request() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let mut r = request();
    r.client_id = id("spiffe://beta.local/ns/x/sa/y");
    assert_eq!(
        token::create(&ca, &r, now).unwrap_err().reason(),
        "TokenInvalidClaim"
    );
    let mut r = request();
    r.ttl = Duration::from_secs(30 * 86400);
    assert_eq!(
        token::create(&ca, &r, now).unwrap_err().reason(),
        "TokenBadTtl"
    );
    let mut r = request();
    r.addresses = vec!["bad host".into()];
    assert_eq!(
        token::create(&ca, &r, now).unwrap_err().reason(),
        "TokenInvalidClaim"
    );
    // An expired pending token cannot be redeemed.
    let (tok, pending) = token::create(&ca, &request(), now).unwrap();
    let secret = token::verify(&tok, now).unwrap().secret;
    let dir = meshfed_test_support::scratch("token");
    record(&dir, pending).await;
    assert_eq!(
        redeem(&dir, &secret, now + Duration::from_secs(7200))
            .await
            .unwrap_err()
            .reason(),
        "TokenExpired"
    );
    // Still redeemable in time: the failed attempt consumed nothing.
    assert!(redeem(&dir, &secret, now).await.is_ok());
}
