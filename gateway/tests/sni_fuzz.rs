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
