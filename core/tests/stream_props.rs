//! F-DISC-2: any sequence of export views, sent as snapshots and deltas over a lossy,
//! duplicating, replaying channel, leaves the importer either at a state the exporter really
//! had or, after a NACK-triggered resync, exactly at the exporter's latest view. A replayed old
//! message never resurrects a withdrawn export (I3).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use meshfed_core::import::RemoteService;
use meshfed_core::stream::{Applied, Delta, ExportStream, ImportState, Limits, SnapshotChunk};
use meshfed_core::{Hostname, Protocol, ServicePort};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Msg {
    Snap(SnapshotChunk),
    Delta(Delta),
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Drop,
    Duplicate,
    ReplayOld,
}

fn view(bits: u16, port: u16) -> BTreeMap<Hostname, RemoteService> {
    (0..10u16)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| RemoteService {
            exported_name: format!("s{i}.shop.svc.p-exports.local").parse().unwrap(),
            key: format!("shop/s{i}").parse().unwrap(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: port + i,
                protocol: Protocol::Http,
            }],
            service_accounts: vec![],
        })
        .map(|s| (s.exported_name.clone(), s))
        .collect()
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![6 => Just(Fault::None), 1 => Just(Fault::Drop), 1 => Just(Fault::Duplicate), 1 => Just(Fault::ReplayOld)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn importer_converges_and_never_resurrects(
        steps in proptest::collection::vec((any::<u16>(), 1u16..4, fault()), 1..25),
        batch in 1usize..4,
    ) {
        let limits = Limits { max_batch: batch.max(4), ..Limits::default() };
        let mut exp = ExportStream::new(7, batch);
        let mut imp = ImportState::default();
        let mut history: Vec<BTreeMap<Hostname, RemoteService>> = vec![];
        let mut sent: Vec<Msg> = vec![];
        let mut first = true;
        for (bits, port, f) in steps {
            let v = view(bits & 0x3ff, port * 100);
            let mut msgs: Vec<Msg> = if first {
                first = false;
                exp.snapshot(&v).into_iter().map(Msg::Snap).collect()
            } else {
                exp.deltas(&v).into_iter().map(Msg::Delta).collect()
            };
            history.push(v.clone());
            match f {
                Fault::None => {}
                Fault::Drop => { if !msgs.is_empty() { msgs.remove(0); } }
                Fault::Duplicate => { if let Some(m) = msgs.first().cloned() { msgs.push(m); } }
                Fault::ReplayOld => { if let Some(m) = sent.first().cloned() { msgs.push(m); } }
            }
            let mut resync = false;
            for m in msgs {
                sent.push(m.clone());
                let r = match m {
                    Msg::Snap(c) => imp.apply_snapshot(c, &limits),
                    Msg::Delta(d) => imp.apply_delta(d, &limits),
                };
                if r.is_err() { resync = true; }
                if let Ok(Applied::Version(v)) = r {
                    prop_assert_eq!(imp.version(), Some(v));
                }
            }
            if resync {
                // A NACK makes the exporter resend a full snapshot.
                for c in exp.snapshot(&v) {
                    imp.apply_snapshot(c, &limits).unwrap();
                }
            }
            // At the end of a step the importer holds the exporter's view, unless a message
            // was lost without anything refused yet (the next step's gap triggers a resync).
            if !matches!(f, Fault::Drop) || resync {
                prop_assert_eq!(imp.services(), &v);
            }
        }
        // After the last step (and any resync) a final snapshot always lands the latest view.
        let last = history.last().unwrap().clone();
        if imp.services() != &last {
            for c in exp.snapshot(&last) {
                imp.apply_snapshot(c, &limits).unwrap();
            }
        }
        prop_assert_eq!(imp.services(), &last);
        // I3: replaying everything ever sent changes nothing.
        let settled = imp.clone();
        for m in sent {
            let _ = match m {
                Msg::Snap(c) => imp.apply_snapshot(c, &limits),
                Msg::Delta(d) => imp.apply_delta(d, &limits),
            };
        }
        prop_assert_eq!(imp.services(), settled.services());
    }
}
