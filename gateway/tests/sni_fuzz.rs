//! F-SNI: the ClientHello reader never panics, never reads past what it was given, and
//! answers the same for the same bytes — on arbitrary input and on mutations of valid
//! ClientHellos (bytes flipped, lengths changed, records re-split, truncated).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_gateway::sni::parse;
use proptest::prelude::*;

fn hello(name: &[u8], split: usize) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([9u8; 32]);
    body.push(0);
    body.extend([0, 2, 0x13, 0x01, 1, 0]);
    let mut sni = vec![0];
    sni.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
    sni.extend(name);
    let mut ext = vec![0, 0];
    ext.extend(u16::try_from(sni.len() + 2).unwrap().to_be_bytes());
    ext.extend(u16::try_from(sni.len()).unwrap().to_be_bytes());
    ext.extend(sni);
    body.extend(u16::try_from(ext.len()).unwrap().to_be_bytes());
    body.extend(ext);
    let mut msg = vec![1];
    msg.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend(body);
    let mut out = Vec::new();
    for c in msg.chunks(split.max(1)) {
        out.extend([22, 3, 1]);
        out.extend(u16::try_from(c.len()).unwrap().to_be_bytes());
        out.extend(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let a = parse(&bytes);
        prop_assert_eq!(a.clone(), parse(&bytes));
        if let Ok(Some(h)) = a {
            prop_assert!(h.consumed <= bytes.len());
        }
    }

    #[test]
    fn mutated_hellos_never_panic(
        name in "[a-z]{1,20}(\\.[a-z]{1,20}){0,4}",
        split in 3usize..400,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = hello(name.as_bytes(), split);
        let clean = parse(&wire).unwrap().unwrap();
        prop_assert_eq!(clean.server_name.as_str(), name.as_str());
        for (i, b) in &flips {
            let i = i.index(wire.len());
            wire[i] = *b;
        }
        let cut = cut.index(wire.len() + 1);
        if let Ok(Some(h)) = parse(&wire[..cut]) {
            prop_assert!(h.consumed <= cut);
        }
    }
}

/// The reason `parse` refuses `wire` with (`None`: a name was read or more bytes are needed).
fn refusal(wire: &[u8]) -> Option<String> {
    parse(wire).err().map(|e| e.reason().to_owned())
}

/// `wire` with byte `at` set to `v`.
fn set(wire: &[u8], at: usize, v: u8) -> Vec<u8> {
    let mut w = wire.to_vec();
    w[at] = v;
    w
}

/// `wire` with the big-endian u16 at `at` moved by `delta`.
fn shift16(wire: &[u8], at: usize, delta: i32) -> Option<Vec<u8>> {
    let v = i32::from(u16::from_be_bytes([wire[at], wire[at + 1]])) + delta;
    let v = u16::try_from(v).ok()?;
    let mut w = wire.to_vec();
    w[at..at + 2].copy_from_slice(&v.to_be_bytes());
    Some(w)
}

