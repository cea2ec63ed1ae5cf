//! Two `meshfed peering run` processes — the example meshes alpha and beta — peering over real
//! mTLS on loopback, read through `meshfed status` (typed): both directions sync; SIGKILLing
//! alpha turns beta's view Failing with its imports kept and stale; beta SIGKILLed and
//! restarted while alpha is down serves its imports from the store it was writing; alpha back
//! brings beta to Active again. (The same life cycle with graceful stops runs in-process in
//! `app/tests/node.rs`; this tier adds real processes, signals and the admin endpoint.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Procs, bin, free, tempdir, trust_init};
use meshfed_app::status::{ConditionType, ImportSide, NodeStatus};
use meshfed_core::session::PeerState;

/// Mesh CAs for alpha (`a/`) and beta (`b/`).
fn two_cas(dir: &Path) {
    for (d, td) in [("a", "alpha-mesh.local"), ("b", "beta-mesh.local")] {
        trust_init(dir, d, td);
    }
}

/// The example mesh file with the peer's address and discovery port replaced.
fn mesh_file(dir: &Path, example: &str, peer_addr: SocketAddr) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/examples")
        .join(example);
    let text = std::fs::read_to_string(src).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("addresses: [127.0.") {
            out.push_str(&format!(
                "    addresses: [{}]\n    discoveryPort: {}\n",
                peer_addr.ip(),
                peer_addr.port()
            ));
        } else if line.trim_start().starts_with("discoveryPort:") {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = dir.join(example);
    std::fs::write(&path, out).unwrap();
    path
}

/// Starts `meshfed peering run` as `name` (logging to `<dir>/<name>.log`).
fn start(
    procs: &mut Procs,
    dir: &Path,
    name: &str,
    mesh: &Path,
    trust: &str,
    (listen, admin): (SocketAddr, SocketAddr),
    store: &str,
) {
    let (mesh, listen, admin) = (
        mesh.to_str().unwrap(),
        listen.to_string(),
        admin.to_string(),
    );
    procs.spawn(
        dir,
        name,
        &[
            "peering",
            "run",
            "--mesh",
            mesh,
            "--dir",
            trust,
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--store",
            store,
            "--heartbeat",
            "300ms",
            "--liveness",
            "1500ms",
        ],
    );
}

