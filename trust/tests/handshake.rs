//! Real TLS 1.3 handshakes on loopback with the meshfed verifiers on both sides: who may talk
//! to whom across trust domains, and 50+ bad-certificate vectors, each refused with its own
//! reason (security design §4.5, SEC-ID-1…4, SEC-ID-6).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::BTreeSet;

use meshfed_trust::verify::Expect;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};
use support::*;

const A_SERVER: &str = "spiffe://alpha.local/ns/shop/sa/orders";
const B_CLIENT: &str = "spiffe://beta.local/ns/shop/sa/frontend";

struct World {
    a: Root,
    b: Root,
    c: Root,
}

impl World {
    fn new() -> Self {
        Self {
            a: Root::new("alpha.local"),
            b: Root::new("beta.local"),
            c: Root::new("gamma.local"),
        }
    }

    /// A's server: trusts A and B, accepts any workload of those domains.
    fn a_server(&self) -> Side {
        Side {
            resolver: self.a.leaf(A_SERVER).resolver(),
            bundles: bundles(&[self.a.bundle("alpha.local"), self.b.bundle("beta.local")]),
            expect: Expect::TrustDomains([td("alpha.local"), td("beta.local")].into()),
        }
    }

    /// A client presenting `cred`, trusting A and expecting A's server.
    fn client(&self, cred: &Credential) -> Side {
        Side {
            resolver: cred.resolver(),
            bundles: bundles(&[self.a.bundle("alpha.local")]),
            expect: Expect::id(id(A_SERVER)),
        }
    }
}

#[tokio::test]
async fn same_mesh_and_cross_mesh_succeed() {
    let w = World::new();
    // A-client to A-server.
    let a_client = w.a.leaf("spiffe://alpha.local/ns/web/sa/ui");
    let out = handshake(&w.a_server(), &w.client(&a_client)).await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        out.server.as_deref(),
        Ok("spiffe://alpha.local/ns/web/sa/ui")
    );
    // B-client to A-server: A holds B's bundle and allows B's domain.
    let out = handshake(&w.a_server(), &w.client(&w.b.leaf(B_CLIENT))).await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.server.as_deref(), Ok(B_CLIENT));
}

#[tokio::test]
async fn cross_mesh_needs_bundle_and_allowed_identity() {
    let w = World::new();
    let b_client = w.b.leaf(B_CLIENT);
    // A without B's bundle.
    let server = Side {
        bundles: bundles(&[w.a.bundle("alpha.local")]),
        ..w.a_server()
    };
    let out = handshake(&server, &w.client(&b_client)).await;
    assert_eq!(out.server.err().as_deref(), Some("UnknownTrustDomain"));
    // A with B's bundle, but only one other B identity allowed.
    let server = Side {
        expect: Expect::id(id("spiffe://beta.local/ns/shop/sa/other")),
        ..w.a_server()
    };
    let out = handshake(&server, &w.client(&b_client)).await;
    assert_eq!(out.server.err().as_deref(), Some("IdentityNotAllowed"));
    // Exactly B's identity allowed.
    let server = Side {
        expect: Expect::Ids(BTreeSet::from([id(B_CLIENT)])),
        ..w.a_server()
    };
    assert!(handshake(&server, &w.client(&b_client)).await.ok());
}

#[tokio::test]
async fn client_rejects_a_server_outside_its_expectation() {
    let w = World::new();
    let b_client = w.b.leaf(B_CLIENT);
    // The server presents another A identity than the client expects.
    let server = Side {
        resolver: w
            .a
            .leaf("spiffe://alpha.local/ns/shop/sa/impostor")
            .resolver(),
        ..w.a_server()
    };
    let out = handshake(&server, &w.client(&b_client)).await;
    assert_eq!(out.client.err().as_deref(), Some("IdentityNotAllowed"));
    // The server's cert chains to B's root but claims A's domain: the client holds only A's bundle.
    let server = Side {
        resolver: w.b.leaf(A_SERVER).resolver(),
        ..w.a_server()
    };
    let out = handshake(&server, &w.client(&b_client)).await;
    assert_eq!(out.client.err().as_deref(), Some("UnknownIssuer"));
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn key_usage_ext(bits: u8, critical: bool) -> CustomExtension {
    // KeyUsage ::= BIT STRING; first bit is digitalSignature.
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, bits]);
    ext.set_criticality(critical);
    ext
}

