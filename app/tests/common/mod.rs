//! Helpers of the in-process `app` tests.
#![allow(dead_code)] // each test file uses its own share of them

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshfed_app::join::JoinRequest;
use meshfed_app::sidecar::{Mode, Sidecar, SidecarOptions, Workload};
use meshfed_app::status::ControlStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A free port on the loopback address `ip`.
pub fn free(ip: &str) -> SocketAddr {
    meshfed_test_support::free_addr(ip)
}

/// `GET path` with `Host: host` through a sidecar's outbound listener: the whole answer, or
/// a line starting `error:`.
pub async fn get_host(out: SocketAddr, host: &str, path: &str) -> String {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(out).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "error: no answer".into(),
    }
}

/// Waits (up to 40 s) until `f` gives `Ok`; panics with its last `Err`.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for _ in 0..400 {
        match f().await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached in 40 s; last: {last}");
}

/// Waits (up to 40 s) until the watched value satisfies `f`; panics with the last seen.
pub async fn watch_until<T: std::fmt::Debug>(
    rx: &mut watch::Receiver<Arc<T>>,
    what: &str,
    mut f: impl FnMut(&T) -> bool,
) -> Arc<T> {
    let seen = tokio::time::timeout(Duration::from_secs(40), rx.wait_for(|v| f(v)))
        .await
        .map(|r| r.map(|v| v.clone()));
    match seen {
        Ok(Ok(v)) => v,
        _ => panic!("{what}: not reached in 40 s; last: {:#?}", rx.borrow()),
    }
}

/// [`watch_until`] for a control plane's status.
pub async fn status_until(
    rx: &mut watch::Receiver<Arc<ControlStatus>>,
    what: &str,
    f: impl FnMut(&ControlStatus) -> bool,
) -> Arc<ControlStatus> {
    watch_until(rx, what, f).await
}

/// The bootstrap file of `workloads` of `namespace`: the control plane's `template` plus a
/// join credential for them minted into the CA folder `ca` (as `meshfed join create` does).
pub fn join_file(ca: &Path, template: &Path, namespace: &str, workloads: &[&str]) -> PathBuf {
    let out = template.with_file_name(format!("{namespace}-{}.json", workloads.join("-")));
    meshfed_app::join::create(&JoinRequest {
        dir: ca.to_owned(),
        template: template.to_owned(),
        namespace: namespace.into(),
        workloads: workloads.iter().map(|w| (*w).to_owned()).collect(),
        ttl: Duration::from_secs(3600),
        once: false,
        out: out.clone(),
    })
    .unwrap_or_else(|e| panic!("joining {namespace}/{workloads:?}: {e}"));
    out
}

/// A sidecar for workload `name` in `namespace`, joined with its own credential to the
/// control plane whose bootstrap file is `template` and CA folder `ca`; an outbound listener
/// when asked for.
pub async fn sidecar(
    ca: &Path,
    template: &Path,
    name: &str,
    namespace: &str,
    outbound: Option<SocketAddr>,
) -> Sidecar {
    Sidecar::build(SidecarOptions {
        mode: Mode::Joined {
            bootstrap: join_file(ca, template, namespace, &[name]),
        },
        workload: Workload {
            name: name.into(),
            namespace: Some(namespace.into()),
            outbound,
            admin: None,
            tcp: Vec::new(),
        },
        drain: Duration::ZERO,
        dns: None,
    })
    .await
    .unwrap_or_else(|e| panic!("sidecar {namespace}/{name}: {e}"))
}
