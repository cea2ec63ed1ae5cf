//! Helpers shared by the CLI's process tests: the binary, fresh temporary folders, free
//! loopback addresses, commands that must succeed, and child processes that are killed when
//! the test ends, pass or fail.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses some

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshfed")
}

/// A new, empty folder of the test's own, removed when it ends (see
/// [`meshfed_test_support::Scratch`]).
pub fn tempdir(name: &str) -> meshfed_test_support::Scratch {
    meshfed_test_support::scratch(name)
}

/// An address on `ip` that is free now, outside the ephemeral port range.
pub fn free(ip: &str) -> SocketAddr {
    meshfed_test_support::free_addr(ip)
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
        self.spawn_env(dir, name, args, &[]);
    }

    /// [`Procs::spawn`] with environment variables set.
    pub fn spawn_env(&mut self, dir: &Path, name: &str, args: &[&str], env: &[(&str, &Path)]) {
        self.spawn_program(dir, name, bin(), args, env);
    }

    /// Starts `program` (which may exec `meshfed` in the end, as `unshare` does) as `name`;
    /// its log is appended to, so a restart's follows the earlier run's.
    pub fn spawn_program(
        &mut self,
        dir: &Path,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
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

    /// The process id of `name`.
    pub fn pid(&self, name: &str) -> u32 {
        self.0.iter().find(|(n, _)| n == name).unwrap().1.id()
    }

    /// Whether `name` still runs.
    pub fn alive(&mut self, name: &str) -> bool {
        let (_, c) = self.0.iter_mut().find(|(n, _)| n == name).unwrap();
        matches!(c.try_wait(), Ok(None))
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

/// `GET path` with `Host: host` over a new connection; the raw response, if any.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Waits up to 30 s for `f` to hold, describing the last state on failure.
pub fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `GET /status` from an admin endpoint, as JSON (`null` if it does not answer).
/// A control plane's `/status`, typed; `None` until it answers with one.
pub fn control_status(admin: SocketAddr) -> Option<meshfed_app::status::AdminStatus> {
    let raw = get(admin, "admin", "/status")?;
    let body = raw.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body).ok()
}

/// A gateway's `/status` (JSON per role).
pub fn status(admin: SocketAddr) -> serde_json::Value {
    let raw = get(admin, "admin", "/status").unwrap_or_default();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("null");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// Gives the CAs in `dir/a` and `dir/b` each other's bundles (a peering token does the same
/// over the wire).
pub fn exchange_bundles(dir: &Path, a: (&str, &str), b: (&str, &str)) {
    for ((from, td), (to, _)) in [(a, b), (b, a)] {
        let o = Command::new(bin())
            .args(["trust", "bundle", "export", "--dir", from])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success());
        std::fs::write(dir.join(format!("{from}.json")), o.stdout).unwrap();
        run(
            dir,
            &[
                "trust",
                "bundle",
                "import",
                "--dir",
                to,
                "--trust-domain",
                td,
                &format!("{from}.json"),
            ],
        );
    }
}

/// Writes `<dir>/<name>` : a kubeconfig for the (plain HTTP, no credentials) API server at
/// `addr`, and returns its path.
pub fn kubeconfig(dir: &Path, name: &str, addr: SocketAddr) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster: {{server: \"http://{addr}\"}}\n\
             users:\n- name: tester\n  user: {{}}\ncontexts:\n- name: mock\n  context: {{cluster: mock, user: tester}}\n\
             current-context: mock\n"
        ),
    )
    .unwrap();
    path
}

/// The documents of `deploy/rbac.yaml`, as JSON (for `ApiServer::unauthorized`).
pub fn rbac() -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    meshfed_crds::yaml::load(&text)
        .documents
        .iter()
        .filter_map(|d| d.root.as_ref().map(|r| r.to_json()))
        .collect()
}

