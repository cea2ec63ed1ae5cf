//! Shared helpers for trust tests: hand-built roots and leaves (rcgen), and real TLS
//! handshakes over loopback with the meshfed verifiers on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_trust::bundle::{TrustBundle, TrustBundleSet};
use meshfed_trust::verify::{
    self, Expect, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
    VerifyError,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn td(s: &str) -> TrustDomain {
    s.parse().unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

pub fn at(offset_secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs)
}

/// A hand-built CA certificate with its key.
pub struct Root {
    pub key: KeyPair,
    pub params: CertificateParams,
    pub cert: CertificateDer<'static>,
}

pub fn ca_params(trust_domain: &str, name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}").try_into().unwrap(),
    )];
    p.not_before = at(-3600);
    p.not_after = at(365 * 86400);
    p
}

impl Root {
    pub fn new(trust_domain: &str) -> Self {
        Self::with(trust_domain, |_| {})
    }

    pub fn with(trust_domain: &str, edit: impl FnOnce(&mut CertificateParams)) -> Self {
        let mut params = ca_params(trust_domain, &format!("{trust_domain} root"));
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        Self { key, params, cert }
    }

    /// An intermediate signed by this root.
    pub fn intermediate(
        &self,
        trust_domain: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Root {
        let mut params = ca_params(trust_domain, &format!("{trust_domain} intermediate"));
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &self.issuer())
            .unwrap()
            .der()
            .clone();
        Root { key, params, cert }
    }

    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    pub fn bundle(&self, trust_domain: &str) -> TrustBundle {
        TrustBundle::new(td(trust_domain), vec![self.cert.clone()], 1).unwrap()
    }

    /// Signs `params` with a new key of `alg`.
    pub fn sign_with(
        &self,
        params: &CertificateParams,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Credential {
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = params
            .signed_by(&key, &self.issuer())
            .unwrap()
            .der()
            .clone();
        Credential {
            chain: vec![cert],
            key_der: key.serialize_der(),
        }
    }

    pub fn sign(&self, params: &CertificateParams) -> Credential {
        self.sign_with(params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A correct workload leaf for `uri`.
    pub fn leaf(&self, uri: &str) -> Credential {
        self.sign(&leaf_params(uri))
    }
}

/// A correct SVID leaf's parameters for `uri`.
pub fn leaf_params(uri: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "test");
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = at(-600);
    p.not_after = at(3600);
    p
}

/// A chain (leaf first) and its PKCS#8 key.
#[derive(Clone)]
pub struct Credential {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Credential {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    pub fn with_chain(mut self, extra: &[CertificateDer<'static>]) -> Self {
        self.chain.extend_from_slice(extra);
        self
    }

    pub fn resolver(&self) -> Arc<SvidResolver> {
        Arc::new(
            SvidResolver::from_chain(self.chain.clone(), self.key(), verify::provider()).unwrap(),
        )
    }
}

impl From<&meshfed_trust::Svid> for Credential {
    fn from(s: &meshfed_trust::Svid) -> Self {
        let PrivateKeyDer::Pkcs8(k) = s.private_key() else {
            panic!("pkcs8")
        };
        Self {
            chain: s.chain.clone(),
            key_der: k.secret_pkcs8_der().to_vec(),
        }
    }
}

pub fn bundles(list: &[TrustBundle]) -> SharedBundles {
    let mut set = TrustBundleSet::new();
    for b in list {
        set.insert(b.clone()).unwrap();
    }
    verify::shared(set)
}

/// One side of a handshake: what it presents, what it trusts, whom it accepts.
pub struct Side {
    pub resolver: Arc<SvidResolver>,
    pub bundles: SharedBundles,
    pub expect: Expect,
}

/// The result of a handshake plus one round trip of application data.
#[derive(Debug)]
pub struct Outcome {
    /// Ok: the client identity the server verified; Err: the server's reason.
    pub server: Result<String, String>,
    pub client: Result<(), String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.server.is_ok() && self.client.is_ok()
    }

    /// The first meshfed reason either side gave.
    pub fn reason(&self) -> Option<String> {
        self.server
            .clone()
            .err()
            .or_else(|| self.client.clone().err())
    }
}

/// Reason token for an I/O error from a TLS stream.
pub fn reason_of(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref() else {
        return format!("io:{:?}", e.kind());
    };
    match inner.downcast_ref::<rustls::Error>() {
        Some(r) => match VerifyError::from_rustls(r) {
            Some(v) => v.reason().to_owned(),
            None => match r {
                rustls::Error::NoCertificatesPresented => "NoClientCertificate".into(),
                rustls::Error::AlertReceived(a) => format!("alert:{a:?}"),
                other => format!("tls:{other:?}"),
            },
        },
        None => format!("io:{inner}"),
    }
}

pub fn server_cfg(side: &Side) -> Arc<rustls::ServerConfig> {
    let v = Arc::new(SpiffeClientVerifier::new(
        side.bundles.clone(),
        side.expect.clone(),
        verify::provider(),
    ));
    Arc::new(verify::server_config(side.resolver.clone(), v, verify::provider()).unwrap())
}

pub fn client_cfg(side: &Side) -> Arc<rustls::ClientConfig> {
    let v = Arc::new(SpiffeServerVerifier::new(
        side.bundles.clone(),
        side.expect.clone(),
        verify::provider(),
    ));
    Arc::new(verify::client_config(side.resolver.clone(), v, verify::provider()).unwrap())
}

/// Runs one handshake over loopback and exchanges one message each way.
pub async fn handshake_with(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Outcome {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| reason_of(&e))?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| reason_of(&e))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| meshfed_trust::svid::spiffe_id_of(c).ok())
            .map(|i| i.to_string())
            .unwrap_or_default();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| reason_of(&e))?;
        tls.write_all(b"pong").await.map_err(|e| reason_of(&e))?;
        tls.shutdown().await.ok();
        Ok::<String, String>(peer)
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let client_result = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| reason_of(&e))?;
        let mut tls = connector
            .connect(ServerName::try_from("peer.mesh.test").unwrap(), tcp)
            .await
            .map_err(|e| reason_of(&e))?;
        tls.write_all(b"ping").await.map_err(|e| reason_of(&e))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| reason_of(&e))?;
        if &buf != b"pong" {
            return Err("bad echo".to_string());
        }
        Ok(())
    }
    .await;
    let server = tokio::time::timeout(Duration::from_secs(20), server_task)
        .await
        .map_err(|_| "timeout".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|r| r);
    Outcome {
        server,
        client: client_result,
    }
}

pub async fn handshake(server: &Side, client: &Side) -> Outcome {
    handshake_with(server_cfg(server), client_cfg(client)).await
}

pub fn now() -> SystemTime {
    SystemTime::now()
}
