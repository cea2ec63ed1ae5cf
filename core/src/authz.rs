//! Authorization policy, with Istio `AuthorizationPolicy` names and meaning: a request is
//! denied if any DENY policy matches; otherwise, if any ALLOW policy applies to the workload,
//! it is allowed only if one matches; with no ALLOW policy it is allowed.
//!
//! Paths are normalized *before* matching and the normalized path is what the app receives
//! (checked = forwarded), so `//admin`, `/a/../admin`, `/%2e%2e/admin`, `/admin;x=1` and
//! friends cannot slip past a rule on `/admin` (Istio CVE-2021-31920, Envoy CVE-2021-29492).

use std::borrow::Cow;

use serde::Serialize;

use crate::id::{SpiffeId, TrustDomain};

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

/// A string pattern: exact, `prefix*`, `*suffix`, or `*` for anything (Istio's forms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Self::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Self::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Self::Suffix(p.to_owned())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => e == v,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(p) => v.ends_with(p.as_str()),
        }
    }
}

/// Conditions on the caller; every listed field must match (empty lists match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Caller identities in Istio's form, `<trust-domain>/ns/<ns>/sa/<sa>` (no scheme), or
    /// patterns of it.
    pub principals: Vec<Pattern>,
    pub namespaces: Vec<Pattern>,
    pub trust_domains: Vec<TrustDomain>,
}

/// Conditions on the request; every listed field must match (empty lists match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Matched against the normalized path, without query.
    pub paths: Vec<Pattern>,
    /// Upper-case method names.
    pub methods: Vec<String>,
}

/// A rule matches when any of its sources and any of its operations match (absent lists
/// match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
}

/// One policy; it matches when any rule matches. A policy without rules matches everything
/// (so an ALLOW without rules allows all, a DENY without rules denies all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub name: String,
    pub action: Action,
    pub rules: Vec<Rule>,
}

/// A policy and the workloads it applies to: those of `namespace`, or of one service there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopedPolicy {
    pub namespace: crate::id::Namespace,
    pub service: Option<crate::id::ServiceName>,
    pub policy: Policy,
}

impl ScopedPolicy {
    /// True when the policy applies to a workload of `service`.
    pub fn applies_to(&self, service: &crate::id::ServiceKey) -> bool {
        self.namespace == service.namespace
            && self.service.as_ref().is_none_or(|s| s == &service.name)
    }
}

/// The request facts a decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub caller: &'a SpiffeId,
    pub method: &'a str,
    /// Normalized path (see [`normalize_path`]).
    pub path: &'a str,
}

/// The outcome, naming the deciding policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        policy: Option<String>,
    },
    Deny {
        policy: Option<String>,
        reason: &'static str,
    },
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

fn namespace_of(id: &SpiffeId) -> Option<&str> {
    let mut segs = id.path().trim_start_matches('/').split('/');
    (segs.next() == Some("ns")).then(|| segs.next()).flatten()
}

impl Source {
    fn matches(&self, r: &Request<'_>) -> bool {
        let id = r.caller.to_client_id();
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(&id)))
            && (self.namespaces.is_empty()
                || namespace_of(r.caller)
                    .is_some_and(|ns| self.namespaces.iter().any(|p| p.matches(ns))))
            && (self.trust_domains.is_empty()
                || self.trust_domains.contains(r.caller.trust_domain()))
    }
}

impl Operation {
    fn matches(&self, r: &Request<'_>) -> bool {
        (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(r.path)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == r.method))
    }
}

impl Rule {
    fn matches(&self, r: &Request<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(r)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(r)))
    }
}

impl Policy {
    pub fn matches(&self, r: &Request<'_>) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|rule| rule.matches(r))
    }
}

impl Operation {
    /// Whether it names HTTP-only conditions (paths, methods).
    fn http_only(&self) -> bool {
        !self.paths.is_empty() || !self.methods.is_empty()
    }
}

impl Policy {
    /// Matching for a TCP stream, where paths and methods cannot be seen: as Istio does, an
    /// operation with HTTP-only conditions is taken to match in a DENY policy (fail closed)
    /// and never to match in an ALLOW policy.
    fn matches_tcp(&self, r: &Request<'_>) -> bool {
        let deny = self.action == Action::Deny;
        self.rules.is_empty()
            || self.rules.iter().any(|rule| {
                (rule.from.is_empty() || rule.from.iter().any(|s| s.matches(r)))
                    && (rule.to.is_empty() || rule.to.iter().any(|o| deny || !o.http_only()))
            })
    }
}

/// Decides a request against the policies that apply to the workload.
pub fn decide(policies: &[Policy], r: &Request<'_>) -> Decision {
    decide_by(policies, |p| p.matches(r))
}

