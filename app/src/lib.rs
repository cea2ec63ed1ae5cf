//! meshfed's application layer: where the component crates are put together into running
//! components. Each component is built from its config into a handle that owns every task it
//! started (see [`tasks`]), stops them all when asked, reports a task that ended on its own,
//! and publishes its status typed on a watch channel. The `meshfed` binary only parses
//! arguments, builds these handles, renders and maps outcomes to exit codes.
//!
//! It is a crate of its own, not an `app` module in each component crate, because a component
//! here is put together from several of those crates (the peering node joins the peering
//! stream, the import store, the trust store and the control plane's import feeds); a module
//! inside one of them would make the crates depend on each other in circles.
//!
//! - [`control`]: the mesh's control plane (`meshfed control`).
//! - [`node`]: the peering node (`meshfed peering run`, `meshfed control --peering`).
//! - [`sidecar`]: one workload's sidecar (`meshfed proxy`).
//! - [`gateway`]: one mesh's federation gateways for one peer (`meshfed gateway`).
//! - [`echo`]: the echo test workload (`meshfed echo`).
//! - [`status`]: reading a running component's status (`meshfed status`).
//! - [`ca`]: the mesh CA folder (`meshfed trust`).
//! - [`token`]: peering tokens (`meshfed peering token`).
//! - [`files`]: reading mesh files and the CA folder.
//! - [`logging`]: the process's `tracing` subscriber (`MESHFED_LOG`, text or JSON).
//! - [`tasks`]: task ownership and the drain signal.

pub mod ca;
pub mod control;
pub mod echo;
pub mod explain;
pub mod files;
pub mod gateway;
pub mod join;
pub mod logging;
pub mod node;
pub mod sidecar;
pub mod status;
pub mod tasks;
pub mod token;