fn status(dir: &Path, admin: SocketAddr) -> Option<NodeStatus> {
    let o = Command::new(bin())
        .args(["status", "--admin", &admin.to_string(), "-o", "json"])
        .current_dir(dir)
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

/// Waits until the first import of the node at `admin` satisfies `f`.
fn wait(dir: &Path, admin: SocketAddr, what: &str, f: impl Fn(&ImportSide) -> bool) -> NodeStatus {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = status(dir, admin) {
            if s.imports.first().is_some_and(&f) {
                return s;
            }
            last = Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; last status {last:#?}");
}

/// Two example meshes' CAs with each other's bundles, and their mesh files pointing at each
/// other's peering addresses.
struct Pair {
    dir: meshfed_test_support::Scratch,
    alpha: PathBuf,
    beta: PathBuf,
    a_listen: SocketAddr,
    b_listen: SocketAddr,
    a_admin: SocketAddr,
    b_admin: SocketAddr,
}

fn pair(name: &str) -> Pair {
    let dir = tempdir(name);
    two_cas(&dir);
    common::exchange_bundles(&dir, ("a", "alpha-mesh.local"), ("b", "beta-mesh.local"));
    let (a_listen, b_listen) = (free("127.0.3.1"), free("127.0.4.1"));
    let (a_admin, b_admin) = (free("127.0.3.1"), free("127.0.4.1"));
    let alpha = mesh_file(&dir, "alpha.yaml", b_listen);
    let beta = mesh_file(&dir, "beta.yaml", a_listen);
    Pair {
        dir,
        alpha,
        beta,
        a_listen,
        b_listen,
        a_admin,
        b_admin,
    }
}

#[test]
fn two_meshes_peer_fail_restart_from_store_and_recover() {
    let Pair {
        dir,
        alpha,
        beta,
        a_listen,
        b_listen,
        a_admin,
        b_admin,
    } = pair("peering-cli-lifecycle");
    let mut procs = Procs::default();
    start(
        &mut procs,
        &dir,
        "alpha",
        &alpha,
        "a",
        (a_listen, a_admin),
        "a-store",
    );
    start(
        &mut procs,
        &dir,
        "beta",
        &beta,
        "b",
        (b_listen, b_admin),
        "b-store",
    );
    let active = |i: &ImportSide| {
        i.status.state == PeerState::Active && i.status.imported_services == 2 && !i.status.stale
    };
    // Both directions sync: beta imports orders+cart from alpha, alpha imports payments+reviews.
    let b = wait(&dir, b_admin, "beta importing from alpha", active);
    // beta's import rules cover everything alpha exports, without conflicts.
    let cond = |s: &NodeStatus, t: ConditionType| {
        s.imports[0]
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
    };
    assert_eq!(
        cond(&b, ConditionType::ImportConflict).map(|c| c.status),
        Some(false),
        "{b:#?}"
    );
    assert_eq!(
        cond(&b, ConditionType::ExportNotImported).map(|c| c.reason),
        Some("AllImported".into()),
        "{b:#?}"
    );
    let a = wait(&dir, a_admin, "alpha importing from beta", active);
    assert_eq!(a.exports["beta-mesh"].exported_services, 2);
    // alpha dies: beta marks it Failing, keeps the imports, flags them stale.
    procs.kill("alpha");
    let s = wait(&dir, b_admin, "beta sees alpha failing", |i| {
        i.status.state == PeerState::Failing
    });
    assert_eq!(s.imports[0].status.imported_services, 2);
    assert!(s.imports[0].status.stale);
    // beta restarts while alpha is down: the imports are served from its store at once.
    procs.kill("beta");
    start(
        &mut procs,
        &dir,
        "beta",
        &beta,
        "b",
        (b_listen, b_admin),
        "b-store",
    );
    let s = wait(&dir, b_admin, "beta restored from its store", |i| {
        i.status.imported_services == 2 && i.status.stale
    });
    let restored = s.imports[0]
        .status
        .conditions
        .iter()
        .any(|c| c.reason == "RestoredFromStore");
    assert!(restored, "{s:#?}");
    // alpha comes back: beta resyncs and is Active with fresh imports.
    start(
        &mut procs,
        &dir,
        "alpha",
        &alpha,
        "a",
        (a_listen, a_admin),
        "a-store",
    );
    wait(&dir, b_admin, "beta active again", active);
}

#[test]
fn a_peering_token_bootstraps_trust_both_ways_without_copying_roots() {
    let dir = tempdir("peering-cli-token");
    two_cas(&dir);
    let (a_listen, b_listen) = (free("127.0.5.1"), free("127.0.6.1"));
    let (a_admin, b_admin) = (free("127.0.5.1"), free("127.0.6.1"));
    let alpha = mesh_file(&dir, "alpha.yaml", b_listen);
    let beta = mesh_file(&dir, "beta.yaml", a_listen);
    // alpha issues a token and runs; it holds no bundle of beta yet.
    let o = Command::new(bin())
        .args([
            "peering",
            "token",
            "create",
            "--dir",
            "a",
            "--peer-name",
            "alpha-mesh",
        ])
        .args([
            "--address",
            &a_listen.ip().to_string(),
            "--discovery-port",
            &a_listen.port().to_string(),
        ])
        .args([
            "--server-id",
            "spiffe://alpha-mesh.local/ns/alpha-system/sa/meshfed-peering",
        ])
        .args([
            "--client-id",
            "alpha-mesh.local/ns/alpha-system/sa/egress-beta-mesh-service-account",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let mut procs = Procs::default();
    start(
        &mut procs,
        &dir,
        "alpha",
        &alpha,
        "a",
        (a_listen, a_admin),
        "a-store",
    );
    // Wait for alpha's admin endpoint.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&dir, a_admin).is_none() {
        assert!(Instant::now() < deadline, "alpha never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.join("a/bundles/beta-mesh.local.json").exists());
    // beta accepts: it redeems at alpha (alpha stores beta's bundle) and stores alpha's.
    let o = Command::new(bin())
        .args([
            "peering",
            "token",
            "accept",
            "--dir",
            "b",
            "--namespace",
            "beta-system",
            "--mesh-name",
            "beta",
            &token,
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        dir.join("a/bundles/beta-mesh.local.json").exists(),
        "alpha received beta's bundle"
    );
    assert!(
        dir.join("b/bundles/alpha-mesh.local.json").exists(),
        "beta stored alpha's bundle"
    );
    // The token is spent.
    let again = Command::new(bin())
        .args([
            "peering",
            "token",
            "accept",
            "--dir",
            "b",
            "--namespace",
            "beta-system",
            &token,
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    // beta runs; both directions come up over mTLS with the exchanged bundles.
    start(
        &mut procs,
        &dir,
        "beta",
        &beta,
        "b",
        (b_listen, b_admin),
        "b-store",
    );
    let active =
        |i: &ImportSide| i.status.state == PeerState::Active && i.status.imported_services == 2;
    wait(&dir, b_admin, "beta importing from alpha", active);
    wait(&dir, a_admin, "alpha importing from beta", active);
}

/// Runs `f` in the mount namespace of process `pid` (`nsenter`): the test's way to reach a
/// file system only that process sees.
fn in_namespace_of(pid: u32, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .output()
        .unwrap()
}

/// The store on a full disk, then on a read-only one (root: a 512 KiB tmpfs in a mount
/// namespace of the node's own): full, beta keeps importing and serving, and a save that
/// fails is a warning with its reason; started on a read-only disk, where it cannot open its
/// store, it says why and runs without one. (A tmpfs cannot turn read-only under a process
/// writing to it, so read-only is tried at start.)
#[test]
fn a_full_or_read_only_disk_under_the_store_costs_only_the_store() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("skipped: a tmpfs in a mount namespace needs root (CI runs as root)");
        return;
    }
    let Pair {
        dir,
        alpha,
        beta,
        a_listen,
        b_listen,
        a_admin,
        b_admin,
    } = pair("peering-cli-disk");
    let mnt = dir.join("disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut procs = Procs::default();
    start(
        &mut procs,
        &dir,
        "alpha",
        &alpha,
        "a",
        (a_listen, a_admin),
        "a-store",
    );
    // beta in a mount namespace of its own, its store on a tmpfs there; `prepare` runs first.
    let start_beta = |procs: &mut Procs, prepare: &str| {
        let script = format!(
            "mount -t tmpfs -o size=512k none {m} && {prepare} exec {bin} peering run --mesh {mesh} --dir b --listen {l} --admin {a} --store {m}/store --heartbeat 300ms --liveness 1500ms",
            m = mnt.display(),
            bin = common::bin(),
            mesh = beta.display(),
            l = b_listen,
            a = b_admin,
        );
        procs.spawn_program(&dir, "beta", "unshare", &["-m", "sh", "-c", &script], &[]);
    };
    start_beta(&mut procs, "");
    let synced = |i: &ImportSide| {
        i.status.state == PeerState::Active && i.status.imported_services == 2 && !i.status.stale
    };
    wait(&dir, b_admin, "beta importing from alpha", synced);
    // alpha restarted: a new epoch, a new snapshot for beta to save.
    let restart_alpha = |procs: &mut Procs| {
        procs.kill("alpha");
        wait(&dir, b_admin, "beta sees alpha failing", |i| {
            i.status.state == PeerState::Failing
        });
        start(
            procs,
            &dir,
            "alpha",
            &alpha,
            "a",
            (a_listen, a_admin),
            "a-store",
        );
        wait(&dir, b_admin, "beta importing from alpha again", synced)
    };
    // The disk fills up.
    let fill = in_namespace_of(
        procs.pid("beta"),
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}/fill", mnt.display()),
            "bs=64k",
        ],
    );
    assert!(
        String::from_utf8_lossy(&fill.stderr).contains("No space left"),
        "{fill:?}"
    );
    for _ in 0..2 {
        restart_alpha(&mut procs);
        assert!(procs.alive("beta"), "beta exited on a full disk");
    }
    // (sled writes into space it holds already, so a save may still succeed; one that fails
    // is a warning with its reason, never a crash.)
    let log = std::fs::read_to_string(dir.join("beta.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("saving imports failed"))
            .all(|l| l.contains("reason=")),
        "{log}"
    );
    // Started on a store it cannot create (read-only from the start): the reason, then
    // peering without a store.
    procs.kill("beta");
    let m = mnt.display();
    start_beta(&mut procs, &format!("mount -o remount,ro {m} &&"));
    wait(&dir, b_admin, "beta importing without a store", synced);
    assert!(procs.alive("beta"));
    let log = std::fs::read_to_string(dir.join("beta.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("cannot be used") && l.contains("without it")),
        "no word of the unusable store:\n{log}"
    );
}
