//! Validation of multi-document YAML files holding federation CRDs and `Mesh` documents:
//! YAML syntax, the CRD schema, object metadata, semantic rules per object, and rules across
//! objects (set names match peers, trust domains unique, one namespace per mesh). Produces
//! diagnostics and the converted model in one pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use meshfed_core::export::ExportRule;
use meshfed_core::federation::{MeshFederation, Peer};
use meshfed_core::import::ImportSet;
use meshfed_core::name;
use serde::de::DeserializeOwned;
use serde_json::Value as J;

use crate::diag::{Diagnostic, FieldPath, Finding, Severity};
use crate::exports::ExportedServiceSetSpec;
use crate::imports::ImportedServiceSetSpec;
use crate::mesh::MeshSpec;
use crate::model::{self, MeshInfo};
use crate::peer::ServiceMeshPeerSpec;
use crate::yaml::{self, Node, Value};
use crate::{FEDERATION_API_VERSION, MESHFED_API_VERSION, manifests};

/// The kinds meshfed checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ServiceMeshPeer,
    ExportedServiceSet,
    ImportedServiceSet,
    Mesh,
    Scenario,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceMeshPeer => "ServiceMeshPeer",
            Self::ExportedServiceSet => "ExportedServiceSet",
            Self::ImportedServiceSet => "ImportedServiceSet",
            Self::Mesh => "Mesh",
            Self::Scenario => "Scenario",
        }
    }

    fn parse(kind: &str) -> Option<Self> {
        [
            Self::ServiceMeshPeer,
            Self::ExportedServiceSet,
            Self::ImportedServiceSet,
            Self::Mesh,
            Self::Scenario,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Mesh | Self::Scenario => MESHFED_API_VERSION,
            _ => FEDERATION_API_VERSION,
        }
    }
}

/// A file to validate.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

/// What one document converted to.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    Peer(Peer),
    Exports(Vec<ExportRule>),
    Imports(ImportSet),
    Mesh(MeshInfo),
    Scenario(Box<crate::scenario::ScenarioPlan>),
}

/// One recognized object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub file: String,
    pub document: usize,
    pub kind: Kind,
    pub name: String,
    pub namespace: Option<String>,
    /// The document as JSON, exactly as written (for round-trip checks).
    pub raw: J,
    /// `None` when the object is too broken to convert.
    pub converted: Option<Converted>,
    root: Node,
}

impl Object {
    /// `Kind namespace/name`.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.as_str(), self.name),
            None => format!("{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// Everything found in a set of files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub objects: Vec<Object>,
    pub diagnostics: Vec<Diagnostic>,
    /// The namespace objects without one are in (`validate --namespace`, as `oc apply -n`).
    namespace: Option<String>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    fn push(
        &mut self,
        file: &str,
        document: usize,
        root: Option<&Node>,
        object: Option<String>,
        f: Finding,
    ) {
        let pos = root.map(|r| r.locate(&f.path)).unwrap_or_default();
        self.diagnostics.push(Diagnostic {
            severity: f.severity,
            reason: f.reason,
            file: file.to_owned(),
            document,
            line: pos.line,
            column: pos.column,
            object,
            path: f.path,
            message: f.message,
            hint: f.hint,
        });
    }

    fn push_for(&mut self, obj_index: usize, f: Finding) {
        let o = &self.objects[obj_index];
        let (file, doc, label, root) = (o.file.clone(), o.document, o.label(), o.root.clone());
        self.push(&file, doc, Some(&root), Some(label), f);
    }

    /// Assembles one mesh per `Mesh` document from the objects in its namespace.
    pub fn meshes(&self) -> Vec<MeshFederation> {
        let mut out = Vec::new();
        for o in &self.objects {
            let Some(Converted::Mesh(info)) = &o.converted else {
                continue;
            };
            let mut peers: BTreeMap<_, Peer> = BTreeMap::new();
            let in_mesh = |x: &&Object| {
                x.namespace
                    .as_deref()
                    .is_none_or(|ns| ns == info.namespace.as_str())
                    && x.file == o.file
            };
            for x in self.objects.iter().filter(in_mesh) {
                if let Some(Converted::Peer(p)) = &x.converted {
                    peers.entry(p.name.clone()).or_insert_with(|| p.clone());
                }
            }
            for x in self.objects.iter().filter(in_mesh) {
                match &x.converted {
                    Some(Converted::Exports(rules)) => {
                        if let Some(p) = peers.values_mut().find(|p| p.name.as_str() == x.name) {
                            p.exports = rules.clone();
                        }
                    }
                    Some(Converted::Imports(set)) => {
                        if let Some(p) = peers.get_mut(&set.peer) {
                            p.imports = Some(set.clone());
                        }
                    }
                    _ => {}
                }
            }
            // A peer whose trust domain is ours, or taken by an earlier peer, never federates.
            let mut seen = std::collections::BTreeSet::new();
            peers.retain(|_, p| {
                p.trust_domain != info.trust_domain && seen.insert(p.trust_domain.clone())
            });
            out.push(MeshFederation {
                mesh: info.name.clone(),
                trust_domain: info.trust_domain.clone(),
                namespace: info.namespace.clone(),
                catalog: info.catalog.clone(),
                peers,
                policies: info.policies.clone(),
                traffic: info.traffic.clone(),
                gateways: info.gateways.clone(),
            });
        }
        out
    }
}

fn schemas() -> &'static HashMap<&'static str, J> {
    static SCHEMAS: OnceLock<HashMap<&'static str, J>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        manifests::all_crds()
            .into_iter()
            .filter_map(|crd| {
                let kind = Kind::parse(&crd.spec.names.kind)?.as_str();
                let schema = crd
                    .spec
                    .versions
                    .first()?
                    .schema
                    .as_ref()?
                    .open_api_v3_schema
                    .as_ref()?;
                Some((kind, serde_json::to_value(schema).ok()?))
            })
            .collect()
    })
}

