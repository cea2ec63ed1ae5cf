//! A minimal admin endpoint: `GET /status` (JSON) and `GET /healthz`, HTTP/1.0-style, one
//! request per connection, bounded in size and time. It binds loopback only (CF4: an admin
//! port reachable from elsewhere would be an SSRF target), so it needs no token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// Why the admin endpoint refused to start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin address {0} is not a loopback address; the admin endpoint serves loopback only")]
    NotLoopback(SocketAddr),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Serves `status()` as JSON at `/status` until the task is dropped. Returns the bound
/// address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    status: Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AdminError> {
    serve_with(addr, status, None).await
}

/// Extra `GET` pages: path → (content type, body), `None` for not found.
pub type Pages = Arc<dyn Fn(&str) -> Option<(&'static str, String)> + Send + Sync>;

/// [`serve`], plus `pages` for other paths (a gateway's `/metrics`).
pub async fn serve_with(
    addr: SocketAddr,
    status: Arc<dyn Fn() -> String + Send + Sync>,
    pages: Option<Pages>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AdminError> {
    if !addr.ip().is_loopback() {
        return Err(AdminError::NotLoopback(addr));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| AdminError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| AdminError::Bind(addr, e))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (status, pages) = (status.clone(), pages.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_REQUEST];
                let mut n = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                n += k;
                                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                    break;
                                }
                            }
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let page = || pages.as_ref().and_then(|p| p(path));
                let (code, ctype, body) = match (head.starts_with("GET "), path) {
                    (true, "/status") => ("200 OK", "application/json", status()),
                    (true, "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
                    (true, _) => match page() {
                        Some((ctype, body)) => ("200 OK", ctype, body),
                        None => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                    },
                    (false, _) => (
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET only\n".to_owned(),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {code}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok((bound, task))
}

/// Fetches `path` from an admin endpoint (used by `meshfed status`).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.take(16 << 20).read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("bad response").to_owned(),
        ));
    }
    Ok(body.to_owned())
}
