//! The load: requests at a fixed rate through the calling workload's sidecar, each on its own
//! connection, timed from when it was due. Every answer is kept: when it started, how long it
//! took, its status, and which mesh's echo answered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight at most; beyond, a due request is counted as failed (`Overload`).
const MAX_IN_FLIGHT: usize = 1024;

/// One request's outcome.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When it was due, from the start of the load, in milliseconds.
    pub t_ms: f64,
    pub latency_ms: f64,
    /// HTTP status; 0 when there was no answer.
    pub status: u16,
    /// The mesh whose echo answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What is being called.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

/// Why a request got no answer: the step that failed and what it said.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct GetError {
    /// `Connect`, `Handshake`, `Request`, `Send` or `Body`.
    pub step: &'static str,
    pub detail: String,
}

fn failed(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> GetError {
    move |e| GetError {
        step,
        detail: e.to_string(),
    }
}

/// `GET path` with `Host: host` on a new connection to `addr`: status and body (at most
/// 64 KiB), or why there was none. No timeout of its own.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Bytes), GetError> {
    get_limited(addr, host, path, 64 * 1024).await
}

/// [`get`] with a body of at most `limit` bytes (a control plane's `/status` lists every
/// imported service: megabytes with ten thousand).
pub async fn get_limited(
    addr: SocketAddr,
    host: &str,
    path: &str,
    limit: usize,
) -> Result<(u16, Bytes), GetError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| failed("Connect")(&e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("Handshake")(&e))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed("Request")(&e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed("Send")(&e))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| failed("Body")(&e))?
        .to_bytes();
    Ok((status, body))
}

/// Sends one request; the sample's time fields are filled by the caller.
pub async fn call(t: &Target) -> (u16, Option<String>, Option<String>) {
    let run = async {
        let (status, body) = get(t.addr, &t.host, &t.path)
            .await
            .map_err(|e| e.to_string())?;
        let mesh = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("mesh").and_then(|m| m.as_str()).map(str::to_owned));
        // A failed answer's first line says why (the sidecars' reason tokens).
        let why = (!(200..300).contains(&status)).then(|| {
            String::from_utf8_lossy(&body)
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>()
        });
        Ok::<_, String>((status, mesh, why))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, run).await {
        Ok(Ok((status, mesh, why))) => (status, mesh, why),
        Ok(Err(e)) => (0, None, Some(e)),
        Err(_) => (0, None, Some("Timeout".into())),
    }
}

/// The samples so far, shared with the progress display.
pub type Samples = Arc<Mutex<Vec<Sample>>>;

pub fn lock(s: &Samples) -> std::sync::MutexGuard<'_, Vec<Sample>> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends `rps` requests per second to `t` from `t0` for `run`, recording into `samples`;
/// returns when every request has answered or timed out.
pub async fn run(t: Target, rps: u32, t0: Instant, run: Duration, samples: Samples) {
    let every = Duration::from_secs_f64(1.0 / f64::from(rps.max(1)));
    let total = (run.as_secs_f64() * f64::from(rps)).floor() as u64;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let t = Arc::new(t);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        let due = t0 + every.mul_f64(k as f64);
        tokio::time::sleep_until(due.into()).await;
        let t_ms = due.duration_since(t0).as_secs_f64() * 1e3;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            lock(&samples).push(Sample {
                t_ms,
                latency_ms: 0.0,
                status: 0,
                mesh: None,
                error: Some("Overload: too many requests in flight".into()),
            });
            continue;
        };
        let (t, samples) = (t.clone(), samples.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let (status, mesh, error) = call(&t).await;
            // Timed from when it was due, so a stalled generator does not hide latency.
            let latency_ms = due.elapsed().as_secs_f64() * 1e3;
            lock(&samples).push(Sample {
                t_ms,
                latency_ms,
                status,
                mesh,
                error,
            });
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
