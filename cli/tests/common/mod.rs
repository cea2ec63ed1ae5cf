//! Helpers shared by the CLI's process tests: the binary, fresh temporary folders, free
//! loopback addresses, commands that must succeed, and child processes that are killed when
//! the test ends, pass or fail.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses some

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshfed")
}

/// A new, empty folder under the system temporary folder.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshfed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An address on `ip` that was free a moment ago.
pub fn free(ip: &str) -> SocketAddr {
    TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs `meshfed args` in `dir`; it must succeed.
pub fn run(dir: &Path, args: &[&str]) {
    let o = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A mesh CA for `trust_domain` in `dir/ca_dir`.
pub fn trust_init(dir: &Path, ca_dir: &str, trust_domain: &str) {
    run(
        dir,
        &[
            "trust",
            "init",
            "--dir",
            ca_dir,
            "--trust-domain",
            trust_domain,
        ],
    );
}

/// Named `meshfed` processes, each logging to `<dir>/<name>.log`, killed on drop.
#[derive(Default)]
pub struct Procs(Vec<(String, Child)>);

impl Procs {
    pub fn spawn(&mut self, dir: &Path, name: &str, args: &[&str]) {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(bin())
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.0.push((name.to_owned(), child));
    }

    /// Sends SIGTERM to the process started as `name` and waits up to `timeout` for it to
    /// exit; its exit status, or `None` if it is still running (it is then killed on drop).
    pub fn terminate(
        &mut self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let i = self.0.iter().position(|(n, _)| n == name).unwrap();
        let pid = self.0[i].1.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0[i].1.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills the process started as `name` and waits for it.
    pub fn kill(&mut self, name: &str) {
        let i = self.0.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut c) = self.0.remove(i);
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
