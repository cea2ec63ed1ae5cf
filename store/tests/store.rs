//! R-DB-1/R-DB-2 (bounded forms): the store survives restarts, drops bad records singly, and
//! quarantines a store it cannot use instead of crash-looping.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use meshfed_core::import::RemoteService;
use meshfed_core::{PeerName, Protocol, ServicePort};
use meshfed_store::{ImportRecord, SCHEMA, Store};

fn record(n: usize) -> ImportRecord {
    ImportRecord {
        epoch: 9,
        version: 3,
        services: (0..n)
            .map(|i| RemoteService {
                exported_name: format!("s{i}.shop.svc.alpha-exports.local")
                    .parse()
                    .unwrap(),
                key: format!("shop/s{i}").parse().unwrap(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Http,
                }],
                service_accounts: vec!["spiffe://beta.local/ns/shop/sa/s".parse().unwrap()],
            })
            .collect(),
        saved_at: 1_700_000_000,
    }
}

fn peer(s: &str) -> PeerName {
    s.parse().unwrap()
}

#[test]
fn imports_survive_a_restart() {
    let path = meshfed_test_support::scratch("store").join("db");
    {
        let (store, rebuilt) = Store::open(&path).unwrap();
        assert!(rebuilt.is_none());
        // The store's folder is the owner's alone, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        store.save_imports(&peer("beta-mesh"), &record(3)).unwrap();
        store.save_imports(&peer("gamma-mesh"), &record(1)).unwrap();
        store.remove_peer(&peer("gamma-mesh")).unwrap();
    }
    let (store, rebuilt) = Store::open(&path).unwrap();
    assert!(rebuilt.is_none(), "{rebuilt:?}");
    let (loaded, dropped) = store.load_imports();
    assert!(dropped.is_empty());
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[&peer("beta-mesh")], record(3));
}

#[test]
fn bad_records_are_dropped_singly() {
    let path = meshfed_test_support::scratch("store").join("db");
    let (store, _) = Store::open(&path).unwrap();
    store.save_imports(&peer("beta-mesh"), &record(2)).unwrap();
    store.put_raw(b"gamma-mesh", b"{not json").unwrap();
    store.put_raw(b"Bad Key", b"{}").unwrap();
    let newer = format!("{{\"schema\":{},\"body\":{{}}}}", SCHEMA + 1);
    store.put_raw(b"delta-mesh", newer.as_bytes()).unwrap();
    store
        .put_raw(
            b"eps-mesh",
            b"{\"schema\":1,\"body\":{\"epoch\":1,\"version\":1,\"services\":[{\"exportedName\":\"NOT VALID\"}],\"savedAt\":0}}",
        )
        .unwrap();
    let (loaded, dropped) = store.load_imports();
    assert_eq!(
        loaded.keys().map(PeerName::as_str).collect::<Vec<_>>(),
        vec!["beta-mesh"]
    );
    let mut reasons: Vec<&str> = dropped.iter().map(|d| d.reason).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        vec!["BadKey", "SchemaTooNew", "Undecodable", "Undecodable"]
    );
}

#[test]
fn a_corrupt_store_is_quarantined_and_rebuilt() {
    let dir = meshfed_test_support::scratch("store");
    let path = dir.join("db");
    {
        let (store, _) = Store::open(&path).unwrap();
        store.save_imports(&peer("beta-mesh"), &record(2)).unwrap();
        store.flush().unwrap();
    }
    // Overwrite every file of the database with garbage.
    for e in std::fs::read_dir(&path).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::write(e.path(), vec![0xA5u8; 4096]).unwrap();
        }
    }
    let (store, rebuilt) = Store::open(&path).expect("a corrupt store never prevents start-up");
    let rebuilt = rebuilt.expect("the corrupt store was moved aside");
    assert_eq!(rebuilt.reason, "StoreUnreadable");
    assert!(
        rebuilt.moved_to.exists(),
        "the old files are kept for inspection"
    );
    assert!(store.load_imports().0.is_empty());
    store.save_imports(&peer("beta-mesh"), &record(1)).unwrap();
}

