//! The fuzz targets, one function each over arbitrary bytes: the code that reads what comes
//! from outside (the SNI reader, the YAML loader and validator, SPIFFE IDs, the peering token
//! decoder, bundle parsing, the store's record decoding, the peering and config streams'
//! protobuf messages). Each must return without panicking and hold its invariants (asserted
//! here, so a broken one is a crash the fuzzer keeps). `fuzz/` runs them under libFuzzer
//! (`make fuzz`); `tests/corpus.rs` replays the checked-in corpus and the seeds in every CI
//! run.

use std::time::{Duration, SystemTime};

use meshfed_core::stream::{ImportState, Limits};
use meshfed_core::{Hostname, SpiffeId, TrustDomain};
use prost::Message;

pub mod seeds;

/// A fuzz target: arbitrary bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("sni", sni),
    ("names", names),
    ("documents", documents),
    ("token", token),
    ("bundle", bundle),
    ("store_record", store_record),
    ("peering_message", peering_message),
    ("config_snapshot", config_snapshot),
    ("dns_query", dns_query),
];

/// The sidecar's DNS proxy on what an app sends it: an answer made here is a response to
/// the same query id, and anything it does not answer is forwarded as it came or dropped.
pub fn dns_query(data: &[u8]) {
    use meshfed_proxy::dns::{Answer, DnsTable, answer};
    let table = DnsTable::new(["orders.shop.svc.beta-imports.local", "a.b"]);
    match answer(&table, data) {
        Answer::Local(r) => {
            assert!(r.len() >= 12 && data.len() >= 12, "{r:?}");
            assert_eq!(r[..2], data[..2], "the query's id");
            assert_eq!(r[2] & 0x80, 0x80, "a response");
        }
        Answer::Drop => assert!(data.len() < 12 || answer(&table, data) == Answer::Drop),
        Answer::Forward => {}
    }
}

/// A fixed clock, so that a crash replays the same way on any day.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// The ClientHello reader: never claims more bytes than given, and answers the same twice.
pub fn sni(data: &[u8]) {
    let first = meshfed_gateway::sni::parse(data);
    if let Ok(Some(h)) = &first {
        assert!(h.consumed <= data.len());
    }
    assert_eq!(first, meshfed_gateway::sni::parse(data));
}

/// SPIFFE IDs, trust domains and host names: what parses prints back to itself.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<SpiffeId>() {
        assert_eq!(id.to_string().parse::<SpiffeId>().ok(), Some(id));
    }
    let _ = SpiffeId::from_client_id(text);
    if let Ok(td) = text.parse::<TrustDomain>() {
        assert_eq!(td.as_str(), text);
    }
    if let Ok(h) = Hostname::canonicalize(text) {
        assert_eq!(Hostname::canonicalize(h.as_str()).ok(), Some(h));
    }
}

/// The YAML loader and the validator, on documents of every kind (CRDs, mesh files,
/// scenarios): every diagnostic names a reason, and a mesh that loads validates clean.
pub fn documents(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let report = meshfed_crds::validate::validate(&[meshfed_crds::validate::Input {
        file: "fuzz.yaml",
        text: &text,
    }]);
    for d in &report.diagnostics {
        assert!(!d.reason.is_empty());
    }
    let _ = meshfed_crds::validate::load_mesh("fuzz.yaml", &text);
}

/// The peering token decoder.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = meshfed_trust::token::verify(&text, now());
}

/// SPIFFE bundle parsing: a bundle that parses prints to one that parses to the same roots.
pub fn bundle(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let td: TrustDomain = "fuzz.local".parse().expect("a valid trust domain");
    if let Ok((b, _)) = meshfed_trust::bundle::TrustBundle::from_json(td.clone(), &text) {
        let again = meshfed_trust::bundle::TrustBundle::from_json(td, &b.to_json().to_string())
            .expect("a bundle meshfed printed parses");
        assert_eq!(again.0.roots(), b.roots());
    }
}

/// The store's record decoding; the first byte says how long the key is.
pub fn store_record(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(n).min(rest.len()));
    if let Err(d) = meshfed_store::decode_record(key, value) {
        assert!(matches!(
            d.reason,
            "BadKey" | "Undecodable" | "SchemaTooNew" | "InvalidRecord"
        ));
    }
}

/// An importer holding one snapshot.
fn importer() -> (ImportState, TrustDomain, Limits) {
    let td: TrustDomain = "beta.local".parse().expect("a valid trust domain");
    let limits = Limits {
        max_services: 100,
        ..Limits::default()
    };
    let mut state = ImportState::default();
    let snap =
        meshfed_peering::convert::snapshot_from_wire(seeds::peering_snapshot(), &td, &limits)
            .expect("the seed snapshot converts");
    state
        .apply_snapshot(snap, &limits)
        .expect("the seed snapshot applies");
    (state, td, limits)
}

/// The peering stream's messages as an importer receives them (the first byte picks a
/// snapshot chunk or a delta): decoded, converted, applied. A refused message leaves the
/// importer as it was.
pub fn peering_message(data: &[u8]) {
    use meshfed_api::peering as pb;
    use meshfed_peering::convert::{delta_from_wire, snapshot_from_wire};
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let (mut state, td, limits) = importer();
    let before = state.clone();
    let refused = if which % 2 == 0 {
        let Ok(msg) = pb::Snapshot::decode(bytes) else {
            return;
        };
        snapshot_from_wire(msg, &td, &limits)
            .and_then(|c| state.apply_snapshot(c, &limits))
            .is_err()
    } else {
        let Ok(msg) = pb::Delta::decode(bytes) else {
            return;
        };
        delta_from_wire(msg, &td, &limits)
            .and_then(|d| state.apply_delta(d, &limits))
            .is_err()
    };
    if refused {
        assert_eq!(state, before, "a refused message changed the importer");
    }
}

/// The config stream's snapshots as a proxy receives them.
pub fn config_snapshot(data: &[u8]) {
    let Ok(snap) = meshfed_api::config::Snapshot::decode(data) else {
        return;
    };
    let own: TrustDomain = "alpha-mesh.local".parse().expect("a valid trust domain");
    let _ = meshfed_control::client::check_snapshot(&own, snap);
}
