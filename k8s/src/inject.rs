//! `meshfed inject`: adds the meshfed sidecar to workloads' pod templates, as
//! `istioctl kube-inject` does — a `meshfed-init` init container that installs the traffic
//! redirection (`meshfed redirect`), the `meshfed-proxy` container joined to the control plane
//! with the bootstrap Secret, and that Secret's volume. The user's containers, volumes and
//! everything else are left exactly as they were; injecting an injected object changes
//! nothing (the meshfed parts are replaced, not added twice).
//!
//! Kinds with a pod template: `Pod`, `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`,
//! `Job`, `CronJob` (and `List`s of them). A template annotated
//! `sidecar.meshfed.io/inject: "false"`, or running in the host's network namespace, is left
//! alone. Other kinds pass through unchanged.

use serde_json::{Value, json};

/// The sidecar container.
pub const PROXY_CONTAINER: &str = crate::render::SIDECAR_CONTAINER;
/// The init container that installs the redirection.
pub const INIT_CONTAINER: &str = "meshfed-init";
/// The bootstrap Secret's volume.
pub const BOOTSTRAP_VOLUME: &str = "meshfed-bootstrap";
/// The projected ServiceAccount token's volume: audience `meshfed`, an hour, bound to the
/// pod; the sidecar presents it for its first certificate.
pub const TOKEN_VOLUME: &str = "meshfed-token";
/// Opt-out annotation (`"false"`).
pub const INJECT_ANNOTATION: &str = "sidecar.meshfed.io/inject";
/// Set on injected templates: what was injected.
pub const STATUS_ANNOTATION: &str = "sidecar.meshfed.io/status";
/// The sidecar's user (its traffic is never redirected).
pub const PROXY_UID: i64 = 1337;
/// The sidecar's admin port (readiness, metrics).
pub const ADMIN_PORT: u16 = 15020;
/// The sidecar's outbound listener (redirected outbound TCP lands there).
pub const OUTBOUND_PORT: u16 = 15001;
/// The sidecar's DNS proxy (`meshfed redirect` sends the pod's port-53 traffic there).
pub const DNS_PORT: u16 = 15053;

/// How to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The meshfed image.
    pub image: String,
    /// The Secret holding `bootstrap.json` (in the workload's namespace).
    pub bootstrap_secret: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            image: "meshfed:dev".into(),
            bootstrap_secret: "meshfed-bootstrap".into(),
        }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Opted out, or on the host network: unchanged.
    Skipped(String),
    /// No pod template: unchanged.
    NotAWorkload,
}

/// Injects `object` in place.
pub fn inject(object: &mut Value, opts: &Options) -> Outcome {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    if kind == "List" {
        let mut any = Outcome::NotAWorkload;
        for item in object["items"].as_array_mut().into_iter().flatten() {
            if inject(item, opts) == Outcome::Injected {
                any = Outcome::Injected;
            }
        }
        return any;
    }
    let opted_out = |meta: &Value| meta["annotations"][INJECT_ANNOTATION].as_str() == Some("false");
    if opted_out(&object["metadata"]) {
        return Outcome::Skipped(format!("{INJECT_ANNOTATION}: \"false\""));
    }
    let template = match kind.as_str() {
        "Pod" => Some(&mut *object),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            object.get_mut("spec").and_then(|s| s.get_mut("template"))
        }
        "CronJob" => object.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => None,
    };
    let Some(template) = template.filter(|t| t.is_object()) else {
        return Outcome::NotAWorkload;
    };
    if opted_out(&template["metadata"]) {
        return Outcome::Skipped(format!("{INJECT_ANNOTATION}: \"false\""));
    }
    if template["spec"]["hostNetwork"].as_bool() == Some(true) {
        return Outcome::Skipped("the pod uses the host's network".into());
    }
    if !template["spec"].is_object() {
        return Outcome::NotAWorkload;
    }
    let spec = &mut template["spec"];
    replace_named(
        spec,
        "initContainers",
        INIT_CONTAINER,
        Some(init_container(opts)),
        true,
    );
    replace_named(
        spec,
        "containers",
        PROXY_CONTAINER,
        Some(proxy_container(opts)),
        false,
    );
    replace_named(
        spec,
        "volumes",
        BOOTSTRAP_VOLUME,
        Some(json!({"name": BOOTSTRAP_VOLUME, "secret": {"secretName": opts.bootstrap_secret}})),
        false,
    );
    replace_named(spec, "volumes", TOKEN_VOLUME, Some(token_volume()), false);
    let meta = &mut template["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["annotations"][STATUS_ANNOTATION] = json!(
        json!({"image": opts.image, "containers": [INIT_CONTAINER, PROXY_CONTAINER],
               "volumes": [BOOTSTRAP_VOLUME, TOKEN_VOLUME]})
        .to_string()
    );
    Outcome::Injected
}

/// Removes the entry named `name` from the list `field` of `spec` and puts `new` at the front
/// or the back.
fn replace_named(spec: &mut Value, field: &str, name: &str, new: Option<Value>, front: bool) {
    let list = &mut spec[field];
    if !list.is_array() {
        *list = json!([]);
    }
    let Some(items) = list.as_array_mut() else {
        return;
    };
    items.retain(|c| c["name"].as_str() != Some(name));
    if let Some(n) = new {
        if front {
            items.insert(0, n);
        } else {
            items.push(n);
        }
    }
}

