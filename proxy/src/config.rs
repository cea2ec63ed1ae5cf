//! A mesh as one workload's sidecar configuration: its inbound listener and app, every
//! service it may call (with the peers' endpoints that `importAsLocal` merges in, as failover
//! groups by locality, and the imported services under names of their own), its
//! authorization policies, TCP forwards and the names it answers to. The same translation
//! serves a mesh file and a control plane's snapshot, so both are validated and applied alike.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use meshfed_core::catalog::{Protocol, Service};
use meshfed_core::federation::MeshFederation;
use meshfed_core::import::ImportedRoute;
use meshfed_core::locality::Locality;
use meshfed_core::traffic::TrafficPolicy;
use meshfed_core::{Hostname, ServiceKey, SpiffeId, TrustDomain};
use meshfed_trust::verify::Expect;

use crate::sidecar::{Endpoint, HttpVersion, OutboundService, SidecarConfig, TcpForward};

/// Which workload, and its sidecar's local settings.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub name: String,
    /// Needed only when the name is in several namespaces.
    pub namespace: Option<String>,
    /// Where the app sends outbound requests (plaintext HTTP).
    pub outbound: Option<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// TCP forwards, `SERVICE:PORT=LISTEN` each.
    pub tcp: Vec<String>,
}

/// What federation adds to a sidecar's configuration.
#[derive(Debug, Clone, Default)]
pub struct Federated {
    /// Services imported from peers.
    pub imports: Vec<ImportedRoute>,
    /// Names peers reach the workload's service by (from the control plane; in file mode the
    /// mesh file's own exports give them).
    pub exported: Vec<Hostname>,
    /// The trust domains of the peers the workload's service is exported to (from the
    /// control plane, whose snapshot carries the mesh without its federation resources; in
    /// file mode the mesh file's own exports give them).
    pub exported_to: BTreeSet<TrustDomain>,
    /// Workloads (namespace, name) that are not ready: chosen only when nothing else is.
    pub unready: BTreeSet<(String, String)>,
}

/// Why a mesh gives no configuration for the workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no workload {workload:?} in mesh {mesh}; workloads: {known}")]
    NoWorkload {
        workload: String,
        mesh: String,
        known: String,
    },
    #[error("workload {0:?} exists in several namespaces; pass --namespace")]
    AmbiguousWorkload(String),
    #[error("an identity of the mesh: {0}")]
    Identity(#[from] meshfed_core::id::SpiffeIdError),
    #[error("a service name of the mesh: {0}")]
    Name(#[from] meshfed_core::name::NameError),
    #[error("--tcp {spec:?}: {detail}")]
    Tcp { spec: String, detail: String },
}

impl ConfigError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoWorkload { .. } => "UnknownWorkload",
            Self::AmbiguousWorkload(_) => "AmbiguousWorkload",
            Self::Identity(e) => e.reason(),
            Self::Name(_) => "InvalidName",
            Self::Tcp { .. } => "InvalidTcpForward",
        }
    }
}