/// Generated vectors at every field of a ClientHello (one record, offsets as `hello` lays them
/// out): each refused with its reason, as the ingress counts it.
#[test]
fn hostile_client_hellos_are_refused_with_their_reason() {
    use meshfed_test_support::hostile::Tally;
    let name = "orders.shop.svc.beta-imports.local";
    let good = hello(name.as_bytes(), 4096);
    assert_eq!(parse(&good).unwrap().unwrap().server_name.as_str(), name);
    let mut t = Tally::new("SNI (ClientHello)");
    for v in (0..=255u8).filter(|&v| v != 22) {
        t.check(format!("record type {v}"), "NotTls", || {
            refusal(&set(&good, 0, v))
        });
    }
    for v in (0..=255u8).filter(|&v| v != 3) {
        t.check(
            format!("record major version {v}"),
            "MalformedClientHello",
            || refusal(&set(&good, 1, v)),
        );
    }
    for v in 5..=255u8 {
        t.check(
            format!("record minor version {v}"),
            "MalformedClientHello",
            || refusal(&set(&good, 2, v)),
        );
    }
    for len in [0u16, 16_385, 20_000, u16::MAX] {
        let mut w = good.clone();
        w[3..5].copy_from_slice(&len.to_be_bytes());
        t.check(
            format!("record length {len}"),
            "MalformedClientHello",
            || refusal(&w),
        );
    }
    for v in (0..=255u8).filter(|&v| v != 1) {
        t.check(
            format!("handshake type {v}"),
            "MalformedClientHello",
            || refusal(&set(&good, 5, v)),
        );
    }
    for len in [16_385u32, 65_536, 0xff_ffff] {
        let mut w = good.clone();
        w[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
        t.check(
            format!("handshake length {len}"),
            "ClientHelloTooLarge",
            || refusal(&w),
        );
    }
    for (a, b) in [(3u8, 0u8), (2, 0), (0, 0), (1, 255), (0, 3)] {
        let mut w = good.clone();
        w[9..11].copy_from_slice(&[a, b]);
        t.check(
            format!("legacy version {a}.{b}"),
            "MalformedClientHello",
            || refusal(&w),
        );
    }
    for v in 33..=255u8 {
        t.check(
            format!("session id length {v}"),
            "MalformedClientHello",
            || refusal(&set(&good, 43, v)),
        );
    }
    for delta in [-2, -1, 1, 3] {
        let w = shift16(&good, 44, delta).unwrap();
        t.check(
            format!("cipher suites length {delta:+}"),
            "MalformedClientHello",
            || refusal(&w),
        );
    }
    t.check("no compression methods", "MalformedClientHello", || {
        refusal(&set(&good, 48, 0))
    });
    // Every length inside the extensions, off by a little in either direction.
    for (at, what) in [
        (50, "extensions"),
        (54, "extension data"),
        (56, "server name list"),
        (59, "host name"),
    ] {
        for delta in [-9, -5, -3, -2, -1, 1, 2, 3, 5, 9, 300] {
            let Some(w) = shift16(&good, at, delta) else {
                continue;
            };
            t.check(
                format!("{what} length {delta:+}"),
                "MalformedClientHello",
                || refusal(&w),
            );
        }
    }
    for v in 1..=255u8 {
        t.check(format!("name type {v}"), "NoServerName", || {
            refusal(&set(&good, 58, v))
        });
    }
    for kind in (1..=300u16).filter(|&k| k != 16) {
        let mut w = good.clone();
        w[52..54].copy_from_slice(&kind.to_be_bytes());
        t.check(
            format!("extension type {kind} instead of SNI"),
            "NoServerName",
            || refusal(&w),
        );
    }
    // Host names no ingress may route: foreign characters at every position, bytes that are
    // not UTF-8, IP literals, empty and over-long labels.
    let foreign = [
        " ", "\t", "\0", "\u{7f}", "@", ":", "/", "\\", "*", "_", "%", "?", "#", "é", "\u{202e}",
        "\u{ff0e}", "[", "]", ",", ";",
    ];
    for c in foreign {
        for i in 0..=name.len() {
            let n = format!("{}{c}{}", &name[..i], &name[i..]);
            t.check(format!("host name {n:?}"), "BadServerName", || {
                refusal(&hello(n.as_bytes(), 4096))
            });
        }
    }
    for raw in [
        &b"\xff\xfe"[..],
        b"orders.\xc3",
        b"\xed\xa0\x80.local",
        b"127.0.0.1",
        b"::1",
        b"10.0.0.1",
        b"fe80::1",
        b"",
        b".",
        b"a..b",
        b".orders",
        b"-orders.local",
        b"orders-.local",
    ] {
        t.check(
            format!("host name {:?}", raw.escape_ascii().to_string()),
            "BadServerName",
            || refusal(&hello(raw, 4096)),
        );
    }
    let long_label = format!("{}.local", "a".repeat(64));
    let long_name = vec!["a".repeat(63); 5].join(".");
    for n in [long_label, long_name] {
        t.check(
            format!("host name of {} bytes", n.len()),
            "BadServerName",
            || refusal(&hello(n.as_bytes(), 4096)),
        );
    }
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}
