//! Hostile-input vectors for the documents users apply: Maistra CRDs (ServiceMeshPeer,
//! ExportedServiceSet, ImportedServiceSet), meshfed's mesh file and lab scenarios. Generated
//! over the shipped and fixture documents by walking every field: an unknown field in every
//! object, every scalar turned into a map or a list, every list and object into a scalar. Each
//! is refused with its reason *at that field*; only the mutated document gets an error (the
//! other documents of its file, fed beside it, stay clean); nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_crds::diag::Severity;
use meshfed_crds::validate::{Input, validate};
use meshfed_crds::yaml;
use meshfed_test_support::hostile::Tally;
use serde_json::{Value, json};

/// Maps whose keys are the user's own (labels, selectors, header names): any key is valid.
const FREE_FORM: &[&str] = &["labels", "annotations", "matchLabels", "headers", "data"];

/// A dotted field path as the validator prints it.
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

/// One mutation: where it is, what it does, and the reason expected there.
struct Mutation {
    path: String,
    what: String,
    reason: &'static str,
    apply: Box<dyn Fn(&mut Value)>,
}

/// The value at `pointer` in `doc`, for an edit.
fn at<'a>(doc: &'a mut Value, pointer: &str) -> &'a mut Value {
    doc.pointer_mut(pointer).unwrap()
}

/// Mutations of `v` at `pointer`, printed `path`. A scenario's resources are documents of
/// their own: their paths start again from the resource (the diagnostic names the object).
fn walk(v: &Value, pointer: &str, path: &str, parent_key: &str, out: &mut Vec<Mutation>) {
    let own = pointer.to_owned();
    match v {
        Value::Object(_) if parent_key == "resources" => {
            let p = own.clone();
            out.push(Mutation {
                path: "(document)".into(),
                what: "resource → string".into(),
                reason: "WrongType",
                apply: Box::new(move |d| *at(d, &p) = json!("text")),
            });
            walk(v, pointer, "", "", out);
        }
        Value::Object(map) => {
            if !path.is_empty() && path != "status" {
                let p = own.clone();
                out.push(Mutation {
                    path: path.to_owned(),
                    what: "object → string".into(),
                    reason: "WrongType",
                    apply: Box::new(move |d| *at(d, &p) = json!("text")),
                });
            }
            // Kubernetes metadata carries fields meshfed does not read (uid, managedFields…)
            // in any object read back from a cluster: ignored, as the API server's are.
            if !FREE_FORM.contains(&parent_key) && path != "status" && path != "metadata" {
                let p = own.clone();
                out.push(Mutation {
                    path: join(path, "zzUnknown"),
                    what: "unknown field".into(),
                    reason: "UnknownField",
                    apply: Box::new(move |d| {
                        at(d, &p)
                            .as_object_mut()
                            .unwrap()
                            .insert("zzUnknown".into(), json!(1));
                    }),
                });
            }
            for (k, child) in map {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "status") {
                    continue;
                }
                let key = k.replace('~', "~0").replace('/', "~1");
                walk(child, &format!("{pointer}/{key}"), &join(path, k), k, out);
            }
        }
        Value::Array(items) => {
            let p = own.clone();
            out.push(Mutation {
                path: path.to_owned(),
                what: "list → string".into(),
                reason: "WrongType",
                apply: Box::new(move |d| *at(d, &p) = json!("text")),
            });
            for (i, child) in items.iter().enumerate() {
                walk(
                    child,
                    &format!("{pointer}/{i}"),
                    &format!("{path}[{i}]"),
                    parent_key,
                    out,
                );
            }
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            for (what, to) in [
                ("scalar → map", json!({"a": "b"})),
                ("scalar → list", json!(["a"])),
            ] {
                let p = own.clone();
                out.push(Mutation {
                    path: path.to_owned(),
                    what: what.into(),
                    reason: "WrongType",
                    apply: Box::new(move |d| *at(d, &p) = to.clone()),
                });
            }
        }
        Value::Null => {}
    }
}

fn documents(text: &str) -> Vec<Value> {
    let stream = yaml::load(text);
    stream
        .documents
        .iter()
        .filter_map(|d| d.root.as_ref().map(yaml::Node::to_json))
        .collect()
}

#[test]
fn hostile_documents_are_refused_at_the_field() {
    let bases = [
        (
            "Maistra CRDs",
            include_str!("fixtures/maistra/red-mesh.yaml"),
        ),
        (
            "Maistra CRDs",
            include_str!("fixtures/maistra/green-mesh.yaml"),
        ),
        (
            "mesh files",
            include_str!("../../scenarios/examples/alpha.yaml"),
        ),
        (
            "mesh files",
            include_str!("../../scenarios/examples/beta.yaml"),
        ),
        (
            "lab scenarios",
            include_str!("../../scenarios/failover.yaml"),
        ),
        (
            "lab scenarios",
            include_str!("../../scenarios/chained.yaml"),
        ),
    ];
    let mut tallies: Vec<Tally> = ["Maistra CRDs", "mesh files", "lab scenarios"]
        .iter()
        .map(|s| Tally::new(&format!("documents: {s}")))
        .collect();
    for (surface, text) in bases {
        let t = match surface {
            "Maistra CRDs" => &mut tallies[0],
            "mesh files" => &mut tallies[1],
            _ => &mut tallies[2],
        };
        let docs = documents(text);
        assert!(!docs.is_empty());
        let jsons: Vec<String> = docs.iter().map(Value::to_string).collect();
        let names: Vec<String> = (0..docs.len()).map(|i| format!("doc{i}.json")).collect();
        let clean = validate(
            &names
                .iter()
                .zip(&jsons)
                .map(|(f, t)| Input { file: f, text: t })
                .collect::<Vec<_>>(),
        );
        assert_eq!(clean.errors(), 0, "{surface}: a base is not clean");
        for (i, doc) in docs.iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or("?").to_owned();
            let mut mutations = Vec::new();
            walk(doc, "", "", "", &mut mutations);
            for m in mutations {
                let mut bad = doc.clone();
                (m.apply)(&mut bad);
                let mut texts = jsons.clone();
                texts[i] = bad.to_string();
                let vector = format!("{kind} {}: {}", m.path, m.what);
                let expected = format!("{} at {}", m.reason, m.path);
                t.check(vector, &expected, || {
                    let inputs: Vec<Input<'_>> = names
                        .iter()
                        .zip(&texts)
                        .map(|(f, t)| Input { file: f, text: t })
                        .collect();
                    let report = validate(&inputs);
                    let errors: Vec<_> = report
                        .diagnostics
                        .iter()
                        .filter(|d| d.severity == Severity::Error)
                        .collect();
                    if let Some(d) = errors.iter().find(|d| d.file != names[i]) {
                        return Some(format!("an error in another document: {d}"));
                    }
                    let d = errors
                        .iter()
                        .find(|d| d.path.to_string() == m.path)
                        .or(errors.first())?;
                    Some(format!("{} at {}", d.reason, d.path))
                });
            }
        }
    }
    for t in tallies {
        t.finish(env!("CARGO_TARGET_TMPDIR"));
    }
}
