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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use meshfed_crds::common::{Condition, PeerServiceMapping, ServiceKey};
use meshfed_crds::exports::ExportedServiceSetStatus;
use meshfed_crds::imports::ImportedServiceSetStatus;
use meshfed_crds::peer::{
    DiscoveryConnectionStatus, DiscoveryRemoteStatus, PodPeerDiscoveryStatus,
    ServiceMeshPeerDiscoveryStatus, ServiceMeshPeerStatus,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use meshfed_peering::status::NodeStatus;

use crate::render::Rendered;
use crate::source::federation_resources;

/// The field manager of every status meshfed writes.
pub const FIELD_MANAGER: &str = "meshfed";

/// The peering node's status, as it changes.
pub type PeeringStatus = watch::Receiver<Arc<NodeStatus>>;

/// A time in ms since the epoch.
fn time_of(ms: Option<u64>) -> Option<Time> {
    let ms = i64::try_from(ms?).ok()?;
    Timestamp::from_millisecond(ms).ok().map(Time)
}

/// A `ServiceMeshPeer`'s `discoveryStatus` as Maistra shapes it, for this control-plane pod:
/// `watch` is our import from the peer, `remotes` the peer's import from us (its `source` is
/// the peer's name: its connections arrive through the gateways, so an address would name a
/// gateway pod). The pod is `active` while its watch is connected.
fn discovery_status(
    peering: Option<&NodeStatus>,
    peer: &str,
    pod: &str,
) -> Option<ServiceMeshPeerDiscoveryStatus> {
    let i = &peering?.import(peer)?.status;
    let watch = DiscoveryConnectionStatus {
        connected: i.connected,
        last_connected: time_of(i.last_connected_ms),
        last_event: time_of(i.last_event_ms),
        last_full_sync: time_of(i.last_full_sync_ms),
        last_disconnect: time_of(i.last_disconnect_ms),
        last_disconnect_status: i.last_disconnect_reason.clone(),
    };
    let remotes: Vec<DiscoveryRemoteStatus> = peering
        .and_then(|p| p.exports.get(peer))
        .map(|e| DiscoveryRemoteStatus {
            source: peer.to_owned(),
            connection: DiscoveryConnectionStatus {
                connected: e.connected,
                last_disconnect_status: e.last_close_reason.clone(),
                ..DiscoveryConnectionStatus::default()
            },
        })
        .into_iter()
        .collect();
    let entry = PodPeerDiscoveryStatus {
        pod: pod.to_owned(),
        remotes: Some(remotes),
        watch: Some(watch),
    };
    Some(if i.connected {
        ServiceMeshPeerDiscoveryStatus {
            active: Some(vec![entry]),
            inactive: Some(Vec::new()),
        }
    } else {
        ServiceMeshPeerDiscoveryStatus {
            active: Some(Vec::new()),
            inactive: Some(vec![entry]),
        }
    })
}

/// The services a service set's status lists (`status.exportedServices` of the
/// `ExportedServiceSet` for `peer`, `status.importedServices` of the `ImportedServiceSet` for
/// it), from the peering node's status; always a list (the field is required).
fn listed(peering: Option<&NodeStatus>, kind: &str, peer: &str) -> Vec<PeerServiceMapping> {
    let services = match kind {
        "ExportedServiceSet" => peering
            .and_then(|p| p.exports.get(peer))
            .map(|e| &e.services),
        _ => peering.and_then(|p| p.import(peer)).map(|i| &i.services),
    };
    services
        .into_iter()
        .flatten()
        .map(|s| PeerServiceMapping {
            exported_name: s.exported_name.clone(),
            local_service: ServiceKey {
                name: s.local_service.name.clone(),
                namespace: s.local_service.namespace.clone(),
                hostname: s.local_service.hostname.clone(),
            },
        })
        .collect()
}

/// One kind's status, typed.
fn status_of(
    kind: &str,
    conditions: Vec<Condition>,
    services: Vec<PeerServiceMapping>,
    discovery: Option<ServiceMeshPeerDiscoveryStatus>,
) -> Value {
    let typed = match kind {
        "ExportedServiceSet" => serde_json::to_value(ExportedServiceSetStatus {
            exported_services: services,
            conditions: Some(conditions),
        }),
        "ImportedServiceSet" => serde_json::to_value(ImportedServiceSetStatus {
            imported_services: services,
            conditions: Some(conditions),
        }),
        _ => serde_json::to_value(ServiceMeshPeerStatus {
            discovery_status: discovery,
            conditions: Some(conditions),
        }),
    };
    typed.unwrap_or(Value::Null)
}

/// Why a valid service set named `name` is not in force: its `ServiceMeshPeer` (the one of
/// the same name) is missing, invalid or being deleted. (reason, message).
fn set_without_peer(r: &Rendered, name: &str) -> Option<(&'static str, String)> {
    match r.peers.iter().find(|p| p.name == name) {
        Some(p) if p.accepted && !p.deleting => None,
        Some(p) if p.deleting => Some((
            "PeerDeleted",
            format!("the ServiceMeshPeer {name} is being deleted; this set has no effect"),
        )),
        Some(_) => Some((
            "PeerInvalid",
            format!(
                "the ServiceMeshPeer {name} is invalid (see its status); this set has no effect until it is fixed"
            ),
        )),
        None => Some((
            "PeerNotFound",
            format!(
                "no ServiceMeshPeer named {name} in this namespace; this set has no effect until one exists"
            ),
        )),
    }
}

/// The status of every federation resource `r` names, by (kind, name), as this control-plane
/// pod (`pod`) sees it at `now`.
pub fn statuses(
    r: &Rendered,
    peering: Option<&NodeStatus>,
    pod: &str,
    now: Timestamp,
) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    let condition =
        |type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>| Condition {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_transition_time: Some(Time(now)),
            observed_generation: generation,
        };
    for (kind, name, generation) in &r.accepted {
        // A service set is in force only with its ServiceMeshPeer (same name) in force.
        let without_peer = (kind != "ServiceMeshPeer")
            .then(|| set_without_peer(r, name))
            .flatten();
        let mut conditions = vec![match &without_peer {
            None => condition(
                "Accepted",
                true,
                "Valid",
                "the resource is valid and in force",
                *generation,
            ),
            Some((reason, message)) => condition("Accepted", false, reason, message, *generation),
        }];
        if let Some(skip) = r
            .skipped
            .iter()
            .find(|k| &k.kind == kind && &k.name == name)
        {
            conditions.push(condition(
                "RulesSkipped",
                true,
                &skip.reason,
                &format!(
                    "these rules are invalid and left out; the others are in force:\n{}",
                    skip.message
                ),
                *generation,
            ));
        }
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
        let discovery = (kind == "ServiceMeshPeer")
            .then(|| discovery_status(peering, name, pod))
            .flatten();
        let status = status_of(kind, conditions, listed(peering, kind, name), discovery);
        out.insert((kind.clone(), name.clone()), status);
    }
    for f in &r.refused {
        let conditions = vec![condition(
            "Accepted",
            false,
            &f.reason,
            &f.message,
            f.generation,
        )];
        out.insert(
            (f.kind.clone(), f.name.clone()),
            status_of(&f.kind, conditions, Vec::new(), None),
        );
    }
    out
}

