//! Where everything of a lab run lives: one loopback range per mesh (`127.B.M.0/24`, with B
//! picked per run so parallel runs do not meet), the mesh files the lab writes (the mesh's
//! services, workloads and gateways, and the scenario's federation resources with each
//! `ServiceMeshPeer` pointed at the lab's link to the peer), and the processes to start.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use meshfed_crds::scenario::ScenarioPlan;

pub const INGRESS_PORT: u16 = 15443;
pub const DISCOVERY_PORT: u16 = 8188;
const CONTROL_PORT: u16 = 15012;
const ADMIN_PORT: u16 = 15000;
const GATEWAY_ADMIN_PORT: u16 = 15020;
const INBOUND_PORT: u16 = 15006;
const APP_PORT: u16 = 8080;
const OUTBOUND_PORT: u16 = 15001;
const SIDECAR_ADMIN_PORT: u16 = 15020;

/// One peer relationship of a mesh, as its `ServiceMeshPeer` declares it.
#[derive(Debug, Clone)]
pub struct PeerLayout {
    /// The `ServiceMeshPeer`'s name.
    pub name: String,
    /// The peer mesh (by scenario name).
    pub mesh: String,
    pub ingress_gateway: String,
    pub egress_gateway: String,
    pub ingress: SocketAddr,
    pub discovery: SocketAddr,
    pub egress: SocketAddr,
    pub gateway_admin: SocketAddr,
}

/// One workload: an echo app behind a sidecar.
#[derive(Debug, Clone)]
pub struct WorkloadLayout {
    pub namespace: String,
    pub service: String,
    pub name: String,
    pub inbound: SocketAddr,
    pub app: SocketAddr,
    pub admin: SocketAddr,
    /// The load's entry (the calling workload only).
    pub outbound: Option<SocketAddr>,
}

/// One mesh of the run.
#[derive(Debug, Clone)]
pub struct MeshLayout {
    pub name: String,
    pub index: u8,
    pub control: SocketAddr,
    pub admin: SocketAddr,
    pub peering: SocketAddr,
    pub peers: Vec<PeerLayout>,
    pub workloads: Vec<WorkloadLayout>,
    /// The mesh file's text.
    pub file: String,
}

/// A link from one mesh's egress to another's ingress (both ports).
#[derive(Debug, Clone)]
pub struct LinkLayout {
    pub from: String,
    pub to: String,
    /// Where the `from` mesh's `ServiceMeshPeer` points.
    pub listen: IpAddr,
    /// The `to` mesh's ingress gateway for `from` (service port; discovery beside it), if
    /// the `to` mesh peers back.
    pub target: Option<(SocketAddr, SocketAddr)>,
}

/// The whole run's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    pub base: u8,
    pub meshes: Vec<MeshLayout>,
    pub links: Vec<LinkLayout>,
}

impl Layout {
    pub fn mesh(&self, name: &str) -> Option<&MeshLayout> {
        self.meshes.iter().find(|m| m.name == name)
    }
}

fn ip(base: u8, mesh: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, base, mesh, host))
}

/// What a `ServiceMeshPeer` resource says, read leniently (the scenario was validated).
struct SmpInfo {
    name: String,
    mesh: String,
    ingress: String,
    egress: String,
}

fn smp(r: &serde_json::Value, meshes: &[String]) -> Option<SmpInfo> {
    if r.get("kind")?.as_str()? != "ServiceMeshPeer" {
        return None;
    }
    let name = r.pointer("/metadata/name")?.as_str()?.to_owned();
    let mesh = r
        .pointer("/spec/remote/addresses")?
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| meshes.iter().any(|m| m == a))?
        .to_owned();
    let gw = |role: &str| {
        r.pointer(&format!("/spec/gateways/{role}/name"))
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("{role}-{name}"), str::to_owned)
    };
    Some(SmpInfo {
        ingress: gw("ingress"),
        egress: gw("egress"),
        name,
        mesh,
    })
}