#[test]
fn an_interrupted_open_or_newer_schema_is_quarantined() {
    let dir = meshfed_test_support::scratch("store");
    let path = dir.join("db");
    drop(Store::open(&path).unwrap());
    // A previous process died while opening: the marker is still there.
    let mut mark = path.as_os_str().to_owned();
    mark.push(".opening");
    std::fs::write(&mark, b"").unwrap();
    let (store, rebuilt) = Store::open(&path).unwrap();
    assert_eq!(rebuilt.unwrap().reason, "InterruptedOpen");
    assert!(
        !PathBuf::from(&mark).exists(),
        "the marker is removed after a good open"
    );
    drop(store);
    // A store written by a newer build.
    {
        let db = sled::open(&path).unwrap();
        db.insert(b"schema", &(SCHEMA + 1).to_le_bytes()).unwrap();
        db.flush().unwrap();
    }
    let (_, rebuilt) = Store::open(&path).unwrap();
    assert_eq!(rebuilt.unwrap().reason, "SchemaTooNew");
    // Quarantined directories sit beside the store, never replacing it.
    let moved = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".quarantine-"))
        .count();
    assert_eq!(moved, 2);
}

/// The child of `sigkill_during_writes_never_prevents_start`: writes forever, and says so in
/// `<path>.writing` after its first write. Ignored, so a normal run lists it as ignored instead
/// of counting a test that did nothing as passed; the parent runs it with `--ignored`.
#[test]
#[ignore = "run by sigkill_during_writes_never_prevents_start as its child process"]
fn child_writer() {
    let path = std::env::var("MESHFED_STORE_CHILD").expect("run only as the child writer");
    let (store, _) = Store::open(std::path::Path::new(&path)).unwrap();
    let marker = format!("{path}.writing");
    for i in 0.. {
        store
            .save_imports(&peer("beta-mesh"), &record(1 + i % 50))
            .unwrap();
        if i == 0 {
            std::fs::write(&marker, b"").unwrap();
        }
    }
}

#[test]
fn sigkill_during_writes_never_prevents_start() {
    let path = meshfed_test_support::scratch("store").join("db");
    let marker = std::path::PathBuf::from(format!("{}.writing", path.display()));
    let mut loaded_some = 0;
    for round in 0..10u64 {
        let _ = std::fs::remove_file(&marker);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_writer", "--nocapture"])
            .env("MESHFED_STORE_CHILD", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The child is writing before it is killed (not still starting, not already gone).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !marker.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: the child writer exited before writing"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the child writer never wrote"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(30 + round * 17 % 90));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: killed mid-write"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (store, _rebuilt) = Store::open(&path).expect("start-up never fails after a kill");
        let (loaded, _dropped) = store.load_imports();
        if let Some(rec) = loaded.get(&peer("beta-mesh")) {
            assert_eq!(rec.epoch, 9, "a loaded record is a whole record");
            loaded_some += 1;
        }
    }
    assert!(loaded_some > 0, "no round kept any of the child's writes");
}

#[test]
fn a_locked_store_is_waited_for_never_quarantined() {
    let dir = meshfed_test_support::scratch("store");
    let path = dir.join("db");
    let (held, _) = Store::open(&path).unwrap();
    held.save_imports(&peer("beta-mesh"), &record(2)).unwrap();
    // Released shortly: the second open waits and finds the data intact.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let (store, rebuilt) = Store::open(&path).unwrap();
    releaser.join().unwrap();
    assert!(rebuilt.is_none(), "{rebuilt:?}");
    assert_eq!(store.load_imports().0.len(), 1);
    // Held for good: the open fails as locked, and nothing is moved aside.
    let err = Store::open(&path).unwrap_err();
    assert_eq!(err.reason(), "StoreLocked");
    let moved = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("quarantine"))
        .count();
    assert_eq!(moved, 0);
    drop(store);
}
