//! The `meshfed` binary, run as a user would: exit codes, output shapes, files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn meshfed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshfed"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running meshfed: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ALPHA: &str = "scenarios/examples/alpha.yaml";
const BETA: &str = "scenarios/examples/beta.yaml";

#[test]
fn validate_accepts_the_examples() {
    let o = meshfed(&["validate", ALPHA, BETA]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("2 file(s), 8 object(s): 0 error(s), 0 warning(s)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_reports_file_line_reason_path_and_hint() {
    let dir = meshfed_test_support::scratch("cli");
    let bad = dir.join("bad.yaml");
    let text = std::fs::read_to_string(root().join(ALPHA))
        .unwrap_or_default()
        .replace(
            "clientID: beta-mesh.local/ns/beta-system/sa/egress-alpha-mesh-service-account",
            "clientID: gamma.local/ns/beta-system/sa/egress",
        );
    std::fs::write(&bad, &text).unwrap_or_else(|e| panic!("{e}"));
    let line = text
        .lines()
        .position(|l| l.contains("clientID: gamma.local"))
        .map(|i| i + 1)
        .unwrap_or(0);
    let o = meshfed(&["validate", bad.to_str().unwrap_or_default()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let expected = format!("bad.yaml:{line}:");
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("error[ClientIDTrustDomainMismatch] document 1 (ServiceMeshPeer alpha-system/beta-mesh): spec.security.clientID:"), "{out}");
    assert!(out.contains("hint:"), "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
}

#[test]
fn validate_json_and_strict() {
    let dir = meshfed_test_support::scratch("cli");
    let f = dir.join("warn.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let path = f.to_str().unwrap_or_default();
    let o = meshfed(&["validate", "-o", "json", path]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(v["warnings"], 1);
    assert_eq!(v["diagnostics"][0]["reason"], "UnknownKind");
    assert_eq!(v["diagnostics"][0]["line"], 2);
    let o = meshfed(&["validate", "--strict", path]);
    assert_eq!(o.status.code(), Some(1), "warnings fail under --strict");
}

#[test]
fn validate_reads_stdin_and_rejects_missing_files() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshfed"))
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"apiVersion: meshfed.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: m.local}\n").unwrap_or_default();
    }
    let o = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("<stdin>:3:"), "{}", stdout(&o));
    assert!(stdout(&o).contains("MissingNamespace"), "{}", stdout(&o));
    let o = meshfed(&["validate", "does/not/exist.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does/not/exist.yaml"), "{}", stderr(&o));
}

#[test]
fn explain_table_shows_exports_imports_and_merges() {
    let o = meshfed(&["explain", "--mesh", BETA, "--mesh", ALPHA]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "Mesh beta (trust domain beta-mesh.local",
        "Exports to alpha-mesh (2):",
        "payments.shop.svc.alpha-mesh-exports.local",
        "Imports from alpha-mesh (2):",
        "orders.shop.svc.beta-mesh-exports.local    orders.shop.svc.cluster.local  importRules[0]  importAsLocal",
        "cart.shop.svc.beta-mesh-exports.local      cart.shop.alpha.remote",
        "importAsLocal merges (1):",
        "orders.shop.svc.cluster.local  shop/orders      alpha-mesh (us-east/us-east-1a)",
        "0 conflict(s).",
    ] {
        let squeezed = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            squeezed(&out).contains(&squeezed(needle)),
            "missing {needle:?} in:\n{out}"
        );
    }
}

#[test]
fn explain_json_yaml_and_peer_filter() {
    let o = meshfed(&["explain", "--mesh", ALPHA, "--mesh", BETA, "-o", "json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["mesh"], "alpha");
    assert_eq!(v["peers"][0]["peer"], "beta-mesh");
    let merged = &v["imports"]["services"]["payments.shop.svc.cluster.local"];
    assert_eq!(merged["local"], "shop/payments");
    assert_eq!(merged["groups"][0]["importAsLocal"], true);
    let o = meshfed(&[
        "explain",
        "--mesh",
        ALPHA,
        "--mesh",
        BETA,
        "-o",
        "yaml",
        "--peer",
        "beta-mesh",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("mesh: alpha"), "{}", stdout(&o));
    let o = meshfed(&["explain", "--mesh", ALPHA, "--peer", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has no ServiceMeshPeer \"nope\"; its peers: beta-mesh"),
        "{}",
        stderr(&o)
    );
    let o = meshfed(&[
        "explain", "--mesh", ALPHA, "--mesh", BETA, "--all", "-o", "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.as_array().map(Vec::len), Some(2));
}

#[test]
fn explain_without_the_peer_file_says_so() {
    let o = meshfed(&["explain", "--mesh", ALPHA]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("Imports from beta-mesh: unknown"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_reports_conflicts() {
    let dir = meshfed_test_support::scratch("cli");
    let f = dir.join("alpha.yaml");
    // Rename search so the label rule's alias and the name rule both claim orders.shop.
    let text = std::fs::read_to_string(root().join(ALPHA)).unwrap_or_default().replace(
        "    labels: {federation-export: \"true\"}\n    ports: [{name: http, port: 8080}]\n",
        "    labels: {federation-export: \"true\"}\n    ports: [{name: http, port: 8080}]\n  - name: orders\n    namespace: shop-prod\n    labels: {federation-export: \"true\"}\n",
    );
    std::fs::write(&f, text).unwrap_or_else(|e| panic!("{e}"));
    let o = meshfed(&[
        "explain",
        "--mesh",
        f.to_str().unwrap_or_default(),
        "--mesh",
        BETA,
    ]);
    let out = stdout(&o);
    assert!(out.contains("conflict [DuplicateExportedName] orders.shop.svc.beta-mesh-exports.local: shop-prod/orders-v2 (exportRules[0]) wins over shop-prod/orders (exportRules[1])"), "{out}");
    assert!(out.contains("1 conflict(s)."), "{out}");
}

#[test]
fn crds_prints_the_committed_manifests() {
    let o = meshfed(&["crds"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let mut committed = String::new();
    for f in [
        "servicemeshpeers",
        "exportedservicesets",
        "importedservicesets",
    ] {
        committed.push_str(
            &std::fs::read_to_string(
                root().join(format!("deploy/crds/{f}.federation.maistra.io.yaml")),
            )
            .unwrap_or_default(),
        );
    }
    assert_eq!(out, committed);
}

#[test]
fn closed_stdout_is_not_a_crash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshfed"))
        .args(["crds"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn echo_answers_with_json() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshfed"))
        .args([
            "echo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mesh",
            "alpha",
            "--instance",
            "e-1",
            "--status",
            "503",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /x HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "echo never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("\"instance\":\"e-1\"") && text.contains("\"mesh\":\"alpha\""),
        "{text}"
    );
}
