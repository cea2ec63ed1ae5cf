//! The lab's processes: spawned with their logs, killed when dropped, drained as Kubernetes stops a pod; one-shot `meshfed` commands; a free loopback range.

use super::*;

/// The processes of a lab, killed when dropped.
#[derive(Default)]
pub(super) struct Procs {
    pub(super) running: BTreeMap<String, tokio::process::Child>,
    pub(super) args: BTreeMap<String, Vec<String>>,
}

impl Procs {
    pub(super) fn spawn(
        &mut self,
        exe: &Path,
        work: &Path,
        name: &str,
        args: Vec<String>,
    ) -> Result<()> {
        // Appended to: a restarted component's log follows its earlier runs'.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("logs").join(format!("{name}.log")))
            .with_context(|| format!("log of {name}"))?;
        let child = tokio::process::Command::new(exe)
            .args(&args)
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.running.insert(name.to_owned(), child);
        self.args.insert(name.to_owned(), args);
        Ok(())
    }

    pub(super) async fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.running.remove(name) {
            let _ = c.kill().await;
        }
    }

    pub(super) fn restart(&mut self, exe: &Path, work: &Path, name: &str) -> Result<()> {
        let args = self.args.get(name).cloned().context("unknown process")?;
        self.spawn(exe, work, name, args)
    }

    /// Starts `name` again unless it runs.
    pub(super) fn ensure(&mut self, exe: &Path, work: &Path, name: &str) -> Result<()> {
        match self
            .running
            .get_mut(name)
            .map(tokio::process::Child::try_wait)
        {
            Some(Ok(None)) => Ok(()),
            _ => self.restart(exe, work, name),
        }
    }
}

/// How long a lab sidecar drains before it exits.
pub(super) const DRAIN: Duration = Duration::from_secs(2);

/// Stops a workload gracefully, as Kubernetes stops a pod: its sidecar gets SIGTERM (reports
/// not ready, serves for its drain time, exits), then its app stops.
pub(super) async fn drain(
    mut sidecar: tokio::process::Child,
    mut app: Option<tokio::process::Child>,
) {
    if let Some(pid) = sidecar.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(DRAIN * 3, sidecar.wait())
        .await
        .is_err()
    {
        let _ = sidecar.kill().await;
    }
    if let Some(a) = app.as_mut() {
        let _ = a.kill().await;
    }
}

pub(super) fn s(a: SocketAddr) -> String {
    a.to_string()
}

/// Runs `meshfed args` in `work` to completion; it must succeed.
pub(super) async fn meshfed(exe: &Path, work: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = tokio::process::Command::new(exe)
        .args(args)
        .current_dir(work)
        .output()
        .await
        .with_context(|| format!("running meshfed {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "meshfed {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// A second octet whose ranges are free (parallel runs pick different ones).
pub(super) fn pick_base(meshes: usize) -> Result<u8> {
    for _ in 0..50 {
        let base = fastrand::u8(100..=250);
        let free = (1..=meshes).all(|m| {
            let m = u8::try_from(m).unwrap_or(1);
            std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, base, m, 50), 15012)).is_ok()
        });
        if free {
            return Ok(base);
        }
    }
    bail!("no free loopback range for the lab")
}