/// The sidecar configuration of `workload` in `mesh` (with what federation adds), and the
/// workload's identity. Callers come from `allow`'s trust domains (those we hold bundles for),
/// and of those only from the mesh's own and the peers its service is exported to: a peer's
/// workload that reaches the sidecar directly gets no more than the ingress would let it.
pub fn from_mesh(
    mesh: &MeshFederation,
    fed: &Federated,
    workload: &Workload,
    allow: &BTreeSet<TrustDomain>,
) -> Result<(SidecarConfig, SpiffeId), ConfigError> {
    let matches: Vec<_> = mesh
        .catalog
        .workloads()
        .filter(|w| {
            w.name == workload.name
                && workload
                    .namespace
                    .as_deref()
                    .is_none_or(|n| w.namespace.as_str() == n)
        })
        .collect();
    let w = match matches.as_slice() {
        [w] => *w,
        [] => {
            let known: Vec<String> = mesh
                .catalog
                .workloads()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect();
            return Err(ConfigError::NoWorkload {
                workload: workload.name.clone(),
                mesh: mesh.mesh.to_string(),
                known: known.join(", "),
            });
        }
        _ => return Err(ConfigError::AmbiguousWorkload(workload.name.clone())),
    };
    let identity = |ns: &meshfed_core::Namespace, sa: &str| {
        SpiffeId::for_service_account(&mesh.trust_domain, ns, sa)
    };
    // Locality priorities are the calling workload's.
    let here = w.locality.as_ref();
    let local_priority = |at: Option<&Locality>| match (at, here) {
        (Some(at), Some(here)) => at.priority_from(here),
        _ => 0,
    };
    let mut services = Vec::new();
    for svc in mesh.catalog.iter() {
        let mut endpoints = mesh
            .catalog
            .endpoints_of(&svc.key)
            .map(|e| {
                Ok(Endpoint {
                    addr: e.inbound,
                    identity: identity(&e.namespace, &e.service_account)?,
                    labels: e.labels.clone(),
                    sni: None,
                    priority: local_priority(e.locality.as_ref()),
                    healthy: !fed
                        .unready
                        .contains(&(e.namespace.to_string(), e.name.clone())),
                })
            })
            .collect::<Result<Vec<_>, meshfed_core::id::SpiffeIdError>>()?;
        let host = mesh.catalog.hostname_of(&svc.key)?;
        // `importAsLocal`: the peers' endpoints join the local ones, as failover groups.
        endpoints.extend(
            fed.imports
                .iter()
                .filter(|r| r.import_as_local && r.hostname == host)
                .flat_map(|r| remote_endpoints(r, here)),
        );
        services.push(OutboundService {
            host,
            endpoints,
            traffic: mesh.traffic_for(&svc.key),
            protocol: http_version(svc),
        });
    }
    services.extend(imported_services(mesh, &fed.imports, here));
    let tcp = workload
        .tcp
        .iter()
        .map(|spec| tcp_forward(mesh, &services, spec))
        .collect::<Result<Vec<_>, _>>()?;
    let tcp_ports = mesh
        .catalog
        .get(&w.service)
        .map(|s| {
            s.ports
                .iter()
                .filter(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Tls))
                .map(|p| p.port)
                .collect()
        })
        .unwrap_or_default();
    let id = identity(&w.namespace, &w.service_account)?;
    let mut exported_to = mesh.domains_exported_to(&w.service);
    exported_to.extend(fed.exported_to.iter().cloned());
    exported_to.insert(mesh.trust_domain.clone());
    let callers = allow.intersection(&exported_to).cloned().collect();
    let cfg = SidecarConfig {
        outbound: workload.outbound,
        inbound: Some(w.inbound),
        app: Some(w.app),
        app_protocol: mesh
            .catalog
            .get(&w.service)
            .map_or(HttpVersion::Http1, http_version),
        allow: Expect::TrustDomains(callers),
        services,
        policies: mesh.policies_for(&w.service),
        service: w.service.to_string(),
        admin: workload.admin,
        tcp,
        tcp_ports,
        names: served_names(mesh, &w.service, &fed.exported)?,
        idle_timeout: crate::idle::IDLE_TIMEOUT,
    };
    Ok((cfg, id))
}

