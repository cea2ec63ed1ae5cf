//! Hostile-input vectors for the peering stream's messages, as an importer receives them from
//! a peer: every field of a service made hostile in turn, and every way a snapshot or delta can
//! break the stream's order and bounds. Each is refused with its NACK reason, and the importer's
//! state is exactly what it was before: a bad message changes nothing, and a good one still
//! applies afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_api::peering as pb;
use meshfed_core::TrustDomain;
use meshfed_core::stream::{ImportState, Limits};
use meshfed_peering::convert::{delta_from_wire, snapshot_from_wire};
use meshfed_test_support::hostile::Tally;

const PEER_TD: &str = "beta-mesh.local";

fn service(name: &str) -> pb::Service {
    pb::Service {
        exported_name: format!("{name}.shop.svc.alpha-exports.local"),
        namespace: "shop".into(),
        name: name.into(),
        ports: vec![
            pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: "HTTP".into(),
            },
            pb::Port {
                name: "grpc".into(),
                port: 9090,
                protocol: "GRPC".into(),
            },
        ],
        service_accounts: vec![format!("spiffe://{PEER_TD}/ns/shop/sa/{name}")],
    }
}

struct Importer {
    state: ImportState,
    td: TrustDomain,
    limits: Limits,
}

impl Importer {
    /// An importer at epoch 7, version 5, holding `orders`, `payments` and `stock`.
    fn new() -> Self {
        let mut me = Self {
            state: ImportState::default(),
            td: PEER_TD.parse().unwrap(),
            limits: Limits {
                max_services: 20,
                ..Limits::default()
            },
        };
        let snap = pb::Snapshot {
            epoch: 7,
            version: 5,
            chunk: 0,
            last: true,
            services: ["orders", "payments", "stock"].map(service).to_vec(),
        };
        assert_eq!(me.snapshot(snap), None);
        me
    }

    fn delta(&mut self, d: pb::Delta) -> Option<String> {
        let d = match delta_from_wire(d, &self.td, &self.limits) {
            Ok(d) => d,
            Err(n) => return Some(n.reason.to_owned()),
        };
        self.state
            .apply_delta(d, &self.limits)
            .err()
            .map(|n| n.reason.to_owned())
    }

    fn snapshot(&mut self, s: pb::Snapshot) -> Option<String> {
        let s = match snapshot_from_wire(s, &self.td, &self.limits) {
            Ok(s) => s,
            Err(n) => return Some(n.reason.to_owned()),
        };
        self.state
            .apply_snapshot(s, &self.limits)
            .err()
            .map(|n| n.reason.to_owned())
    }
}

/// A delta from version 5 to 6 that upserts `s`.
fn upsert(s: pb::Service) -> pb::Delta {
    pb::Delta {
        epoch: 7,
        base: 5,
        version: 6,
        upserts: vec![s],
        removals: vec![],
    }
}

const FOREIGN: &[&str] = &[
    " ", "\t", "\0", "\n", "@", ":", "/", "\\", "*", "_", "%", "?", "#", "A", "é", "\u{202e}",
    "\u{ff0e}", "[", ";", "..",
];

/// Every string `ok` becomes with one foreign piece inserted at each position.
fn spoiled(ok: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in FOREIGN {
        for i in 0..=ok.len() {
            out.push(format!("{}{c}{}", &ok[..i], &ok[i..]));
        }
    }
    out
}

