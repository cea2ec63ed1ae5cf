//! A real Kubernetes API server on loopback for the tests' real-API tier: upstream v1.20.2
//! built by `scripts/kube-apiserver.sh` (cached outside the repository), with Debian's etcd,
//! each test's own — data on the test's scratch folder, ports from the test range, RBAC on,
//! an admin token and a ServiceAccount signing key of its own — stopped when dropped. Without
//! the binaries a test is skipped, saying so, unless `MESHFED_REQUIRE_REAL_KUBE` is set (CI
//! sets it: there a missing server fails the test).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses some

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use meshfed_test_support::{Scratch, free_addr, scratch};

/// The admin's static token (group `system:masters`).
const ADMIN_TOKEN: &str = "meshfed-test-admin-token";

/// Where `scripts/kube-apiserver.sh` caches the binaries.
fn cache() -> PathBuf {
    std::env::var_os("MESHFED_KUBE_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/meshfed/kube-1.20.2")
        },
        PathBuf::from,
    )
}

/// `discovery.k8s.io/v1` EndpointSlices on a 1.20 server (see the `--runtime-config` flag).
const ENDPOINT_SLICE_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: endpointslices.discovery.k8s.io
  annotations: {api-approved.kubernetes.io: \"https://github.com/kubernetes/enhancements/pull/752\"}
spec:
  group: discovery.k8s.io
  scope: Namespaced
  names: {plural: endpointslices, singular: endpointslice, kind: EndpointSlice, listKind: EndpointSliceList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

pub struct RealApi {
    dir: Scratch,
    children: Vec<Child>,
    /// The API server's program and arguments (it is `children[1]`), for a restart.
    apiserver: (PathBuf, Vec<String>),
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA the server's certificate comes from (PEM).
    ca_pem: String,
    /// The admin's kubeconfig.
    pub admin: PathBuf,
}

impl Drop for RealApi {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
}

impl RealApi {
    /// Starts etcd and the API server; `None` when the binaries are not built (and not
    /// required).
    pub fn start() -> Option<Self> {
        let bin = cache();
        if !bin.join("kube-apiserver").exists() || !bin.join("etcd").exists() {
            assert!(
                std::env::var_os("MESHFED_REQUIRE_REAL_KUBE").is_none(),
                "MESHFED_REQUIRE_REAL_KUBE is set but {} holds no kube-apiserver and etcd: run scripts/kube-apiserver.sh build",
                bin.display()
            );
            eprintln!(
                "skipped: no real API server in {} (scripts/kube-apiserver.sh build makes one)",
                bin.display()
            );
            return None;
        }
        let dir = scratch("real-kube");
        let (etcd_client, etcd_peer, api) = (
            free_addr("127.0.0.1"),
            free_addr("127.0.0.1"),
            free_addr("127.0.0.1"),
        );
        let etcd = spawn(
            &dir,
            "etcd",
            &bin.join("etcd"),
            &[
                "--name=test".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://{etcd_client}"),
                format!("--advertise-client-urls=http://{etcd_client}"),
                format!("--listen-peer-urls=http://{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://{etcd_peer}"),
                format!("--initial-cluster=test=http://{etcd_peer}"),
            ],
        );
        let key = dir.join("sa.key");
        let keygen = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .output()
            .unwrap();
        assert!(keygen.status.success(), "{keygen:?}");
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();
        let certs = dir.join("certs");
        let apiserver_args: Vec<String> = vec![
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", api.port()),
            "--insecure-port=0".into(),
            format!("--etcd-servers=http://{etcd_client}"),
            format!("--cert-dir={}", certs.display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", key.display()),
            format!("--service-account-signing-key-file={}", key.display()),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            // 1.20 serves EndpointSlices as v1beta1 only; meshfed reads v1 (GA in 1.21).
            // The tier turns the built-in version off and serves v1 from a stand-in CRD
            // (ENDPOINT_SLICE_CRD): same group, resource and shape, no validation and
            // no EndpointSlice controller — tests write their slices themselves.
            "--runtime-config=discovery.k8s.io/v1beta1=false".into(),
        ];
        let apiserver = spawn(
            &dir,
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &apiserver_args,
        );
        let mut me = Self {
            dir,
            children: vec![etcd, apiserver],
            apiserver: (bin.join("kube-apiserver"), apiserver_args),
            url: format!("https://{api}"),
            ca_pem: String::new(),
            admin: PathBuf::new(),
        };
        // The self-signed certificate file holds the leaf, then the CA clients verify with.
        let crt = certs.join("apiserver.crt");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !crt.exists() {
            assert!(
                Instant::now() < deadline,
                "no {} in 60 s; logs in {}",
                crt.display(),
                me.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        let pem = std::fs::read_to_string(&crt).unwrap();
        let blocks: Vec<&str> = pem
            .split_inclusive("-----END CERTIFICATE-----")
            .filter(|b| b.contains("BEGIN CERTIFICATE"))
            .collect();
        me.ca_pem = blocks.last().unwrap().trim().to_owned() + "\n";
        me.admin = me.kubeconfig("admin", ADMIN_TOKEN);
        loop {
            let o = me.kubectl_raw(&me.admin, &["get", "--raw", "/readyz"], None);
            if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the API server was not ready in 60 s: {o:?}; logs in {}",
                me.dir.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        me.kubectl_in(&["apply", "-f", "-"], Some(ENDPOINT_SLICE_CRD));
        me.kubectl(&[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/endpointslices.discovery.k8s.io",
        ]);
        Some(me)
    }

    /// Stops the API server (etcd keeps its data): clients see the outage.
    pub fn stop_apiserver(&mut self) {
        let c = &mut self.children[1];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts the API server again on the same port and data; returns once it is ready.
    pub fn start_apiserver(&mut self) {
        let (program, args) = &self.apiserver;
        self.children[1] = spawn(&self.dir, "kube-apiserver-again", program, args);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = self.kubectl_raw(&self.admin, &["get", "--raw", "/readyz"], None);
            if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the API server was not ready again in 60 s; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Where the servers' logs and data are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for `user` presenting `token`.
    pub fn kubeconfig(&self, user: &str, token: &str) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let path = self.dir.join(format!("{user}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: real
  cluster: {{server: \"{}\", certificate-authority-data: {ca}}}
users:
- name: {user}
  user: {{token: \"{token}\"}}
contexts:
- name: {user}
  context: {{cluster: real, user: {user}}}
current-context: {user}
",
                self.url
            ),
        )
        .unwrap();
        path
    }

    fn kubectl_raw(
        &self,
        config: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::process::Output {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(config)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `kubectl args` as the admin; its output. Panics when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_in(args, None)
    }

    /// [`RealApi::kubectl`] with `stdin` piped in (`apply -f -`).
    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.kubectl_raw(&self.admin, args, stdin);
        assert!(
            o.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A client as `kubeconfig` says (the real kube client, rustls, the server's CA).
    pub async fn client(&self, kubeconfig: &Path) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// A token for ServiceAccount `ns/sa` (TokenRequest), for `audience` (the API server's
    /// when `None`), bound to pod `pod` when given.
    pub fn token(&self, ns: &str, sa: &str, audience: Option<&str>, pod: Option<&str>) -> String {
        let mut args = vec!["create", "token", sa, "-n", ns, "--duration", "10m"];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        if let Some(p) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", p]);
        }
        self.kubectl(&args).trim().to_owned()
    }
}