fn check_metadata(root: &Node, out: &mut Vec<Finding>) -> (Option<String>, Option<String>) {
    let path = FieldPath::parse("metadata");
    let Some(meta) = root.get("metadata") else {
        out.push(
            Finding::error("MissingField", path, "metadata is missing")
                .hint("every object needs metadata.name"),
        );
        return (None, None);
    };
    if !matches!(meta.value, Value::Map(_)) {
        out.push(Finding::error(
            "WrongType",
            path,
            format!("expected mapping, got {}", meta.value.type_name()),
        ));
        return (None, None);
    }
    let name = meta_string(
        meta,
        &path,
        "name",
        true,
        |s| name::dns1123_subdomain("object name", s),
        out,
    );
    let namespace = meta_string(
        meta,
        &path,
        "namespace",
        false,
        |s| name::dns1123_label("namespace", s),
        out,
    );
    for field in ["labels", "annotations"] {
        if let Some(Value::Map(entries)) = meta.get(field).map(|n| &n.value) {
            for e in entries {
                if let Err(err) = name::label_key(&e.key) {
                    out.push(Finding::error(
                        "InvalidLabelKey",
                        path.key(field).key(&e.key),
                        err.to_string(),
                    ));
                }
                if field == "labels" {
                    match &e.value.value {
                        Value::Str { text, .. } => {
                            out.extend(crate::schema::yaml11_boolean(
                                &e.value,
                                &path.key(field).key(&e.key),
                            ));
                            if let Err(err) = name::label_value(text) {
                                out.push(Finding::error(
                                    "InvalidLabelValue",
                                    path.key(field).key(&e.key),
                                    err.to_string(),
                                ));
                            }
                        }
                        v => out.push(
                            Finding::error(
                                "WrongType",
                                path.key(field).key(&e.key),
                                format!("expected string, got {}", v.type_name()),
                            )
                            .hint("quote the value"),
                        ),
                    }
                }
            }
        }
    }
    (name, namespace)
}

/// A string field of `metadata`, checked by `check`; a missing required field is reported.
fn meta_string(
    meta: &Node,
    path: &FieldPath,
    key: &str,
    required: bool,
    check: impl Fn(&str) -> Result<(), name::NameError>,
    out: &mut Vec<Finding>,
) -> Option<String> {
    let path = path.key(key);
    match meta.get(key).map(|n| &n.value) {
        None | Some(Value::Null) => {
            if required {
                out.push(Finding::error(
                    "MissingField",
                    path,
                    format!("metadata.{key} is missing"),
                ));
            }
            None
        }
        Some(Value::Str { text, .. }) => {
            if let Err(e) = check(text) {
                out.push(Finding::error("InvalidName", path, e.to_string()));
            }
            Some(text.clone())
        }
        Some(v) => {
            out.push(Finding::error(
                "WrongType",
                path,
                format!("expected string, got {}", v.type_name()),
            ));
            None
        }
    }
}

