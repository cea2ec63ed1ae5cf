//! meshfed's Kubernetes mode (`meshfed control --kube`): the cluster as the control plane's
//! config source, and CRD status.
//!
//! - [`render`]: the cluster (Services, EndpointSlices, injected Pods, Nodes, federation
//!   resources) rendered as the mesh file embedded mode reads, each federation resource
//!   validated on its own so a bad one is left out without touching the others.
//! - [`source`]: kube-runtime reflectors that re-render on every change and publish snapshots
//!   through the same path as embedded mode's file watcher.
//! - [`status`]: CRD status by server-side apply under one field manager.
//! - [`inject`]: `meshfed inject`, the sidecar added to pod templates (idempotent).
//! - [`redirect`]: the iptables rules the injected init container installs.

pub mod inject;
pub mod redirect;
pub mod render;
pub mod source;
pub mod status;
