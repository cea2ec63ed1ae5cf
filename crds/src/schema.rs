//! Checks a YAML tree against a CRD's structural OpenAPI schema, reporting *every* problem
//! (wrong type, unknown field, missing required field, integer out of range) with its path —
//! unlike a deserializer, which stops at the first.

use serde_json::Value as J;

use crate::diag::{FieldPath, Finding};
use crate::yaml::{Node, Value};

/// Plain scalars that YAML 1.1 readers (kubectl, go-yaml v2) take as booleans.
const YAML11_BOOLS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Reads `node` as Kubernetes reads what `kubectl`/`oc apply` send: a whole-number float
/// where the schema wants an integer is that integer (`8188.0`: YAML's float, JSON's
/// number), and an unquoted YAML 1.1 boolean (`yes`, `off`, …) where it wants a boolean is
/// that boolean — `kubectl` reads YAML 1.1 — with a warning, since YAML 1.2 readers see a
/// string there.
pub fn coerce(node: &mut Node, schema: &J, path: &FieldPath, out: &mut Vec<Finding>) {
    match (&mut node.value, schema.get("type").and_then(J::as_str)) {
        (Value::Map(entries), Some("object") | None) => {
            let props = schema.get("properties").and_then(J::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for e in entries {
                if let Some(s) = props.and_then(|p| p.get(&e.key)).or(additional) {
                    coerce(&mut e.value, s, &path.key(&e.key), out);
                }
            }
        }
        (Value::Seq(items), Some("array")) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    coerce(item, item_schema, &path.index(i), out);
                }
            }
        }
        #[allow(clippy::cast_precision_loss)]
        (Value::Float(f), Some("integer"))
            if f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64 =>
        {
            #[allow(clippy::cast_possible_truncation)]
            let whole = *f as i64;
            node.value = Value::Int(whole);
        }
        (Value::Str { text, plain: true }, Some("boolean")) => {
            let b = match text.as_str() {
                "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
                "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
                _ => None,
            };
            if let Some(b) = b {
                out.push(
                    Finding::warning(
                        "Yaml11Boolean",
                        path.clone(),
                        format!("unquoted {text:?} is read as {b}, as kubectl (YAML 1.1) reads it"),
                    )
                    .hint(format!(
                        "write {b}: YAML 1.2 readers take {text:?} as a string"
                    )),
                );
                node.value = Value::Bool(b);
            }
        }
        _ => {}
    }
}

/// Walks `node` against `schema` (a JSON `openAPIV3Schema`), appending findings.
pub fn check(node: &Node, schema: &J, path: &FieldPath, out: &mut Vec<Finding>) {
    if matches!(node.value, Value::Null) {
        if schema.get("nullable").and_then(J::as_bool) != Some(true) && schema.get("type").is_some()
        {
            out.push(Finding::error(
                "WrongType",
                path.clone(),
                format!("expected {}, got null", type_label(schema)),
            ));
        }
        return;
    }
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(J::as_bool)
        == Some(true)
        && schema.get("properties").is_none()
    {
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(J::as_bool)
        == Some(true)
    {
        if !matches!(node.value, Value::Int(_) | Value::Str { .. }) {
            out.push(wrong_type("integer or string", node, path));
        }
        return;
    }
    match schema.get("type").and_then(J::as_str) {
        Some("object") => check_object(node, schema, path, out),
        Some("array") => match &node.value {
            Value::Seq(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        check(item, item_schema, &path.index(i), out);
                    }
                }
            }
            _ => out.push(wrong_type("list", node, path)),
        },
        Some("string") => match &node.value {
            Value::Str { .. } => out.extend(yaml11_boolean(node, path)),
            _ => {
                let mut f = wrong_type("string", node, path);
                if matches!(node.value, Value::Bool(_) | Value::Int(_) | Value::Float(_)) {
                    f = f.hint("quote the value to make it a string");
                }
                out.push(f);
            }
        },
        Some("integer") => match node.value {
            Value::Int(i) => {
                let (lo, hi) = match schema.get("format").and_then(J::as_str) {
                    Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
                    _ => (i64::MIN, i64::MAX),
                };
                if i < lo || i > hi {
                    out.push(Finding::error(
                        "OutOfRange",
                        path.clone(),
                        format!("{i} does not fit in a 32-bit integer"),
                    ));
                }
            }
            Value::Float(f) => out.push(Finding::error(
                "OutOfRange",
                path.clone(),
                format!("{f} is not a whole number that fits in a 64-bit integer"),
            )),
            _ => out.push(wrong_type("integer", node, path)),
        },
        Some("number") if !matches!(node.value, Value::Int(_) | Value::Float(_)) => {
            out.push(wrong_type("number", node, path));
        }
        Some("boolean") => match &node.value {
            Value::Bool(_) => {}
            Value::Str { text, plain: true } if YAML11_BOOLS.contains(&text.as_str()) => {
                out.push(wrong_type("boolean", node, path).hint(format!(
                    "write true or false; {text:?} is a boolean only in YAML 1.1"
                )))
            }
            _ => out.push(wrong_type("boolean", node, path)),
        },
        _ => {}
    }
}

