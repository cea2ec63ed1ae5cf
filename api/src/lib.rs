//! meshfed's wire protocols, generated from `proto/` (see `peering.proto` for the peering
//! stream). Types here are wire types only: consumers convert them into `meshfed-core` values
//! at their edge, validating every field as untrusted input.

/// The peering protocol, version 1.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod peering {
    tonic::include_proto!("meshfed.peering.v1");
}

/// Protocol version this build speaks.
pub const PEERING_PROTOCOL_VERSION: u32 = 1;