fn decode<T: DeserializeOwned>(raw: &J, out: &mut Vec<Finding>) -> Option<T> {
    // No spec is an empty one, as Maistra's CRDs have it (what it lacks is then reported
    // field by field by the conversion).
    let empty = J::Object(serde_json::Map::new());
    let spec = raw.get("spec").filter(|s| !s.is_null()).unwrap_or(&empty);
    serde_json::from_value(spec.clone())
        .map_err(|e| {
            out.push(Finding::error(
                "DecodeFailed",
                FieldPath::parse("spec"),
                e.to_string(),
            ))
        })
        .ok()
}

/// Checks one document. Returns the object when it is a kind meshfed knows.
fn check_document(file: &str, index: usize, root: &Node, report: &mut Report) -> Option<Object> {
    let mut findings = Vec::new();
    let doc_finding =
        |report: &mut Report, f: Finding| report.push(file, index, Some(root), None, f);
    if !matches!(root.value, Value::Map(_)) {
        doc_finding(
            report,
            Finding::error(
                "WrongType",
                FieldPath::root(),
                format!(
                    "expected a mapping (an object), got {}",
                    root.value.type_name()
                ),
            ),
        );
        return None;
    }
    let api_version = root.str_at("apiVersion");
    let kind_str = root.str_at("kind");
    let (Some(api_version), Some(kind_str)) = (api_version, kind_str) else {
        for (field, v) in [("apiVersion", api_version), ("kind", kind_str)] {
            if v.is_none() {
                doc_finding(
                    report,
                    Finding::error(
                        "MissingField",
                        FieldPath::parse(field),
                        format!("{field} is missing or not a string"),
                    ),
                );
            }
        }
        return None;
    };
    let Some(kind) = Kind::parse(kind_str) else {
        doc_finding(
            report,
            Finding::warning(
                "UnknownKind",
                FieldPath::parse("kind"),
                format!("{api_version} {kind_str} is not checked by meshfed; ignored"),
            ),
        );
        return None;
    };
    if api_version != kind.api_version() {
        doc_finding(
            report,
            Finding::error(
                "UnsupportedVersion",
                FieldPath::parse("apiVersion"),
                format!(
                    "{kind_str} is served as {}, not {api_version}",
                    kind.api_version()
                ),
            ),
        );
        return None;
    }
    // What the API server would store: whole-number floats and YAML 1.1 booleans read as
    // kubectl reads them (findings keep the original positions).
    let mut coerced = root.clone();
    if let Some(schema) = schemas().get(kind.as_str()) {
        crate::schema::coerce(&mut coerced, schema, &FieldPath::root(), &mut findings);
        crate::schema::check(&coerced, schema, &FieldPath::root(), &mut findings);
        // No spec is an empty one: what the schema requires in it is reported there.
        if coerced.get("spec").is_none()
            && let Some(spec_schema) = schema.pointer("/properties/spec")
        {
            let empty = Node {
                pos: root.pos,
                value: Value::Map(Vec::new()),
            };
            crate::schema::check(
                &empty,
                spec_schema,
                &FieldPath::parse("spec"),
                &mut findings,
            );
        }
    }
    let root = &coerced;
    let (name, mut namespace) = check_metadata(root, &mut findings);
    if let Some(default) = &report.namespace {
        match &namespace {
            None => namespace = Some(default.clone()),
            Some(ns) if ns != default => findings.push(
                Finding::error(
                    "NamespaceMismatch",
                    FieldPath::parse("metadata.namespace"),
                    format!("the object is in namespace {ns:?}, not {default:?} (--namespace)"),
                )
                .hint("kubectl and oc refuse to apply it with -n; drop one of the two"),
            ),
            Some(_) => {}
        }
    }
    let schema_ok = !findings.iter().any(|f| f.severity == Severity::Error);
    let raw = root.to_json();
    let mut object = Object {
        file: file.to_owned(),
        document: index,
        kind,
        name: name.clone().unwrap_or_default(),
        namespace,
        raw,
        converted: None,
        root: root.clone(),
    };
    if schema_ok && let Some(name) = name {
        let out = &mut findings;
        object.converted = match kind {
            Kind::ServiceMeshPeer => decode::<ServiceMeshPeerSpec>(&object.raw, out)
                .and_then(|s| model::convert_peer(&name, &s, out))
                .map(Converted::Peer),
            Kind::ExportedServiceSet => {
                decode::<ExportedServiceSetSpec>(&object.raw, out).map(|s| {
                    model::peer_name(&name, out);
                    Converted::Exports(model::convert_exports(&s, out))
                })
            }
            Kind::ImportedServiceSet => decode::<ImportedServiceSetSpec>(&object.raw, out)
                .and_then(|s| {
                    // The importer's cluster domain is applied when the mesh is known (below).
                    let peer = model::peer_name(&name, out)?;
                    Some(Converted::Imports(model::convert_imports(
                        peer,
                        &s,
                        model::DEFAULT_CLUSTER_DOMAIN,
                        out,
                    )))
                }),
            Kind::Mesh => decode::<MeshSpec>(&object.raw, out)
                .and_then(|s| model::convert_mesh(&name, object.namespace.as_deref(), &s, out))
                .map(Converted::Mesh),
            Kind::Scenario => decode::<crate::scenario::ScenarioSpec>(&object.raw, out)
                .and_then(|s| crate::scenario::convert_scenario(&name, &s, out))
                .map(|p| Converted::Scenario(Box::new(p))),
        };
    }
    // A scenario's federation resources (and those its steps apply) are checked like the same
    // objects in a mesh file, each with its own label, at its own place in the file.
    if kind == Kind::Scenario {
        let meshes = root.get("spec").and_then(|s| s.get("meshes"));
        for m in meshes.map(Node::items).unwrap_or_default() {
            for r in m.get("resources").map(Node::items).unwrap_or_default() {
                check_document(file, index, r, report);
            }
        }
        let steps = root.get("spec").and_then(|s| s.get("steps"));
        for step in steps.map(Node::items).unwrap_or_default() {
            if let Some(r) = step.get("resource") {
                check_document(file, index, r, report);
            }
        }
    }
    let label = object.label();
    for f in findings {
        report.push(file, index, Some(root), Some(label.clone()), f);
    }
    Some(object)
}