/// A warning when `node` is an unquoted string that YAML 1.1 readers take as a boolean.
pub fn yaml11_boolean(node: &Node, path: &FieldPath) -> Option<Finding> {
    match &node.value {
        Value::Str { text, plain: true } if YAML11_BOOLS.contains(&text.as_str()) => Some(
            Finding::warning(
                "Yaml11Boolean",
                path.clone(),
                format!("unquoted {text:?} is a boolean to kubectl and other YAML 1.1 readers"),
            )
            .hint(format!("quote it: \"{text}\"")),
        ),
        _ => None,
    }
}

fn type_label(schema: &J) -> &str {
    match schema.get("type").and_then(J::as_str) {
        Some("object") => "mapping",
        Some("array") => "list",
        Some(t) => t,
        None => "a value",
    }
}

fn wrong_type(expected: &str, node: &Node, path: &FieldPath) -> Finding {
    Finding::error(
        "WrongType",
        path.clone(),
        format!("expected {expected}, got {}", node.value.type_name()),
    )
}

fn check_object(node: &Node, schema: &J, path: &FieldPath, out: &mut Vec<Finding>) {
    let Value::Map(entries) = &node.value else {
        out.push(wrong_type("mapping", node, path));
        return;
    };
    let props = schema.get("properties").and_then(J::as_object);
    let additional = schema.get("additionalProperties");
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(J::as_bool)
        == Some(true);
    for e in entries {
        let child = path.key(&e.key);
        if let Some(s) = props.and_then(|p| p.get(&e.key)) {
            check(&e.value, s, &child, out);
        } else if let Some(s) = additional.filter(|a| a.is_object()) {
            check(&e.value, s, &child, out);
        } else if path.is_root() && matches!(e.key.as_str(), "apiVersion" | "kind" | "metadata") {
            // Checked by the caller.
        } else if !(preserve || additional.and_then(J::as_bool) == Some(true)) {
            let mut f = Finding::error("UnknownField", child, format!("unknown field {:?}", e.key));
            if let Some(best) = props.and_then(|p| closest(&e.key, p.keys().map(String::as_str))) {
                f = f.hint(format!("did you mean {best:?}?"));
            } else if let Some(p) = props {
                let known: Vec<&str> = p.keys().map(String::as_str).collect();
                f = f.hint(format!("known fields here: {}", known.join(", ")));
            }
            out.push(f);
        }
    }
    if let Some(required) = schema.get("required").and_then(J::as_array) {
        for r in required.iter().filter_map(J::as_str) {
            if !entries.iter().any(|e| e.key == r) {
                out.push(Finding::error(
                    "MissingField",
                    path.key(r),
                    format!("required field {r:?} is missing"),
                ));
            }
        }
    }
}

/// The candidate nearest to `word` by edit distance, if near enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .map(|c| (levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_field() {
        let c = ["exportRules", "importRules", "domainSuffix"];
        assert_eq!(
            closest("exportRule", c.iter().copied()),
            Some("exportRules")
        );
        assert_eq!(
            closest("exportrules", c.iter().copied()),
            Some("exportRules")
        );
        assert_eq!(closest("zzz", c.iter().copied()), None);
    }
}
