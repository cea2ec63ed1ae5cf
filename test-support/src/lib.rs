//! Helpers shared by meshfed's tests and benchmarks. A dev-dependency only: nothing a user
//! runs links it (`cli/tests/layering.rs` checks).

pub mod hostile;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};

/// Ports tests pick from: below the kernel's ephemeral range (Linux's default is
/// 32768–60999), so no outgoing connection of this or another test can be given one of them
/// between the check and the bind.
pub const TEST_PORTS: Range<u16> = 20_000..32_000;

/// A port on `ip` that is free for both TCP and UDP (a gateway's ingress serves QUIC on its
/// TCP port), picked at random from [`TEST_PORTS`].
///
/// `bind(0)` and then release is a race: the kernel hands the same ephemeral port to the next
/// connection anyone opens, and tests open thousands. A port outside that range is taken only
/// by another test that picks the same one at random and binds it first, which the random
/// pick over 12,000 ports per address makes rare; the check here makes sure it is free now.
///
/// # Panics
/// When no port is free after 1,000 tries (the address is not local, or the range is full).
pub fn free_addr(ip: &str) -> SocketAddr {
    for _ in 0..1_000 {
        let port = fastrand::u16(TEST_PORTS);
        let Ok(tcp) = TcpListener::bind((ip, port)) else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else {
            continue;
        };
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    #[allow(clippy::panic)]
    {
        panic!("no free port on {ip} in {TEST_PORTS:?}")
    }
}

/// The mesh file most end-to-end tests use: mesh `alpha` (trust domain `alpha-mesh.local`,
/// control plane in `alpha-system`) with the services `echo` (namespace `shop`) and `ui`
/// (`web`), one workload each — `echo-1` (label `version: v1`) and `ui-1` — at the given
/// (inbound, app) addresses; `extra` is appended under `spec` (two-space indented YAML).
pub fn shop_mesh(
    echo: (SocketAddr, SocketAddr),
    ui: (SocketAddr, SocketAddr),
    extra: &str,
) -> String {
    let ((echo_in, echo_app), (ui_in, ui_app)) = (echo, ui);
    format!(
        "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: alpha, namespace: alpha-system}}
spec:
  trustDomain: alpha-mesh.local
  services:
  - {{name: echo, namespace: shop, ports: [{{name: http, port: 8080}}]}}
  - {{name: ui, namespace: web, ports: [{{name: http, port: 8080}}]}}
  workloads:
  - {{name: echo-1, namespace: shop, service: echo, inbound: \"{echo_in}\", app: \"{echo_app}\", labels: {{version: v1}}}}
  - {{name: ui-1, namespace: web, service: ui, inbound: \"{ui_in}\", app: \"{ui_app}\"}}
{extra}"
    )
}

/// A [`shop_mesh`] fragment: echo denies `/admin` to everyone.
pub const DENY_ADMIN: &str = "  authorizationPolicies:
  - name: no-admin
    namespace: shop
    selector: {service: echo}
    action: DENY
    rules: [{to: [{operation: {paths: [/admin]}}]}]
";

/// A new, empty folder of one test's own under the system temporary folder, removed when the
/// test ends (pass or fail). With `MESHFED_KEEP_TEST_DIRS` set it is kept, and its path
/// printed, for a look at the files and logs a test left.
///
/// (std only, no `tempfile`: this crate is a dev-dependency of the benchmarks, and a
/// dependency it adds can change the features — and so the symbol names — of crates the
/// measured binary shares, which would make the recorded `cli/sidecar.order` miss.)
#[derive(Debug)]
pub struct Scratch(PathBuf);

/// A [`Scratch`] folder named after `name` (`meshfed-<name>-…`).
///
/// # Panics
/// When the temporary folder cannot be written.
pub fn scratch(name: &str) -> Scratch {
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let dir = base.join(format!(
            "meshfed-{name}-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        // create_dir (not _all) fails if it exists: the folder is ours alone.
        match std::fs::create_dir(&dir) {
            Ok(()) => return Scratch(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("creating {}: {e}", dir.display()),
        }
    }
    panic!(
        "no free name for a temporary folder under {}",
        base.display()
    )
}

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("MESHFED_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_outside_the_ephemeral_range_and_bindable() {
        for _ in 0..50 {
            let a = free_addr("127.0.0.1");
            assert!(TEST_PORTS.contains(&a.port()), "{a}");
            let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("{a}: {e}"));
            drop(l);
        }
    }

    #[test]
    fn a_scratch_folder_is_new_empty_and_gone_after_the_test() {
        let (a, b) = (scratch("x"), scratch("x"));
        assert_ne!(a.to_path_buf(), b.to_path_buf());
        assert!(
            a.read_dir()
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
        );
        std::fs::write(a.join("f"), b"1").unwrap_or_else(|e| panic!("{e}"));
        let path = a.to_path_buf();
        drop(a);
        assert!(!path.exists());
    }
}