/// Validates every document of every input, then the rules across objects.
pub fn validate(inputs: &[Input<'_>]) -> Report {
    validate_in(inputs, None)
}

/// [`validate`] as `kubectl apply -n NAMESPACE` applies: objects without a namespace are in
/// `namespace`, and an object naming another one is an error (`NamespaceMismatch`).
pub fn validate_in(inputs: &[Input<'_>], namespace: Option<&str>) -> Report {
    let mut report = Report {
        namespace: namespace.map(str::to_owned),
        ..Report::default()
    };
    for input in inputs {
        let stream = yaml::load(input.text);
        for doc in &stream.documents {
            for e in &doc.errors {
                report.push(input.file, doc.index, None, None, load_finding(e));
                // positions of load errors are exact; fix them up below
                if let Some(d) = report.diagnostics.last_mut() {
                    d.line = e.pos.line;
                    d.column = e.pos.column;
                }
            }
            let Some(root) = &doc.root else { continue };
            // `kind: List` (what `kubectl get -o yaml` prints): each item is an object of
            // its own, checked as `kubectl apply` applies it.
            let roots = match list_items(root) {
                None => vec![root],
                Some(Ok(items)) => items.iter().collect(),
                Some(Err(f)) => {
                    report.push(input.file, doc.index, Some(root), None, f);
                    Vec::new()
                }
            };
            for root in roots {
                if let Some(obj) = check_document(input.file, doc.index, root, &mut report) {
                    report.objects.push(obj);
                }
            }
        }
        if let Some(e) = &stream.fatal {
            report.push(
                input.file,
                stream.documents.len(),
                None,
                None,
                load_finding(e),
            );
            if let Some(d) = report.diagnostics.last_mut() {
                d.line = e.pos.line;
                d.column = e.pos.column;
            }
        }
    }
    cross_checks(&mut report);
    report
}

/// The items of a `v1` `List` document; `None` when `root` is no list.
fn list_items(root: &Node) -> Option<Result<&[Node], Finding>> {
    if root.str_at("kind") != Some("List") || root.str_at("apiVersion") != Some("v1") {
        return None;
    }
    Some(match root.get("items").map(|n| &n.value) {
        Some(Value::Seq(items)) => Ok(items.as_slice()),
        None | Some(Value::Null) => Ok(&[]),
        Some(v) => Err(Finding::error(
            "WrongType",
            FieldPath::parse("items"),
            format!("a List's items must be a list, got {}", v.type_name()),
        )),
    })
}

fn load_finding(e: &yaml::LoadError) -> Finding {
    let f = Finding::error(e.reason, e.path.clone(), e.message.clone());
    match e.reason {
        "YamlSyntax" => f.hint("documents after this point were not read"),
        _ => f,
    }
}

/// Rules across objects, per file group: duplicates, set names matching peers, trust
/// domains, namespaces, and the importer's cluster domain for import rules.
fn cross_checks(report: &mut Report) {
    let n = report.objects.len();
    // Which Mesh (object index) governs each file.
    let mut mesh_of_file: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        if report.objects[i].kind == Kind::Mesh {
            if let Some(&first) = mesh_of_file.get(&report.objects[i].file) {
                let other = report.objects[first].label();
                report.push_for(
                    i,
                    Finding::error(
                        "MultipleMeshes",
                        FieldPath::root(),
                        format!("this file already describes {other}"),
                    )
                    .hint("put each mesh in its own file"),
                );
            } else {
                mesh_of_file.insert(report.objects[i].file.clone(), i);
            }
        }
    }
    // Effective namespace and namespace checks.
    let mut group: Vec<String> = Vec::with_capacity(n);
    for i in 0..n {
        let o = &report.objects[i];
        let mesh = mesh_of_file.get(&o.file).map(|&m| &report.objects[m]);
        let mesh_ns = mesh.and_then(|m| m.namespace.clone());
        let effective = o
            .namespace
            .clone()
            .or_else(|| mesh_ns.clone())
            .unwrap_or_else(|| "(unset)".into());
        let group_key = format!("{}\u{0}{}", mesh.map_or("", |m| m.file.as_str()), effective);
        let mismatch = o.kind != Kind::Mesh
            && o.namespace
                .as_deref()
                .is_some_and(|ns| mesh_ns.as_deref().is_some_and(|mns| mns != ns));
        let mlabel = mesh.map(Object::label).unwrap_or_default();
        group.push(group_key);
        if mismatch {
            {
                report.push_for(
                    i,
                    Finding::error("WrongNamespace", FieldPath::parse("metadata.namespace"), format!("federation resources of {mlabel} belong in its control-plane namespace"))
                        .hint("Maistra silently ignores federation resources outside the control-plane namespace; move it or fix the namespace"),
                );
            }
        }
    }
    // Duplicates per group.
    let mut seen: HashMap<(String, Kind, String), usize> = HashMap::new();
    for (i, g) in group.iter().enumerate() {
        let o = &report.objects[i];
        if o.name.is_empty() {
            continue;
        }
        let key = (g.clone(), o.kind, o.name.clone());
        if let Some(&first) = seen.get(&key) {
            let where_ = format!(
                "{}: document {}",
                report.objects[first].file, report.objects[first].document
            );
            report.push_for(
                i,
                Finding::error(
                    "DuplicateObject",
                    FieldPath::parse("metadata.name"),
                    format!("{} is defined again (first in {where_})", o.label()),
                ),
            );
            report.objects[i].converted = None;
        } else {
            seen.insert(key, i);
        }
    }
    // Peers per group: trust domains unique, and not the mesh's own.
    let mut peer_tds: HashMap<(String, String), usize> = HashMap::new();
    for (i, g) in group.iter().enumerate() {
        let Some(Converted::Peer(p)) = &report.objects[i].converted else {
            continue;
        };
        let td = p.trust_domain.as_str().to_owned();
        let mesh_td = mesh_of_file.get(&report.objects[i].file).and_then(|&m| {
            match &report.objects[m].converted {
                Some(Converted::Mesh(info)) => Some(info.trust_domain.as_str().to_owned()),
                _ => None,
            }
        });
        let path = FieldPath::parse("spec.security.trustDomain");
        if mesh_td.as_deref() == Some(td.as_str()) {
            report.push_for(
                i,
                Finding::error("TrustDomainIsLocal", path, format!("trust domain {td:?} is this mesh's own"))
                    .hint("every mesh needs its own trust domain; a peer's identities must never pass as local ones"),
            );
            continue;
        }
        if let Some(&first) = peer_tds.get(&(g.clone(), td.clone())) {
            let other = report.objects[first].label();
            report.push_for(
                i,
                Finding::error(
                    "TrustDomainTaken",
                    path,
                    format!("trust domain {td:?} is already claimed by {other}"),
                )
                .hint("bundles are kept per trust domain; two peers cannot share one"),
            );
        } else {
            peer_tds.insert((g.clone(), td), i);
        }
    }
    // Service sets must name a peer; import rules use the mesh's cluster domain.
    for i in 0..n {
        let (kind, name) = (report.objects[i].kind, report.objects[i].name.clone());
        if !matches!(kind, Kind::ExportedServiceSet | Kind::ImportedServiceSet) || name.is_empty() {
            continue;
        }
        let has_peer = (0..n).any(|j| {
            report.objects[j].kind == Kind::ServiceMeshPeer
                && group[j] == group[i]
                && report.objects[j].name == name
        });
        if !has_peer {
            let kind = kind.as_str();
            report.push_for(
                i,
                Finding::warning("PeerNotFound", FieldPath::parse("metadata.name"), format!("no ServiceMeshPeer named {name:?} among the given documents"))
                    .hint(format!("a {kind} is named after its peer; fine if that peer already exists in the cluster")),
            );
        }
        if kind == Kind::ImportedServiceSet {
            recheck_cluster_domain(report, i, &mesh_of_file);
        }
    }
}

/// Re-converts an `ImportedServiceSet` with its mesh's cluster domain when that differs from
/// the default, so `domainSuffix` checks use the right local domain.
fn recheck_cluster_domain(report: &mut Report, i: usize, mesh_of_file: &HashMap<String, usize>) {
    let Some(&m) = mesh_of_file.get(&report.objects[i].file) else {
        return;
    };
    let Some(Converted::Mesh(info)) = &report.objects[m].converted else {
        return;
    };
    let cd = info.catalog.cluster_domain().as_str().to_owned();
    if cd == model::DEFAULT_CLUSTER_DOMAIN {
        return;
    }
    let Some(Converted::Imports(set)) = &report.objects[i].converted else {
        return;
    };
    let peer = set.peer.clone();
    let mut findings = Vec::new();
    let Ok(spec) = serde_json::from_value::<ImportedServiceSetSpec>(
        report.objects[i]
            .raw
            .get("spec")
            .cloned()
            .unwrap_or(J::Null),
    ) else {
        return;
    };
    let set = model::convert_imports(peer, &spec, &cd, &mut findings);
    report.objects[i].converted = Some(Converted::Imports(set));
    for f in findings
        .into_iter()
        .filter(|f| f.reason == "LocalDomainSuffix")
    {
        report.push_for(i, f);
    }
}

/// One mesh loaded from a file's text: its model, and its `Mesh` document as JSON (what a
/// control plane sends its proxies, who load it with this same function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedMesh {
    pub mesh: MeshFederation,
    pub mesh_json: String,
    /// Warnings found while loading.
    pub warnings: Vec<Diagnostic>,
}

