//! The fault-injectable link between one mesh's egress and another's ingress (service and
//! discovery ports): a relay in the lab's process, since kernel traffic shaping is not
//! available everywhere. `cut` closes every connection and refuses new ones; `blackhole`
//! accepts and keeps connections but carries nothing (what a dead network looks like);
//! `delay` holds every chunk for a while in each direction (a long link); `heal` restores it.

use std::net::SocketAddr;

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open,
    Cut,
    Blackhole,
    /// Each chunk is carried this long after it was read, in each direction.
    Delay(Duration),
}

/// A running link; stops when dropped.
#[derive(Debug)]
pub struct Link {
    pub from: String,
    pub to: String,
    mode: watch::Sender<Mode>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Link {
    /// Relays each `(listen, target)` pair; a missing target refuses everything.
    pub async fn start(
        from: &str,
        to: &str,
        pairs: &[(SocketAddr, Option<SocketAddr>)],
    ) -> Result<Self> {
        let (mode, rx) = watch::channel(Mode::Open);
        let mut tasks = Vec::new();
        for (listen, target) in pairs {
            let l = TcpListener::bind(listen)
                .await
                .with_context(|| format!("link {from}->{to}: binding {listen}"))?;
            tasks.push(tokio::spawn(serve(l, *target, rx.clone())));
        }
        Ok(Self {
            from: from.to_owned(),
            to: to.to_owned(),
            mode,
            tasks,
        })
    }

    pub fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }
}

async fn serve(l: TcpListener, target: Option<SocketAddr>, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((down, _)) = l.accept().await else {
            continue;
        };
        let mut mode = mode.clone();
        tokio::spawn(async move {
            let now = *mode.borrow_and_update();
            match (now, target) {
                (Mode::Cut, _) | (_, None) => {}
                (Mode::Blackhole, Some(_)) => swallow(down, &mut mode).await,
                (Mode::Open | Mode::Delay(_), Some(t)) => relay(down, t, &mut mode).await,
            }
        });
    }
}

/// Reads and drops everything until the link heals or is cut.
async fn swallow(mut down: TcpStream, mode: &mut watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = down.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            c = mode.changed() => if c.is_err() || *mode.borrow() != Mode::Blackhole { return },
        }
    }
}

async fn relay(down: TcpStream, target: SocketAddr, mode: &mut watch::Receiver<Mode>) {
    let Ok(up) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let (m1, m2) = (mode.clone(), mode.clone());
    let both = async move {
        tokio::join!(pipe(dr, uw, m1), pipe(ur, dw, m2));
    };
    tokio::select! {
        () = both => {}
        _ = mode.wait_for(|m| *m == Mode::Cut) => {}
    }
}

/// Carries one direction: every chunk read is written when the link's delay has passed since
/// it was read, held while the link is blackholed; the reader never waits for the writer.
async fn pipe(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            loop {
                let now = *mode.borrow_and_update();
                match now {
                    Mode::Cut => return,
                    Mode::Blackhole => {
                        if mode.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Mode::Delay(d) => tokio::time::sleep_until(read_at + d).await,
                    Mode::Open => {}
                }
                break;
            }
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}