/// Decides a TCP stream from `caller` (see [`Policy`]'s TCP rule on HTTP-only conditions).
pub fn decide_tcp(policies: &[Policy], caller: &SpiffeId) -> Decision {
    let r = Request {
        caller,
        method: "",
        path: "",
    };
    decide_by(policies, |p| p.matches_tcp(&r))
}

fn decide_by(policies: &[Policy], matches: impl Fn(&Policy) -> bool) -> Decision {
    if let Some(p) = policies
        .iter()
        .find(|p| p.action == Action::Deny && matches(p))
    {
        return Decision::Deny {
            policy: Some(p.name.clone()),
            reason: "DeniedByPolicy",
        };
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow { policy: None };
    }
    match allows.find(|p| matches(p)) {
        Some(p) => Decision::Allow {
            policy: Some(p.name.clone()),
        },
        None => Decision::Deny {
            policy: None,
            reason: "NoAllowPolicyMatched",
        },
    }
}

/// Why a request target was refused before any policy ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is not absolute")]
    NotAbsolute,
    #[error("the path holds an encoded slash, backslash or NUL")]
    EncodedSeparator,
    #[error("the path holds a backslash, NUL or control character")]
    BadCharacter,
    #[error("the path holds invalid percent-encoding")]
    BadEncoding,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the request target carries a fragment")]
    Fragment,
}

impl PathError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAbsolute => "PathNotAbsolute",
            Self::EncodedSeparator => "EncodedSeparator",
            Self::BadCharacter => "BadPathCharacter",
            Self::BadEncoding => "BadPercentEncoding",
            Self::AboveRoot => "PathAboveRoot",
            Self::Fragment => "PathFragment",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a request path (without query): decodes percent-encoded *unreserved*
/// characters, refuses encoded `/`, `\` and NUL, backslashes and controls, drops `;` matrix
/// parameters from each segment, merges repeated slashes, and resolves `.` and `..` (refusing
/// to climb above the root). Idempotent: normalizing twice gives the same path.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_owned(raw).map(Cow::Owned)
}

