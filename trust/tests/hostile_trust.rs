//! Hostile-input vectors for what a mesh takes from outside about trust: SPIFFE bundles (as a
//! peer publishes them, or a user imports them) and peering tokens (as a peer's operator pastes
//! them). Generated at every byte and every field; each refused with its own reason. A bundle
//! set that refuses a bundle keeps what it held; a refused token stores nothing (the parsers
//! are pure; `tokens.rs` proves the acceptor writes nothing).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meshfed_core::TrustDomain;
use meshfed_test_support::hostile::Tally;
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::{TrustBundle, TrustBundleSet};
use meshfed_trust::token::{self, TokenRequest};
use serde_json::{Value, json};

fn td(s: &str) -> TrustDomain {
    s.parse().unwrap()
}

fn bundle_refusal(text: &str) -> Option<String> {
    TrustBundle::from_json(td("beta.local"), text)
        .err()
        .map(|e| e.reason().to_owned())
}

#[test]
fn hostile_bundles_are_refused_with_their_reason() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("beta.local"), now).unwrap();
    let good = ca.bundle(3).unwrap().to_json();
    let text = good.to_string();
    assert!(bundle_refusal(&text).is_none());
    let mut t = Tally::new("trust bundles");
    // Cut short at every byte: never a bundle.
    for n in 0..text.len() {
        let cut = &text[..n];
        t.check(format!("bundle cut at byte {n}"), "BundleJson", || {
            bundle_refusal(cut)
        });
    }
    for doc in [
        "[]",
        "1",
        "\"keys\"",
        "null",
        "true",
        "{\"keys\": [] } x",
        "{'keys': []}",
        "\u{feff}{}",
    ] {
        t.check(format!("document {doc:?}"), "BundleJson", || {
            bundle_refusal(doc)
        });
    }
    for keys in [json!(1), json!("x"), json!({}), json!(null), json!(true)] {
        let mut doc = good.clone();
        doc["keys"] = keys.clone();
        t.check(format!("keys {keys}"), "BundleBadField", || {
            bundle_refusal(&doc.to_string())
        });
    }
    let mut doc = good.clone();
    doc.as_object_mut().unwrap().remove("keys");
    t.check("no keys", "BundleMissingKeys", || {
        bundle_refusal(&doc.to_string())
    });
    for seq in [
        json!(-1),
        json!("3"),
        json!(1.5),
        json!(null),
        json!([3]),
        json!(true),
    ] {
        let mut doc = good.clone();
        doc["spiffe_sequence"] = seq.clone();
        t.check(format!("spiffe_sequence {seq}"), "BundleBadField", || {
            bundle_refusal(&doc.to_string())
        });
    }
    // A field twice, at the top and inside a key: which of the two counts is ambiguous.
    for field in ["keys", "spiffe_sequence", "spiffe_refresh_hint"] {
        let twice = text.replacen('{', &format!("{{\"{field}\": [],"), 1);
        t.check(format!("{field} twice"), "BundleDuplicateKey", || {
            bundle_refusal(&twice)
        });
    }
    for field in ["use", "kty", "x5c"] {
        let twice = text.replacen(
            &format!("\"{field}\":"),
            &format!("\"{field}\": 1, \"{field}\":"),
            1,
        );
        t.check(
            format!("key field {field} twice"),
            "BundleDuplicateKey",
            || bundle_refusal(&twice),
        );
    }
    let big = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "a".repeat(1 << 20));
    t.check("a bundle of 1 MiB", "BundleTooLarge", || {
        bundle_refusal(&big)
    });
    let mut many = good.clone();
    let roots: Vec<Value> = (0..33)
        .map(|_| {
            CertificateAuthority::new(td("beta.local"), now)
                .unwrap()
                .bundle(1)
                .unwrap()
                .to_json()["keys"][0]
                .clone()
        })
        .collect();
    many["keys"] = Value::Array(roots);
    t.check("33 roots", "BundleTooManyRoots", || {
        bundle_refusal(&many.to_string())
    });
    // A bundle set refuses what would roll it back or make one root serve two domains, and
    // keeps what it held.
    let mut set = TrustBundleSet::new();
    set.insert(TrustBundle::from_json(td("beta.local"), &text).unwrap().0)
        .unwrap();
    let held = set.get(&td("beta.local")).unwrap().to_json();
    let other = CertificateAuthority::new(td("beta.local"), now).unwrap();
    let cases = [
        ("an older sequence", other.bundle(2).unwrap(), "BundleStale"),
        ("sequence 0", other.bundle(0).unwrap(), "BundleStale"),
        (
            "the same sequence, other roots",
            other.bundle(3).unwrap(),
            "BundleSequenceReused",
        ),
    ];
    for (what, b, expected) in cases {
        t.check(what, expected, || {
            set.insert(b).err().map(|e| e.reason().to_owned())
        });
        assert_eq!(set.get(&td("beta.local")).unwrap().to_json(), held);
    }
    let stolen = TrustBundle::from_json(td("gamma.local"), &text).unwrap().0;
    t.check("beta's root claimed by gamma", "RootInTwoDomains", || {
        set.insert(stolen).err().map(|e| e.reason().to_owned())
    });
    assert!(set.get(&td("gamma.local")).is_none());
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}

