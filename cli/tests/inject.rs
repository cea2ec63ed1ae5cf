//! `meshfed inject` on the kind scripts' sample Deployments: the sidecar is added to every
//! workload, the user's containers and every other object stay as they were, injecting the
//! output again changes nothing, and a broken file is refused with its line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{bin, tempdir};

fn apps() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/kind/apps.yaml")
}

fn inject(file: &std::path::Path) -> String {
    let o = Command::new(bin())
        .args(["inject", "--image", "meshfed:test"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The documents of a YAML stream, as JSON.
fn docs(text: &str) -> Vec<serde_json::Value> {
    meshfed_crds::yaml::load(text)
        .documents
        .iter()
        .filter_map(|d| d.root.as_ref().map(meshfed_crds::yaml::Node::to_json))
        .collect()
}

#[test]
fn sample_deployments_get_the_sidecar_and_nothing_else_changes() {
    let before = docs(&std::fs::read_to_string(apps()).unwrap());
    let once = inject(&apps());
    let after = docs(&once);
    assert_eq!(before.len(), after.len());
    let mut injected = 0;
    for (b, a) in before.iter().zip(&after) {
        if b["kind"] != "Deployment" {
            assert_eq!(a, b, "a {} changed", b["kind"]);
            continue;
        }
        injected += 1;
        let (bs, as_) = (
            &b["spec"]["template"]["spec"],
            &a["spec"]["template"]["spec"],
        );
        let containers = as_["containers"].as_array().unwrap();
        // The user's containers first and unchanged, then the sidecar.
        assert_eq!(
            &containers[..containers.len() - 1],
            bs["containers"].as_array().unwrap().as_slice()
        );
        let proxy = containers.last().unwrap();
        assert_eq!(proxy["name"], "meshfed-proxy");
        assert_eq!(proxy["image"], "meshfed:test");
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(as_["initContainers"][0]["name"], "meshfed-init");
        assert_eq!(as_["initContainers"][0]["args"][0], "redirect");
        assert_eq!(a["spec"]["selector"], b["spec"]["selector"]);
        assert_eq!(a["metadata"], b["metadata"]);
    }
    assert_eq!(injected, 2);
    // Idempotent.
    let dir = tempdir("inject");
    std::fs::write(dir.join("once.yaml"), &once).unwrap();
    assert_eq!(inject(&dir.join("once.yaml")), once);
}

#[test]
fn a_broken_file_is_refused_with_its_line() {
    let dir = tempdir("inject-broken");
    std::fs::write(dir.join("bad.yaml"), "kind: Deployment\nspec: [unclosed\n").unwrap();
    let o = Command::new(bin())
        .args(["inject", "bad.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "printed something");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
}
