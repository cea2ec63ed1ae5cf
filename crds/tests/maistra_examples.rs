//! Maistra-shaped example resources parse, validate clean, and re-serialize without losing
//! a field; the committed CRD manifests match the types.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use meshfed_crds::validate::{Converted, Input, Kind, validate};
use meshfed_crds::{ExportedServiceSet, ImportedServiceSet, Mesh, ServiceMeshPeer, manifests};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixtures() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/maistra");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "fixtures missing in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), text)
        })
        .collect()
}

fn round_trip<T: DeserializeOwned + Serialize>(raw: &Value) -> Value {
    let typed: T =
        serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("decode: {e}\n{raw:#}"));
    serde_json::to_value(&typed).unwrap_or_else(|e| panic!("encode: {e}"))
}

#[test]
fn examples_validate_clean() {
    for (file, text) in fixtures() {
        let report = validate(&[Input {
            file: &file,
            text: &text,
        }]);
        let problems: Vec<String> = report
            .diagnostics
            .iter()
            // with-status.yaml holds objects of two meshes without all their peers.
            .filter(|d| !(file.ends_with("with-status.yaml") && d.reason == "PeerNotFound"))
            .map(ToString::to_string)
            .collect();
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
        assert!(
            report.objects.iter().all(|o| o.converted.is_some()),
            "{file}: an object did not convert"
        );
    }
}

#[test]
fn examples_round_trip_without_losing_fields() {
    let mut objects = 0;
    for (file, text) in fixtures() {
        let report = validate(&[Input {
            file: &file,
            text: &text,
        }]);
        for o in &report.objects {
            let again = match o.kind {
                Kind::ServiceMeshPeer => round_trip::<ServiceMeshPeer>(&o.raw),
                Kind::ExportedServiceSet => round_trip::<ExportedServiceSet>(&o.raw),
                Kind::ImportedServiceSet => round_trip::<ImportedServiceSet>(&o.raw),
                Kind::Mesh => round_trip::<Mesh>(&o.raw),
                Kind::Scenario => round_trip::<meshfed_crds::scenario::Scenario>(&o.raw),
            };
            assert_eq!(
                again,
                o.raw,
                "{file}: {} changed in a round trip",
                o.label()
            );
            objects += 1;
        }
    }
    assert!(objects >= 9, "only {objects} objects checked");
}

#[test]
fn examples_convert_to_the_documented_model() {
    let (file, text) = fixtures()
        .into_iter()
        .find(|(f, _)| f.ends_with("green-mesh.yaml"))
        .unwrap_or_default();
    let report = validate(&[Input {
        file: &file,
        text: &text,
    }]);
    let set = report
        .objects
        .iter()
        .find_map(|o| match &o.converted {
            Some(Converted::Imports(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ImportedServiceSet in {file}"));
    assert_eq!(set.peer.as_str(), "red-mesh");
    assert_eq!(
        set.domain_suffix.as_ref().map(|s| s.as_str()),
        Some("red.remote")
    );
    assert_eq!(
        set.locality.as_ref().map(ToString::to_string).as_deref(),
        Some("us-east/us-east-1/rack-a")
    );
    assert_eq!(set.rules.len(), 3);
    assert!(set.rules[0].import_as_local);
    assert_eq!(
        set.rules[1].domain_suffix.as_ref().map(|s| s.as_str()),
        Some("red-info.remote")
    );
}

#[test]
fn committed_crd_manifests_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for crd in manifests::federation_crds() {
        let path = dir.join(manifests::file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = manifests::to_yaml(&crd).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            committed == generated,
            "{} is stale: run `make generate` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crds_keep_maistra_shape() {
    for crd in manifests::federation_crds() {
        let v = serde_json::to_value(&crd).unwrap_or_default();
        let spec = &v["spec"];
        assert_eq!(spec["group"], "federation.maistra.io");
        assert_eq!(spec["scope"], "Namespaced");
        let version = &spec["versions"][0];
        assert_eq!(version["name"], "v1");
        assert!(
            version["subresources"]["status"].is_object(),
            "status subresource"
        );
        assert!(
            version
                .get("additionalPrinterColumns")
                .is_none_or(Value::is_null)
        );
        assert!(spec["names"].get("shortNames").is_none_or(Value::is_null));
        let categories = spec["names"]["categories"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if spec["names"]["kind"] == "ServiceMeshPeer" {
            assert_eq!(categories, vec![Value::from("maistra-io")]);
        } else {
            assert!(categories.is_empty());
        }
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        let cond = &status["conditions"]["items"];
        let required: Vec<&str> = cond["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(required, vec!["status", "type"]);
        for field in [
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        ] {
            assert!(
                cond["properties"][field].is_object(),
                "condition field {field}"
            );
        }
    }
}
