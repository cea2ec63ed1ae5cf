//! Hostile-input vectors for the store's records, as a corrupted disk, an older or newer
//! meshfed, or a hand edit leaves them: keys that name no peer, bodies cut at every byte,
//! schemas from the future, every field of a saved service made invalid. Each record is
//! dropped alone with its reason; the good record beside them loads whole, before and after
//! a reopen, and nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use meshfed_core::PeerName;
use meshfed_core::import::RemoteService;
use meshfed_core::{Protocol, ServicePort};
use meshfed_store::{ImportRecord, SCHEMA, Store};
use meshfed_test_support::hostile::Tally;
use serde_json::{Value, json};

fn record() -> ImportRecord {
    ImportRecord {
        epoch: 9,
        version: 3,
        services: vec![RemoteService {
            exported_name: "orders.shop.svc.alpha-exports.local".parse().unwrap(),
            key: "shop/orders".parse().unwrap(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http,
            }],
            service_accounts: vec!["spiffe://beta.local/ns/shop/sa/orders".parse().unwrap()],
        }],
        saved_at: 1_700_000_000,
    }
}

#[test]
fn hostile_store_records_are_dropped_alone_with_their_reason() {
    let dir = meshfed_test_support::scratch("hostile-store");
    let path = dir.join("db");
    let good_peer: PeerName = "beta-mesh".parse().unwrap();
    let envelope = json!({"schema": SCHEMA, "body": serde_json::to_value(record()).unwrap()});
    let body = serde_json::to_vec(&envelope).unwrap();
    // Every vector under a key of its own: (key, bytes, what, expected reason).
    let mut vectors: Vec<(Vec<u8>, Vec<u8>, String, &str)> = Vec::new();
    let mut n = 0;
    let mut next_key = || {
        n += 1;
        format!("v{n}").into_bytes()
    };
    for bad in [
        "Beta-mesh",
        "beta_mesh",
        "beta.mesh",
        "-beta",
        "beta-",
        "beta mesh",
        "ß",
        "",
        "imports/v1",
    ] {
        vectors.push((
            bad.as_bytes().to_vec(),
            body.clone(),
            format!("key {bad:?}"),
            "BadKey",
        ));
    }
    vectors.push((
        vec![0xff, 0xfe],
        body.clone(),
        "a key not UTF-8".into(),
        "BadKey",
    ));
    vectors.push((
        "a".repeat(56).into_bytes(),
        body.clone(),
        "a key of 56 bytes".into(),
        "BadKey",
    ));
    for cut in 0..body.len() {
        vectors.push((
            next_key(),
            body[..cut].to_vec(),
            format!("record cut at byte {cut}"),
            "Undecodable",
        ));
    }
    for schema in [SCHEMA + 1, SCHEMA + 7, u32::MAX] {
        let mut e = envelope.clone();
        e["schema"] = json!(schema);
        e["body"] = json!({"anything": "a newer shape"});
        vectors.push((
            next_key(),
            serde_json::to_vec(&e).unwrap(),
            format!("schema {schema}"),
            "SchemaTooNew",
        ));
    }
    type Edit = Box<dyn Fn(&mut Value)>;
    let mut edits: Vec<(String, Edit)> = Vec::new();
    for (field, values) in [
        (
            "exportedName",
            vec![
                json!("Orders.shop"),
                json!(""),
                json!("a..b"),
                json!(1),
                json!(null),
            ],
        ),
        (
            "key",
            vec![
                json!("shop"),
                json!("Shop/orders"),
                json!("shop/1orders"),
                json!([]),
            ],
        ),
        (
            "ports",
            vec![
                json!("http"),
                json!([{"name": "http", "port": 70000, "protocol": "HTTP"}]),
                json!([{"name": "http", "port": 80, "protocol": "QUIC"}]),
            ],
        ),
        (
            "serviceAccounts",
            vec![
                json!(["beta.local/ns/a/sa/b"]),
                json!(["spiffe://Beta.local/ns/a/sa/b"]),
                json!("x"),
            ],
        ),
    ] {
        for v in values {
            let f = field.to_owned();
            edits.push((
                format!("service {field} = {v}"),
                Box::new(move |r: &mut Value| {
                    r["body"]["services"][0][&f] = v.clone();
                }),
            ));
        }
    }
    for (field, v) in [
        ("epoch", json!(-1)),
        ("version", json!("3")),
        ("services", json!({})),
        ("savedAt", json!(1.5)),
    ] {
        edits.push((
            format!("record {field} = {v}"),
            Box::new(move |r: &mut Value| {
                r["body"][field] = v.clone();
            }),
        ));
    }
    edits.push((
        "no body".into(),
        Box::new(|r: &mut Value| {
            r.as_object_mut().unwrap().remove("body");
        }),
    ));
    edits.push((
        "no schema".into(),
        Box::new(|r: &mut Value| {
            r.as_object_mut().unwrap().remove("schema");
        }),
    ));
    for (what, edit) in edits {
        let mut e = envelope.clone();
        edit(&mut e);
        vectors.push((
            next_key(),
            serde_json::to_vec(&e).unwrap(),
            what,
            "Undecodable",
        ));
    }
    // Decodable, but nothing a peer could have sent.
    for (what, field, v) in [
        (
            "port 0",
            "ports",
            json!([{"name": "http", "port": 0, "protocol": "HTTP"}]),
        ),
        (
            "an identity naming no workload",
            "serviceAccounts",
            json!(["spiffe://beta.local"]),
        ),
    ] {
        let mut e = envelope.clone();
        e["body"]["services"][0][field] = v;
        vectors.push((
            next_key(),
            serde_json::to_vec(&e).unwrap(),
            what.into(),
            "InvalidRecord",
        ));
    }
    for garbage in [
        &b"\0\0\0\0"[..],
        b"\xff\xff",
        b"null",
        b"[]",
        b"{}",
        b"\"record\"",
        &[0u8; 4096],
    ] {
        vectors.push((
            next_key(),
            garbage.to_vec(),
            format!(
                "garbage {:?}",
                garbage
                    .escape_ascii()
                    .to_string()
                    .chars()
                    .take(20)
                    .collect::<String>()
            ),
            "Undecodable",
        ));
    }
    {
        let (store, rebuilt) = Store::open(&path).unwrap();
        assert!(rebuilt.is_none());
        store.save_imports(&good_peer, &record()).unwrap();
        for (key, value, _, _) in &vectors {
            store.put_raw(key, value).unwrap();
        }
        store.flush().unwrap();
    }
    let mut t = Tally::new("store records");
    for reopen in [false, true] {
        let (store, rebuilt) = Store::open(&path).unwrap();
        assert!(
            rebuilt.is_none(),
            "bad records must not quarantine the store"
        );
        let (loaded, dropped) = store.load_imports();
        assert_eq!(
            loaded.get(&good_peer),
            Some(&record()),
            "the good record is lost"
        );
        assert_eq!(
            loaded.len() + dropped.len(),
            vectors.len() + 1,
            "a record was lost"
        );
        let by_key: BTreeMap<&str, &str> =
            dropped.iter().map(|d| (d.key.as_str(), d.reason)).collect();
        if reopen {
            continue;
        }
        for (key, _, what, expected) in &vectors {
            let key = String::from_utf8_lossy(key);
            t.record(what, expected, by_key.get(key.as_ref()).copied());
        }
    }
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}
