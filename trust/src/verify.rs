//! rustls verifiers for SPIFFE mTLS, one trust domain at a time (security design §2.3):
//!
//! 1. take exactly one URI SAN from the leaf and parse it as a SPIFFE ID;
//! 2. check the SPIFFE leaf rules;
//! 3. find the bundle of *that* trust domain, or reject (`UnknownTrustDomain`);
//! 4. run rustls-webpki path validation against that bundle alone, with this side's EKU;
//! 5. compare the ID with what this side expects.
//!
//! Bundles sit behind an [`ArcSwap`] so rotations apply to the next handshake; resumption is
//! off in every config built here, so no session outlives a trust change.

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshfed_core::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundleSet;
use crate::ca::Svid;
use crate::svid::{self, MAX_CHAIN_BYTES, MAX_CHAIN_DEPTH, SvidViolation};

/// Bundles shared between a control loop that updates them and the verifiers that read them.
pub type SharedBundles = Arc<ArcSwap<TrustBundleSet>>;

/// Wraps a bundle set for sharing.
pub fn shared(set: TrustBundleSet) -> SharedBundles {
    Arc::new(ArcSwap::from_pointee(set))
}

/// Which peer identities a verifier accepts (after the chain checks out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly these SPIFFE IDs.
    Ids(BTreeSet<SpiffeId>),
    /// Any workload in these trust domains.
    TrustDomains(BTreeSet<TrustDomain>),
    /// Any workload of a domain we hold a bundle for.
    AnyKnownDomain,
}

impl Expect {
    pub fn id(id: SpiffeId) -> Self {
        Self::Ids([id].into())
    }

    pub fn domain(td: TrustDomain) -> Self {
        Self::TrustDomains([td].into())
    }

    fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Ids(ids) => ids.contains(id),
            Self::TrustDomains(tds) => tds.contains(id.trust_domain()),
            Self::AnyKnownDomain => true,
        }
    }
}

/// Why a peer certificate was rejected. [`VerifyError::reason`] is a stable token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Svid(#[from] SvidViolation),
    #[error("no trust bundle for trust domain {0:?}")]
    UnknownTrustDomain(String),
    #[error("chain has {0} certificates; the limit is {MAX_CHAIN_DEPTH}")]
    ChainTooDeep(usize),
    #[error("chain is {0} bytes; the limit is {MAX_CHAIN_BYTES}")]
    ChainTooLarge(usize),
    #[error("chain rejected for trust domain {domain:?}: {detail}")]
    Chain {
        reason: &'static str,
        domain: String,
        detail: String,
    },
    #[error("peer {id} is not an allowed identity here ({expected})")]
    NotAllowed { id: String, expected: String },
}

impl VerifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Svid(v) => v.reason(),
            Self::UnknownTrustDomain(_) => "UnknownTrustDomain",
            Self::ChainTooDeep(_) => "ChainTooDeep",
            Self::ChainTooLarge(_) => "ChainTooLarge",
            Self::Chain { reason, .. } => reason,
            Self::NotAllowed { .. } => "IdentityNotAllowed",
        }
    }

    /// The meshfed reason behind a rustls error, if a meshfed verifier raised it.
    pub fn from_rustls(e: &rustls::Error) -> Option<&VerifyError> {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref()
            }
            _ => None,
        }
    }
}

impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

