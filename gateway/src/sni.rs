//! Reading the server name (SNI) and ALPN offer from a TLS ClientHello without terminating
//! TLS: the gateways route client-to-server mTLS connections by the name the client asked
//! for, and pass the bytes on untouched.
//!
//! The parser is written for hostile input. It reads at most [`MAX_CLIENT_HELLO`] bytes of
//! handshake data (a ClientHello may span several TLS records, RFC 8446 §5.1), checks every
//! length against what encloses it, refuses duplicate extensions (RFC 8446 §4.2) and more than
//! one host name (RFC 6066 §3), and returns a name only if it is a valid DNS host name — never
//! an IP literal, an empty name or one with bytes outside DNS's alphabet. It never panics and
//! never allocates more than the bytes it was given.

use meshfed_core::Hostname;

/// Largest ClientHello handshake message accepted (a real one with many extensions and a
/// post-quantum key share stays well below; 16 KiB is also one TLS record's limit).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Bytes on the wire that can hold a ClientHello of [`MAX_CLIENT_HELLO`]: the message plus a
/// 5-byte header for each record it may be split across (at worst one byte each is absurd;
/// allow up to 64 records).
pub const MAX_PEEK: usize = MAX_CLIENT_HELLO + 4 + 64 * 5;

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const MAX_RECORDS: usize = 64;

/// What a ClientHello offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The requested server name, canonical (lower case, no trailing dot).
    pub server_name: Hostname,
    /// ALPN protocol names, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// How many bytes of the stream the records holding the ClientHello took.
    pub consumed: usize,
}

/// Why no server name could be read. [`SniError::reason`] is a stable token for logs and
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("not a TLS handshake (first byte {0:#04x})")]
    NotTls(u8),
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("the ClientHello names no server")]
    NoServerName,
    #[error("the server name is not a valid DNS host name: {0}")]
    BadServerName(String),
}

impl SniError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotTls(_) => "NotTls",
            Self::TooLarge => "ClientHelloTooLarge",
            Self::Malformed(_) => "MalformedClientHello",
            Self::NoServerName => "NoServerName",
            Self::BadServerName(_) => "BadServerName",
        }
    }
}