/// Lays out `plan` on `127.base.0.0/16`.
pub fn layout(plan: &ScenarioPlan, base: u8) -> Result<Layout> {
    let names: Vec<String> = plan.meshes.iter().map(|m| m.name.clone()).collect();
    let index_of = |m: &str| {
        names
            .iter()
            .position(|n| n == m)
            .and_then(|i| u8::try_from(i + 1).ok())
    };
    let mut meshes = Vec::new();
    let mut peer_infos: BTreeMap<String, Vec<SmpInfo>> = BTreeMap::new();
    for m in &plan.meshes {
        let infos: Vec<SmpInfo> = m.resources.iter().filter_map(|r| smp(r, &names)).collect();
        if infos.len() > 20 {
            bail!(
                "mesh {} has {} peers; the lab serves up to 20",
                m.name,
                infos.len()
            );
        }
        peer_infos.insert(m.name.clone(), infos);
    }
    for m in &plan.meshes {
        let mi = index_of(&m.name).context("mesh index")?;
        let at = |host: u8, port: u16| SocketAddr::new(ip(base, mi, host), port);
        let peers: Vec<PeerLayout> = peer_infos[&m.name]
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let j = u8::try_from(j).unwrap_or(0);
                PeerLayout {
                    name: p.name.clone(),
                    mesh: p.mesh.clone(),
                    ingress_gateway: p.ingress.clone(),
                    egress_gateway: p.egress.clone(),
                    ingress: at(1 + 2 * j, INGRESS_PORT),
                    discovery: at(1 + 2 * j, DISCOVERY_PORT),
                    egress: at(2 + 2 * j, INGRESS_PORT),
                    gateway_admin: at(2 + 2 * j, GATEWAY_ADMIN_PORT),
                }
            })
            .collect();
        let mut workloads = Vec::new();
        let mut host = 100u8;
        for (ns, svc, replicas) in &m.services {
            for r in 1..=*replicas {
                let is_caller = plan.load.mesh == m.name
                    && &plan.load.namespace == ns
                    && &plan.load.service == svc;
                workloads.push(WorkloadLayout {
                    namespace: ns.clone(),
                    service: svc.clone(),
                    name: format!("{svc}-{r}"),
                    inbound: at(host, INBOUND_PORT),
                    app: at(host, APP_PORT),
                    admin: at(host, SIDECAR_ADMIN_PORT),
                    outbound: (is_caller && r == 1).then(|| at(host, OUTBOUND_PORT)),
                });
                host = host.checked_add(1).context("too many workloads")?;
            }
        }
        meshes.push(MeshLayout {
            name: m.name.clone(),
            index: mi,
            control: at(50, CONTROL_PORT),
            admin: at(50, ADMIN_PORT),
            peering: at(50, DISCOVERY_PORT),
            peers,
            workloads,
            file: String::new(),
        });
    }
    // Links: mesh `from`'s peer entry for `to` points at 127.B.to.(60 + from).
    let mut links = Vec::new();
    for m in &meshes {
        for p in &m.peers {
            let (Some(fi), Some(ti)) = (index_of(&m.name), index_of(&p.mesh)) else {
                continue;
            };
            let target = meshes
                .iter()
                .find(|x| x.name == p.mesh)
                .and_then(|x| x.peers.iter().find(|q| q.mesh == m.name))
                .map(|q| (q.ingress, q.discovery));
            links.push(LinkLayout {
                from: m.name.clone(),
                to: p.mesh.clone(),
                listen: ip(base, ti, 60 + fi),
                target,
            });
        }
    }
    let mut layout = Layout {
        base,
        meshes,
        links,
    };
    for i in 0..layout.meshes.len() {
        let resources = plan
            .meshes
            .iter()
            .find(|x| x.name == layout.meshes[i].name)
            .map(|x| x.resources.clone())
            .unwrap_or_default();
        let file = mesh_file(plan, &layout, &layout.meshes[i], &resources)?;
        layout.meshes[i].file = file;
    }
    Ok(layout)
}

/// The mesh file of `m`: a Mesh document and `resources` (its federation resources as they
/// are now).
pub fn mesh_file(
    plan: &ScenarioPlan,
    layout: &Layout,
    m: &MeshLayout,
    resources: &[serde_json::Value],
) -> Result<String> {
    let spec = plan
        .meshes
        .iter()
        .find(|x| x.name == m.name)
        .context("mesh spec")?;
    let ns = format!("{}-system", m.name);
    let locality = spec.locality.as_ref().map(|l| {
        let mut v = serde_json::json!({"region": l.region()});
        if let Some(z) = l.zone() {
            v["zone"] = z.into();
        }
        if let Some(s) = l.subzone() {
            v["subzone"] = s.into();
        }
        v
    });
    let services: Vec<serde_json::Value> = spec
        .services
        .iter()
        .map(|(sns, name, _)| (sns.clone(), name.clone()))
        .chain((0..spec.bulk_services).map(|i| ("bulk".to_owned(), format!("bulk-{i}"))))
        .map(|(sns, name)| {
            serde_json::json!({"name": name, "namespace": sns, "ports": [{"name": "http", "port": 8080}]})
        })
        .collect();
    let workloads: Vec<serde_json::Value> = m
        .workloads
        .iter()
        .map(|w| {
            serde_json::json!({
                "name": w.name, "namespace": w.namespace, "service": w.service,
                "inbound": w.inbound.to_string(), "app": w.app.to_string(),
            })
        })
        .collect();
    let mut gateways = Vec::new();
    for p in &m.peers {
        gateways.push(serde_json::json!({
            "name": p.ingress_gateway, "address": p.ingress.to_string(),
            "discoveryAddress": p.discovery.to_string(),
        }));
        gateways
            .push(serde_json::json!({"name": p.egress_gateway, "address": p.egress.to_string()}));
    }
    let mut mesh_spec = serde_json::json!({
        "trustDomain": format!("{}.local", m.name),
        "services": services,
        "workloads": workloads,
        "gateways": gateways,
    });
    if let Some(l) = locality {
        mesh_spec["locality"] = l;
    }
    let mesh_doc = serde_json::json!({
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": m.name, "namespace": ns},
        "spec": mesh_spec,
    });
    let mut docs = vec![mesh_doc];
    for r in resources {
        let mut r = r.clone();
        r["metadata"]["namespace"] = ns.clone().into();
        if r.get("kind").and_then(|k| k.as_str()) == Some("ServiceMeshPeer")
            && let Some(addrs) = r
                .pointer_mut("/spec/remote/addresses")
                .and_then(|a| a.as_array_mut())
        {
            for a in addrs.iter_mut() {
                let Some(to) = a.as_str().map(str::to_owned) else {
                    continue;
                };
                if let Some(link) = layout.links.iter().find(|l| l.from == m.name && l.to == to) {
                    *a = link.listen.to_string().into();
                }
            }
            r["spec"]["remote"]["discoveryPort"] = DISCOVERY_PORT.into();
            r["spec"]["remote"]["servicePort"] = INGRESS_PORT.into();
        }
        docs.push(r);
    }
    let mut out = format!(
        "# Written by the meshfed lab for scenario {:?}, mesh {}.\n",
        plan.name, m.name
    );
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&d).context("writing YAML")?);
    }
    Ok(out)
}