/// One `--tcp SERVICE:PORT=LISTEN`: the service's TCP port, its endpoints, the listener.
fn tcp_forward(
    mesh: &MeshFederation,
    services: &[OutboundService],
    spec: &str,
) -> Result<TcpForward, ConfigError> {
    let fail = |detail: String| ConfigError::Tcp {
        spec: spec.to_owned(),
        detail,
    };
    let usage = || fail("expected SERVICE:PORT=LISTEN, e.g. db.data:5432=127.0.0.1:15432".into());
    let (target, listen) = spec.split_once('=').ok_or_else(usage)?;
    let (name, port) = target.rsplit_once(':').ok_or_else(usage)?;
    let port: u16 = port.parse().map_err(|_| usage())?;
    let listen: SocketAddr = listen.parse().map_err(|_| usage())?;
    let svc = mesh
        .catalog
        .iter()
        .find(|s| {
            let short = format!("{}.{}", s.key.name, s.key.namespace);
            name == short
                || mesh
                    .catalog
                    .hostname_of(&s.key)
                    .is_ok_and(|h| h.as_str() == name)
        })
        .ok_or_else(|| fail(format!("no service {name:?} in mesh {}", mesh.mesh)))?;
    let p = svc
        .ports
        .iter()
        .find(|p| p.port == port)
        .ok_or_else(|| fail(format!("service {} has no port {port}", svc.key)))?;
    if !matches!(p.protocol, Protocol::Tcp | Protocol::Tls) {
        return Err(fail(format!(
            "port {port} of {} is {}, not TCP or TLS",
            svc.key, p.protocol
        )));
    }
    let host = mesh.catalog.hostname_of(&svc.key)?;
    let endpoints = services
        .iter()
        .find(|s| s.host == host)
        .map(|s| s.endpoints.clone())
        .unwrap_or_default();
    Ok(TcpForward {
        listen,
        host,
        port,
        endpoints,
    })
}

/// The names a workload of `service` answers to: the service's hostname and every name it is
/// exported under to a peer.
fn served_names(
    mesh: &MeshFederation,
    service: &ServiceKey,
    exported: &[Hostname],
) -> Result<Vec<Hostname>, ConfigError> {
    let mut names = vec![mesh.catalog.hostname_of(service)?];
    names.extend(mesh.exported_names_of(service));
    names.extend(exported.iter().cloned());
    names.sort();
    names.dedup();
    Ok(names)
}

fn http_version(svc: &Service) -> HttpVersion {
    if svc.speaks_http2() {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    }
}

/// Priority of a peer's endpoints for a caller at `here`: by the import's locality, and after
/// every local priority when it has none.
const REMOTE_WITHOUT_LOCALITY: u8 = 4;

/// The endpoints of one imported route: one per advertised identity, at this mesh's egress
/// gateway for the peer, with the peer's exported name as the server name; unhealthy when the
/// peer reports no healthy endpoints behind it.
fn remote_endpoints(r: &ImportedRoute, here: Option<&Locality>) -> Vec<Endpoint> {
    let priority = match (&r.locality, here) {
        (Some(at), Some(here)) => at.priority_from(here),
        (Some(_), None) => 0,
        (None, _) => REMOTE_WITHOUT_LOCALITY,
    };
    let healthy = r.health.is_none_or(|(up, _)| up > 0);
    r.identities
        .iter()
        .map(|id| Endpoint {
            addr: r.egress,
            identity: id.clone(),
            labels: BTreeMap::new(),
            sni: Some(r.exported_name.clone()),
            priority,
            healthy,
        })
        .collect()
}

/// Outbound services for imports under names of their own (not merged into a local service):
/// each imported hostname with its peers' endpoints.
fn imported_services(
    mesh: &MeshFederation,
    imports: &[ImportedRoute],
    here: Option<&Locality>,
) -> Vec<OutboundService> {
    let mut by_host: BTreeMap<&Hostname, Vec<&ImportedRoute>> = BTreeMap::new();
    for r in imports {
        by_host.entry(&r.hostname).or_default().push(r);
    }
    by_host
        .into_iter()
        .filter(|(host, _)| mesh.catalog.by_hostname(host).is_none())
        .map(|(host, routes)| OutboundService {
            host: host.clone(),
            endpoints: routes
                .iter()
                .flat_map(|r| remote_endpoints(r, here))
                .collect(),
            traffic: TrafficPolicy::default(),
            protocol: if routes.iter().all(|r| r.http2) {
                HttpVersion::Http2
            } else {
                HttpVersion::Http1
            },
        })
        .collect()
}
