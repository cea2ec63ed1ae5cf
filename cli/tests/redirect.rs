//! `meshfed redirect` installs its rules in a network namespace the test creates (with
//! `unshare -n`, as root): the app's outbound TCP lands on the sidecar's outbound listener,
//! the sidecar's own traffic (its user) is not redirected (it reaches the destination, here
//! a closed port that refuses). `--dry-run` prints the rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::bin;

#[test]
fn dry_run_prints_the_rules_and_bad_flags_are_refused() {
    let o = Command::new(bin())
        .args([
            "redirect",
            "--dry-run",
            "--exclude-inbound-ports",
            "15020,9090",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let rules = String::from_utf8_lossy(&o.stdout);
    assert!(
        rules.contains("-A MESHFED_INBOUND -p tcp --dport 9090 -j RETURN"),
        "{rules}"
    );
    let o = Command::new(bin())
        .args([
            "redirect",
            "--dry-run",
            "--exclude-outbound-cidrs",
            "10.0.0.0/99",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("excludeOutboundCidrs"), "{err}");
}

const SCRIPT: &str = r#"
set -e
ip link set lo up
# Addresses that are not loopback's 127.0.0.1 (which is never redirected): answered locally.
ip route add local 10.250.0.0/24 dev lo
"$MESHFED" redirect --exclude-inbound-ports 15020
python3 - <<'PY'
import os, socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 15001))
srv.listen(8)
got = []
def accept():
    c, _ = srv.accept()
    got.append(c.recv(32))
    c.close()
t = threading.Thread(target=accept, daemon=True)
t.start()
c = socket.create_connection(("10.250.0.9", 80), timeout=3)
c.sendall(b"via-sidecar")
c.close()
t.join(3)
print("app: redirected" if got == [b"via-sidecar"] else "app: not redirected")
pid = os.fork()
if pid == 0:
    os.setgid(1337)
    os.setuid(1337)
    try:
        socket.create_connection(("10.250.0.9", 80), timeout=1)
        print("proxy: redirected")
    except OSError:
        print("proxy: direct")
    os._exit(0)
os.waitpid(pid, 0)
PY
"#;

#[test]
fn the_apps_traffic_goes_through_the_sidecar_and_the_sidecars_does_not() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("skipped: creating a network namespace needs root (CI runs as root)");
        return;
    }
    let o = Command::new("unshare")
        .args(["-n", "sh", "-c", SCRIPT])
        .env("MESHFED", bin())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("app: redirected"), "{out}");
    assert!(out.contains("proxy: direct"), "{out}");
}
