//! The echo test workload (`meshfed echo`): answers every request with JSON naming its mesh,
//! service, instance and the caller's verified identity, as its sidecar passes it on.

use std::net::SocketAddr;
use std::time::Duration;

pub use meshfed_proxy::echo::EchoConfig;

use crate::tasks::{TaskFailure, Tasks};

/// A running echo server.
#[derive(Debug)]
pub struct Echo {
    addr: SocketAddr,
    tasks: Tasks,
}

impl Echo {
    /// Binds `listen` and serves `config`.
    pub async fn build(listen: SocketAddr, config: EchoConfig) -> std::io::Result<Self> {
        let (addr, task) = meshfed_proxy::echo::start(listen, config).await?;
        let tasks = Tasks::new();
        tasks.adopt("echo", task);
        tracing::info!(listen = %addr, "echo listening on http://{addr}");
        Ok(Self { addr, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the server ends on its own.
    pub async fn failed(&self) -> TaskFailure {
        self.tasks.failed().await
    }

    /// Stops the server.
    pub async fn stop(&self) {
        self.tasks.shutdown(Duration::from_secs(1)).await;
    }
}