fn with(edit: impl FnOnce(&mut CertificateParams)) -> CertificateParams {
    let mut p = leaf_params(B_CLIENT);
    edit(&mut p);
    p
}

/// Each vector: name, the credential the client presents to A's server, expected reason.
fn client_vectors(w: &World) -> Vec<(&'static str, Credential, &'static str)> {
    let b = &w.b;
    let inter = b.intermediate("beta.local", |_| {});
    let inter_leaf = inter.sign(&leaf_params(B_CLIENT));
    let mut v = vec![
        // --- SAN and identity (X3, ID1–ID7)
        (
            "no SAN",
            b.sign(&with(|p| p.subject_alt_names.clear())),
            "NoUriSan",
        ),
        (
            "DNS SAN only",
            b.sign(&with(|p| {
                p.subject_alt_names =
                    vec![SanType::DnsName("frontend.beta.local".try_into().unwrap())]
            })),
            "NoUriSan",
        ),
        (
            "email SAN only",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![SanType::Rfc822Name("a@beta.local".try_into().unwrap())]
            })),
            "NoUriSan",
        ),
        (
            "two URI SANs, one domain",
            b.sign(&with(|p| {
                p.subject_alt_names
                    .push(uri("spiffe://beta.local/ns/x/sa/y"))
            })),
            "MultipleUriSans",
        ),
        (
            "two URI SANs, two domains",
            b.sign(&with(|p| {
                p.subject_alt_names
                    .push(uri("spiffe://alpha.local/ns/x/sa/y"))
            })),
            "MultipleUriSans",
        ),
        (
            "spiffe and https URI",
            b.sign(&with(|p| {
                p.subject_alt_names.push(uri("https://beta.local/x"))
            })),
            "MultipleUriSans",
        ),
        (
            "https URI only",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("https://beta.local/ns/shop")]
            })),
            "NonSpiffeUri",
        ),
        (
            "upper-case scheme",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("SPIFFE://beta.local/ns/shop/sa/x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "upper-case trust domain",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://BETA.local/ns/shop/sa/x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "port in trust domain",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local:443/ns/x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "user info",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://u@beta.local/ns/x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "empty trust domain",
            b.sign(&with(|p| p.subject_alt_names = vec![uri("spiffe:///ns/x")])),
            "InvalidSpiffeId",
        ),
        (
            "root ID on leaf",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local")]
            })),
            "NoWorkloadPath",
        ),
        (
            "trailing slash",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local/")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "empty segment",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local//x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "dot segment",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local/./x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "dot-dot segment",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local/../x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "percent encoding",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local/%41")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "query",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local/x?q")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "fragment",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local/x#f")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "IPv6 trust domain",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://[::1]/x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "2049-byte ID",
            b.sign(&with(|p| {
                p.subject_alt_names =
                    vec![uri(&format!("spiffe://beta.local/{}", "a".repeat(2040)))]
            })),
            "InvalidSpiffeId",
        ),
        // --- leaf flags (X4)
        (
            "CA leaf",
            b.sign(&with(|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
            })),
            "LeafIsCa",
        ),
        (
            "keyCertSign on leaf",
            b.sign(&with(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign))),
            "LeafCanSign",
        ),
        (
            "cRLSign on leaf",
            b.sign(&with(|p| p.key_usages.push(KeyUsagePurpose::CrlSign))),
            "LeafCanSign",
        ),
        (
            "no digitalSignature",
            b.sign(&with(|p| {
                p.key_usages = vec![KeyUsagePurpose::KeyAgreement]
            })),
            "NoDigitalSignature",
        ),
        (
            "no key usage",
            b.sign(&with(|p| p.key_usages.clear())),
            "KeyUsageMissing",
        ),
        (
            "non-critical key usage",
            b.sign(&with(|p| {
                p.key_usages.clear();
                p.custom_extensions.push(key_usage_ext(0x80, false));
            })),
            "KeyUsageNotCritical",
        ),
        // --- EKU (X5)
        (
            "serverAuth only, as client",
            b.sign(&with(|p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
            })),
            "EkuMissingPurpose",
        ),
        (
            "clientAuth only",
            b.sign(&with(|p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
            })),
            "EkuMissingPurpose",
        ),
        (
            "emailProtection",
            b.sign(&with(|p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection]
            })),
            "EkuMissingPurpose",
        ),
        (
            "anyExtendedKeyUsage",
            b.sign(&with(|p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any]
            })),
            "EkuMissingPurpose",
        ),
        (
            "codeSigning",
            b.sign(&with(|p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]
            })),
            "EkuMissingPurpose",
        ),
        // --- validity (X1)
        (
            "expired",
            b.sign(&with(|p| {
                p.not_before = at(-7200);
                p.not_after = at(-3600);
            })),
            "Expired",
        ),
        (
            "expired a minute ago",
            b.sign(&with(|p| {
                p.not_before = at(-7200);
                p.not_after = at(-60);
            })),
            "Expired",
        ),
        (
            "not yet valid",
            b.sign(&with(|p| {
                p.not_before = at(3600);
                p.not_after = at(7200);
            })),
            "NotYetValid",
        ),
        (
            "notAfter before notBefore",
            b.sign(&with(|p| {
                p.not_before = at(-60);
                p.not_after = at(-120);
            })),
            "Expired",
        ),
        // --- trust domains and chains (X2, X6, X7)
        ("signed by C, claims B", w.c.leaf(B_CLIENT), "UnknownIssuer"),
        (
            "signed by B, claims A",
            b.leaf("spiffe://alpha.local/ns/shop/sa/evil"),
            "UnknownIssuer",
        ),
        (
            "unknown trust domain",
            w.c.leaf("spiffe://gamma.local/ns/shop/sa/x"),
            "UnknownTrustDomain",
        ),
        (
            "self-signed leaf",
            {
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = leaf_params(B_CLIENT)
                    .self_signed(&key)
                    .unwrap()
                    .der()
                    .clone();
                Credential {
                    chain: vec![cert],
                    key_der: key.serialize_der(),
                }
            },
            "UnknownIssuer",
        ),
        ("truncated chain", inter_leaf.clone(), "UnknownIssuer"),
        (
            "intermediate not a CA",
            {
                let not_ca = b.intermediate("beta.local", |p| p.is_ca = IsCa::ExplicitNoCa);
                not_ca
                    .sign(&leaf_params(B_CLIENT))
                    .with_chain(std::slice::from_ref(&not_ca.cert))
            },
            "IssuerNotCa",
        ),
        (
            "chain too deep",
            {
                let mut chain_roots = vec![b.intermediate("beta.local", |_| {})];
                for _ in 0..4 {
                    let next = chain_roots
                        .last()
                        .unwrap()
                        .intermediate("beta.local", |_| {});
                    chain_roots.push(next);
                }
                let leaf = chain_roots.last().unwrap().sign(&leaf_params(B_CLIENT));
                let extra: Vec<_> = chain_roots.iter().rev().map(|r| r.cert.clone()).collect();
                leaf.with_chain(&extra)
            },
            "ChainTooDeep",
        ),
        (
            "huge certificate",
            b.sign(&with(|p| {
                p.custom_extensions.push(CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 99999, 1],
                    vec![0x04, 0x82, 0x4e, 0x20]
                        .into_iter()
                        .chain(std::iter::repeat_n(0u8, 20000))
                        .collect(),
                ))
            })),
            "CertificateTooLarge",
        ),
        (
            "unknown critical extension",
            b.sign(&with(|p| {
                let mut e = CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 99999, 2],
                    vec![0x05, 0x00],
                );
                e.set_criticality(true);
                p.custom_extensions.push(e);
            })),
            "UnsupportedCriticalExtension",
        ),
        (
            "empty subject, non-critical SAN",
            b.sign(&with(|p| {
                p.distinguished_name = rcgen::DistinguishedName::new();
                p.subject_alt_names.clear();
                p.custom_extensions.push(san_ext(B_CLIENT, false));
            })),
            "EmptySubjectSanNotCritical",
        ),
        (
            "space in ID",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe://beta.local/ns/a b")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "scheme without slashes",
            b.sign(&with(|p| {
                p.subject_alt_names = vec![uri("spiffe:beta.local/ns/x")]
            })),
            "InvalidSpiffeId",
        ),
        (
            "P-384 leaf signed by an unrelated key",
            {
                let mut c = b.sign_with(&leaf_params(B_CLIENT), &rcgen::PKCS_ECDSA_P384_SHA384);
                c.key_der = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
                    .unwrap()
                    .serialize_der();
                c
            },
            "tls:InvalidCertificate(BadSignature)",
        ),
        (
            "no client certificate",
            Credential {
                chain: vec![],
                key_der: w.b.leaf(B_CLIENT).key_der,
            },
            "NoClientCertificate",
        ),
    ];
    // Identity checks after a valid chain.
    v.push((
        "valid B identity, A allows only A",
        b.leaf(B_CLIENT),
        "IdentityNotAllowed*",
    ));
    v.push((
        "intermediate expired",
        {
            let old = b.intermediate("beta.local", |p| {
                p.not_before = at(-7200);
                p.not_after = at(-60);
            });
            old.sign(&leaf_params(B_CLIENT))
                .with_chain(std::slice::from_ref(&old.cert))
        },
        "Expired",
    ));
    v
}

