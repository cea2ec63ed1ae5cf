//! A real control plane (`meshfed control`) and two sidecars that joined it (`meshfed proxy
//! --bootstrap`), with echo workloads, all as processes on loopback: identities come from CSRs
//! the control plane signs, configuration from its stream; a bad mesh file is refused and the
//! previous version stays; a good one reaches the sidecars live; with the control plane killed
//! the sidecars keep serving their last snapshot, and they rejoin a restarted one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Procs, eventually, free, get, tempdir, trust_init};
use meshfed_app::status::ControlStatus;

fn echo(out: SocketAddr, path: &str) -> String {
    get(out, "echo.shop.svc.cluster.local", path).unwrap_or_default()
}

/// The control plane's status (typed), once it answers.
fn status(admin: SocketAddr) -> Result<ControlStatus, String> {
    common::control_status(admin)
        .map(|s| s.control)
        .ok_or_else(|| "no status yet".into())
}

/// Every proxy is connected and has ACKed the served version.
fn all_acked(admin: SocketAddr, n: usize) -> Result<(), String> {
    let st = status(admin)?;
    let ok = st.proxies.len() == n
        && st
            .proxies
            .values()
            .all(|p| p.connected && p.acked == Some(st.version));
    if ok { Ok(()) } else { Err(format!("{st:#?}")) }
}

