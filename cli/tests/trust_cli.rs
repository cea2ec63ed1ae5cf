//! `meshfed trust …` and `meshfed peering token …` as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn meshfed_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshfed"))
        .args(args)
        .current_dir(dir)
        .env_remove("MESHFED_TRUST_DIR")
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `meshfed trust init` in `d/dir`, which must succeed.
fn init_ca(d: &Path, dir: &str, trust_domain: &str) {
    let o = meshfed_in(
        d,
        &[
            "trust",
            "init",
            "--dir",
            dir,
            "--trust-domain",
            trust_domain,
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
}

#[test]
fn init_issue_show_rotate() {
    let d = meshfed_test_support::scratch("trust-cli");
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "init",
            "--dir",
            "ca",
            "--trust-domain",
            "alpha.local",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let mode = std::fs::metadata(d.join("ca/root-1.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let again = meshfed_in(
        &d,
        &[
            "trust",
            "init",
            "--dir",
            "ca",
            "--trust-domain",
            "alpha.local",
        ],
    );
    assert_eq!(again.status.code(), Some(2), "init must not overwrite a CA");
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "issue",
            "--dir",
            "ca",
            "--id",
            "spiffe://alpha.local/ns/shop/sa/orders",
            "--ttl",
            "2h",
            "--out",
            "orders",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        std::fs::metadata(d.join("orders-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let o = meshfed_in(&d, &["trust", "show", "orders.pem"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("SPIFFE ID  spiffe://alpha.local/ns/shop/sa/orders"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("no SPIFFE rule broken"));
    // An ID of another trust domain is refused.
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "issue",
            "--dir",
            "ca",
            "--id",
            "spiffe://beta.local/ns/x/sa/y",
            "--out",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        out(&o).contains("not in this CA's trust domain"),
        "{}",
        out(&o)
    );
    // Rotation: two roots, then one.
    assert!(
        meshfed_in(&d, &["trust", "rotate", "--dir", "ca"])
            .status
            .success()
    );
    let b = meshfed_in(&d, &["trust", "bundle", "export", "--dir", "ca"]);
    let doc: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(doc["keys"].as_array().unwrap().len(), 2);
    assert_eq!(doc["spiffe_sequence"], 2);
    assert!(
        meshfed_in(&d, &["trust", "rotate", "--dir", "ca", "--retire"])
            .status
            .success()
    );
    let b = meshfed_in(&d, &["trust", "bundle", "export", "--dir", "ca"]);
    let doc: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(doc["keys"].as_array().unwrap().len(), 1);
    assert_eq!(doc["spiffe_sequence"], 3);
    std::fs::write(d.join("bundle.json"), &b.stdout).unwrap();
    let o = meshfed_in(&d, &["trust", "show", "bundle.json"]);
    assert!(
        out(&o).contains("SPIFFE bundle for alpha.local: 1 root(s), sequence 3"),
        "{}",
        out(&o)
    );
}

#[test]
fn issue_from_a_csr_keeps_the_key_with_the_workload() {
    let d = meshfed_test_support::scratch("trust-cli");
    init_ca(&d, "ca", "alpha.local");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://alpha.local/ns/shop/sa/orders".try_into().unwrap(),
    )];
    std::fs::write(
        d.join("req.pem"),
        p.serialize_request(&key).unwrap().pem().unwrap(),
    )
    .unwrap();
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "issue",
            "--dir",
            "ca",
            "--id",
            "spiffe://alpha.local/ns/shop/sa/orders",
            "--csr",
            "req.pem",
            "--out",
            "w",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(!d.join("w-key.pem").exists());
    // A CSR for another identity is refused.
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "issue",
            "--dir",
            "ca",
            "--id",
            "spiffe://alpha.local/ns/shop/sa/admin",
            "--csr",
            "req.pem",
            "--out",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(out(&o).contains("exactly one URI SAN"), "{}", out(&o));
}

#[test]
fn show_lists_every_broken_rule() {
    let d = meshfed_test_support::scratch("trust-cli");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![
        rcgen::SanType::URI("spiffe://alpha.local/ns/a/sa/b".try_into().unwrap()),
        rcgen::SanType::URI("https://example.invalid/".try_into().unwrap()),
    ];
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = time_ago(7200);
    p.not_after = time_ago(3600);
    std::fs::write(d.join("bad.pem"), p.self_signed(&key).unwrap().pem()).unwrap();
    let o = meshfed_in(&d, &["trust", "show", "bad.pem"]);
    assert_eq!(o.status.code(), Some(1));
    let text = out(&o);
    for reason in [
        "MultipleUriSans",
        "NoDigitalSignature",
        "LeafCanSign",
        "EkuMissingPurpose",
        "Expired",
    ] {
        assert!(
            text.contains(&format!("[{reason}]")),
            "missing {reason}:\n{text}"
        );
    }
    std::fs::write(
        d.join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert_eq!(
        meshfed_in(&d, &["trust", "show", "junk.pem"]).status.code(),
        Some(2)
    );
}

fn time_ago(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::seconds(secs)
}

#[test]
fn peering_tokens_move_bundles_without_copying_roots() {
    let d = meshfed_test_support::scratch("trust-cli");
    init_ca(&d, "a", "alpha.local");
    init_ca(&d, "b", "beta.local");
    let o = meshfed_in(
        &d,
        &[
            "peering",
            "token",
            "create",
            "--dir",
            "a",
            "--peer-name",
            "alpha-mesh",
            "--address",
            "127.0.1.1",
            "--server-id",
            "spiffe://alpha.local/ns/alpha-system/sa/meshfed-control",
            "--client-id",
            "alpha.local/ns/alpha-system/sa/egress-beta-mesh",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let tok = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let o = meshfed_in(
        &d,
        &[
            "peering",
            "token",
            "accept",
            "--no-redeem",
            "--dir",
            "b",
            "--namespace",
            "beta-system",
            &tok,
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let yaml = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(
        yaml.contains("kind: ServiceMeshPeer")
            && yaml.contains("clientID: alpha.local/ns/alpha-system/sa/egress-beta-mesh"),
        "{yaml}"
    );
    assert!(d.join("b/bundles/alpha.local.json").exists());
    // The printed ServiceMeshPeer validates.
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshfed"))
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), yaml.as_bytes()).unwrap();
    drop(child.stdin.take());
    let v = child.wait_with_output().unwrap();
    assert!(v.status.success(), "{}", out(&v));
    // Reuse and tampering are refused, and change nothing on B.
    let before = std::fs::read(d.join("b/accepted-tokens.json")).unwrap();
    let o = meshfed_in(
        &d,
        &[
            "peering",
            "token",
            "accept",
            "--no-redeem",
            "--dir",
            "b",
            &tok,
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(out(&o).contains("already accepted"), "{}", out(&o));
    let mut bad = tok.clone().into_bytes();
    let i = bad.len() - 5;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let o = meshfed_in(
        &d,
        &[
            "peering",
            "token",
            "accept",
            "--no-redeem",
            "--dir",
            "b",
            std::str::from_utf8(&bad).unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        std::fs::read(d.join("b/accepted-tokens.json")).unwrap(),
        before
    );
    // B cannot accept its own token.
    let o = meshfed_in(
        &d,
        &[
            "peering",
            "token",
            "create",
            "--dir",
            "b",
            "--peer-name",
            "beta-mesh",
            "--address",
            "127.0.2.1",
            "--server-id",
            "spiffe://beta.local/ns/beta-system/sa/meshfed-control",
            "--client-id",
            "beta.local/ns/beta-system/sa/egress-alpha-mesh",
        ],
    );
    let own = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let o = meshfed_in(
        &d,
        &[
            "peering",
            "token",
            "accept",
            "--no-redeem",
            "--dir",
            "b",
            &own,
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(out(&o).contains("own trust domain"), "{}", out(&o));
}

#[test]
fn maistra_root_configmaps_still_work() {
    let d = meshfed_test_support::scratch("trust-cli");
    init_ca(&d, "a", "alpha.local");
    init_ca(&d, "b", "beta.local");
    let root = std::fs::read_to_string(d.join("a/root-1.pem")).unwrap();
    let indented: String = root.lines().map(|l| format!("    {l}\n")).collect();
    let cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: alpha-mesh-ca-root-cert\ndata:\n  root-cert.pem: |\n{indented}"
    );
    std::fs::write(d.join("cm.yaml"), &cm).unwrap();
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "bundle",
            "import",
            "--dir",
            "b",
            "--trust-domain",
            "alpha.local",
            "cm.yaml",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("Added"), "{}", out(&o));
    // The same roots again: unchanged.
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "bundle",
            "import",
            "--dir",
            "b",
            "--trust-domain",
            "alpha.local",
            "a/root-1.pem",
        ],
    );
    assert!(out(&o).contains("Unchanged"), "{}", out(&o));
    // Bad inputs (C10): no root-cert.pem, trailing garbage, a private key, our own domain.
    std::fs::write(
        d.join("nokey.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {ca.crt: abc}\n",
    )
    .unwrap();
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "bundle",
            "import",
            "--dir",
            "b",
            "--trust-domain",
            "alpha.local",
            "nokey.yaml",
        ],
    );
    assert!(out(&o).contains("no data.root-cert.pem"), "{}", out(&o));
    std::fs::write(d.join("trailing.pem"), format!("{root}garbage\n")).unwrap();
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "bundle",
            "import",
            "--dir",
            "b",
            "--trust-domain",
            "alpha.local",
            "trailing.pem",
        ],
    );
    assert!(out(&o).contains("trailing data"), "{}", out(&o));
    let key = std::fs::read_to_string(d.join("a/root-1.key")).unwrap();
    std::fs::write(d.join("withkey.pem"), format!("{root}{key}")).unwrap();
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "bundle",
            "import",
            "--dir",
            "b",
            "--trust-domain",
            "alpha.local",
            "withkey.pem",
        ],
    );
    assert!(out(&o).contains("private key"), "{}", out(&o));
    let o = meshfed_in(
        &d,
        &[
            "trust",
            "bundle",
            "import",
            "--dir",
            "b",
            "--trust-domain",
            "beta.local",
            "a/root-1.pem",
        ],
    );
    assert!(out(&o).contains("own"), "{}", out(&o));
    assert_eq!(std::fs::read_dir(d.join("b/bundles")).unwrap().count(), 1);
}
