//! meshfed trust: each mesh's own CA and SPIFFE identities, and the per-trust-domain checks
//! that let meshes with different roots authenticate each other without pooling roots.
//!
//! - [`ca`]: the mesh CA (rcgen, ECDSA P-256): roots, rotation, SVIDs signed from CSRs whose
//!   one URI SAN is the caller's ID, persistence with private keys at mode 0600.
//! - [`svid`]: the SPIFFE X.509-SVID rules (x509-parser), each broken rule a distinct reason.
//! - [`bundle`]: trust bundles per domain, in and out of the SPIFFE bundle format.
//! - [`verify`]: rustls verifiers that pick the bundle by the presented trust domain and then
//!   check the expected identity; SVID resolvers that swap credentials without restarts;
//!   TLS 1.3 configs without session resumption.
//! - [`token`]: signed, expiring, one-time peering tokens.
//! - [`store`]: where peer bundles and token records are kept (a folder, or the cluster).
//!
//! Only this crate touches rcgen and x509-parser. Nothing here reads the clock: callers pass
//! `now`.

pub mod bootstrap;
pub mod bundle;
pub mod ca;
pub mod dir;
pub mod join;
pub mod pem;
pub mod store;
pub mod svid;
pub mod token;
pub mod verify;

pub use bundle::{TrustBundle, TrustBundleSet};
pub use ca::{CertificateAuthority, Svid};
pub use verify::{Expect, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver, VerifyError};
