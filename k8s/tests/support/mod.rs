//! A small in-memory Kubernetes API server for the tests: list and watch (with
//! `resourceVersion`, a replayable event log, and forced `410 Gone` answers), server-side-apply
//! status patches (recorded), over plain HTTP on loopback. The real kube client talks to it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Where a kind lives: (list path, kind, apiVersion).
fn kind_of(collection: &str) -> (&'static str, &'static str) {
    match collection {
        "services" => ("Service", "v1"),
        "pods" => ("Pod", "v1"),
        "nodes" => ("Node", "v1"),
        "configmaps" => ("ConfigMap", "v1"),
        "secrets" => ("Secret", "v1"),
        "leases" => ("Lease", "coordination.k8s.io/v1"),
        "events" => ("Event", "events.k8s.io/v1"),
        "endpointslices" => ("EndpointSlice", "discovery.k8s.io/v1"),
        "servicemeshpeers" => ("ServiceMeshPeer", "federation.maistra.io/v1"),
        "exportedservicesets" => ("ExportedServiceSet", "federation.maistra.io/v1"),
        "importedservicesets" => ("ImportedServiceSet", "federation.maistra.io/v1"),
        "tokenreviews" => ("TokenReview", "authentication.k8s.io/v1"),
        _ => ("Unknown", "v1"),
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    /// collection → "ns/name" → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every change: (rv, collection, event).
    log: Vec<(u64, String, Value)>,
    /// Collections whose next watch answers 410 Gone.
    expire_next_watch: BTreeMap<String, usize>,
    /// Status patches: (kind, name, body).
    patches: Vec<(String, String, Value)>,
    lists: BTreeMap<String, usize>,
    /// Every request, as RBAC sees it.
    requests: Vec<Access>,
    /// ServiceAccount tokens the server vouches for: token → (audience, username, pod).
    tokens: BTreeMap<String, (String, String, Option<String>)>,
}

/// A request as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: String,
    pub group: String,
    /// `servicemeshpeers`, or `servicemeshpeers/status`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(
            f,
            "{} {group}/{} in {} named {}",
            self.verb,
            self.resource,
            self.namespace.as_deref().unwrap_or("(cluster)"),
            self.name.as_deref().unwrap_or("-")
        )
    }
}

/// Whether one RBAC rule (`apiGroups`, `resources`, `verbs`, `resourceNames`) allows `a`.
fn rule_allows(rule: &Value, a: &Access) -> bool {
    let has = |field: &str, v: &str| {
        rule[field]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x == v || x == "*"))
    };
    let names_ok = match rule["resourceNames"].as_array() {
        None => true,
        Some(n) if n.is_empty() => true,
        // A rule limited by name never covers list, watch or create (no name in the request).
        Some(n) => a
            .name
            .as_ref()
            .is_some_and(|name| n.iter().any(|x| x == name)),
    };
    has("apiGroups", &a.group) && has("resources", &a.resource) && has("verbs", &a.verb) && names_ok
}

/// The server; dropped, it stops.
pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(u64, String, Value)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap()
    )
}

