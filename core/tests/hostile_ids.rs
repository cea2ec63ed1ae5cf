//! Hostile-input vectors for SPIFFE IDs, trust domains and host names (the forms every peer
//! message, certificate, SNI and CRD field is read through). Generated: every character a
//! name must not hold at every position, every structural break, every length limit; each
//! refused with its own reason. The parsers are pure, so nothing else can be affected.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_core::id::SpiffeId;
use meshfed_core::{Hostname, Namespace, ServiceName, TrustDomain};
use meshfed_test_support::hostile::Tally;

const TD: &str = "alpha-mesh.local";
const PATH: &str = "/ns/shop/sa/orders";

/// Characters no trust domain, DNS name or SPIFFE path segment may hold, with nothing else to
/// mean (`?`, `#`, `%` and `/` have their own vectors).
const FOREIGN: &[char] = &[
    ' ', '\t', '\n', '\r', '\0', '\u{7f}', '@', ':', '[', ']', '*', '\\', '!', '$', '&', '\'', '(',
    ')', '+', ',', ';', '=', '~', '"', '<', '>', '^', '`', '{', '}', '|', 'é', 'ß', 'İ',
    '\u{202e}', '\u{200b}', '\u{ff0e}', '\u{3002}', '\u{feff}', 'ａ',
];

fn spiffe(s: &str) -> Option<String> {
    s.parse::<SpiffeId>().err().map(|e| e.reason().to_owned())
}

fn workload(s: &str) -> Option<String> {
    SpiffeId::parse_workload(s)
        .err()
        .map(|e| e.reason().to_owned())
}

#[test]
fn hostile_spiffe_ids_are_refused_with_their_reason() {
    let mut t = Tally::new("SPIFFE IDs");
    // A foreign character at every position of the trust domain and of the path.
    for &c in FOREIGN.iter().chain(['A', 'Z'].iter()) {
        for i in 0..=TD.len() {
            let td = format!("{}{c}{}", &TD[..i], &TD[i..]);
            let id = format!("spiffe://{td}{PATH}");
            t.check(format!("{id:?}"), "InvalidTrustDomainCharacter", || {
                spiffe(&id)
            });
        }
    }
    for &c in FOREIGN {
        for i in (1..=PATH.len()).filter(|&i| i == PATH.len() || &PATH[i..=i] != "/") {
            let id = format!("spiffe://{TD}{}{c}{}", &PATH[..i], &PATH[i..]);
            t.check(format!("{id:?}"), "InvalidPathCharacter", || spiffe(&id));
        }
    }
    // `?`, `#` and `%` anywhere after the scheme.
    let base = format!("spiffe://{TD}{PATH}");
    for (c, expected) in [
        ('?', "QueryOrFragment"),
        ('#', "QueryOrFragment"),
        ('%', "PercentEncoded"),
    ] {
        for i in "spiffe://".len()..=base.len() {
            let id = format!("{}{c}{}", &base[..i], &base[i..]);
            t.check(format!("{id:?}"), expected, || spiffe(&id));
        }
    }
    // Path structure: doubled, dot and trailing segments at every slash.
    let slashes: Vec<usize> = PATH.match_indices('/').map(|(i, _)| i).collect();
    for &i in &slashes {
        let doubled = format!("spiffe://{TD}{}/{}", &PATH[..i], &PATH[i..]);
        t.check(format!("{doubled:?}"), "EmptyPathSegment", || {
            spiffe(&doubled)
        });
        for dots in [".", ".."] {
            let id = format!("spiffe://{TD}{}/{dots}{}", &PATH[..i], &PATH[i..]);
            t.check(format!("{id:?}"), "DotPathSegment", || spiffe(&id));
        }
        let trailing = format!("spiffe://{TD}{}/", &PATH[..i.max(1)].trim_end_matches('/'));
        if i > 0 {
            t.check(format!("{trailing:?}"), "TrailingSlash", || {
                spiffe(&trailing)
            });
        }
    }
    // Schemes.
    for scheme in [
        "SPIFFE://",
        "Spiffe://",
        "spiffe:/",
        "spiffe:",
        "spiffe//",
        "spiffe:///",
        " spiffe://",
        "https://",
        "spiffe\u{0}://",
        "",
        "//",
        "spiffé://",
    ] {
        let id = format!("{scheme}{TD}{PATH}");
        let expected = if scheme == "spiffe:///" {
            "EmptyTrustDomain"
        } else {
            "BadScheme"
        };
        t.check(format!("{id:?}"), expected, || spiffe(&id));
    }
    // Trust-domain structure and the length limits.
    for td in [".alpha", "alpha.", "alpha..local", ".", "..", "a...b"] {
        let id = format!("spiffe://{td}{PATH}");
        t.check(format!("{id:?}"), "TrustDomainEmptyLabel", || spiffe(&id));
    }
    let long_td = "a".repeat(256);
    let id = format!("spiffe://{long_td}{PATH}");
    t.check("trust domain of 256 bytes", "TrustDomainTooLong", || {
        spiffe(&id)
    });
    for n in [2049, 4096, 1 << 20] {
        let id = format!("spiffe://{TD}/{}", "a".repeat(n));
        t.check(format!("ID of {n} bytes"), "SpiffeIdTooLong", || {
            spiffe(&id)
        });
    }
    t.check("empty ID", "EmptySpiffeId", || spiffe(""));
    for id in ["spiffe://", "spiffe:///ns/a"] {
        t.check(format!("{id:?}"), "EmptyTrustDomain", || spiffe(id));
    }
    for id in [format!("spiffe://{TD}"), "spiffe://example.org".to_owned()] {
        t.check(format!("workload {id:?}"), "MissingPath", || workload(&id));
    }
    // The control of the test: the unbroken forms parse.
    assert_eq!(spiffe(&base), None);
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}