fn chain_reason(e: &webpki::Error) -> &'static str {
    let dbg = format!("{e:?}");
    let name = dbg.split(['(', ' ', '{']).next().unwrap_or_default();
    match name {
        "UnknownIssuer" => "UnknownIssuer",
        "BadSignature" | "InvalidSignatureForPublicKey" | "InvalidSignatureForPublicKeyContext" => {
            "BadSignature"
        }
        "CertExpired" => "Expired",
        "CertNotValidYet" => "NotYetValid",
        "CaUsedAsEndEntity" => "LeafIsCa",
        "EndEntityUsedAsCa" => "IssuerNotCa",
        "RequiredEkuNotFound" | "RequiredEkuNotFoundContext" => "WrongExtendedKeyUsage",
        "UnsupportedCriticalExtension" => "UnsupportedCriticalExtension",
        "PathLenConstraintViolated" => "PathLenConstraintViolated",
        "NameConstraintViolation" | "UnsupportedNameType" => "NameConstraintViolation",
        "MaximumSignatureChecksExceeded"
        | "MaximumPathBuildCallsExceeded"
        | "MaximumPathDepthExceeded" => "PathBuildingBudgetExceeded",
        n if n.starts_with("UnsupportedSignatureAlgorithm") => "WeakSignature",
        _ => "InvalidChain",
    }
}

/// The checks both verifiers share. Returns the verified SPIFFE ID.
fn verify_identity(
    bundles: &TrustBundleSet,
    expect: &Expect,
    provider: &CryptoProvider,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, VerifyError> {
    let depth = 1 + intermediates.len();
    if depth > MAX_CHAIN_DEPTH - 1 {
        return Err(VerifyError::ChainTooDeep(depth + 1));
    }
    let bytes = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
    if bytes > MAX_CHAIN_BYTES {
        return Err(VerifyError::ChainTooLarge(bytes));
    }
    let now_sys = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
    let id = svid::check_leaf(end_entity, now_sys)?;
    let bundle = bundles
        .get(id.trust_domain())
        .ok_or_else(|| VerifyError::UnknownTrustDomain(id.trust_domain().to_string()))?;
    let chain_err = |e: webpki::Error| VerifyError::Chain {
        reason: chain_reason(&e),
        domain: id.trust_domain().to_string(),
        detail: format!("{e:?}"),
    };
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(chain_err)?;
    // Returns how many intermediates the built path holds and the anchor's key.
    let verify = |anchors: &[rustls_pki_types::TrustAnchor<'_>]| {
        ee.verify_for_usage(
            provider.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|path| {
            (
                path.intermediate_certificates().count(),
                path.anchor().subject_public_key_info.to_vec(),
            )
        })
    };
    let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let valid = bundle.anchors_valid_at(now_s);
    let verified = verify(&valid);
    if let Ok((depth, spki)) = &verified
        && let Some(max) = bundle.path_len_of(spki)
        && *depth > usize::try_from(max).unwrap_or(usize::MAX)
    {
        return Err(VerifyError::Chain {
            reason: "PathLenConstraintViolated",
            domain: id.trust_domain().to_string(),
            detail: format!("{depth} intermediates below a root with pathLenConstraint {max}"),
        });
    }
    if let Err(e) = verified {
        // Would an expired (or not yet valid) root have accepted it? Then say so.
        if valid.len() < bundle.anchors().len() && verify(bundle.anchors()).is_ok() {
            return Err(VerifyError::Chain {
                reason: "RootExpired",
                domain: id.trust_domain().to_string(),
                detail: "the chain ends at a root outside its validity window".into(),
            });
        }
        return Err(chain_err(e));
    }
    if !expect.allows(&id) {
        return Err(VerifyError::NotAllowed {
            id: id.to_string(),
            expected: format!("{expect:?}"),
        });
    }
    Ok(id)
}

/// The handshake-signature checks both verifiers delegate to the crypto provider.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Server side: checks client SVIDs (mTLS is mandatory).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: SharedBundles,
    expect: ArcSwap<Expect>,
    provider: Arc<CryptoProvider>,
    /// Whether a client may connect without any certificate (only for calls that authorize
    /// otherwise, such as peering-token redemption). A certificate, if sent, is always checked.
    anonymous: bool,
    /// Refusals carry no detail (see [`SpiffeClientVerifier::reticent`]).
    reticent: bool,
}

impl SpiffeClientVerifier {
    pub fn new(bundles: SharedBundles, expect: Expect, provider: Arc<CryptoProvider>) -> Self {
        Self {
            bundles,
            expect: ArcSwap::from_pointee(expect),
            provider,
            anonymous: false,
            reticent: false,
        }
    }

