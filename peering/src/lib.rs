//! meshfed peering: how meshes exchange what they export to each other.
//!
//! - [`server`]: the exporter, a tonic service over mTLS that authenticates each importer by
//!   its verified SPIFFE ID and streams only that peer's export view.
//! - [`client`]: the importer, a task per peer driven by the sans-IO session of
//!   `meshfed-core`, with persistence in `meshfed-store` and status on a watch channel.
//! - [`convert`]: wire ↔ core conversion that treats peer input as hostile.
//! - [`redeem`]: redeeming a peering token at the issuer (bundle exchange without copying).
//! - [`tls`]: the mTLS accept loop and connector that carry meshfed's SPIFFE verifiers into
//!   tonic.

pub mod client;
pub mod convert;
pub mod reason;
pub mod redeem;
pub mod server;
pub mod status;
pub mod tls;
