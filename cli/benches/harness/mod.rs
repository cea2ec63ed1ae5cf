//! Pieces shared by the process benchmarks (`peers`, `crossmesh`): processes killed on drop,
//! free loopback addresses, certificates for HAProxy and nginx, their configurations, the `oha`
//! load generator and the median/min/max bookkeeping.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const HOST: &str = "echo.shop.svc.cluster.local";
pub const TD: &str = "alpha.local";
pub const CONNS: u32 = 16;
pub const RATES: [u32; 2] = [1_000, 10_000];

pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An address on `ip` that is free now, outside the ephemeral port range.
pub fn free(ip: &str) -> SocketAddr {
    meshfed_test_support::free_addr(ip)
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// CPU time the whole machine spent busy (user, nice, system, irq, softirq), in clock ticks.
pub fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().next()?.split_whitespace().skip(1);
            let f: Vec<u64> = cpu.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq
            Some([0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum())
        })
        .unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks() -> f64 {
    run(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .unwrap_or(100.0)
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process of the run, killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = cmd
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields after the command: state is [0]; utime and stime are fields 14 and 15 of the
        // whole line, so [11] and [12] here.
        f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
    }

    /// `VmRSS` or `VmHWM` in KiB.
    pub fn mem_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_listening(addr: SocketAddr, who: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join(format!("{who}.log"))).unwrap_or_default();
            panic!("{who} never listened on {addr}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Certificates for HAProxy and nginx: ECDSA P-256 from the mesh root, with the SPIFFE ID and a
/// DNS name (nginx verifies upstream names). Writes NAME.crt, NAME.key and NAME.pem (both).
pub fn peer_cert(dir: &Path, name: &str, uri: &str, dns: &str) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let root = std::fs::read_to_string(dir.join("ca/root-1.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca/root-1.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&root, root_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(vec![dns.to_owned()]).unwrap();
    p.subject_alt_names
        .push(SanType::URI(uri.try_into().unwrap()));
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(2);
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.pem")),
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )
    .unwrap();
}

/// HAProxy with one thread; no TLS session cache (bind lines add `no-tls-tickets`), so every
/// handshake is a full one, as with nginx and meshfed.
pub fn haproxy_cfg(front: &str, back: &str) -> String {
    format!(
        "global
  nbthread 1
  maxconn 4096
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  {front}
  default_backend b
backend b
  {back}
"
    )
}

pub fn nginx_cfg(dir: &Path, name: &str, server: &str, upstream: &str, location: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
master_process off;
daemon off;
error_log {d}/{name}-error.log warn;
pid {d}/{name}.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_requests 100000000;
  client_max_body_size 4m;
  upstream up {{ server {upstream}; keepalive 64; keepalive_requests 100000000; }}
  server {{
    {server}
    location / {{
      proxy_pass {location};
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_ssl_certificate {d}/client.crt;
      proxy_ssl_certificate_key {d}/client.key;
      proxy_ssl_trusted_certificate {d}/root.pem;
      proxy_ssl_verify on;
      proxy_ssl_name echo.bench.local;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse off;
    }}
  }}
}}
"
    )
}

/// One generator run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// The slowest request, µs.
    pub max: f64,
    /// Share of requests that did not get a 2xx.
    pub failed: f64,
}

/// What the generator is pointed at.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    /// The `Host` header (the service's name, for meshfed's routing).
    pub host: String,
    /// A file to POST as the body (bulk runs); GET when `None`.
    pub body: Option<PathBuf>,
    /// Connections (defaults to `CONNS`).
    pub conns: Option<u32>,
    /// Client certificate and key (mTLS to the first hop).
    pub tls: bool,
    /// A new connection — with `tls`, a full mTLS handshake — for every request.
    pub fresh: bool,
}

pub struct Gen {
    pub oha: PathBuf,
    pub dir: PathBuf,
    pub raw: Vec<serde_json::Value>,
}

impl Gen {
    pub fn oha(&mut self, label: &str, t: &Target, rate: Option<u32>, secs: u64) -> Run {
        let mut cmd = Command::new(&self.oha);
        cmd.args([
            "--no-tui",
            "--output-format",
            "json",
            "-c",
            &t.conns.unwrap_or(CONNS).to_string(),
        ])
        .args([
            "-z",
            &format!("{secs}s"),
            "-H",
            &format!("Host: {}", t.host),
        ]);
        if let Some(body) = &t.body {
            cmd.args(["-m", "POST", "-D"]).arg(body);
        }
        if let Some(r) = rate {
            cmd.args(["-q", &r.to_string(), "--latency-correction"]);
        }
        if t.fresh {
            cmd.arg("--disable-keepalive");
        }
        if t.tls {
            let d = &self.dir;
            cmd.arg("--cert")
                .arg(d.join("ui.pem"))
                .arg("--key")
                .arg(d.join("ui-key.pem"))
                .arg("--insecure");
        }
        cmd.arg(&t.url);
        let out = run(&mut cmd);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("oha output: {e}: {out}"));
        let total: f64 = v["statusCodeDistribution"]
            .as_object()
            .map(|m| m.values().filter_map(serde_json::Value::as_f64).sum())
            .unwrap_or(0.0);
        let ok: f64 = v["statusCodeDistribution"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.starts_with('2'))
                    .filter_map(|(_, n)| n.as_f64())
                    .sum()
            })
            .unwrap_or(0.0);
        // Requests still in flight when the run's time is up are cut by the generator, not
        // failed by the proxy.
        let errors: f64 = v["errorDistribution"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !k.contains("aborted due to deadline"))
                    .filter_map(|(_, n)| n.as_f64())
                    .sum()
            })
            .unwrap_or(0.0);
        let us = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1e6;
        let r = Run {
            rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
            p50: us("p50"),
            p99: us("p99"),
            p999: us("p99.9"),
            max: v["summary"]["slowest"].as_f64().unwrap_or(f64::NAN) * 1e6,
            failed: if total + errors > 0.0 {
                1.0 - ok / (total + errors)
            } else {
                1.0
            },
        };
        self.raw.push(serde_json::json!({
            "label": label, "rate": rate, "secs": secs, "url": t.url, "mtls": t.tls,
            "new_connection_per_request": t.fresh,
            "summary": v["summary"], "latencyPercentiles": v["latencyPercentiles"],
            "statusCodeDistribution": v["statusCodeDistribution"],
            "errorDistribution": v["errorDistribution"],
        }));
        r
    }
}