/// Writes `alpha.yaml` and `beta.yaml` into `dir`: alpha's ui (`web/ui-1`) imports beta's
/// `shop/echo` (`echo-1`), exported to alpha, through beta's ingress at `ingress` (alpha's
/// egress is at 127.0.9.11) — the two meshes of the gateway and DNS process tests.
#[allow(dead_code)] // not every test file uses it
pub fn write_gateway_meshes(
    dir: &Path,
    ui_in: SocketAddr,
    ui_app: SocketAddr,
    ingress: SocketAddr,
    echo_in: SocketAddr,
    echo_app: SocketAddr,
) {
    let alpha = format!(
        "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: alpha, namespace: alpha-system}}
spec:
  trustDomain: alpha-mesh.local
  services: [{{name: ui, namespace: web, ports: [{{name: http, port: 8080}}]}}]
  workloads:
  - {{name: ui-1, namespace: web, service: ui, serviceAccount: ui, inbound: \"{ui_in}\", app: \"{ui_app}\"}}
---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: beta-mesh, namespace: alpha-system}}
spec:
  remote: {{addresses: [{}], servicePort: {}}}
  security:
    trustDomain: beta-mesh.local
    clientID: beta-mesh.local/ns/beta-system/sa/egress-alpha-mesh-service-account
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: beta-mesh, namespace: alpha-system}}
spec:
  importRules:
  - {{type: NameSelector, nameSelector: {{namespace: shop, name: echo}}}}
",
        ingress.ip(),
        ingress.port()
    );
    let beta = format!(
        "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: beta, namespace: beta-system}}
spec:
  trustDomain: beta-mesh.local
  services: [{{name: echo, namespace: shop, ports: [{{name: http, port: 8080}}]}}]
  workloads:
  - {{name: echo-1, namespace: shop, service: echo, inbound: \"{echo_in}\", app: \"{echo_app}\"}}
---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: alpha-mesh, namespace: beta-system}}
spec:
  remote: {{addresses: [127.0.9.11]}}
  security:
    trustDomain: alpha-mesh.local
    clientID: alpha-mesh.local/ns/alpha-system/sa/egress-beta-mesh-service-account
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: alpha-mesh, namespace: beta-system}}
spec:
  exportRules:
  - {{type: NameSelector, nameSelector: {{namespace: shop, name: echo}}}}
"
    );
    std::fs::write(dir.join("alpha.yaml"), alpha).unwrap();
    std::fs::write(dir.join("beta.yaml"), beta).unwrap();
}

/// Starts `meshfed control --kube --peering` as process `name` (log `<name>.log`): mesh
/// `mesh` in namespace `ns`, CA in `<mesh>-ca`, KUBECONFIG `kubeconfig`, heartbeats every
/// second; `pod` sets `POD_NAME` (the replica's name). Its admin address.
pub fn kube_control(
    procs: &mut Procs,
    dir: &Path,
    name: &str,
    (mesh, ns): (&str, &str),
    kubeconfig: &Path,
    peering: SocketAddr,
    pod: Option<&str>,
) -> SocketAddr {
    let (listen, admin) = (free("127.0.0.1").to_string(), free("127.0.0.1"));
    let (admin_s, peering) = (admin.to_string(), peering.to_string());
    let (ca, boot) = (format!("{mesh}-ca"), format!("{name}-boot.json"));
    let mut env = vec![("KUBECONFIG", kubeconfig)];
    if let Some(p) = pod {
        env.push(("POD_NAME", Path::new(p)));
    }
    procs.spawn_env(
        dir,
        name,
        &[
            "control",
            "--kube",
            "--mesh-name",
            mesh,
            "--namespace",
            ns,
            "--dir",
            &ca,
            "--listen",
            &listen,
            "--admin",
            &admin_s,
            "--peering",
            &peering,
            "--bootstrap-out",
            &boot,
            "--heartbeat",
            "1s",
            "--liveness",
            "3s",
        ],
        &env,
    );
    admin
}