/// A SubjectAltName extension holding one URI, built by hand so its criticality can be chosen.
fn san_ext(uri: &str, critical: bool) -> CustomExtension {
    let mut general_name = vec![0x86, u8::try_from(uri.len()).unwrap()];
    general_name.extend_from_slice(uri.as_bytes());
    let mut seq = vec![0x30, u8::try_from(general_name.len()).unwrap()];
    seq.extend(general_name);
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 17], seq);
    ext.set_criticality(critical);
    ext
}

#[tokio::test]
async fn bad_roots_in_the_bundle_are_refused() {
    let w = World::new();
    let expired = Root::with("beta.local", |p| {
        p.not_before = at(-7200);
        p.not_after = at(-60);
    });
    let tight = Root::with("beta.local", |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0))
    });
    let tight_inter = tight.intermediate("beta.local", |_| {});
    // NameConstraints { permittedSubtrees [0] { GeneralSubtree { uniformResourceIdentifier } } },
    // built by hand: rcgen cannot express URI constraints.
    let constrained = Root::with("beta.local", |p| {
        let base = b".beta.local";
        let mut name = vec![0x86, u8::try_from(base.len()).unwrap()];
        name.extend_from_slice(base);
        let mut subtree = vec![0x30, u8::try_from(name.len()).unwrap()];
        subtree.extend(name);
        let mut permitted = vec![0xa0, u8::try_from(subtree.len()).unwrap()];
        permitted.extend(subtree);
        let mut nc = vec![0x30, u8::try_from(permitted.len()).unwrap()];
        nc.extend(permitted);
        let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 30], nc);
        ext.set_criticality(true);
        p.custom_extensions.push(ext);
    });
    let cases = vec![
        (
            "expired root",
            expired.leaf(B_CLIENT),
            &expired,
            "RootExpired",
        ),
        (
            "path length exceeded",
            tight_inter
                .sign(&leaf_params(B_CLIENT))
                .with_chain(std::slice::from_ref(&tight_inter.cert)),
            &tight,
            "PathLenConstraintViolated",
        ),
        (
            "root with a URI name constraint",
            constrained.leaf(B_CLIENT),
            &constrained,
            "NameConstraintViolation",
        ),
    ];
    for (name, cred, root, expected) in cases {
        let server = Side {
            bundles: bundles(&[w.a.bundle("alpha.local"), root.bundle("beta.local")]),
            ..w.a_server()
        };
        let out = handshake(&server, &w.client(&cred)).await;
        assert_eq!(
            out.server.as_ref().err().map(String::as_str),
            Some(expected),
            "{name}: {out:?}"
        );
    }
}

