//! Reading certificates from PEM or DER, strictly: no trailing garbage, no private keys mixed
//! into certificate files, bounded size and count.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject, SectionKind};

/// Most certificates one file may hold.
pub const MAX_CERTS: usize = 64;

/// Why a certificate or CSR file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("{0} bytes is too large for a certificate file")]
    TooLarge(usize),
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    #[error("the file holds a private key; certificate files must not")]
    PrivateKey,
    #[error("the file holds a PEM section that is not a certificate")]
    NotACertificate,
    #[error("more than {MAX_CERTS} certificates")]
    TooManyCertificates,
    #[error("trailing data after the last PEM block")]
    TrailingData,
    #[error("no certificate found")]
    Empty,
    #[error("not a PEM certificate request: {0}")]
    NotACsr(String),
}

impl PemError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "FileTooLarge",
            Self::InvalidPem(_) => "InvalidPem",
            Self::PrivateKey => "PrivateKeyInCertificateFile",
            Self::NotACertificate => "NotACertificate",
            Self::TooManyCertificates => "TooManyCertificates",
            Self::TrailingData => "TrailingData",
            Self::Empty => "NoCertificate",
            Self::NotACsr(_) => "NotACsr",
        }
    }
}

/// Certificates from PEM text (or a single DER certificate given as bytes).
pub fn certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certificates_from_bytes(text.as_bytes())
}

/// Certificates from PEM or DER bytes.
pub fn certificates_from_bytes(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    if bytes.len() > crate::svid::MAX_CHAIN_BYTES * 4 {
        return Err(PemError::TooLarge(bytes.len()));
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateDer::from(bytes.to_vec())]);
    }
    let mut out = Vec::new();
    let mut last_end = 0;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| PemError::InvalidPem(e.to_string()))?;
        match kind {
            SectionKind::Certificate => out.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err(PemError::PrivateKey);
            }
            _ => return Err(PemError::NotACertificate),
        }
        if out.len() > MAX_CERTS {
            return Err(PemError::TooManyCertificates);
        }
    }
    let text = String::from_utf8_lossy(bytes);
    if let Some(i) = text.rfind("-----END ") {
        last_end = text[i..].find('\n').map_or(text.len(), |n| i + n);
    }
    if !text[last_end.min(text.len())..].trim().is_empty() {
        return Err(PemError::TrailingData);
    }
    if out.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(out)
}

/// A CSR from PEM or DER bytes, as DER.
pub fn csr_from_bytes(bytes: &[u8]) -> Result<Vec<u8>, PemError> {
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(bytes)
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| PemError::NotACsr(e.to_string()))
}