    /// Refuses a certificate without saying why: every refusal is the same generic error.
    /// For QUIC, whose close frame carries the error text to the client (TLS over TCP sends
    /// only an alert), so a refused caller never learns which identities are expected.
    #[must_use]
    pub fn reticent(mut self) -> Self {
        self.reticent = true;
        self
    }

    /// Also lets clients connect without a certificate; the application must then refuse
    /// every call that needs an identity. Certificates that are sent are still verified.
    #[must_use]
    pub fn allow_anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// Changes which client identities are allowed, from the next handshake on.
    pub fn set_expect(&self, expect: Expect) {
        self.expect.store(Arc::new(expect));
    }

    /// The checks alone, without a handshake.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, VerifyError> {
        verify_identity(
            &self.bundles.load(),
            &self.expect.load(),
            &self.provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.anonymous
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(_) if self.reticent => Err(rustls::Error::InvalidCertificate(
                CertificateError::Other(OtherError(Arc::new(Refused))),
            )),
            Err(e) => Err(e.into()),
        }
    }

    handshake_signatures!();
}

/// A refused certificate, with no detail (what a reticent verifier says).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("certificate refused")]
pub struct Refused;

/// Client side: checks the server's SVID. The DNS name the client dialed plays no part;
/// the expected SPIFFE IDs decide.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: SharedBundles,
    expect: Expect,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(bundles: SharedBundles, expect: Expect, provider: Arc<CryptoProvider>) -> Self {
        Self {
            bundles,
            expect,
            provider,
        }
    }

    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, VerifyError> {
        verify_identity(
            &self.bundles.load(),
            &self.expect,
            &self.provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The process-wide crypto provider: aws-lc-rs, TLS 1.3 suites, X25519 first (so rustls does
/// not pick a post-quantum hybrid that peers lack), then P-256.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs as p;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            p::cipher_suite::TLS13_AES_128_GCM_SHA256,
            p::cipher_suite::TLS13_AES_256_GCM_SHA384,
            p::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![p::kx_group::X25519, p::kx_group::SECP256R1],
        ..p::default_provider()
    })
}

/// The current SVID of a workload or gateway, swappable at run time (renewal, rotation).
#[derive(Debug)]
pub struct SvidResolver {
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl SvidResolver {
    pub fn new(svid: &Svid, provider: Arc<CryptoProvider>) -> Result<Self, rustls::Error> {
        Self::from_chain(svid.chain.clone(), svid.private_key(), provider)
    }

    /// Presents an arbitrary chain and key (tests use this to present bad certificates).
    pub fn from_chain(
        chain: Vec<CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::Error> {
        let signer = provider.key_provider.load_private_key(key)?;
        Ok(Self {
            current: ArcSwap::from_pointee(CertifiedKey::new(chain, signer)),
            provider,
        })
    }

    fn certified(svid: &Svid, provider: &CryptoProvider) -> Result<CertifiedKey, rustls::Error> {
        let signer = provider.key_provider.load_private_key(svid.private_key())?;
        Ok(CertifiedKey::new(svid.chain.clone(), signer))
    }

    /// Presents `svid` from the next handshake on.
    pub fn set(&self, svid: &Svid) -> Result<(), rustls::Error> {
        self.current
            .store(Arc::new(Self::certified(svid, &self.provider)?));
        Ok(())
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS 1.3 server config that requires client SVIDs and never resumes sessions.
pub fn server_config(
    resolver: Arc<SvidResolver>,
    verifier: Arc<SpiffeClientVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    c.session_storage = Arc::new(NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    Ok(c)
}

/// A TLS 1.3 client config that presents an SVID and never resumes sessions.
pub fn client_config(
    resolver: Arc<SvidResolver>,
    verifier: Arc<SpiffeServerVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    c.resumption = Resumption::disabled();
    Ok(c)
}