#[test]
fn sidecars_joined_to_the_control_plane_carry_identity_apply_updates_and_outlive_it() {
    let dir = tempdir("control-cli");
    trust_init(&dir, "ca", "alpha-mesh.local");
    let (cp, cp_admin) = (free("127.0.8.1"), free("127.0.8.1"));
    let (echo_in, echo_app) = (free("127.0.8.2"), free("127.0.8.2"));
    let (ui_in, ui_app, ui_out) = (free("127.0.8.3"), free("127.0.8.3"), free("127.0.8.3"));
    let mesh = meshfed_test_support::shop_mesh((echo_in, echo_app), (ui_in, ui_app), "");
    let routes = "  traffic:
  - service: echo
    namespace: shop
    subsets: [{name: v1, labels: {version: v1}}]
    http:
    - match: [{uri: {prefix: /who}}, {uri: {exact: /admin}}]
      route: [{destination: {host: echo, subset: v1}}]
";
    let deny_admin = format!("{}{routes}", meshfed_test_support::DENY_ADMIN);
    std::fs::write(dir.join("mesh.yaml"), &mesh).unwrap();
    let (cp_s, cp_admin_s) = (cp.to_string(), cp_admin.to_string());
    let control_args = [
        "control",
        "--mesh",
        "mesh.yaml",
        "--dir",
        "ca",
        "--listen",
        &cp_s,
        "--admin",
        &cp_admin_s,
        "--bootstrap-out",
        "boot.json",
    ];
    let mut procs = Procs::default();
    procs.spawn(&dir, "control", &control_args);
    eventually("the control plane writes its bootstrap file", || {
        status(cp_admin).map(|_| ())
    });
    let echo_app_s = echo_app.to_string();
    procs.spawn(
        &dir,
        "echo",
        &[
            "echo",
            "--listen",
            &echo_app_s,
            "--mesh",
            "alpha",
            "--instance",
            "echo-1",
        ],
    );
    // The control plane's own file is a template: it yields no certificate.
    let template = std::process::Command::new(common::bin())
        .current_dir(&dir)
        .args(["proxy", "--bootstrap", "boot.json", "--workload", "echo-1"])
        .args(["--namespace", "shop"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&template.stderr);
    assert!(
        !template.status.success() && said.contains("NotEnrolled"),
        "{said}"
    );
    // Each workload joins with its own credential, in a file only it gets.
    let join = |workload: &str, ns: &str| {
        let out = format!("{ns}-{workload}.json");
        let made = std::process::Command::new(common::bin())
            .current_dir(&dir)
            .args(["join", "create", "--dir", "ca", "--bootstrap", "boot.json"])
            .args(["--namespace", ns, "--workload", workload, "--out", &out])
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(&out))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{out} holds a join credential");
        }
        vec![
            "proxy".to_owned(),
            "--bootstrap".into(),
            out,
            "--workload".into(),
            workload.into(),
            "--namespace".into(),
            ns.into(),
        ]
    };
    let a = join("echo-1", "shop");
    procs.spawn(
        &dir,
        "proxy-echo",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut b = join("ui-1", "web");
    b.extend(["--outbound".into(), ui_out.to_string()]);
    procs.spawn(
        &dir,
        "proxy-ui",
        &b.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Identity end to end, with certificates the control plane signed from CSRs.
    eventually("a request through both joined sidecars", || {
        let r = echo(ui_out, "/who");
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    });
    let r = echo(ui_out, "/who");
    assert!(
        r.contains("\"caller\":\"spiffe://alpha-mesh.local/ns/web/sa/ui\""),
        "{r}"
    );
    eventually("both proxies ACK the served version", || {
        all_acked(cp_admin, 2)
    });
    let st = status(cp_admin).unwrap();
    assert_eq!(st.certificates_issued, 2, "{st:#?}");
    let v1 = st.version;

    // Bad mesh files (an unknown field; an impossible percentage) are refused whole; the
    // previous version stays served and in force.
    for (bad, needle) in [
        ("{service: echo, namespace: shop, bogus: 1}", "bogus"),
        (
            "{service: echo, namespace: shop, fault: {abort: {percentage: {value: 150}, httpStatus: 503}}}",
            "percentage",
        ),
    ] {
        std::fs::write(
            dir.join("mesh.yaml"),
            format!("{mesh}  traffic:\n  - {bad}\n"),
        )
        .unwrap();
        eventually("the control plane refuses the bad file", || {
            let st = status(cp_admin)?;
            match &st.config_error {
                Some(e) if e.contains(needle) => Ok(()),
                _ => Err(format!("{st:#?}")),
            }
        });
    }
    assert_eq!(status(cp_admin).map(|s| s.version), Ok(v1));
    assert!(echo(ui_out, "/who").starts_with("HTTP/1.1 200"));

    // A good change reaches the sidecars live: the DENY policy is enforced.
    std::fs::write(dir.join("mesh.yaml"), format!("{mesh}{deny_admin}")).unwrap();
    eventually("the new policy is applied", || {
        let r = echo(ui_out, "/admin");
        if r.starts_with("HTTP/1.1 403") {
            Ok(())
        } else {
            Err(r)
        }
    });
    eventually("both proxies ACK the new version", || {
        all_acked(cp_admin, 2)
    });
    assert!(status(cp_admin).unwrap().version > v1);
    // ...and so are its routes: the subset finds echo-1 by its label; no route, no request.
    assert!(echo(ui_out, "/who").starts_with("HTTP/1.1 200"));
    let r = echo(ui_out, "/elsewhere");
    assert!(
        r.starts_with("HTTP/1.1 404") && r.contains("NoRouteMatched"),
        "{r}"
    );

    // The control plane dies: the sidecars keep serving with their last snapshot.
    procs.kill("control");
    for _ in 0..20 {
        assert!(echo(ui_out, "/who").starts_with("HTTP/1.1 200"));
        assert!(echo(ui_out, "/admin").starts_with("HTTP/1.1 403"));
        assert!(echo(ui_out, "/elsewhere").starts_with("HTTP/1.1 404"));
        std::thread::sleep(Duration::from_millis(50));
    }

    // A restarted control plane (same CA, same address) is rejoined with the SVIDs the
    // proxies hold, and its next change reaches them.
    std::fs::write(dir.join("mesh.yaml"), &mesh).unwrap();
    procs.spawn(&dir, "control", &control_args);
    eventually("the proxies rejoin the restarted control plane", || {
        let r = echo(ui_out, "/admin");
        if !r.starts_with("HTTP/1.1 200") {
            return Err(r);
        }
        all_acked(cp_admin, 2)
    });
    let st = status(cp_admin).unwrap();
    assert_eq!(
        st.certificates_issued, 0,
        "rejoining needs no new certificate: {st:#?}"
    );
}