fn request() -> TokenRequest {
    TokenRequest {
        peer_name: "alpha-mesh".parse().unwrap(),
        server_id: "spiffe://alpha.local/ns/alpha-system/sa/meshfed-control"
            .parse()
            .unwrap(),
        client_id: "spiffe://alpha.local/ns/alpha-system/sa/egress-beta-mesh"
            .parse()
            .unwrap(),
        addresses: vec!["127.0.1.1".into()],
        discovery_port: 8188,
        service_port: 15443,
        ttl: Duration::from_secs(3600),
        bundle_sequence: 1,
    }
}

fn token_refusal(tok: &str, now: SystemTime) -> Option<String> {
    token::verify(tok, now).err().map(|e| e.reason().to_owned())
}

/// `claims` signed by `ca` the way tokens are: what a real issuer with bad claims would send.
fn signed(ca: &CertificateAuthority, claims: &Value) -> String {
    let signed = format!(
        "mfpt1.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = ca.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[test]
fn hostile_peering_tokens_are_refused_with_their_reason() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new(td("alpha.local"), now).unwrap();
    let (tok, _) = token::create(&ca, &request(), now).unwrap();
    assert!(token_refusal(&tok, now).is_none());
    let parts: Vec<&str> = tok.split('.').collect();
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let mut t = Tally::new("peering tokens");
    // Cut short: before the signature nothing parses; inside it, a shorter signature does not
    // verify, or is not canonical base64 at all.
    let sig_at = parts[0].len() + parts[1].len() + 2;
    for n in (0..tok.len()).step_by(3) {
        let cut = &tok[..n];
        let expected = if n < sig_at || URL_SAFE_NO_PAD.decode(&tok[sig_at..n]).is_err() {
            "TokenMalformed"
        } else {
            "TokenBadSignature"
        };
        t.check(format!("token cut at {n}"), expected, || {
            token_refusal(cut, now)
        });
    }
    // Every signature byte altered.
    for i in 0..sig.len() {
        let mut s = sig.clone();
        s[i] ^= 0x5a;
        let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&s));
        t.check(format!("signature byte {i}"), "TokenBadSignature", || {
            token_refusal(&forged, now)
        });
    }
    // Every claim changed under the original signature: the attack of a token edited in
    // transit (another address, another identity, a longer life).
    let edits: Vec<(&str, Value)> = vec![
        ("id", json!("00")),
        ("peerName", json!("mallory")),
        ("serverId", json!("spiffe://alpha.local/ns/x/sa/y")),
        ("clientId", json!("spiffe://alpha.local/ns/x/sa/y")),
        ("addresses", json!(["10.9.9.9"])),
        ("discoveryPort", json!(1)),
        ("servicePort", json!(2)),
        ("secret", json!(URL_SAFE_NO_PAD.encode([7u8; 32]))),
        ("expiresAt", json!(i64::MAX)),
    ];
    for (field, v) in &edits {
        let mut c = payload.clone();
        c[*field] = v.clone();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        t.check(format!("{field} edited"), "TokenBadSignature", || {
            token_refusal(&forged, now)
        });
    }
    // Claims a real issuer might get wrong, properly signed: each names its field.
    let claims: Vec<(&str, Value, &str)> = vec![
        ("version", json!(2), "TokenMalformed"),
        ("unknownField", json!(1), "TokenMalformed"),
        ("discoveryPort", json!(-1), "TokenMalformed"),
        ("discoveryPort", json!(70_000), "TokenMalformed"),
        ("expiresAt", json!("tomorrow"), "TokenMalformed"),
        ("trustDomain", json!("Alpha.Local"), "TokenInvalidClaim"),
        ("trustDomain", json!("gamma.local"), "TokenInvalidClaim"),
        (
            "serverId",
            json!("spiffe://gamma.local/ns/a/sa/b"),
            "TokenInvalidClaim",
        ),
        (
            "serverId",
            json!("spiffe://alpha.local"),
            "TokenInvalidClaim",
        ),
        (
            "serverId",
            json!("alpha.local/ns/a/sa/b"),
            "TokenInvalidClaim",
        ),
        (
            "clientId",
            json!("spiffe://alpha.local/ns/a/sa/b/../c"),
            "TokenInvalidClaim",
        ),
        ("clientId", json!(""), "TokenInvalidClaim"),
        ("addresses", json!([]), "TokenInvalidClaim"),
        ("addresses", json!(["not an address!"]), "TokenInvalidClaim"),
        (
            "addresses",
            json!(vec!["10.0.0.1"; 65]),
            "TokenInvalidClaim",
        ),
        ("discoveryPort", json!(0), "TokenInvalidClaim"),
        ("servicePort", json!(0), "TokenInvalidClaim"),
        ("secret", json!("short"), "TokenInvalidClaim"),
        (
            "secret",
            json!(URL_SAFE_NO_PAD.encode([7u8; 31])),
            "TokenInvalidClaim",
        ),
        ("peerName", json!("Mallory"), "TokenInvalidClaim"),
        ("peerName", json!(""), "TokenInvalidClaim"),
        ("bundle", json!({"keys": 1}), "TokenInvalidClaim"),
        ("bundle", json!({}), "TokenInvalidClaim"),
        ("expiresAt", json!(0), "TokenExpired"),
        ("expiresAt", json!(-1), "TokenExpired"),
    ];
    for (field, v, expected) in &claims {
        let mut c = payload.clone();
        c[*field] = v.clone();
        let tok = signed(&ca, &c);
        t.check(format!("signed {field} = {v}"), expected, || {
            token_refusal(&tok, now)
        });
    }
    for (what, tok) in [
        ("empty", String::new()),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("four parts", format!("{tok}.x")),
        ("another prefix", tok.replacen("mfpt1", "mfpt2", 1)),
        ("a JWT", "eyJhbGciOiJub25lIn0.e30.".to_owned()),
        (
            "standard base64",
            format!("{}.{}+/.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "payload not UTF-8",
            format!(
                "mfpt1.{}.{}",
                URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
                parts[2]
            ),
        ),
        (
            "payload not JSON",
            format!("mfpt1.{}.{}", URL_SAFE_NO_PAD.encode("nope"), parts[2]),
        ),
    ] {
        t.check(format!("token {what}"), "TokenMalformed", || {
            token_refusal(&tok, now)
        });
    }
    let huge = format!("{tok}{}", "A".repeat(64 * 1024));
    t.check("a token of 64 KiB", "TokenTooLarge", || {
        token_refusal(&huge, now)
    });
    t.check("the token an hour late", "TokenExpired", || {
        token_refusal(&tok, now + Duration::from_secs(3601))
    });
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}
