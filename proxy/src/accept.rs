//! Accept loops that own their connections.
//!
//! Each accepted connection runs in a task of the loop's own `JoinSet`, so stopping the loop
//! (aborting or dropping its task, as a stopped sidecar does) ends every connection it accepted
//! instead of leaving them running unowned. A connection task that panics is reported.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long the loop waits after a failed accept (EMFILE and the like) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Accepts connections on `listener` until the returned task is stopped, running `handle` for
/// each in a task the loop owns.
pub(crate) fn accept_each<F, Fut>(listener: TcpListener, mut handle: F) -> JoinHandle<()>
where
    F: FnMut(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        let _ = tcp.set_nodelay(true);
                        conns.spawn(handle(tcp, remote));
                    }
                    Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
                },
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!(listener = ?listener.local_addr().ok(), "a connection task panicked");
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn stopping_the_loop_closes_the_connections_it_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut accepted) = tokio::sync::mpsc::channel(1);
        let task = accept_each(listener, move |mut tcp, _| {
            let tx = tx.clone();
            async move {
                // Answers once, then holds the connection open for ever.
                let _ = tcp.write_all(b"hi").await;
                let _ = tx.send(()).await;
                std::future::pending::<()>().await;
                drop(tcp);
            }
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        accepted.recv().await.unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        task.abort();
        let _ = task.await;
        // The held connection is closed with its loop: the client reads end-of-stream.
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the connection outlived its accept loop")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn finished_connections_are_reaped_and_the_loop_keeps_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = accept_each(listener, |mut tcp, _| async move {
            let _ = tcp.write_all(b"x").await;
        });
        for _ in 0..50 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut b = Vec::new();
            c.read_to_end(&mut b).await.unwrap();
            assert_eq!(b, b"x");
        }
        task.abort();
    }
}