fn name_reason<T: std::str::FromStr<Err = meshfed_core::name::NameError>>(
    s: &str,
) -> Option<String> {
    s.parse::<T>().err().map(|e| e.reason().to_owned())
}

#[test]
fn hostile_host_and_kubernetes_names_are_refused_with_their_reason() {
    let mut t = Tally::new("host and Kubernetes names");
    let host = "orders.shop.svc.beta-imports.local";
    for &c in FOREIGN.iter().chain(['A', '_', '/', '?', '#', '%'].iter()) {
        for i in 0..=host.len() {
            let h = format!("{}{c}{}", &host[..i], &host[i..]);
            t.check(format!("host {h:?}"), "InvalidCharacter", || {
                name_reason::<Hostname>(&h)
            });
        }
        for (what, ok) in [("namespace", "shop"), ("service", "orders")] {
            for i in 0..=ok.len() {
                let n = format!("{}{c}{}", &ok[..i], &ok[i..]);
                let got = if what == "namespace" {
                    name_reason::<Namespace>(&n)
                } else {
                    name_reason::<ServiceName>(&n)
                };
                t.record(format!("{what} {n:?}"), "InvalidCharacter", got.as_deref());
            }
        }
    }
    // Label structure at every label of the host name.
    let labels: Vec<&str> = host.split('.').collect();
    for i in 0..labels.len() {
        let with = |label: &str| {
            let mut l: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
            l[i] = label.to_owned();
            l.join(".")
        };
        for (label, expected) in [
            (String::new(), "EmptyLabel"),
            (format!("-{}", labels[i]), "BadStart"),
            (format!("{}-", labels[i]), "BadEnd"),
            ("a".repeat(64), "LabelTooLong"),
        ] {
            let h = with(&label);
            t.check(format!("host {h:?}"), expected, || {
                name_reason::<Hostname>(&h)
            });
        }
    }
    for (h, expected) in [
        (String::new(), "Empty"),
        (format!("{host}."), "EmptyLabel"),
        (format!(".{host}"), "EmptyLabel"),
        (vec!["a".repeat(63); 4].join("."), "TooLong"),
        ("a.".repeat(127) + "a", "TooLong"),
    ] {
        t.check(format!("host of {} bytes", h.len()), expected, || {
            name_reason::<Hostname>(&h)
        });
    }
    for (n, expected) in [
        ("", "Empty"),
        ("-shop", "BadStart"),
        ("shop-", "BadEnd"),
        ("shop.prod", "InvalidCharacter"),
    ] {
        t.check(format!("namespace {n:?}"), expected, || {
            name_reason::<Namespace>(n)
        });
    }
    let long = "a".repeat(64);
    t.check("namespace of 64 bytes", "TooLong", || {
        name_reason::<Namespace>(&long)
    });
    t.check("service name starting with a digit", "BadStart", || {
        name_reason::<ServiceName>("1orders")
    });
    // Trust domains are read the same way wherever they come from (bundles, tokens, CRDs).
    for &c in FOREIGN {
        let td = format!("alpha{c}mesh.local");
        t.check(
            format!("trust domain {td:?}"),
            "InvalidTrustDomainCharacter",
            || {
                td.parse::<TrustDomain>()
                    .err()
                    .map(|e| e.reason().to_owned())
            },
        );
    }
    assert_eq!(name_reason::<Hostname>(host), None);
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}
