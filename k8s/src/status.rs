//! CRD status, written with server-side apply under one field manager (`meshfed`): every
//! federation resource gets an `Accepted` condition (`False` with the validator's reason and
//! every error when it was left out, so the other resources are unaffected) carrying the
//! `metadata.generation` it was computed from; a `ServiceMeshPeer` also gets the peering
//! conditions (`Connected`, `Stale`, `TrustBundleRejected`, `ImportRejected`…) and Maistra's
//! `discoveryStatus` from the peering node's status; an `ExportedServiceSet` its
//! `exportedServices` and an `ImportedServiceSet` its `importedServices` (every export of the
//! peer, with an empty `localService` where no import rule matched, as Maistra lists them). A status is applied only when it changed, so an idle control plane
//! writes nothing; only the replica holding the Lease ([`crate::lease`]) writes. Transitions
//! are recorded as Events (`events.k8s.io/v1`): a resource refused (Warning, the validator's
//! reason) or accepted again, a peer connected or disconnected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use tokio::sync::watch;

use meshfed_peering::status::NodeStatus;

use crate::render::Rendered;
use crate::source::federation_resources;

/// The field manager of every status meshfed writes.
pub const FIELD_MANAGER: &str = "meshfed";

/// The peering node's status, as it changes.
pub type PeeringStatus = watch::Receiver<Arc<NodeStatus>>;

/// A time in ms since the epoch as RFC 3339 (null when absent).
fn rfc3339(ms: Option<u64>) -> Value {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(Value::Null, Value::String)
}

/// A `ServiceMeshPeer`'s `discoveryStatus` as Maistra shapes it, for this control-plane pod:
/// `watch` is our import from the peer, `remotes` the peer's import from us (its `source` is
/// the peer's name: its connections arrive through the gateways, so an address would name a
/// gateway pod). The pod is `active` while its watch is connected.
fn discovery_status(peering: Option<&NodeStatus>, peer: &str, pod: &str) -> Value {
    let Some(import) = peering.and_then(|p| p.import(peer)) else {
        return Value::Null;
    };
    let i = &import.status;
    let watch = json!({
        "connected": i.connected,
        "lastConnected": rfc3339(i.last_connected_ms),
        "lastEvent": rfc3339(i.last_event_ms),
        "lastFullSync": rfc3339(i.last_full_sync_ms),
        "lastDisconnect": rfc3339(i.last_disconnect_ms),
        "lastDisconnectStatus": i.last_disconnect_reason,
    });
    let remotes: Vec<Value> = peering
        .and_then(|p| p.exports.get(peer))
        .map(|e| {
            json!({
                "source": peer,
                "connected": e.connected,
                "lastDisconnectStatus": e.last_close_reason,
            })
        })
        .into_iter()
        .collect();
    let entry = json!({"pod": pod, "watch": watch, "remotes": remotes});
    if i.connected {
        json!({"active": [entry], "inactive": []})
    } else {
        json!({"active": [], "inactive": [entry]})
    }
}

/// The services a service set's status lists (`status.exportedServices` of the
/// `ExportedServiceSet` for `peer`, `status.importedServices` of the `ImportedServiceSet` for
/// it), from the peering node's status; always a list (the field is required).
fn listed(peering: Option<&NodeStatus>, kind: &str, peer: &str) -> Value {
    let services = match kind {
        "ExportedServiceSet" => peering
            .and_then(|p| p.exports.get(peer))
            .map(|e| &e.services),
        _ => peering.and_then(|p| p.import(peer)).map(|i| &i.services),
    };
    services.map_or_else(|| json!([]), |s| json!(s))
}

/// The field a service set's status lists its services in.
fn list_field(kind: &str) -> Option<&'static str> {
    match kind {
        "ExportedServiceSet" => Some("exportedServices"),
        "ImportedServiceSet" => Some("importedServices"),
        _ => None,
    }
}

/// The status of every federation resource `r` names, by (kind, name), as this control-plane
/// pod (`pod`) sees it.
pub fn statuses(
    r: &Rendered,
    peering: Option<&NodeStatus>,
    pod: &str,
    now: &str,
) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    let condition =
        |type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>| {
            let mut c = json!({
                "type": type_,
                "status": if ok { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            });
            if let Some(g) = generation {
                c["observedGeneration"] = json!(g);
            }
            c
        };
    for (kind, name, generation) in &r.accepted {
        let mut conditions = vec![condition(
            "Accepted",
            true,
            "Valid",
            "the resource is valid and in force",
            *generation,
        )];
        if kind == "ServiceMeshPeer" {
            if let Some(p) = r.root_problems.iter().find(|p| &p.peer == name) {
                conditions.push(condition(
                    "CertificateChainLoaded",
                    false,
                    &p.reason,
                    &p.message,
                    *generation,
                ));
            } else if r.peer_roots.iter().any(|p| &p.peer == name) {
                conditions.push(condition(
                    "CertificateChainLoaded",
                    true,
                    "Loaded",
                    "the peer's roots from the named ConfigMap are trusted",
                    *generation,
                ));
            }
        }
        // The peering conditions go on the ServiceMeshPeer; those of applying the import
        // rules (`ImportConflict`, `ExportNotImported`) on the ImportedServiceSet too.
        if (kind == "ServiceMeshPeer" || kind == "ImportedServiceSet")
            && let Some(p) = peering.and_then(|p| p.import(name))
        {
            for c in p
                .status
                .conditions
                .iter()
                .filter(|c| kind == "ServiceMeshPeer" || c.type_.is_import_rule())
            {
                conditions.push(condition(
                    c.type_.as_str(),
                    c.status,
                    &c.reason,
                    &c.message,
                    *generation,
                ));
            }
        }
        let mut status = json!({"conditions": conditions});
        if let Some(field) = list_field(kind) {
            status[field] = listed(peering, kind, name);
        }
        if kind == "ServiceMeshPeer" {
            status["discoveryStatus"] = discovery_status(peering, name, pod);
        }
        out.insert((kind.clone(), name.clone()), status);
    }
    for f in &r.refused {
        let mut status = json!({"conditions": [condition("Accepted", false, &f.reason, &f.message, f.generation)]});
        if let Some(field) = list_field(&f.kind) {
            status[field] = json!([]);
        }
        out.insert((f.kind.clone(), f.name.clone()), status);
    }
    out
}

