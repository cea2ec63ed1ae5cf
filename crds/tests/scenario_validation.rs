//! Bad lab scenarios: every shipped scenario is clean, and each broken variant of one is
//! refused with the expected reason at the expected field, with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use meshfed_crds::diag::Severity;
use meshfed_crds::validate::{Input, Report, validate};

const FAILOVER: &str = include_str!("../../scenarios/failover.yaml");
const ROTATION: &str = include_str!("../../scenarios/root-rotation.yaml");
const LIFECYCLE: &str = include_str!("../../scenarios/export-lifecycle.yaml");
const DRAIN: &str = include_str!("../../scenarios/drain.yaml");

fn run(text: &str) -> Report {
    validate(&[Input {
        file: "scenario.yaml",
        text,
    }])
}

/// `base` with the first `from` replaced by `to`; the base must contain `from`.
fn r(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "base lacks {from:?}");
    base.replacen(from, to, 1)
}

#[test]
fn the_bases_are_clean() {
    for base in [FAILOVER, ROTATION, LIFECYCLE, DRAIN] {
        let report = run(base);
        assert!(
            report.diagnostics.is_empty(),
            "{:?}",
            report
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn each_broken_scenario_names_reason_and_field() {
    let scale = "{at: 4s, action: scale, target: alpha/shop/orders, replicas: 0}";
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "scale beyond the prepared workloads",
            r(
                DRAIN,
                scale,
                "{at: 4s, action: scale, target: alpha/shop/orders, replicas: 3}",
            ),
            "InvalidReplicas",
            "spec.steps[0].replicas",
        ),
        (
            "scale without replicas",
            r(
                DRAIN,
                scale,
                "{at: 4s, action: scale, target: alpha/shop/orders}",
            ),
            "MissingField",
            "spec.steps[0].replicas",
        ),
        (
            "a repeat without every",
            r(
                FAILOVER,
                "{at: 4s, action: kill, target: alpha/shop/orders}",
                "{at: 4s, action: kill, target: alpha/shop/orders, repeat: 3}",
            ),
            "MissingField",
            "spec.steps[0].every",
        ),
        (
            "every without a repeat",
            r(
                FAILOVER,
                "{at: 4s, action: kill, target: alpha/shop/orders}",
                "{at: 4s, action: kill, target: alpha/shop/orders, every: 1s}",
            ),
            "EveryWithoutRepeat",
            "spec.steps[0].every",
        ),
        (
            "a repeat past the end of the run",
            r(
                FAILOVER,
                "{at: 4s, action: kill, target: alpha/shop/orders}",
                "{at: 4s, action: kill, target: alpha/shop/orders, repeat: 20, every: 1s}",
            ),
            "StepAfterEnd",
            "spec.steps[0].repeat",
        ),
        (
            "a repeat of 0",
            r(
                FAILOVER,
                "{at: 4s, action: kill, target: alpha/shop/orders}",
                "{at: 4s, action: kill, target: alpha/shop/orders, repeat: 0, every: 1s}",
            ),
            "OutOfRange",
            "spec.steps[0].repeat",
        ),
        (
            "a repeated rotation",
            r(
                ROTATION,
                "action: rotate, target: alpha}",
                "action: rotate, target: alpha, repeat: 2, every: 1s}",
            ),
            "RepeatNotAllowed",
            "spec.steps[0].repeat",
        ),
        (
            "certificates of 5 s",
            r(
                FAILOVER,
                "  duration: 16s",
                "  duration: 16s\n  svidTtl: 5s",
            ),
            "OutOfRange",
            "spec.svidTtl",
        ),
        (
            "certificatesIssued of 0",
            r(
                FAILOVER,
                "  - successRatio: 0.999",
                "  - certificatesIssued: {mesh: alpha, atLeast: 0}",
            ),
            "OutOfRange",
            "spec.expect[0].certificatesIssued.atLeast",
        ),
        (
            "certificatesIssued of an unknown mesh",
            r(
                FAILOVER,
                "  - successRatio: 0.999",
                "  - certificatesIssued: {mesh: gamma, atLeast: 1}",
            ),
            "UnknownMesh",
            "spec.expect[0].certificatesIssued.mesh",
        ),
        (
            "a peerStatus window ending before it starts",
            r(
                FAILOVER,
                "  - successRatio: 0.999",
                "  - peerStatus: {mesh: alpha, peer: beta, state: Active, from: 9s, by: 5s}",
            ),
            "EmptyWindow",
            "spec.expect[0].peerStatus.by",
        ),
        (
            "too many bulk services",
            r(
                FAILOVER,
                "    locality: {region: us-east, zone: us-east-1a}",
                "    locality: {region: us-east, zone: us-east-1a}\n    bulkServices: 20001",
            ),
            "OutOfRange",
            "spec.meshes[0].bulkServices",
        ),
        (
            "the sidecars of a service the mesh lacks",
            r(
                FAILOVER,
                "{at: 4s, action: kill, target: alpha/shop/orders}",
                "{at: 4s, action: kill, target: \"alpha:sidecars/shop/payments\"}",
            ),
            "UnknownService",
            "spec.steps[0].target",
        ),
        (
            "rotate an unknown mesh",
            r(
                ROTATION,
                "action: rotate, target: alpha}",
                "action: rotate, target: gamma}",
            ),
            "UnknownMesh",
            "spec.steps[0].target",
        ),
        (
            "delete what the mesh does not hold",
            r(
                LIFECYCLE,
                "target: beta/ExportedServiceSet/alpha",
                "target: beta/ExportedServiceSet/gamma",
            ),
            "NoSuchResource",
            "spec.steps[1].target",
        ),
        (
            "apply a ServiceMeshPeer",
            r(
                LIFECYCLE,
                "      kind: ExportedServiceSet\n      metadata: {name: alpha}\n      spec:\n        exportRules:",
                "      kind: ServiceMeshPeer\n      metadata: {name: alpha}\n      spec:\n        exportRules:",
            ),
            "PeerChangeUnsupported",
            "spec.steps[0].resource.kind",
        ),
        (
            "apply without a resource",
            r(
                FAILOVER,
                "{at: 4s, action: kill, target: alpha/shop/orders}",
                "{at: 4s, action: apply, target: alpha}",
            ),
            "MissingField",
            "spec.steps[0].resource",
        ),
        (
            "an applied resource is checked like a mesh file's",
            r(
                LIFECYCLE,
                "        - type: NameSelector\n          nameSelector: {namespace: shop, name: orders}\n  - {at: 9s",
                "        - type: NameSelectr\n          nameSelector: {namespace: shop, name: orders}\n  - {at: 9s",
            ),
            "UnknownRuleType",
            "spec.exportRules[0].type",
        ),
        (
            "a window without bounds",
            r(
                LIFECYCLE,
                "{from: 0s, to: 3s, atMost: 0}",
                "{from: 0s, to: 3s}",
            ),
            "MissingField",
            "spec.expect[0].successBetween.atLeast",
        ),
        (
            "an empty window",
            r(
                LIFECYCLE,
                "{from: 0s, to: 3s, atMost: 0}",
                "{from: 3s, to: 3s, atMost: 0}",
            ),
            "EmptyWindow",
            "spec.expect[0].successBetween.to",
        ),
        (
            "a share above one",
            r(
                LIFECYCLE,
                "{from: 5s, to: 9s, atLeast: 0.99}",
                "{from: 5s, to: 9s, atLeast: 1.5}",
            ),
            "InvalidShare",
            "spec.expect[1].successBetween.atLeast",
        ),
        (
            "peer status of an unknown peer",
            r(
                LIFECYCLE,
                "{mesh: alpha, peer: beta, state",
                "{mesh: alpha, peer: gamma, state",
            ),
            "UnknownPeer",
            "spec.expect[4].peerStatus.peer",
        ),
        (
            "peer status with an unknown state",
            r(LIFECYCLE, "state: Active", "state: Up"),
            "InvalidState",
            "spec.expect[4].peerStatus.state",
        ),
        (
            "peer status asking for nothing",
            r(
                LIFECYCLE,
                "{mesh: alpha, peer: beta, state: Active, condition: Connected}",
                "{mesh: alpha, peer: beta}",
            ),
            "MissingField",
            "spec.expect[4].peerStatus",
        ),
        (
            "a condition status that is not True or False",
            r(
                ROTATION,
                "condition: TrustBundleRejected, status: \"False\"",
                "condition: TrustBundleRejected, status: \"no\"",
            ),
            "InvalidStatus",
            "spec.expect[5].peerStatus.status",
        ),
        (
            "an unknown action lists the known ones",
            r(FAILOVER, "action: kill", "action: drain"),
            "UnknownAction",
            "spec.steps[0].action",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, reason, path) in &cases {
        let report = run(text);
        let hit = report.diagnostics.iter().find(|d| {
            d.severity == Severity::Error && d.reason == *reason && d.path.to_string() == *path
        });
        match hit {
            None => failures.push(format!(
                "{name}: expected {reason} at {path}, got:\n    {}",
                report
                    .diagnostics
                    .iter()
                    .map(|d| format!("{} {} {}", d.reason, d.path, d.message))
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )),
            Some(d) if d.line == 0 => failures.push(format!("{name}: no line number in {d}")),
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A repeated step is one timeline entry per play, interleaved in time order with the others.
#[test]
fn repeated_steps_play_in_time_order() {
    use meshfed_crds::validate::Converted;
    let text = include_str!("../../scenarios/faults/kill-cycles.yaml");
    let report = run(text);
    assert_eq!(report.errors(), 0);
    let plan = report
        .objects
        .iter()
        .find_map(|o| match &o.converted {
            Some(Converted::Scenario(p)) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    let labels: Vec<(u64, &str)> = plan
        .steps
        .iter()
        .map(|s| (s.at.as_secs(), s.label.as_str()))
        .collect();
    assert_eq!(labels.len(), 20);
    assert_eq!(labels[0], (2, "restart alpha:control (1/10)"));
    assert_eq!(labels[1], (3, "restart beta:control (1/10)"));
    assert_eq!(labels[19], (21, "restart beta:control (10/10)"));
    assert!(labels.windows(2).all(|w| w[0].0 <= w[1].0));
}