/// Why a text did not load as exactly one mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshLoadError {
    #[error("{file} has {} error(s):\n{}", .errors.len(), lines(.errors))]
    Invalid {
        file: String,
        errors: Vec<Diagnostic>,
    },
    #[error("{0}: no Mesh document")]
    NoMesh(String),
    #[error("{0}: {1} Mesh documents; one per file")]
    SeveralMeshes(String, usize),
}

fn lines(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("  {d}\n")).collect()
}

/// Validates `text` (named `file` in diagnostics) and returns its one mesh; every error is
/// reported, none is skipped, and nothing is returned unless the whole text is valid.
pub fn load_mesh(file: &str, text: &str) -> Result<LoadedMesh, MeshLoadError> {
    let report = validate(&[Input { file, text }]);
    let (errors, warnings): (Vec<_>, Vec<_>) = report
        .diagnostics
        .iter()
        .cloned()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        return Err(MeshLoadError::Invalid {
            file: file.to_owned(),
            errors,
        });
    }
    let mut meshes = report.meshes();
    let docs: Vec<&Object> = report
        .objects
        .iter()
        .filter(|o| matches!(o.converted, Some(Converted::Mesh(_))))
        .collect();
    match (meshes.len(), docs.as_slice()) {
        (1, [doc]) => Ok(LoadedMesh {
            mesh: meshes.remove(0),
            mesh_json: doc.raw.to_string(),
            warnings,
        }),
        (0, _) => Err(MeshLoadError::NoMesh(file.to_owned())),
        (n, _) => Err(MeshLoadError::SeveralMeshes(file.to_owned(), n)),
    }
}
