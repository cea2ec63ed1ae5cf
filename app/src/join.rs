//! Joining workloads to a control plane in embedded mode (`meshfed join …`): a workload's
//! bootstrap file is the control plane's (a template without a secret) plus a join credential
//! bound to that one workload ([`meshfed_trust::join`]), minted into the CA folder the control
//! plane reads. A gateway is a workload of the control-plane namespace, named as in
//! `spec.gateways`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshfed_trust::bootstrap::{Bootstrap, BootstrapError};
use meshfed_trust::join::{JoinError, JoinRecord, JoinStore, Minted};

/// Why a workload's bootstrap file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JoinFileError {
    #[error("the control plane's bootstrap file: {0}")]
    Template(BootstrapError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("writing the workload's bootstrap file: {0}")]
    Write(BootstrapError),
}

impl JoinFileError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Template(_) => "BadTemplate",
            Self::Join(e) => e.reason(),
            Self::Write(_) => "WriteFailed",
        }
    }
}

/// What to mint.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The mesh CA folder the control plane runs with.
    pub dir: PathBuf,
    /// The control plane's bootstrap file (`meshfed control --bootstrap-out`).
    pub template: PathBuf,
    pub namespace: String,
    /// The workloads of `namespace` it may join as: one, or a gateway process's ingress and
    /// egress.
    pub workloads: Vec<String>,
    pub ttl: Duration,
    /// Valid for one certificate only.
    pub once: bool,
    /// Where the workload's bootstrap file is written (mode 0600).
    pub out: PathBuf,
}

/// Mints a credential for the workload and writes its bootstrap file; the credential's record.
pub fn create(req: &JoinRequest) -> Result<JoinRecord, JoinFileError> {
    let mut boot = Bootstrap::read(&req.template).map_err(JoinFileError::Template)?;
    let workloads: Vec<&str> = req.workloads.iter().map(String::as_str).collect();
    let Minted { secret, record } = JoinStore::new(&req.dir).mint(
        &req.namespace,
        &workloads,
        req.ttl,
        req.once,
        SystemTime::now(),
    )?;
    boot.token = secret;
    boot.write(&req.out).map_err(JoinFileError::Write)?;
    Ok(record)
}

/// Revokes every credential of `namespace/workload` held in `dir`; how many there were.
pub fn revoke(dir: &Path, namespace: &str, workload: &str) -> Result<usize, JoinError> {
    JoinStore::new(dir).revoke(namespace, workload)
}

/// Every credential recorded in `dir`.
pub fn list(dir: &Path) -> Result<Vec<JoinRecord>, JoinError> {
    Ok(JoinStore::new(dir)
        .list()?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}
