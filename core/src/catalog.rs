//! The local service catalog: the services a mesh knows, with labels and ports.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::id::{Hostname, ServiceKey};
use crate::name::NameError;
use crate::selector::Labels;

/// Application protocol of a service port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum Protocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTP2")]
    Http2,
    #[serde(rename = "GRPC")]
    Grpc,
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "TLS")]
    Tls,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [Self::Http, Self::Http2, Self::Grpc, Self::Tcp, Self::Tls];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protocol string is not one meshfed knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol {0:?} is not one of HTTP, HTTP2, GRPC, TCP, TLS")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A service in the local mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub key: ServiceKey,
    pub labels: Labels,
    pub ports: Vec<ServicePort>,
    /// Service accounts of the workloads behind the service, in the service's namespace.
    pub service_accounts: Vec<String>,
}

impl Service {
    /// True when the service's HTTP traffic is HTTP/2: it has HTTP2 or GRPC ports and no
    /// HTTP (1.1) port. Sidecars then speak HTTP/2 to its endpoints and their apps.
    pub fn speaks_http2(&self) -> bool {
        ports_speak_http2(&self.ports)
    }
}

/// One instance of a service: where its sidecar accepts mTLS, where its app listens, and the
/// identity it runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub namespace: crate::id::Namespace,
    /// The service account it runs as (its SPIFFE ID is `…/ns/<namespace>/sa/<account>`).
    pub service_account: String,
    /// The service it backs.
    pub service: ServiceKey,
    /// Its sidecar's inbound (mTLS) address.
    pub inbound: std::net::SocketAddr,
    /// The app behind the sidecar.
    pub app: std::net::SocketAddr,
    pub locality: Option<crate::locality::Locality>,
    /// Labels, matched by traffic subsets.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A service was added twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {0} is defined more than once")]
pub struct DuplicateService(pub ServiceKey);

/// The services of one mesh, ordered by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    cluster_domain: Hostname,
    services: BTreeMap<ServiceKey, Service>,
    /// Workloads, keyed by namespace and name.
    workloads: BTreeMap<(String, String), Workload>,
}

impl Catalog {
    /// An empty catalog whose services live under `svc.<cluster_domain>`.
    pub fn new(cluster_domain: Hostname) -> Self {
        Self {
            cluster_domain,
            services: BTreeMap::new(),
            workloads: BTreeMap::new(),
        }
    }

    pub fn cluster_domain(&self) -> &Hostname {
        &self.cluster_domain
    }

    pub fn insert(&mut self, service: Service) -> Result<(), DuplicateService> {
        if self.services.contains_key(&service.key) {
            return Err(DuplicateService(service.key));
        }
        self.services.insert(service.key.clone(), service);
        Ok(())
    }

    /// Adds a workload; its service must exist. Returns the reason when it cannot be added.
    pub fn insert_workload(&mut self, w: Workload) -> Result<(), &'static str> {
        if !self.services.contains_key(&w.service) {
            return Err("UnknownService");
        }
        let key = (w.namespace.to_string(), w.name.clone());
        if self.workloads.contains_key(&key) {
            return Err("DuplicateWorkload");
        }
        self.workloads.insert(key, w);
        Ok(())
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    /// The workloads backing `service`, in name order.
    pub fn endpoints_of(&self, service: &ServiceKey) -> impl Iterator<Item = &Workload> {
        self.workloads
            .values()
            .filter(move |w| &w.service == service)
    }

    pub fn get(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// `<name>.<namespace>.svc.<cluster domain>` of a key.
    pub fn hostname_of(&self, key: &ServiceKey) -> Result<Hostname, NameError> {
        key.hostname_in(&self.cluster_domain)
    }

    /// The local service whose hostname is `host`, if any.
    pub fn by_hostname(&self, host: &Hostname) -> Option<&Service> {
        let rest = host
            .as_str()
            .strip_suffix(self.cluster_domain.as_str())?
            .strip_suffix(".svc.")?;
        let (name, ns) = rest.split_once('.')?;
        let key = ServiceKey::new(ns.parse().ok()?, name.parse().ok()?);
        self.services.get(&key)
    }

    /// True when `host` lies in the local cluster domain (`*.svc.<cluster domain>`).
    pub fn is_cluster_local(&self, host: &Hostname) -> bool {
        host.as_str()
            .strip_suffix(self.cluster_domain.as_str())
            .is_some_and(|rest| rest.ends_with(".svc."))
    }
}

/// True when the HTTP ports among `ports` are all HTTP/2 or gRPC (so calls use HTTP/2).
pub fn ports_speak_http2(ports: &[ServicePort]) -> bool {
    let http: Vec<Protocol> = ports
        .iter()
        .map(|p| p.protocol)
        .filter(|p| matches!(p, Protocol::Http | Protocol::Http2 | Protocol::Grpc))
        .collect();
    !http.is_empty() && !http.contains(&Protocol::Http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let mut c = Catalog::new("cluster.local".parse().unwrap());
        let key: ServiceKey = "shop/orders".parse().unwrap();
        let svc = Service {
            key: key.clone(),
            labels: Labels::new(),
            ports: vec![],
            service_accounts: vec![],
        };
        c.insert(svc.clone()).unwrap();
        assert_eq!(c.insert(svc).unwrap_err(), DuplicateService(key.clone()));
        let host: Hostname = "orders.shop.svc.cluster.local".parse().unwrap();
        assert_eq!(c.by_hostname(&host).map(|s| &s.key), Some(&key));
        assert!(c.is_cluster_local(&host));
        assert!(!c.is_cluster_local(&"orders.shop.svc.beta-imports.local".parse().unwrap()));
        assert_eq!("TCP".parse::<Protocol>().unwrap(), Protocol::Tcp);
        assert!("tcp".parse::<Protocol>().is_err());
    }
}
