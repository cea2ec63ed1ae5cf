//! meshfed's wire protocols, generated from `proto/`: `peering.proto` (the peering stream between
//! meshes) and `config.proto` (control plane to proxies). Types here are wire types only:
//! consumers convert them into `meshfed-core` values at their edge, validating every field as
//! untrusted input.

/// The peering protocol, version 1.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod peering {
    tonic::include_proto!("meshfed.peering.v1");
}

/// The configuration protocol between a control plane and its proxies, version 1.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod config {
    tonic::include_proto!("meshfed.config.v1");
}

/// Protocol version this build speaks.
pub const PEERING_PROTOCOL_VERSION: u32 = 1;