/// A cursor that refuses to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(SniError::Malformed(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Reads the ClientHello at the start of `buf`: `Ok(None)` while more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<ClientHello>, SniError> {
    // Gather the handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut pos = 0;
    let mut records = 0;
    let message_len = loop {
        if let Some(&first) = buf.get(pos)
            && first != RECORD_HANDSHAKE
        {
            return Err(if pos == 0 {
                SniError::NotTls(first)
            } else {
                SniError::Malformed("a non-handshake record inside the ClientHello")
            });
        }
        let Some(header) = buf.get(pos..pos + 5) else {
            return Ok(None);
        };
        if header[1] != 3 || header[2] > 4 {
            return Err(SniError::Malformed("record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(SniError::Malformed("empty handshake record"));
        }
        if len > 16 * 1024 {
            return Err(SniError::Malformed("record longer than 2^14"));
        }
        records += 1;
        if records > MAX_RECORDS {
            return Err(SniError::TooLarge);
        }
        let Some(body) = buf.get(pos + 5..pos + 5 + len) else {
            return Ok(None);
        };
        handshake.extend_from_slice(body);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(SniError::Malformed(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let n = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if n > MAX_CLIENT_HELLO {
                return Err(SniError::TooLarge);
            }
            if handshake.len() >= 4 + n {
                break n;
            }
        }
        if handshake.len() > MAX_CLIENT_HELLO + 4 {
            return Err(SniError::TooLarge);
        }
    };
    let mut hello = parse_body(&handshake[4..4 + message_len])?;
    hello.consumed = pos;
    Ok(Some(hello))
}

/// The ClientHello body (after the 4-byte handshake header).
fn parse_body(body: &[u8]) -> Result<ClientHello, SniError> {
    let mut r = Reader::new(body);
    let version = r.u16("legacy_version")?;
    if version < 0x0301 {
        return Err(SniError::Malformed("legacy_version below TLS 1.0"));
    }
    r.take(32, "random")?;
    let session_id = r.vec8("legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(SniError::Malformed(
            "legacy_session_id longer than 32 bytes",
        ));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(SniError::Malformed("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(SniError::Malformed("legacy_compression_methods"));
    }
    if r.is_empty() {
        // No extensions at all: so no server name.
        return Err(SniError::NoServerName);
    }
    let mut exts = Reader::new(r.vec16("extensions")?);
    if !r.is_empty() {
        return Err(SniError::Malformed("bytes after the extensions"));
    }
    let mut seen = Vec::new();
    let mut name = None;
    let mut alpn = Vec::new();
    while !exts.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if seen.contains(&kind) {
            return Err(SniError::Malformed("an extension appears twice"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => name = Some(server_name(data)?),
            EXT_ALPN => alpn = protocols(data)?,
            _ => {}
        }
    }
    let raw = name.ok_or(SniError::NoServerName)?;
    let server_name = valid_name(raw)?;
    Ok(ClientHello {
        server_name,
        alpn,
        consumed: 0,
    })
}

/// `server_name` (RFC 6066 §3): exactly one `host_name` entry.
fn server_name(data: &[u8]) -> Result<&[u8], SniError> {
    let mut r = Reader::new(data);
    let mut list = Reader::new(r.vec16("server_name_list")?);
    if !r.is_empty() {
        return Err(SniError::Malformed("bytes after server_name_list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8("name_type")?;
        let name = list.vec16("host_name")?;
        if kind == 0 {
            if host.is_some() {
                return Err(SniError::Malformed("more than one host_name"));
            }
            host = Some(name);
        }
    }
    host.ok_or(SniError::NoServerName)
}

/// `application_layer_protocol_negotiation` (RFC 7301 §3.1): non-empty names.
fn protocols(data: &[u8]) -> Result<Vec<Vec<u8>>, SniError> {
    let mut r = Reader::new(data);
    let mut list = Reader::new(r.vec16("protocol_name_list")?);
    if !r.is_empty() {
        return Err(SniError::Malformed("bytes after protocol_name_list"));
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let p = list.vec8("protocol_name")?;
        if p.is_empty() {
            return Err(SniError::Malformed("empty protocol_name"));
        }
        out.push(p.to_vec());
    }
    if out.is_empty() {
        return Err(SniError::Malformed("empty protocol_name_list"));
    }
    Ok(out)
}

/// A DNS host name: printable ASCII only (shown escaped otherwise), not an IP literal.
fn valid_name(raw: &[u8]) -> Result<Hostname, SniError> {
    let shown = || {
        raw.escape_ascii()
            .to_string()
            .chars()
            .take(80)
            .collect::<String>()
    };
    let text = std::str::from_utf8(raw).map_err(|_| SniError::BadServerName(shown()))?;
    if text.parse::<std::net::IpAddr>().is_ok() {
        return Err(SniError::BadServerName(format!(
            "{} (an IP address)",
            shown()
        )));
    }
    Hostname::canonicalize(text).map_err(|e| SniError::BadServerName(format!("{}: {e}", shown())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A ClientHello handshake message (no record header) with these extensions.
    pub(crate) fn hello_message(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        let mut e = Vec::new();
        for (kind, data) in exts {
            e.extend(kind.to_be_bytes());
            e.extend(u16::try_from(data.len()).unwrap().to_be_bytes());
            e.extend(data);
        }
        body.extend(u16::try_from(e.len()).unwrap().to_be_bytes());
        body.extend(e);
        let mut msg = vec![1];
        let n = u32::try_from(body.len()).unwrap().to_be_bytes();
        msg.extend(&n[1..]);
        msg.extend(body);
        msg
    }

    /// `msg` in TLS records of at most `chunk` bytes each.
    pub(crate) fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in msg.chunks(chunk) {
            out.extend([22, 3, 1]);
            out.extend(u16::try_from(c.len()).unwrap().to_be_bytes());
            out.extend(c);
        }
        out
    }

    pub(crate) fn sni(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(0);
            list.extend(u16::try_from(n.len()).unwrap().to_be_bytes());
            list.extend(*n);
        }
        let mut d = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
        d.extend(list);
        d
    }

    fn alpn(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(u8::try_from(n.len()).unwrap());
            list.extend(*n);
        }
        let mut d = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
        d.extend(list);
        d
    }

    #[test]
    fn reads_the_name_and_alpn_whole_or_split_across_records() {
        let msg = hello_message(&[
            (
                EXT_SERVER_NAME,
                sni(&[b"Orders.Shop.svc.Beta-Mesh-Exports.local."]),
            ),
            (EXT_ALPN, alpn(&[b"h2", b"http/1.1"])),
            (43, vec![2, 3, 4]),
        ]);
        for chunk in [msg.len(), 100, 7] {
            let wire = records(&msg, chunk);
            let h = parse(&wire).unwrap().unwrap();
            assert_eq!(
                h.server_name.as_str(),
                "orders.shop.svc.beta-mesh-exports.local"
            );
            assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
            assert_eq!(h.consumed, wire.len());
            // Every shorter prefix asks for more, never errs or guesses.
            for cut in 0..wire.len() {
                assert_eq!(
                    parse(&wire[..cut]),
                    Ok(None),
                    "cut at {cut} of {}",
                    wire.len()
                );
            }
        }
    }

    #[test]
    fn a_real_rustls_client_hello_parses() {
        let provider = meshfed_trust::verify::provider();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls_pki_types::ServerName::try_from("echo.shop.svc.cluster.local").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).unwrap();
        let h = parse(&wire).unwrap().unwrap();
        assert_eq!(h.server_name.as_str(), "echo.shop.svc.cluster.local");
        assert_eq!(h.alpn, vec![b"h2".to_vec()]);
        assert_eq!(h.consumed, wire.len());
    }

    #[test]
    fn hostile_hellos_are_refused_with_a_reason() {
        let ok = |exts: &[(u16, Vec<u8>)]| records(&hello_message(exts), 16_000);
        let reason = |wire: &[u8]| {
            parse(wire)
                .map(|h| h.map(|h| h.server_name))
                .unwrap_err()
                .reason()
        };
        assert_eq!(reason(b"GET / HTTP/1.1\r\n\r\n"), "NotTls");
        assert_eq!(reason(&ok(&[])), "NoServerName");
        assert_eq!(reason(&ok(&[(43, vec![])])), "NoServerName");
        assert_eq!(
            reason(&ok(&[(EXT_SERVER_NAME, sni(&[b"a.b", b"c.d"]))])),
            "MalformedClientHello"
        );
        assert_eq!(
            reason(&ok(&[
                (EXT_SERVER_NAME, sni(&[b"a.b"])),
                (EXT_SERVER_NAME, sni(&[b"a.b"]))
            ])),
            "MalformedClientHello"
        );
        for bad in [
            &b"10.0.0.1"[..],
            b"",
            b"a..b",
            b"a b",
            b"a\0b",
            b"\xff\xfe",
            b"-a.b",
            b"[::1]",
        ] {
            assert_eq!(
                reason(&ok(&[(EXT_SERVER_NAME, sni(&[bad]))])),
                "BadServerName",
                "{bad:?}"
            );
        }
        // An ALPN list with an empty name.
        assert_eq!(
            reason(&ok(&[
                (EXT_SERVER_NAME, sni(&[b"a.b"])),
                (EXT_ALPN, alpn(&[b""]))
            ])),
            "MalformedClientHello"
        );
        // A length that points past its enclosure.
        let mut m = hello_message(&[(EXT_SERVER_NAME, sni(&[b"a.b"]))]);
        let last = m.len() - 1;
        m[last - 5] = 0xff;
        assert!(parse(&records(&m, 16_000)).is_err());
        // A handshake that is not a ClientHello, and one claiming 1 MiB.
        assert_eq!(
            reason(&records(&[2, 0, 0, 1, 0], 100)),
            "MalformedClientHello"
        );
        assert_eq!(
            reason(&records(&[1, 0x10, 0, 0, 0], 100)),
            "ClientHelloTooLarge"
        );
        // A ClientHello split into more records than anyone sends.
        let msg = hello_message(&[(EXT_SERVER_NAME, sni(&[b"orders.shop.svc.cluster.local"]))]);
        assert!(msg.len() > MAX_RECORDS);
        assert_eq!(reason(&records(&msg, 1)), "ClientHelloTooLarge");
        // A change-cipher-spec record in the middle.
        let msg = hello_message(&[(EXT_SERVER_NAME, sni(&[b"a.b"]))]);
        let mut wire = records(&msg[..10], 10);
        wire.extend([20, 3, 3, 0, 1, 1]);
        assert_eq!(reason(&wire), "MalformedClientHello");
    }
}
