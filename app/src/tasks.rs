//! Task ownership: every task a component starts belongs to its [`Tasks`], watches the
//! component's drain signal, and is joined when the component stops. A task that ends on its
//! own while the component runs — an error, a panic, or a loop that returned — is reported
//! ([`Tasks::failed`]) and logged, never lost. The shape is ztunnel's `drain` and linkerd's
//! `app::Main`: one signal, many watchers, one place that waits for them.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Aborts a task when dropped: a helper task a component's task spawned itself ends with it,
/// instead of running on detached (dropping a `JoinHandle` does not stop its task).
#[derive(Debug)]
pub struct AbortOnDrop(tokio::task::AbortHandle);

impl AbortOnDrop {
    pub fn new<T>(handle: &tokio::task::JoinHandle<T>) -> Self {
        Self(handle.abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a task ended while its component was still running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task} ended: {detail}")]
pub struct TaskFailure {
    /// The task's name (fixed, for logs and tests).
    pub task: &'static str,
    /// What it returned, or that it panicked or returned early.
    pub detail: String,
}

impl TaskFailure {
    /// A stable reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        "TaskEnded"
    }
}

/// The tasks of one component, and the signal that stops them.
#[derive(Debug)]
pub struct Tasks {
    set: Mutex<JoinSet<()>>,
    drain: CancellationToken,
    ended_tx: mpsc::UnboundedSender<TaskFailure>,
    ended_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<TaskFailure>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        // Unbounded is bounded here: at most one message per task ever spawned.
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self {
            set: Mutex::default(),
            drain: CancellationToken::new(),
            ended_tx,
            ended_rx: tokio::sync::Mutex::new(ended_rx),
        }
    }

    /// The drain signal: cancelled when the component stops. Tasks that hand work on (an
    /// accept loop's connections) pass it down.
    pub fn drain(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Whether the component is stopping.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Starts `fut` as task `name`, in the current span. It is stopped (dropped) when the
    /// component drains; if it ends before that, with an error or not, that is a failure.
    pub fn spawn<F, E>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let drain = self.drain.clone();
        self.spawn_graceful(name, async move {
            tokio::select! {
                () = drain.cancelled() => Ok(()),
                r = fut => r,
            }
        });
    }

    /// Starts `fut` as task `name`, which watches [`Tasks::drain`] itself and ends when it is
    /// cancelled (a server shutting down gracefully); [`Tasks::shutdown`] waits for it and
    /// aborts it only after the grace period. Ending before the drain is a failure.
    pub fn spawn_graceful<F, E>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let drain = self.drain.clone();
        let ended = self.ended_tx.clone();
        let task = async move {
            let detail = match fut.await {
                Ok(()) => "returned while the component was running".to_owned(),
                Err(e) => e.to_string(),
            };
            if drain.is_cancelled() {
                return;
            }
            tracing::error!(task = name, reason = "TaskEnded", "{detail}");
            let _ = ended.send(TaskFailure { task: name, detail });
        }
        .in_current_span();
        self.push(task);
    }

    fn push(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Finished tasks are reaped as new ones start, so the set does not grow.
        self.reap().spawn(task);
    }

    /// The set, with every finished task taken out (a panic reported).
    fn reap(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        let mut set = self
            .set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(r) = set.try_join_next() {
            self.report_panic(r);
        }
        set
    }

    /// Starts `fut` as task `name`, a task that may end by itself (work tied to something
    /// that goes away, such as a peer's importer); stopped when the component drains. Only a
    /// panic is a failure.
    pub fn spawn_finite<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let drain = self.drain.clone();
        self.push(
            async move {
                tokio::select! {
                    () = drain.cancelled() => {}
                    () = fut => tracing::debug!(task = name, "task done"),
                }
            }
            .in_current_span(),
        );
    }

    /// Takes over a task something else spawned (a library's server loop): it is aborted when
    /// the component drains, and reported if it ends before.
    pub fn adopt(&self, name: &'static str, handle: tokio::task::JoinHandle<()>) {
        let guard = AbortOnDrop::new(&handle);
        self.spawn(name, async move {
            let _guard = guard;
            handle.await.map_err(|e| e.to_string())
        });
    }

    /// [`Tasks::spawn`] for a loop that cannot fail (and must not end).
    pub fn spawn_infallible<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            fut.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    fn report_panic(&self, r: Result<(), tokio::task::JoinError>) {
        if let Err(e) = r
            && e.is_panic()
        {
            tracing::error!(reason = "TaskPanicked", "a task panicked");
            let _ = self.ended_tx.send(TaskFailure {
                task: "unknown",
                detail: "panicked".to_owned(),
            });
        }
    }

    /// Waits until a task ends while the component runs, and says which and why.
    pub async fn failed(&self) -> TaskFailure {
        let mut rx = self.ended_rx.lock().await;
        loop {
            drop(self.reap());
            // Panics are found by reaping; look again every second.
            match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(Some(f)) => return f,
                Ok(None) => std::future::pending::<()>().await,
                Err(_) => {}
            }
        }
    }

    /// Signals every task to stop and waits up to `grace` for them; the rest are aborted.
    pub async fn shutdown(&self, grace: Duration) {
        self.drain.cancel();
        let mut set = std::mem::take(
            &mut *self
                .set
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let all = async {
            while let Some(r) = set.join_next().await {
                if let Err(e) = r
                    && e.is_panic()
                {
                    tracing::error!(reason = "TaskPanicked", "a task panicked while stopping");
                }
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                reason = "DrainTimeout",
                "tasks still running after {grace:?}: aborted"
            );
            set.abort_all();
        }
    }

    /// How many tasks are running.
    pub fn len(&self) -> usize {
        let mut set = self
            .set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while set.try_join_next().is_some() {}
        set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_while_running_is_reported_with_its_error() {
        let tasks = Tasks::new();
        tasks.spawn_infallible("forever", std::future::pending());
        tasks.spawn("fails", async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Err::<(), _>("the socket closed")
        });
        let f = tasks.failed().await;
        assert_eq!(f.task, "fails");
        assert_eq!(f.detail, "the socket closed");
        assert_eq!(tasks.len(), 1, "the other task still runs");
        tasks.shutdown(Duration::from_secs(1)).await;
        assert!(tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_every_task_and_reports_none() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            tasks.spawn_infallible("holds a sender", async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            });
        }
        drop(tx);
        tasks.shutdown(Duration::from_secs(1)).await;
        // Every task dropped its sender: the channel is closed.
        assert!(rx.recv().await.is_none());
        assert!(
            tokio::time::timeout(Duration::from_secs(5), tasks.failed())
                .await
                .is_err(),
            "stopping is not a failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_reported() {
        let tasks = Tasks::new();
        tasks.spawn_infallible("panics", async {
            tokio::task::yield_now().await;
            #[allow(clippy::panic)]
            {
                panic!("boom")
            }
        });
        let f = tasks.failed().await;
        assert_eq!(f.detail, "panicked");
    }
}