#[test]
fn hostile_peering_messages_are_refused_with_their_reason_and_change_nothing() {
    let mut t = Tally::new("peering stream messages");
    let mut imp = Importer::new();
    let before = imp.state.clone();
    let try_delta = |t: &mut Tally, imp: &mut Importer, what: String, expected, d| {
        t.check(what, expected, || imp.delta(d));
        assert_eq!(
            imp.state, before,
            "a refused message changed the importer's state"
        );
    };
    // Each field of a service, made hostile.
    for bad in spoiled("orders.shop.svc.alpha-exports.local") {
        let mut s = service("orders");
        s.exported_name = bad.clone();
        try_delta(
            &mut t,
            &mut imp,
            format!("exported name {bad:?}"),
            "InvalidHostname",
            upsert(s),
        );
    }
    for name in [
        "other.shop.svc.alpha-exports.local",
        "orders.web.svc.alpha-exports.local",
        "orders.shop.svc.exports.local",
        "orders.shop.svc.a.b-exports.local",
        "orders.shop.svc.alpha-imports.local",
        "orders.shop.svc.cluster.local",
        "orders.shop.alpha-exports.local",
        "shop.orders.svc.alpha-exports.local",
        "orders.shop.svc.alpha-exports.local.evil",
    ] {
        let mut s = service("orders");
        s.exported_name = name.into();
        try_delta(
            &mut t,
            &mut imp,
            format!("exported name {name:?}"),
            "ExportedNameMismatch",
            upsert(s),
        );
    }
    for bad in spoiled("shop")
        .into_iter()
        .chain(["".into(), "a".repeat(64)])
    {
        let mut s = service("orders");
        s.namespace = bad.clone();
        try_delta(
            &mut t,
            &mut imp,
            format!("namespace {bad:?}"),
            "InvalidName",
            upsert(s),
        );
    }
    for bad in spoiled("orders")
        .into_iter()
        .chain(["".into(), "1orders".into()])
    {
        let mut s = service("orders");
        s.name = bad.clone();
        try_delta(
            &mut t,
            &mut imp,
            format!("name {bad:?}"),
            "InvalidName",
            upsert(s),
        );
    }
    for port in [0u32, 65_536, 70_000, u32::MAX] {
        let mut s = service("orders");
        s.ports[1].port = port;
        try_delta(
            &mut t,
            &mut imp,
            format!("port {port}"),
            "InvalidPort",
            upsert(s),
        );
    }
    for bad in spoiled("grpc")
        .into_iter()
        .chain(["".into(), "a".repeat(64)])
    {
        let mut s = service("orders");
        s.ports[1].name = bad.clone();
        try_delta(
            &mut t,
            &mut imp,
            format!("port name {bad:?}"),
            "InvalidName",
            upsert(s),
        );
    }
    for bad in [
        "",
        "http",
        "QUIC",
        "UDP",
        "HTTP3",
        "HTTP ",
        "H\0TTP",
        "Https",
        "websocket",
    ] {
        let mut s = service("orders");
        s.ports[1].protocol = bad.into();
        try_delta(
            &mut t,
            &mut imp,
            format!("protocol {bad:?}"),
            "UnknownProtocol",
            upsert(s),
        );
    }
    for (name, port) in [
        ("http", 9090),
        ("grpc", 8080),
        ("metrics", 8080),
        ("http", 1),
    ] {
        let mut s = service("orders");
        s.ports.push(pb::Port {
            name: name.into(),
            port,
            protocol: "TCP".into(),
        });
        try_delta(
            &mut t,
            &mut imp,
            format!("port {name}/{port} twice"),
            "DuplicatePort",
            upsert(s),
        );
    }
    let mut s = service("orders");
    s.ports = (1..=65)
        .map(|i| pb::Port {
            name: format!("p{i}"),
            port: i,
            protocol: "TCP".into(),
        })
        .collect();
    try_delta(
        &mut t,
        &mut imp,
        "65 ports".into(),
        "TooManyPorts",
        upsert(s),
    );
    let path = "/ns/shop/sa/orders";
    let in_path = [
        " ", "\t", "\0", "\n", "@", ":", "\\", "*", "%", "?", "#", "é", "\u{202e}", "[", ";", "~",
    ];
    let spoiled_accounts = in_path.iter().flat_map(|c| {
        (1..=path.len()).map(move |i| format!("spiffe://{PEER_TD}{}{c}{}", &path[..i], &path[i..]))
    });
    for bad in spoiled_accounts.chain([
        String::new(),
        format!("spiffe://{PEER_TD}"),
        format!("{PEER_TD}/ns/shop/sa/orders"),
    ]) {
        let mut s = service("orders");
        s.service_accounts = vec![bad.clone()];
        try_delta(
            &mut t,
            &mut imp,
            format!("service account {bad:?}"),
            "InvalidIdentity",
            upsert(s),
        );
    }
    for other in [
        "alpha-mesh.local",
        "gamma-mesh.local",
        "beta-mesh.local.evil",
        "beta-mesh",
    ] {
        let mut s = service("orders");
        s.service_accounts
            .push(format!("spiffe://{other}/ns/shop/sa/orders"));
        try_delta(
            &mut t,
            &mut imp,
            format!("service account of {other}"),
            "ForeignIdentity",
            upsert(s),
        );
    }
    let mut s = service("orders");
    s.service_accounts = (0..33)
        .map(|i| format!("spiffe://{PEER_TD}/ns/shop/sa/a{i}"))
        .collect();
    try_delta(
        &mut t,
        &mut imp,
        "33 service accounts".into(),
        "TooManyAccounts",
        upsert(s),
    );
    for bad in spoiled("stock.shop.svc.alpha-exports.local") {
        let mut d = upsert(service("orders"));
        d.removals = vec![bad.clone()];
        try_delta(
            &mut t,
            &mut imp,
            format!("removal {bad:?}"),
            "InvalidHostname",
            d,
        );
    }
    // The stream's order and bounds.
    for (what, epoch, base, version, expected) in [
        ("another epoch", 8, 5, 6, "EpochMismatch"),
        ("epoch 0", 0, 5, 6, "EpochMismatch"),
        ("a gap", 7, 4, 6, "VersionGap"),
        ("from the future", 7, 6, 7, "VersionGap"),
        ("from u64::MAX", 7, u64::MAX, 1, "VersionGap"),
        ("to the same version", 7, 5, 5, "VersionRegression"),
        ("backwards", 7, 5, 4, "VersionRegression"),
        ("to 0", 7, 5, 0, "VersionRegression"),
    ] {
        let mut d = upsert(service("orders"));
        (d.epoch, d.base, d.version) = (epoch, base, version);
        try_delta(&mut t, &mut imp, format!("delta {what}"), expected, d);
    }
    let mut d = upsert(service("orders"));
    d.upserts.push(service("orders"));
    try_delta(
        &mut t,
        &mut imp,
        "an upsert twice".into(),
        "DuplicateService",
        d,
    );
    let mut d = upsert(service("orders"));
    d.upserts = (0..18).map(|i| service(&format!("s{i}"))).collect();
    try_delta(
        &mut t,
        &mut imp,
        "21 services with a limit of 20".into(),
        "TooManyServices",
        d,
    );
    let mut d = upsert(service("orders"));
    d.removals = vec!["x.shop.svc.alpha-exports.local".into(); 1_001];
    try_delta(
        &mut t,
        &mut imp,
        "1,002 changes in one delta".into(),
        "BatchTooLarge",
        d,
    );
    // Snapshots out of order leave the state as it was too.
    for (what, chunk, last, version, expected) in [
        ("chunk 1 first", 1, true, 9, "ChunkOutOfOrder"),
        ("chunk 7 first", 7, false, 9, "ChunkOutOfOrder"),
        ("an old version", 0, true, 4, "VersionRegression"),
        ("the current version again", 0, true, 5, "VersionRegression"),
    ] {
        let snap = pb::Snapshot {
            epoch: 7,
            version,
            chunk,
            last,
            services: vec![service("orders")],
        };
        t.check(format!("snapshot {what}"), expected, || imp.snapshot(snap));
        assert_eq!(imp.state, before);
    }
    let snap = pb::Snapshot {
        epoch: 7,
        version: 9,
        chunk: 0,
        last: true,
        services: vec![service("orders"), service("orders")],
    };
    t.check(
        "a snapshot with a service twice",
        "DuplicateService",
        || imp.snapshot(snap),
    );
    assert_eq!(imp.state, before);
    // After all that, the stream goes on: a good delta applies.
    assert_eq!(imp.delta(upsert(service("refunds"))), None);
    assert_eq!(imp.state.version(), Some(6));
    assert_eq!(imp.state.services().len(), 4);
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}