/// Conditions without their transition times (what decides whether a status changed).
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(cs) = v["conditions"].as_array_mut() {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// The condition `type_` of a status, as (status, reason).
fn condition_of(status: &Value, type_: &str) -> Option<(String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"].as_str() == Some(type_)).then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// The Events a status change is worth: a resource accepted or refused, a peer connected or
/// disconnected. (type, reason, note).
pub fn transitions(before: Option<&Value>, after: &Value) -> Vec<(EventType, String, String)> {
    let mut out = Vec::new();
    let was = |t: &str| before.and_then(|b| condition_of(b, t));
    if let Some((st, reason)) = condition_of(after, "Accepted")
        && was("Accepted").map(|w| w.0) != Some(st.clone())
    {
        if st == "True" {
            if before.is_some() {
                out.push((
                    EventType::Normal,
                    "Accepted".into(),
                    "the resource is valid and in force".into(),
                ));
            }
        } else {
            out.push((
                EventType::Warning,
                reason,
                "the resource is invalid and left out; see status.conditions".into(),
            ));
        }
    }
    if let Some((st, reason)) = condition_of(after, "Connected")
        && was("Connected").map(|w| w.0) != Some(st.clone())
    {
        if st == "True" {
            out.push((
                EventType::Normal,
                "PeerConnected".into(),
                "the peering stream is up".into(),
            ));
        } else if was("Connected").is_some() {
            out.push((
                EventType::Warning,
                reason,
                "the peering stream is down".into(),
            ));
        }
    }
    out
}

/// Applies statuses as they change while `leader` says this replica leads (a new leader
/// applies everything once), and records Events for transitions; until `rendered`'s sender is
/// gone.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    namespace: String,
    mut rendered: watch::Receiver<Arc<Rendered>>,
    mut peering: Option<PeeringStatus>,
    mut leader: watch::Receiver<bool>,
    identity: String,
    every: Duration,
) {
    let apis: BTreeMap<String, (Api<DynamicObject>, String)> = federation_resources()
        .into_iter()
        .map(|ar| {
            let api = Api::namespaced_with(client.clone(), &namespace, &ar);
            (ar.kind.clone(), (api, ar.api_version.clone()))
        })
        .collect();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "meshfed-control".into(),
            instance: Some(identity.clone()),
        },
    );
    let mut applied: BTreeMap<(String, String), Value> = BTreeMap::new();
    loop {
        let r = rendered.borrow_and_update().clone();
        let leads = *leader.borrow_and_update();
        if !leads {
            applied.clear();
        }
        let peer_status = peering.as_mut().map(|p| p.borrow_and_update().clone());
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let want = if leads {
            statuses(&r, peer_status.as_deref(), &identity, &now)
        } else {
            BTreeMap::new()
        };
        for ((kind, name), status) in &want {
            let key = (kind.clone(), name.clone());
            let before = applied.get(&key);
            if before.map(comparable) == Some(comparable(status)) {
                continue;
            }
            let Some((api, api_version)) = apis.get(kind) else {
                continue;
            };
            let events = transitions(before, status);
            let patch = json!({
                "apiVersion": api_version,
                "kind": kind,
                "status": status,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
                Ok(_) => {
                    applied.insert(key, status.clone());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    applied.remove(&key);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("writing the status of {kind} {name} failed: {e}");
                    continue;
                }
            }
            let reference = ObjectReference {
                api_version: Some(api_version.clone()),
                kind: Some(kind.clone()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectReference::default()
            };
            for (type_, reason, note) in events {
                let ev = Event {
                    type_,
                    reason,
                    note: Some(note),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::warn!("recording an event on {kind} {name} failed: {e}");
                }
            }
        }
        applied.retain(|k, _| want.contains_key(k));
        tokio::select! {
            changed = rendered.changed() => if changed.is_err() { return },
            _ = leader.changed() => {}
            () = async {
                let changed = match peering.as_mut() {
                    Some(p) => p.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    std::future::pending::<()>().await;
                }
            } => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}
