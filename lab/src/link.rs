//! The fault-injectable link between one mesh's egress and another's ingress (service and
//! discovery ports): a relay in the lab's process, since kernel traffic shaping is not
//! available everywhere. `cut` closes every connection and refuses new ones; `blackhole`
//! accepts and keeps connections but carries nothing (what a dead network looks like);
//! `heal` restores it.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open,
    Cut,
    Blackhole,
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
                (Mode::Open, Some(t)) => relay(down, t, &mut mode).await,
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

async fn relay(mut down: TcpStream, target: SocketAddr, mode: &mut watch::Receiver<Mode>) {
    let Ok(mut up) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            c = mode.changed() => {
                if c.is_err() {
                    return;
                }
                match *mode.borrow() {
                    Mode::Open => continue,
                    Mode::Cut => return,
                    Mode::Blackhole => break,
                }
            }
        }
    }
    // Blackholed: both sides stay open, nothing moves, until the link heals or is cut.
    loop {
        if mode.changed().await.is_err() || *mode.borrow() != Mode::Blackhole {
            return;
        }
    }
}