/// Keeps each condition's `lastTransitionTime` from `before` while its status stays the same
/// (a new reason or message is no transition, as Kubernetes' API conventions have it): the
/// time says when the condition last changed, not when it was last written.
fn keep_transition_times(before: Option<&Value>, after: &mut Value) {
    let Some(old) = before.and_then(|b| b["conditions"].as_array()) else {
        return;
    };
    let Some(new) = after["conditions"].as_array_mut() else {
        return;
    };
    for c in new {
        let same = old
            .iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"]);
        if let Some(o) = same
            && !o["lastTransitionTime"].is_null()
        {
            c["lastTransitionTime"] = o["lastTransitionTime"].clone();
        }
    }
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

/// The condition `type_` of a status, as (status, reason, message).
fn condition_of(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"].as_str() == Some(type_)).then(|| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (text("status"), text("reason"), text("message"))
        })
    })
}

/// The Events a status change is worth: a resource accepted or refused, a peer connected or
/// disconnected. (type, reason, note).
pub fn transitions(before: Option<&Value>, after: &Value) -> Vec<(EventType, String, String)> {
    let mut out = Vec::new();
    let was = |t: &str| before.and_then(|b| condition_of(b, t));
    if let Some((st, reason, message)) = condition_of(after, "Accepted")
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
            out.push((EventType::Warning, reason, message));
        }
    }
    if let Some((st, reason, message)) = condition_of(after, "RulesSkipped")
        && st == "True"
        && was("RulesSkipped").map(|w| (w.0, w.2)) != Some((st.clone(), message.clone()))
    {
        out.push((EventType::Warning, reason, message));
    }
    if let Some((st, reason, message)) = condition_of(after, "Connected")
        && was("Connected").map(|w| w.0) != Some(st.clone())
    {
        if st == "True" {
            out.push((
                EventType::Normal,
                "PeerConnected".into(),
                "the peering stream is up".into(),
            ));
        } else if was("Connected").is_some() {
            out.push((EventType::Warning, reason, message));
        }
    }
    out
}