fn init_container(opts: &Options) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": opts.image,
        "args": ["redirect",
                 "--proxy-uid", PROXY_UID.to_string(),
                 "--inbound-port", crate::render::INBOUND_PORT.to_string(),
                 "--outbound-port", OUTBOUND_PORT.to_string(),
                 "--dns-port", DNS_PORT.to_string(),
                 "--exclude-inbound-ports", ADMIN_PORT.to_string()],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    })
}

fn proxy_container(opts: &Options) -> Value {
    json!({
        "name": PROXY_CONTAINER,
        "image": opts.image,
        "args": ["proxy",
                 "--bootstrap", "/etc/meshfed/bootstrap/bootstrap.json",
                 "--namespace", "$(POD_NAMESPACE)",
                 "--workload", "$(POD_NAME)",
                 "--outbound", format!("127.0.0.1:{OUTBOUND_PORT}"),
                 "--dns", format!("127.0.0.1:{DNS_PORT}"),
                 "--admin", format!("0.0.0.0:{ADMIN_PORT}")],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [
            {"name": "tls-inbound", "containerPort": crate::render::INBOUND_PORT},
            {"name": "http-admin", "containerPort": ADMIN_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": ADMIN_PORT},
            "periodSeconds": 2,
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
        "volumeMounts": [
            {"name": BOOTSTRAP_VOLUME, "mountPath": "/etc/meshfed/bootstrap", "readOnly": true},
            {"name": TOKEN_VOLUME, "mountPath": token_dir(), "readOnly": true},
        ],
    })
}

/// The folder of [`crate::token_review::TOKEN_FILE`].
fn token_dir() -> &'static str {
    crate::token_review::TOKEN_FILE
        .rsplit_once('/')
        .map_or("/", |(d, _)| d)
}

/// The projected token the sidecar presents for its first certificate.
pub fn token_volume() -> Value {
    let file = crate::token_review::TOKEN_FILE
        .rsplit_once('/')
        .map_or("token", |(_, f)| f);
    json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": crate::token_review::AUDIENCE,
        "expirationSeconds": 3600,
        "path": file,
    }}]}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "orders"}}, "template": {
                "metadata": {"labels": {"app": "orders"}},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": "orders:1"}],
                    "containers": [{"name": "orders", "image": "orders:1",
                                    "ports": [{"containerPort": 8080}]}],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            }},
        })
    }

    #[test]
    fn injecting_adds_the_sidecar_and_keeps_the_users_parts() {
        let before = deployment();
        let mut d = before.clone();
        assert_eq!(inject(&mut d, &Options::default()), Outcome::Injected);
        let spec = &d["spec"]["template"]["spec"];
        let names = |f: &str| -> Vec<String> {
            spec[f]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names("initContainers"), vec!["meshfed-init", "migrate"]);
        assert_eq!(names("containers"), vec!["orders", "meshfed-proxy"]);
        assert_eq!(
            names("volumes"),
            vec!["data", "meshfed-bootstrap", "meshfed-token"]
        );
        assert_eq!(
            spec["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "meshfed"
        );
        let b = &before["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0], b["containers"][0]);
        assert_eq!(spec["initContainers"][1], b["initContainers"][0]);
        assert!(d["spec"]["template"]["metadata"]["annotations"][STATUS_ANNOTATION].is_string());
        assert_eq!(d["spec"]["selector"], before["spec"]["selector"]);
    }

    #[test]
    fn injecting_twice_is_injecting_once() {
        let mut once = deployment();
        inject(&mut once, &Options::default());
        let mut twice = once.clone();
        inject(&mut twice, &Options::default());
        assert_eq!(once, twice);
        // A new image replaces the meshfed parts, nothing is added twice.
        let mut updated = once.clone();
        inject(
            &mut updated,
            &Options {
                image: "meshfed:2".into(),
                ..Options::default()
            },
        );
        let spec = &updated["spec"]["template"]["spec"];
        assert_eq!(spec["containers"].as_array().unwrap().len(), 2);
        assert_eq!(spec["containers"][1]["image"], "meshfed:2");
    }

    #[test]
    fn opted_out_host_network_and_other_kinds_are_left_alone() {
        let mut d = deployment();
        d["spec"]["template"]["metadata"]["annotations"] = json!({INJECT_ANNOTATION: "false"});
        let before = d.clone();
        assert!(matches!(
            inject(&mut d, &Options::default()),
            Outcome::Skipped(_)
        ));
        assert_eq!(d, before);
        let mut h = deployment();
        h["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        assert!(matches!(
            inject(&mut h, &Options::default()),
            Outcome::Skipped(_)
        ));
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
        let before = svc.clone();
        assert_eq!(inject(&mut svc, &Options::default()), Outcome::NotAWorkload);
        assert_eq!(svc, before);
    }

    #[test]
    fn pods_cronjobs_and_lists_are_injected() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                             "spec": {"containers": [{"name": "a", "image": "a"}]}});
        assert_eq!(inject(&mut pod, &Options::default()), Outcome::Injected);
        assert_eq!(pod["spec"]["containers"][1]["name"], PROXY_CONTAINER);
        let mut cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "a"}]}}}}}});
        assert_eq!(inject(&mut cj, &Options::default()), Outcome::Injected);
        let mut list = json!({"apiVersion": "v1", "kind": "List", "items": [deployment()]});
        assert_eq!(inject(&mut list, &Options::default()), Outcome::Injected);
        assert_eq!(
            list["items"][0]["spec"]["template"]["spec"]["containers"][1]["name"],
            PROXY_CONTAINER
        );
    }
}
