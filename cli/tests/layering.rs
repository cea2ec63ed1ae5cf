//! The crate layering of ARCHITECTURE.md, checked over `cargo metadata`: `core` stays pure,
//! and heavy or sensitive dependencies stay in the crate that owns them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn deps() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cargo metadata: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    v["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null()) // normal dependencies only
                .filter_map(|d| d["name"].as_str().map(str::to_owned))
                .collect();
            (name, deps)
        })
        .collect()
}

/// Which workspace crates may use a dependency (by crate name).
const OWNERS: &[(&str, &[&str])] = &[
    ("kube", &["meshfed-crds", "meshfed-k8s"]),
    ("k8s-openapi", &["meshfed-crds", "meshfed-k8s"]),
    ("sled", &["meshfed-store"]),
    ("quinn", &["meshfed-gateway"]),
    ("quinn-proto", &["meshfed-gateway"]),
    ("rcgen", &["meshfed-trust"]),
    ("x509-parser", &["meshfed-trust"]),
];

#[test]
fn core_is_pure() {
    let all = deps();
    let core = all
        .get("meshfed-core")
        .unwrap_or_else(|| panic!("no meshfed-core"));
    // regex: pure computation (route matching), bounded in size and time.
    let allowed: BTreeSet<&str> = ["serde", "thiserror", "regex"].into();
    let extra: Vec<&String> = core
        .iter()
        .filter(|d| !allowed.contains(d.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "meshfed-core must stay pure (no I/O, no runtime); it depends on {extra:?}"
    );
}

#[test]
fn owned_dependencies_stay_with_their_owner() {
    for (krate, deps) in deps() {
        for (dep, owners) in OWNERS {
            if deps.contains(*dep) {
                assert!(
                    owners.contains(&krate.as_str()),
                    "{krate} depends on {dep}, which only {owners:?} may use"
                );
            }
        }
        if krate == "meshfed-crds" {
            let ws: Vec<&String> = deps
                .iter()
                .filter(|d| d.starts_with("meshfed-") && *d != "meshfed-core")
                .collect();
            assert!(
                ws.is_empty(),
                "meshfed-crds may depend only on meshfed-core, not {ws:?}"
            );
        }
    }
}

/// The workspace's own edges: which meshfed crates each crate may depend on. Components sit on
/// the libraries; `meshfed-app` puts components together; the binary (`meshfed-cli`) parses
/// arguments and renders. An edge not listed here fails the test, so a new one is a decision
/// written down here, not an accident.
///
/// The binary reaches the components only through `meshfed-app`'s handles; it keeps `trust`
/// for `trust show` (rendering a certificate's inspection), `k8s` for `inject` and `redirect`,
/// `crds` for `validate` and `explain`, `lab` for scenarios.
const EDGES: &[(&str, &[&str])] = &[
    ("meshfed-core", &[]),
    ("meshfed-api", &[]),
    ("meshfed-bench", &[]),
    // The fuzz targets: read-only users of the parsing crates; nothing depends on them but
    // the cargo-fuzz harness in fuzz/ (outside the workspace).
    (
        "meshfed-fuzz-targets",
        &[
            "meshfed-api",
            "meshfed-control",
            "meshfed-core",
            "meshfed-crds",
            "meshfed-gateway",
            "meshfed-peering",
            "meshfed-proxy",
            "meshfed-store",
            "meshfed-trust",
        ],
    ),
    // Tests' helpers: a dev-dependency only, so no crate lists it here.
    ("meshfed-test-support", &[]),
    ("meshfed-crds", &["meshfed-core"]),
    ("meshfed-trust", &["meshfed-core"]),
    ("meshfed-store", &["meshfed-core"]),
    (
        "meshfed-peering",
        &[
            "meshfed-api",
            "meshfed-core",
            "meshfed-store",
            "meshfed-trust",
        ],
    ),
    (
        "meshfed-control",
        &[
            "meshfed-api",
            "meshfed-core",
            "meshfed-crds",
            "meshfed-peering",
            "meshfed-trust",
        ],
    ),
    (
        "meshfed-k8s",
        &[
            "meshfed-control",
            "meshfed-core",
            "meshfed-crds",
            "meshfed-peering",
            "meshfed-trust",
        ],
    ),
    ("meshfed-proxy", &["meshfed-core", "meshfed-trust"]),
    ("meshfed-gateway", &["meshfed-core", "meshfed-trust"]),
    (
        "meshfed-app",
        &[
            "meshfed-api",
            "meshfed-control",
            "meshfed-core",
            "meshfed-crds",
            "meshfed-gateway",
            "meshfed-k8s",
            "meshfed-peering",
            "meshfed-proxy",
            "meshfed-store",
            "meshfed-trust",
        ],
    ),
    (
        "meshfed-lab",
        &[
            "meshfed-control",
            "meshfed-core",
            "meshfed-crds",
            "meshfed-peering",
        ],
    ),
    (
        "meshfed-cli",
        &[
            "meshfed-app",
            "meshfed-core",
            "meshfed-crds",
            "meshfed-k8s",
            "meshfed-lab",
            "meshfed-trust",
        ],
    ),
];

#[test]
fn workspace_crates_depend_only_along_the_layering() {
    let all = deps();
    let allowed: BTreeMap<&str, &[&str]> = EDGES.iter().copied().collect();
    for (krate, deps) in &all {
        let Some(ok) = allowed.get(krate.as_str()) else {
            panic!("{krate} is not in the layering table (cli/tests/layering.rs EDGES)");
        };
        for d in deps.iter().filter(|d| d.starts_with("meshfed-")) {
            assert!(
                ok.contains(&d.as_str()),
                "{krate} depends on {d}: not an edge of the layering (cli/tests/layering.rs EDGES)"
            );
        }
    }
    // Nothing below the application layer depends on it.
    for (krate, deps) in &all {
        if deps.contains("meshfed-app") {
            assert!(krate == "meshfed-cli", "{krate} depends on meshfed-app");
        }
    }
}

/// Rust files under `dir`, recursively.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn library_errors_are_typed_not_strings() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for (krate, _) in EDGES {
        let folder = krate.trim_start_matches("meshfed-");
        if matches!(folder, "cli" | "bench" | "test-support") {
            continue;
        }
        for f in rust_files(&root.join(folder).join("src")) {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let l = line.replace(' ', "");
                if (l.contains("Result<") && l.contains(",String>")) || l.contains("typeErr=String")
                {
                    found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "library errors must be typed enums with a stable reason, not strings:\n{}",
        found.join("\n")
    );
}