impl ApiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (events, _) = broadcast::channel(1024);
        let (st, ev) = (state.clone(), events.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (st, ev) = (st.clone(), ev.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, ev) = (st.clone(), ev.clone());
                        async move { Ok::<_, Infallible>(handle(req, st, ev).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            events,
            task,
        }
    }

    /// A kube client for this server.
    /// Makes the server vouch for `token`: a ServiceAccount token of `namespace/account`
    /// for `audience`, bound to `pod` when given.
    pub fn vouch(
        &self,
        token: &str,
        audience: &str,
        namespace: &str,
        account: &str,
        pod: Option<&str>,
    ) {
        self.state.lock().unwrap().tokens.insert(
            token.to_owned(),
            (
                audience.to_owned(),
                format!("system:serviceaccount:{namespace}:{account}"),
                pod.map(str::to_owned),
            ),
        );
    }

    pub fn client(&self) -> meshfed_k8s::Client {
        meshfed_k8s::client_at(&format!("http://{}", self.addr)).unwrap()
    }

    /// Creates or replaces `object` in `collection` (ADDED or MODIFIED).
    pub fn put(&self, collection: &str, object: Value) {
        store(&self.state, &self.events, collection, object);
    }

    /// An object as the server holds it.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(collection)
            .and_then(|m| m.get(&format!("{namespace}/{name}")))
            .cloned()
    }

    /// Every object of `collection`.
    pub fn all(&self, collection: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(collection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// What `kubectl delete` does: with finalizers, the object gets a deletionTimestamp and
    /// stays until they are gone; without, it is deleted.
    pub fn request_delete(&self, collection: &str, namespace: &str, name: &str) {
        let Some(mut obj) = self.get(collection, namespace, name) else {
            return;
        };
        if obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            obj["metadata"]["deletionTimestamp"] = json!("2026-11-26T00:00:00Z");
            self.put(collection, obj);
        } else {
            self.delete(collection, namespace, name);
        }
    }

    /// Deletes `namespace/name` from `collection` (DELETED).
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let Some(mut object) = st
            .objects
            .get_mut(collection)
            .and_then(|m| m.remove(&format!("{namespace}/{name}")))
        else {
            return;
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": "DELETED", "object": object});
        st.log.push((rv, collection.to_owned(), event.clone()));
        let _ = self.events.send((rv, collection.to_owned(), event));
    }

    /// Ends the open watches of `collection`; the next watch is answered `410 Gone`, so its
    /// client must re-list.
    pub fn expire_next_watch(&self, collection: &str) {
        *self
            .state
            .lock()
            .unwrap()
            .expire_next_watch
            .entry(collection.to_owned())
            .or_default() += 1;
        let _ = self.events.send((0, collection.to_owned(), Value::Null));
    }

    /// How many times `collection` was listed.
    pub fn lists(&self, collection: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .lists
            .get(collection)
            .copied()
            .unwrap_or(0)
    }

    /// The requests that the ClusterRoles and Roles in `rbac` (a manifest's documents) do not
    /// allow. Roles are taken as bound in `namespace` (the control-plane namespace).
    pub fn unauthorized(&self, rbac: &[Value], namespace: &str) -> Vec<String> {
        let rules = |kind: &str| -> Vec<Value> {
            rbac.iter()
                .filter(|d| d["kind"] == kind)
                .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
                .collect()
        };
        let (cluster, local) = (rules("ClusterRole"), rules("Role"));
        let mut out: Vec<String> = self
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|a| {
                let by_cluster_role = cluster.iter().any(|r| rule_allows(r, a));
                let by_role = a.namespace.as_deref() == Some(namespace)
                    && local.iter().any(|r| rule_allows(r, a));
                !(by_cluster_role || by_role)
            })
            .map(ToString::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// How many requests were made.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// Status patches received so far: (kind, name, body).
    pub fn patches(&self) -> Vec<(String, String, Value)> {
        self.state.lock().unwrap().patches.clone()
    }
}

/// Stores `object` with a new resourceVersion; returns it.
fn store(
    state: &Mutex<State>,
    events: &broadcast::Sender<(u64, String, Value)>,
    collection: &str,
    mut object: Value,
) -> Value {
    let (kind, api_version) = kind_of(collection);
    object["kind"] = json!(kind);
    object["apiVersion"] = json!(api_version);
    let mut st = state.lock().unwrap();
    st.rv += 1;
    let rv = st.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["generation"].is_null() {
        object["metadata"]["generation"] = json!(1);
    }
    let k = key(&object);
    let map = st.objects.entry(collection.to_owned()).or_default();
    let type_ = if map.contains_key(&k) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    map.insert(k, object.clone());
    let event = json!({"type": type_, "object": object});
    st.log.push((rv, collection.to_owned(), event.clone()));
    let _ = events.send((rv, collection.to_owned(), event));
    object
}

fn conflict(what: &str) -> Response<Body> {
    full(
        409,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{what}: conflict"), "reason": "Conflict", "code": 409}),
    )
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(Bytes::from(v.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

fn not_found(what: &str) -> Response<Body> {
    full(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// (collection, namespace filter, name, subresource) of a request path.
type Route = (String, Option<String>, Option<String>, Option<String>);

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let own = |s: &&str| (*s).to_owned();
    match rest {
        [c] => Some(((*c).to_owned(), None, None, None)),
        ["namespaces", ns, c] => Some(((*c).to_owned(), Some(own(ns)), None, None)),
        ["namespaces", ns, c, name] => {
            Some(((*c).to_owned(), Some(own(ns)), Some(own(name)), None))
        }
        ["namespaces", ns, c, name, sub] => Some((
            (*c).to_owned(),
            Some(own(ns)),
            Some(own(name)),
            Some(own(sub)),
        )),
        _ => None,
    }
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(u64, String, Value)>,
) -> Response<Body> {
    let Some((collection, ns, name, sub)) = route(req.uri().path()) else {
        return not_found(req.uri().path());
    };
    let q = query(&req);
    {
        let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        let verb = match (req.method().as_str(), &name) {
            ("GET", Some(_)) => "get",
            ("GET", None) if watching => "watch",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            (m, _) => m,
        };
        let group = kind_of(&collection)
            .1
            .rsplit_once('/')
            .map_or("", |(g, _)| g);
        state.lock().unwrap().requests.push(Access {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: sub
                .as_ref()
                .map_or_else(|| collection.clone(), |s| format!("{collection}/{s}")),
            namespace: ns.clone(),
            name: name.clone(),
        });
    }
    let in_ns = |o: &Value| {
        ns.as_deref()
            .is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
    };
    let ns_name = |n: &str| format!("{}/{n}", ns.clone().unwrap_or_default());
    let current = |n: &str| {
        state
            .lock()
            .unwrap()
            .objects
            .get(&collection)
            .and_then(|m| m.get(&ns_name(n)))
            .cloned()
    };
    let method = req.method().clone();
    if collection == "tokenreviews" && method == hyper::Method::POST {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<&str> = review["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let known = state.lock().unwrap().tokens.get(token).cloned();
        // As the API server: valid only for an audience the token was issued for.
        let status = match known {
            Some((aud, user, pod)) if asked.contains(&aud.as_str()) => {
                let mut user = json!({"username": user});
                if let Some(p) = pod {
                    user["extra"] = json!({"authentication.kubernetes.io/pod-name": [p]});
                }
                json!({"authenticated": true, "audiences": [aud], "user": user})
            }
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut out = review.clone();
        out["status"] = status;
        return full(201, &out);
    }
    if method == hyper::Method::GET
        && let Some(n) = &name
    {
        return current(n).map_or_else(|| not_found(n), |o| full(200, &o));
    }
    if method == hyper::Method::POST
        || method == hyper::Method::PUT
        || (method == hyper::Method::PATCH && sub.is_none())
    {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if obj["metadata"]["namespace"].is_null()
            && let Some(n) = &ns
        {
            obj["metadata"]["namespace"] = json!(n);
        }
        let n = name
            .clone()
            .or_else(|| obj["metadata"]["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let existing = current(&n);
        if method == hyper::Method::POST {
            if existing.is_some() {
                return conflict(&n);
            }
            return full(201, &store(&state, &events, &collection, obj));
        }
        if method == hyper::Method::PUT {
            let Some(cur) = existing else {
                return not_found(&n);
            };
            if obj["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
                return conflict(&n);
            }
            return full(200, &store(&state, &events, &collection, obj));
        }
        // Apply (or merge) patch: recorded, then its fields laid over the object.
        let (kind, _) = kind_of(&collection);
        state
            .lock()
            .unwrap()
            .patches
            .push((kind.to_owned(), n.clone(), obj.clone()));
        let mut merged = existing.unwrap_or_else(|| json!({"metadata": {"name": n}}));
        if let (Some(m), Some(o)) = (merged.as_object_mut(), obj.as_object()) {
            for (k, v) in o {
                if k != "metadata" {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        merged["metadata"]["name"] = json!(n);
        merged["metadata"]["namespace"] = obj["metadata"]["namespace"].clone();
        if let Some(f) = obj["metadata"].get("finalizers") {
            merged["metadata"]["finalizers"] = f.clone();
            // The last finalizer released from an object being deleted: it goes.
            if f.as_array().is_some_and(Vec::is_empty)
                && !merged["metadata"]["deletionTimestamp"].is_null()
            {
                let namespace = ns.clone().unwrap_or_default();
                let mut st = state.lock().unwrap();
                st.rv += 1;
                let rv = st.rv;
                if let Some(m) = st.objects.get_mut(&collection) {
                    m.remove(&format!("{namespace}/{n}"));
                }
                merged["metadata"]["resourceVersion"] = json!(rv.to_string());
                let event = json!({"type": "DELETED", "object": merged});
                st.log.push((rv, collection.clone(), event.clone()));
                let _ = events.send((rv, collection.clone(), event));
                return full(200, &merged);
            }
        }
        return full(200, &store(&state, &events, &collection, merged));
    }
    if method == hyper::Method::PATCH {
        let (Some(name), Some("status")) = (name.clone(), sub.as_deref()) else {
            return not_found("patch target");
        };
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut st = state.lock().unwrap();
        let k = format!("{}/{name}", ns.clone().unwrap_or_default());
        let Some(obj) = st.objects.get(&collection).and_then(|m| m.get(&k)).cloned() else {
            return not_found(&k);
        };
        let (kind, _) = kind_of(&collection);
        st.patches.push((kind.to_owned(), name, patch.clone()));
        let mut out = obj;
        out["status"] = patch["status"].clone();
        return full(200, &out);
    }
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let mut st = state.lock().unwrap();
        *st.lists.entry(collection.clone()).or_default() += 1;
        let items: Vec<Value> = st
            .objects
            .get(&collection)
            .map(|m| m.values().filter(|o| in_ns(o)).cloned().collect())
            .unwrap_or_default();
        let (kind, api_version) = kind_of(&collection);
        return full(
            200,
            &json!({
                "kind": format!("{kind}List"),
                "apiVersion": api_version,
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        );
    }
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (backlog, mut rx, expire) = {
        let mut st = state.lock().unwrap();
        let expire = st.expire_next_watch.get_mut(&collection).is_some_and(|n| {
            if *n > 0 {
                *n -= 1;
                true
            } else {
                false
            }
        });
        let backlog: Vec<Value> = st
            .log
            .iter()
            .filter(|(rv, c, e)| *rv > since && *c == collection && in_ns(&e["object"]))
            .map(|(_, _, e)| e.clone())
            .collect();
        (backlog, events.subscribe(), expire)
    };
    let (tx, out_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let line = |v: &Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    tokio::spawn(async move {
        if expire {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure", "message": "too old resource version",
                "reason": "Expired", "code": 410}});
            let _ = tx.send(line(&gone)).await;
            return;
        }
        for e in backlog {
            if tx.send(line(&e)).await.is_err() {
                return;
            }
        }
        while let Ok((rv, c, e)) = rx.recv().await {
            if e.is_null() && c == collection {
                return;
            }
            if rv > since
                && c == collection
                && ns
                    .as_deref()
                    .is_none_or(|n| e["object"]["metadata"]["namespace"].as_str() == Some(n))
                && tx.send(line(&e)).await.is_err()
            {
                return;
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(out_rx)).boxed())
        .unwrap()
}