#[tokio::test]
async fn bad_client_certificates_are_refused_with_their_reason() {
    let w = World::new();
    let vectors = client_vectors(&w);
    assert!(vectors.len() >= 50, "only {} vectors", vectors.len());
    let mut t = meshfed_test_support::hostile::Tally::new("client certificates (TLS handshake)");
    for (name, cred, expected) in &vectors {
        let mut server = w.a_server();
        let expected = match expected.strip_suffix('*') {
            Some(e) => {
                server.expect = Expect::domain(td("alpha.local"));
                e
            }
            None => expected,
        };
        let out = if cred.chain.is_empty() {
            // A client without a certificate: rustls refuses to build a resolver with no chain.
            handshake_with(server_cfg(&server), no_cert_client(&w)).await
        } else {
            handshake(&server, &w.client(cred)).await
        };
        let got = match (&out.server, out.ok()) {
            (_, true) => None,
            (Err(reason), _) => Some(reason.clone()),
            (Ok(_), false) => Some(format!("refused by the client only: {:?}", out.client)),
        };
        t.record(name, expected, got.as_deref());
    }
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}

fn no_cert_client(w: &World) -> std::sync::Arc<rustls::ClientConfig> {
    let v = std::sync::Arc::new(meshfed_trust::SpiffeServerVerifier::new(
        bundles(&[w.a.bundle("alpha.local")]),
        Expect::id(id(A_SERVER)),
        meshfed_trust::verify::provider(),
    ));
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(meshfed_trust::verify::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(v)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn unusual_but_valid_certificates_pass() {
    let w = World::new();
    let inter = w.b.intermediate("beta.local", |_| {});
    let cases = vec![
        ("no EKU", w.b.sign(&with(|p| p.extended_key_usages.clear()))),
        (
            "DNS SAN before the URI SAN",
            w.b.sign(&with(|p| {
                p.subject_alt_names
                    .insert(0, SanType::DnsName("x.beta.local".try_into().unwrap()))
            })),
        ),
        (
            "intermediate in the chain",
            inter
                .sign(&leaf_params(B_CLIENT))
                .with_chain(std::slice::from_ref(&inter.cert)),
        ),
        (
            "P-384 key",
            w.b.sign_with(&leaf_params(B_CLIENT), &rcgen::PKCS_ECDSA_P384_SHA384),
        ),
        (
            "Ed25519 key",
            w.b.sign_with(&leaf_params(B_CLIENT), &rcgen::PKCS_ED25519),
        ),
        (
            "keyAgreement beside digitalSignature",
            w.b.sign(&with(|p| p.key_usages.push(KeyUsagePurpose::KeyAgreement))),
        ),
    ];
    for (name, cred) in cases {
        let out = handshake(&w.a_server(), &w.client(&cred)).await;
        assert!(out.ok(), "{name}: {out:?}");
    }
}

#[tokio::test]
async fn bad_server_certificates_are_refused_by_the_client() {
    let w = World::new();
    let b_client = w.b.leaf(B_CLIENT);
    let server_with = |edit: fn(&mut CertificateParams)| {
        let mut p = leaf_params(A_SERVER);
        edit(&mut p);
        Side {
            resolver: w.a.sign(&p).resolver(),
            ..w.a_server()
        }
    };
    let cases: Vec<(&str, Side, &str)> = vec![
        (
            "clientAuth-only server",
            server_with(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]),
            "EkuMissingPurpose",
        ),
        (
            "expired server",
            server_with(|p| {
                p.not_before = at(-7200);
                p.not_after = at(-1);
            }),
            "Expired",
        ),
        (
            "CA server leaf",
            server_with(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            "LeafIsCa",
        ),
        (
            "server without SPIFFE ID",
            server_with(|p| {
                p.subject_alt_names =
                    vec![SanType::DnsName("orders.alpha.local".try_into().unwrap())]
            }),
            "NoUriSan",
        ),
    ];
    for (name, server, expected) in cases {
        let out = handshake(&server, &w.client(&b_client)).await;
        assert_eq!(
            out.client.as_ref().err().map(String::as_str),
            Some(expected),
            "{name}: {out:?}"
        );
        assert!(out.server.is_err(), "{name}: server completed");
    }
}

#[test]
fn crls_are_off() {
    // SEC-ID-8: the verifiers pass no revocation options to webpki; a certificate with a CRL
    // distribution point verifies like any other.
    let w = World::new();
    let cred = w.b.sign(&with(|p| {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec!["http://crl.invalid/b.crl".into()],
        }];
    }));
    let v = meshfed_trust::SpiffeClientVerifier::new(
        bundles(&[w.b.bundle("beta.local")]),
        Expect::AnyKnownDomain,
        meshfed_trust::verify::provider(),
    );
    let id = v
        .check(&cred.chain[0], &[], rustls_pki_types::UnixTime::now())
        .unwrap();
    assert_eq!(id.to_string(), B_CLIENT);
}