#[derive(Default)]
pub struct Figures {
    /// (system, path, metric) → one value per repetition.
    pub values: BTreeMap<(String, String, String), Vec<f64>>,
}

impl Figures {
    pub fn push(&mut self, sys: &str, path: &str, metric: &str, v: f64) {
        self.values
            .entry((sys.into(), path.into(), metric.into()))
            .or_default()
            .push(v);
    }

    /// Median, min, max.
    pub fn get(&self, sys: &str, path: &str, metric: &str) -> Option<(f64, f64, f64)> {
        let mut v = self
            .values
            .get(&(sys.into(), path.into(), metric.into()))?
            .clone();
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((v[v.len() / 2], v[0], v[v.len() - 1]))
    }

    /// Linkerd's method (performance.md §2): for each system, path and fixed rate, drops the
    /// repetition whose slowest request (metric `max µs @RATE`) was the slowest of all, from
    /// every figure measured at that rate. Returns how many repetitions were dropped.
    pub fn drop_slowest_repetition(&mut self) -> usize {
        let mut drops = Vec::new();
        for ((sys, path, metric), v) in &self.values {
            let Some(rate) = metric.strip_prefix("max µs ") else {
                continue;
            };
            let worst = v
                .iter()
                .enumerate()
                .filter(|(_, x)| x.is_finite())
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            if let Some(i) = worst {
                drops.push((sys.clone(), path.clone(), rate.to_owned(), i));
            }
        }
        for (sys, path, rate, i) in &drops {
            for ((s, p, m), v) in &mut self.values {
                if s == sys && p == path && m.ends_with(rate.as_str()) && *i < v.len() {
                    v.remove(*i);
                }
            }
        }
        drops.len()
    }
}

/// A figure against its goal, as performance.md §6 judges it: on the median ratio, except
/// that where meshfed's min–max spread overlaps the best peer's spread scaled by the goal,
/// the result is "within noise" rather than pass or fail. `ours` and `best` are (median, min,
/// max); `goal` is the ratio to reach, at least (`higher`) or at most.
pub fn judge(
    ours: (f64, f64, f64),
    best: (f64, f64, f64),
    goal: f64,
    higher: bool,
) -> &'static str {
    // Lower-is-better figures are negated, so one comparison serves both.
    let s = if higher { 1.0 } else { -1.0 };
    let span = |(m, a, b): (f64, f64, f64), k: f64| {
        let (a, b) = (s * a * k, s * b * k);
        (s * m * k, a.min(b), a.max(b))
    };
    let ((m, lo, hi), (bm, blo, bhi)) = (span(ours, 1.0), span(best, goal));
    if !(m.is_finite() && bm.is_finite()) {
        return "—";
    }
    let met = m >= bm;
    let single = lo == hi && blo == bhi;
    if lo > bhi || (single && met) {
        "pass"
    } else if hi < blo || single {
        "fail"
    } else if met {
        "within noise, median met"
    } else {
        "within noise, median missed"
    }
}

/// How much of `cli/sidecar.order` the binary at `meshfed` still has: the sidecar's code is laid
/// out together only for the names found (a name changes when its code, or code it is built
/// from, changes), so idle RSS grows as the list goes stale.
pub fn layout_line(meshfed: &str) -> String {
    let order = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sidecar.order");
    let Ok(listed) = std::fs::read_to_string(&order) else {
        return "Code layout: no cli/sidecar.order.".into();
    };
    let Ok(out) = Command::new("nm")
        .args(["--defined-only", meshfed])
        .output()
    else {
        return "Code layout: not checked (no `nm`).".into();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let present: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let names: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    let found = names.iter().filter(|n| present.contains(*n)).count();
    format!(
        "Code layout: {found} of {} functions listed in cli/sidecar.order are in this binary{}.",
        names.len(),
        if found * 100 < names.len() * 97 {
            " — stale: run `make sidecar-order`"
        } else {
            ""
        }
    )
}
