//! The fuzz corpus replayed as ordinary tests (CI runs no fuzzer): every target over its
//! seeds and every file under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` (crashes
//! found earlier, kept as regressions once fixed). A panic or a broken invariant fails the
//! test, naming the file.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

#[test]
fn every_target_survives_its_seeds_and_its_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut total = 0;
    for (name, target) in meshfed_fuzz_targets::TARGETS {
        let seeds = meshfed_fuzz_targets::seeds::seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for seed in &seeds {
            target(seed);
        }
        total += seeds.len();
        for folder in ["corpus", "artifacts"] {
            let Ok(files) = std::fs::read_dir(root.join(folder).join(name)) else {
                continue;
            };
            for f in files.flatten() {
                let data = std::fs::read(f.path()).unwrap_or_default();
                let replay = std::panic::catch_unwind(|| target(&data));
                assert!(replay.is_ok(), "{name}: {} fails", f.path().display());
                total += 1;
            }
        }
    }
    eprintln!("fuzz corpus replayed: {total} inputs");
}

/// The seeds are inputs the code accepts, so the fuzzer starts past the first refusal.
#[test]
fn the_seeds_are_accepted_inputs() {
    use meshfed_fuzz_targets::seeds::seeds;
    use prost::Message;
    let one = |t: &str| seeds(t).into_iter().next().unwrap_or_default();
    assert!(matches!(
        meshfed_gateway::sni::parse(&one("sni")),
        Ok(Some(_))
    ));
    for s in seeds("documents") {
        let text = String::from_utf8(s).unwrap_or_default();
        let report = meshfed_crds::validate::validate(&[meshfed_crds::validate::Input {
            file: "seed.yaml",
            text: &text,
        }]);
        assert_eq!(report.errors(), 0, "{text}");
    }
    let token = String::from_utf8(one("token")).unwrap_or_default();
    assert!(meshfed_trust::token::verify(&token, std::time::SystemTime::now()).is_ok());
    let bundle = String::from_utf8(one("bundle")).unwrap_or_default();
    assert!(
        meshfed_trust::bundle::TrustBundle::from_json("fuzz.local".parse().unwrap(), &bundle)
            .is_ok()
    );
    let record = one("store_record");
    let n = usize::from(record[0]);
    assert!(meshfed_store::decode_record(&record[1..=n], &record[n + 1..]).is_ok());
    let snap = meshfed_api::config::Snapshot::decode(one("config_snapshot").as_slice()).unwrap();
    let own = "alpha-mesh.local".parse().unwrap();
    assert!(meshfed_control::client::check_snapshot(&own, snap).is_ok());
    // The DNS seeds: one name the sidecar answers, one it forwards.
    use meshfed_proxy::dns::{Answer, DnsTable, answer};
    let table = DnsTable::new(["orders.shop.svc.beta-imports.local"]);
    let dns = seeds("dns_query");
    assert!(matches!(answer(&table, &dns[0]), Answer::Local(_)));
    assert_eq!(answer(&table, &dns[1]), Answer::Forward);
}
