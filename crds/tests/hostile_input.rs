//! F-CRD-1: validation never panics, whatever the bytes, and every problem names a reason.
//! Mutations of valid documents reach deep into the semantic checks; arbitrary text exercises
//! the YAML loader.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_crds::validate::{Input, validate};
use proptest::prelude::*;

const SEED: &str = include_str!("../../scenarios/examples/alpha.yaml");

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, String),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let token = prop_oneof![
        Just(String::from("*")),
        Just(String::from(": ")),
        Just(String::from("\n- ")),
        Just(String::from("[")),
        Just(String::from("{")),
        Just(String::from("&a ")),
        Just(String::from("*a")),
        Just(String::from("~")),
        Just(String::from("\t")),
        Just(String::from("0x")),
        Just(String::from("yes")),
        Just(String::from("---\n")),
        Just(String::from("\u{feff}")),
        Just(String::from("\u{0}")),
        "[a-zA-Z0-9 ._/:-]{0,8}",
    ];
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Delete(a, n)),
            (any::<usize>(), token.clone()).prop_map(|(a, t)| Edit::Insert(a, t)),
            (any::<usize>(), token).prop_map(|(a, t)| Edit::Replace(a, t)),
        ],
        1..6,
    )
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len().max(1);
        match e {
            Edit::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(chars.len());
                if at < end {
                    chars.drain(at..end);
                }
            }
            Edit::Insert(at, t) => {
                let at = (at % len).min(chars.len());
                chars.splice(at..at, t.chars());
            }
            Edit::Replace(at, t) => {
                let at = at % len;
                let end = (at + t.chars().count()).min(chars.len());
                if at <= end {
                    chars.splice(at..end, t.chars());
                }
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_documents_never_panic(edits in edits()) {
        let text = apply(SEED, &edits);
        let report = validate(&[Input { file: "mutated.yaml", text: &text }]);
        for d in &report.diagnostics {
            prop_assert!(!d.reason.is_empty());
            prop_assert!(!d.message.is_empty());
        }
        let _ = report.meshes();
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let report = validate(&[Input { file: "arbitrary.yaml", text: &text }]);
        let _ = report.meshes();
    }
}