/// True when [`normalize_path`] would return `raw` unchanged and there is nothing to decode: an
/// absolute path of printable ASCII without `%`, backslash, `;` or `#`, whose segments are neither
/// empty (but the last) nor `.` or `..` — what almost every request carries, checked without
/// allocating.
fn is_normal(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    let plain = |b: &u8| (0x21..0x7f).contains(b) && !matches!(b, b'%' | b'\\' | b';' | b'#');
    if !rest.as_bytes().iter().all(plain) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

fn normalize_owned(raw: &str) -> Result<String, PathError> {
    if raw.contains('#') {
        return Err(PathError::Fragment);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Percent-decoding of unreserved characters only; everything else stays encoded (upper-case).
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEncoding);
            };
            let c = h * 16 + l;
            match c {
                b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    decoded.push(char::from(c))
                }
                _ => decoded.push_str(&format!("%{c:02X}")),
            }
            i += 3;
            continue;
        }
        if b == b'\\' || b < 0x20 || b == 0x7f {
            return Err(PathError::BadCharacter);
        }
        decoded.push(char::from(b));
        i += 1;
    }
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') && decoded.len() > 1;
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => out.push(s),
        }
    }
    let mut path = format!("/{}", out.join("/"));
    if trailing && path.len() > 1 {
        path.push('/');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn h9_path_vectors_normalize_or_are_refused() {
        for (raw, want) in [
            ("/admin", Ok("/admin")),
            ("//admin", Ok("/admin")),
            ("/a/../admin", Ok("/admin")),
            ("/./admin", Ok("/admin")),
            ("/%2e%2e/admin", Err(PathError::AboveRoot)),
            ("/x/%2e%2e/admin", Ok("/admin")),
            ("/%61dmin", Ok("/admin")),
            ("/admin;x=1", Ok("/admin")),
            ("/admin%2f", Err(PathError::EncodedSeparator)),
            ("/admin%2F..", Err(PathError::EncodedSeparator)),
            ("\\admin", Err(PathError::NotAbsolute)),
            ("/a\\admin", Err(PathError::BadCharacter)),
            ("/admin%00", Err(PathError::EncodedSeparator)),
            ("/admin#f", Err(PathError::Fragment)),
            ("/admin%zz", Err(PathError::BadEncoding)),
            ("/ADMIN", Ok("/ADMIN")),
            ("/a b", Ok("/a b")),
            ("/x/%3f", Ok("/x/%3F")),
            ("/api/", Ok("/api/")),
            ("/", Ok("/")),
        ] {
            assert_eq!(
                normalize_path(raw).as_deref().map_err(|e| *e),
                want.map(str::to_owned).as_deref().map_err(|e| *e),
                "{raw}"
            );
        }
    }

    proptest::proptest! {
        /// The allocation-free check never takes a path the full normalization would change.
        #[test]
        fn paths_taken_as_normal_are_normal(raw in "(/|//|/\\.|/\\.\\.|\\.|/%41|;x=1|/api|/v1\\.2|-_~| |\\\\|#|\\?)*") {
            if is_normal(&raw) {
                let full = normalize_owned(&raw);
                proptest::prop_assert_eq!(full.as_deref(), Ok(raw.as_str()));
            }
        }
    }

    #[test]
    fn common_paths_take_the_fast_path() {
        for raw in ["/", "/api", "/api/", "/api/v1.2/orders", "/a/b/c/"] {
            assert!(is_normal(raw), "{raw}");
            assert!(matches!(normalize_path(raw), Ok(Cow::Borrowed(p)) if p == raw));
        }
        for raw in [
            "", "api", "//", "/a//b", "/.", "/a/./b", "/a/..", "/a;x", "/%41", "/a b",
        ] {
            assert!(!is_normal(raw), "{raw}");
        }
    }

    fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Policy {
        Policy {
            name: name.into(),
            action,
            rules,
        }
    }

    #[test]
    fn tcp_streams_fail_closed_on_http_only_conditions() {
        let ui = id("spiffe://alpha.local/ns/web/sa/ui");
        let get_only = vec![Rule {
            from: vec![],
            to: vec![Operation {
                paths: vec![],
                methods: vec!["GET".into()],
            }],
        }];
        let from_web = vec![Rule {
            from: vec![Source {
                namespaces: vec![Pattern::Exact("web".into())],
                ..Source::default()
            }],
            to: vec![],
        }];
        // An ALLOW that needs a method cannot allow a stream...
        let d = decide_tcp(&[policy("gets", Action::Allow, get_only.clone())], &ui);
        assert_eq!(
            d,
            Decision::Deny {
                policy: None,
                reason: "NoAllowPolicyMatched"
            }
        );
        // ...one on identity alone can.
        assert!(decide_tcp(&[policy("web", Action::Allow, from_web)], &ui).allowed());
        // A DENY that names a method denies every stream.
        let d = decide_tcp(&[policy("no-gets", Action::Deny, get_only)], &ui);
        assert!(!d.allowed());
        assert!(decide_tcp(&[], &ui).allowed());
    }

    #[test]
    fn deny_first_then_allow_if_any() {
        let ui = id("spiffe://alpha.local/ns/web/sa/ui");
        let ext = id("spiffe://beta.local/ns/shop/sa/client");
        let req = |caller, method, path| Request {
            caller,
            method,
            path,
        };
        let deny_admin = policy(
            "deny-admin",
            Action::Deny,
            vec![Rule {
                from: vec![],
                to: vec![Operation {
                    paths: vec![Pattern::parse("/admin*")],
                    methods: vec![],
                }],
            }],
        );
        let allow_web = policy(
            "allow-web",
            Action::Allow,
            vec![Rule {
                from: vec![Source {
                    namespaces: vec![Pattern::parse("web")],
                    ..Source::default()
                }],
                to: vec![Operation {
                    paths: vec![],
                    methods: vec!["GET".into()],
                }],
            }],
        );
        let allow_beta = policy(
            "allow-beta",
            Action::Allow,
            vec![Rule {
                from: vec![Source {
                    trust_domains: vec!["beta.local".parse().unwrap()],
                    ..Source::default()
                }],
                to: vec![],
            }],
        );
        assert!(decide(&[], &req(&ui, "GET", "/x")).allowed());
        let all = [deny_admin.clone(), allow_web.clone(), allow_beta.clone()];
        assert!(decide(&all, &req(&ui, "GET", "/x")).allowed());
        assert_eq!(
            decide(&all, &req(&ui, "POST", "/x")),
            Decision::Deny {
                policy: None,
                reason: "NoAllowPolicyMatched"
            }
        );
        assert_eq!(
            decide(&all, &req(&ui, "GET", "/admin/users")),
            Decision::Deny {
                policy: Some("deny-admin".into()),
                reason: "DeniedByPolicy"
            }
        );
        assert!(decide(&all, &req(&ext, "DELETE", "/x")).allowed());
        assert!(!decide(&all, &req(&ext, "GET", "/admin")).allowed());
        // A DENY with no rules denies everything.
        assert!(
            !decide(
                &[policy("deny-all", Action::Deny, vec![])],
                &req(&ui, "GET", "/")
            )
            .allowed()
        );
        // Principal patterns.
        let only = policy(
            "only-ui",
            Action::Allow,
            vec![Rule {
                from: vec![Source {
                    principals: vec![Pattern::parse("alpha.local/ns/web/*")],
                    ..Source::default()
                }],
                to: vec![],
            }],
        );
        assert!(decide(std::slice::from_ref(&only), &req(&ui, "GET", "/")).allowed());
        assert!(!decide(&[only], &req(&ext, "GET", "/")).allowed());
    }
}
