//! F-BUNDLE-1 and F-SVID-1 (proptest form): the bundle parser, the token verifier and the
//! certificate checks never panic on arbitrary or mutated input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::SystemTime;

use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundle;
use meshfed_trust::svid::{self, Role};
use proptest::prelude::*;

fn seed() -> (String, Vec<u8>) {
    let now = SystemTime::now();
    let ca = CertificateAuthority::new("alpha.local".parse().unwrap(), now).unwrap();
    let leaf = ca
        .issue(
            &"spiffe://alpha.local/ns/a/sa/b".parse().unwrap(),
            std::time::Duration::from_secs(3600),
            now,
        )
        .unwrap();
    (
        ca.bundle(1).unwrap().to_json().to_string(),
        leaf.chain[0].to_vec(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn bundle_parser_survives_arbitrary_text(text in "\\PC{0,400}") {
        let _ = TrustBundle::from_json("alpha.local".parse().unwrap(), &text);
        let _ = meshfed_trust::token::verify(&text, SystemTime::now());
    }

    #[test]
    fn bundle_parser_survives_mutations(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let (doc, _) = seed();
        let mut bytes = doc.into_bytes();
        for (at, b) in edits {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = TrustBundle::from_json("alpha.local".parse().unwrap(), &text);
    }

    #[test]
    fn certificate_checks_survive_mutations(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let (_, der) = seed();
        let mut bytes = der.clone();
        for (at, b) in edits {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        let now = SystemTime::now();
        let _ = svid::inspect(&bytes, Role::Leaf, now);
        let _ = svid::check_leaf(&bytes, now);
        let _ = svid::check_leaf(&der[..cut % der.len()], now);
        let _ = meshfed_trust::pem::certificates_from_bytes(&bytes);
    }
}