/// Writes a status by server-side apply under [`FIELD_MANAGER`]. API servers before 1.21
/// store no empty string in a custom resource (they turn it into `null`, then refuse it
/// against the schema: 422), and Maistra lists an export no import rule matched with an
/// empty `localService`; such a server is answered again without those entries (the
/// `ExportNotImported` condition still counts them).
async fn write_status(
    api: &Api<DynamicObject>,
    name: &str,
    patch: &Value,
) -> Result<DynamicObject, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(name, &params, &Patch::Apply(patch)).await {
        Err(kube::Error::Api(e)) if e.code == 422 => match without_unmatched(patch) {
            Some(fewer) => {
                tracing::debug!(
                    "the API server refused the status of {name} ({}); writing it without the exports no rule matched",
                    e.message
                );
                api.patch_status(name, &params, &Patch::Apply(&fewer)).await
            }
            None => Err(kube::Error::Api(e)),
        },
        other => other,
    }
}

/// `patch` without the listed services whose `localService` is empty, if it has any.
fn without_unmatched(patch: &Value) -> Option<Value> {
    let mut out = patch.clone();
    let mut removed = false;
    for list in ["importedServices", "exportedServices"] {
        if let Some(items) = out
            .get_mut("status")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut)
        {
            let before = items.len();
            items.retain(|i| {
                i["localService"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            });
            removed |= items.len() != before;
        }
    }
    removed.then_some(out)
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
    let mut failing: BTreeMap<(String, String), String> = BTreeMap::new();
    loop {
        let r = rendered.borrow_and_update().clone();
        let leads = *leader.borrow_and_update();
        if !leads {
            applied.clear();
        }
        let peer_status = peering.as_mut().map(|p| p.borrow_and_update().clone());
        let mut want = if leads {
            statuses(&r, peer_status.as_deref(), &identity, Timestamp::now())
        } else {
            BTreeMap::new()
        };
        // What the cluster holds is where a new leader (or a restarted one) starts from: its
        // conditions keep their transition times, and an unchanged status is not rewritten.
        for (kind, name) in want.keys() {
            let key = (kind.clone(), name.clone());
            if applied.contains_key(&key) {
                continue;
            }
            if let Some((api, _)) = apis.get(kind)
                && let Ok(Some(live)) = api.get_opt(name).await
                && let Some(status) = live.data.get("status").filter(|s| s.is_object())
            {
                applied.insert(key, status.clone());
            }
        }
        for (key, status) in &mut want {
            keep_transition_times(applied.get(key), status);
        }
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
            match write_status(api, name, &patch).await {
                Ok(_) => {
                    failing.remove(&key);
                    applied.insert(key, status.clone());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    applied.remove(&key);
                    continue;
                }
                Err(e) => {
                    // Once per distinct error: the write is retried at every pass.
                    let said = e.to_string();
                    if failing.get(&key) != Some(&said) {
                        tracing::warn!(
                            "writing the status of {kind} {name} failed (retrying): {said}"
                        );
                        failing.insert(key, said);
                    }
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
                    // events.k8s.io/v1 refuses notes over 1 kB.
                    note: Some(note.chars().take(1000).collect()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_without_empty_strings_leaves_the_unmatched_exports_out() {
        let patch = json!({"status": {"importedServices": [
            {"exportedName": "a", "localService": {"name": "a", "namespace": "s", "hostname": "h"}},
            {"exportedName": "b", "localService": {"name": "", "namespace": "", "hostname": ""}}]}});
        let fewer = without_unmatched(&patch).unwrap();
        assert_eq!(
            fewer["status"]["importedServices"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(fewer["status"]["importedServices"][0]["exportedName"], "a");
        assert_eq!(without_unmatched(&fewer), None);
        // Nothing added: a kind's other list stays absent.
        assert!(fewer["status"].get("exportedServices").is_none(), "{fewer}");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_it_changes() {
        let before = json!({"conditions": [
            {"type": "Connected", "status": "False", "reason": "GatewayUnreachable",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Stale", "status": "False", "reason": "Synced",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        let mut after = json!({"conditions": [
            {"type": "Connected", "status": "False", "reason": "GatewayUnreachable",
             "lastTransitionTime": "2026-01-01T00:05:00Z"},
            {"type": "Stale", "status": "True", "reason": "StreamStale",
             "lastTransitionTime": "2026-01-01T00:05:00Z"}]});
        keep_transition_times(Some(&before), &mut after);
        assert_eq!(
            after["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            after["conditions"][1]["lastTransitionTime"],
            "2026-01-01T00:05:00Z"
        );
    }
}
