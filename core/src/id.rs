//! Validated identifiers. Every identifier that crosses a trust boundary is parsed once into one
//! of these types; `Display` prints a form that parses back to an equal value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::name::{self, NameError, Shown};

/// Longest SPIFFE ID accepted (SPIFFE-ID §2.3 recommends that 2048 bytes be supported).
pub const MAX_SPIFFE_ID: usize = 2048;
/// Longest trust domain name (SPIFFE-ID §2.1).
pub const MAX_TRUST_DOMAIN: usize = 255;
/// Longest peer name: `<peer>-exports` and `<peer>-imports` must still fit in one DNS label.
pub const MAX_PEER_NAME: usize = name::MAX_LABEL - "-exports".len();

macro_rules! string_id {
    ($(#[$doc:meta])* $ty:ident, $err:ty, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let check: fn(&str) -> Result<(), $err> = $check;
                check(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A Kubernetes namespace: a DNS-1123 label.
    Namespace,
    NameError,
    |s| name::dns1123_label("namespace", s)
);

string_id!(
    /// A Kubernetes Service name: a DNS-1035 label.
    ServiceName,
    NameError,
    |s| name::dns1035_label("service name", s)
);

string_id!(
    /// The name of a `ServiceMeshPeer`, which is how one mesh names another. A DNS-1123 label of
    /// at most 55 bytes, so the derived `<peer>-exports` / `<peer>-imports` labels stay valid.
    PeerName,
    NameError,
    |s| name::dns1123_label_max("peer name", s, MAX_PEER_NAME)
);

string_id!(
    /// The name of a mesh (its control plane), a DNS-1123 label.
    MeshName,
    NameError,
    |s| name::dns1123_label("mesh name", s)
);

string_id!(
    /// A fully qualified DNS host name in canonical form: lower case, no trailing dot.
    Hostname,
    NameError,
    |s| name::dns1123_subdomain("hostname", s)
);

string_id!(
    /// A SPIFFE trust domain (SPIFFE-ID §2.1): 1–255 bytes of `a-z 0-9 . - _`. Upper case is
    /// refused so that two spellings never name one domain; so are empty dot-separated parts.
    TrustDomain,
    SpiffeIdError,
    check_trust_domain
);

impl Hostname {
    /// Canonicalizes a name seen on the wire (SNI, Host): lower-cases it and drops one trailing
    /// dot, then validates it.
    pub fn canonicalize(raw: &str) -> Result<Self, NameError> {
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        trimmed.to_ascii_lowercase().parse()
    }

    /// Builds `<first>.<rest>` from already valid parts, re-validating the whole.
    pub fn join(parts: &[&str]) -> Result<Self, NameError> {
        parts.join(".").parse()
    }
}

/// Why a SPIFFE ID or trust domain was refused. [`SpiffeIdError::reason`] is a stable token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID {0} is longer than {MAX_SPIFFE_ID} bytes")]
    TooLong(Shown),
    #[error("SPIFFE ID {0} must start with \"spiffe://\" (scheme is case-sensitive)")]
    BadScheme(Shown),
    #[error("trust domain is empty in {0}")]
    EmptyTrustDomain(Shown),
    #[error("trust domain {0} is longer than {MAX_TRUST_DOMAIN} bytes")]
    TrustDomainTooLong(Shown),
    #[error(
        "trust domain {value} contains {ch:?}; use lower-case letters, digits, '.', '-' and '_' (no user info, port, IPv6 or upper case)"
    )]
    TrustDomainChar { value: Shown, ch: char },
    #[error("trust domain {0} has an empty part (leading, trailing or doubled '.')")]
    TrustDomainEmptyLabel(Shown),
    #[error("SPIFFE ID {0} has a query or fragment; neither is allowed")]
    QueryOrFragment(Shown),
    #[error("SPIFFE ID {0} contains percent-encoding, which is not allowed")]
    PercentEncoded(Shown),
    #[error("SPIFFE ID {0} has an empty path segment")]
    EmptySegment(Shown),
    #[error("SPIFFE ID {0} has a '.' or '..' path segment")]
    DotSegment(Shown),
    #[error("SPIFFE ID {0} ends with '/'")]
    TrailingSlash(Shown),
    #[error("SPIFFE ID {value} path contains {ch:?}; use letters, digits, '.', '-' and '_'")]
    PathChar { value: Shown, ch: char },
    #[error("SPIFFE ID {0} has no path; a workload ID needs one (e.g. /ns/<ns>/sa/<sa>)")]
    MissingPath(Shown),
}

impl SpiffeIdError {
    /// Stable CamelCase token.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "EmptySpiffeId",
            Self::TooLong(_) => "SpiffeIdTooLong",
            Self::BadScheme(_) => "BadScheme",
            Self::EmptyTrustDomain(_) => "EmptyTrustDomain",
            Self::TrustDomainTooLong(_) => "TrustDomainTooLong",
            Self::TrustDomainChar { .. } => "InvalidTrustDomainCharacter",
            Self::TrustDomainEmptyLabel(_) => "TrustDomainEmptyLabel",
            Self::QueryOrFragment(_) => "QueryOrFragment",
            Self::PercentEncoded(_) => "PercentEncoded",
            Self::EmptySegment(_) => "EmptyPathSegment",
            Self::DotSegment(_) => "DotPathSegment",
            Self::TrailingSlash(_) => "TrailingSlash",
            Self::PathChar { .. } => "InvalidPathCharacter",
            Self::MissingPath(_) => "MissingPath",
        }
    }
}

fn check_trust_domain(s: &str) -> Result<(), SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain(Shown::new(s)));
    }
    if s.len() > MAX_TRUST_DOMAIN {
        return Err(SpiffeIdError::TrustDomainTooLong(Shown::new(s)));
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::TrustDomainChar {
            value: Shown::new(s),
            ch,
        });
    }
    if s.split('.').any(str::is_empty) {
        return Err(SpiffeIdError::TrustDomainEmptyLabel(Shown::new(s)));
    }
    Ok(())
}

/// A SPIFFE ID `spiffe://<trust-domain>[/<path>]` per SPIFFE-ID §2. The path may be empty
/// (the trust domain's own ID); [`SpiffeId::is_workload`] tells whether it names a workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg/seg…`.
    path: String,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// The ID of a Kubernetes service account: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn for_service_account(
        td: &TrustDomain,
        ns: &Namespace,
        sa: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("{SCHEME}{td}/ns/{ns}/sa/{sa}").parse()
    }

    /// Parses Maistra's `spec.security.clientID` form, which omits `spiffe://`
    /// (`<td>/ns/<ns>/sa/<sa>`); the full form is accepted too.
    pub fn from_client_id(s: &str) -> Result<Self, SpiffeIdError> {
        if s.starts_with(SCHEME) {
            s.parse()
        } else {
            format!("{SCHEME}{s}").parse()
        }
    }

    /// Parses an ID that must name a workload (non-empty path).
    pub fn parse_workload(s: &str) -> Result<Self, SpiffeIdError> {
        let id: Self = s.parse()?;
        if !id.is_workload() {
            return Err(SpiffeIdError::MissingPath(Shown::new(s)));
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when the ID has a path, i.e. names a workload rather than the trust domain.
    pub fn is_workload(&self) -> bool {
        !self.path.is_empty()
    }

    /// Maistra's `clientID` form: the ID without `spiffe://`.
    pub fn to_client_id(&self) -> String {
        format!("{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID {
            return Err(SpiffeIdError::TooLong(Shown::new(s)));
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::BadScheme(Shown::new(s)))?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment(Shown::new(s)));
        }
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoded(Shown::new(s)));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain(Shown::new(s)));
        }
        check_trust_domain(td)?;
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err(SpiffeIdError::TrailingSlash(Shown::new(s)));
            }
            for seg in path[1..].split('/') {
                match seg {
                    "" => return Err(SpiffeIdError::EmptySegment(Shown::new(s))),
                    "." | ".." => return Err(SpiffeIdError::DotSegment(Shown::new(s))),
                    _ => {}
                }
                if let Some(ch) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::PathChar {
                        value: Shown::new(s),
                        ch,
                    });
                }
            }
        }
        Ok(Self {
            trust_domain: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A service's identity in its mesh: namespace and name, printed `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: Namespace,
    pub name: ServiceName,
}

/// Why a `namespace/name` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceKeyError {
    #[error("service key {0} must have the form namespace/name")]
    Shape(Shown),
    #[error(transparent)]
    Name(#[from] NameError),
}

impl ServiceKeyError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Shape(_) => "BadServiceKey",
            Self::Name(e) => e.reason(),
        }
    }
}

impl ServiceKey {
    pub fn new(namespace: Namespace, name: ServiceName) -> Self {
        Self { namespace, name }
    }

    /// `<name>.<namespace>.svc.<cluster_domain>`.
    pub fn hostname_in(&self, cluster_domain: &Hostname) -> Result<Hostname, NameError> {
        Hostname::join(&[
            self.name.as_str(),
            self.namespace.as_str(),
            "svc",
            cluster_domain.as_str(),
        ])
    }
}

impl FromStr for ServiceKey {
    type Err = ServiceKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| ServiceKeyError::Shape(Shown::new(s)))?;
        Ok(Self {
            namespace: ns.parse()?,
            name: name.parse()?,
        })
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for ServiceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> &'static str {
        s.parse::<SpiffeId>().unwrap_err().reason()
    }

    #[test]
    fn spiffe_ids_accept_valid() {
        let id: SpiffeId = "spiffe://alpha.local/ns/shop/sa/orders".parse().unwrap();
        assert_eq!(id.trust_domain().as_str(), "alpha.local");
        assert_eq!(id.path(), "/ns/shop/sa/orders");
        assert!(id.is_workload());
        assert_eq!(id.to_string(), "spiffe://alpha.local/ns/shop/sa/orders");
        let root: SpiffeId = "spiffe://alpha.local".parse().unwrap();
        assert!(!root.is_workload());
        // a dotted IPv4 address is a plain name
        assert!("spiffe://10.0.0.1/x".parse::<SpiffeId>().is_ok());
        assert!(
            "spiffe://td/Path_With.Mixed-Case"
                .parse::<SpiffeId>()
                .is_ok()
        );
    }

    #[test]
    fn spiffe_ids_reject_bad_vectors() {
        // ID1
        assert_eq!(reason("SPIFFE://td/x"), "BadScheme");
        assert_eq!(reason("spiffe://TD/x"), "InvalidTrustDomainCharacter");
        // ID2
        assert_eq!(reason("spiffe://td:443/x"), "InvalidTrustDomainCharacter");
        assert_eq!(reason("spiffe://u@td/x"), "InvalidTrustDomainCharacter");
        // ID3
        assert_eq!(reason("spiffe:///x"), "EmptyTrustDomain");
        assert_eq!(
            SpiffeId::parse_workload("spiffe://td")
                .unwrap_err()
                .reason(),
            "MissingPath"
        );
        assert_eq!(reason("spiffe://td/"), "TrailingSlash");
        // ID4
        assert_eq!(reason("spiffe://td//x"), "EmptyPathSegment");
        assert_eq!(reason("spiffe://td/./x"), "DotPathSegment");
        assert_eq!(reason("spiffe://td/../x"), "DotPathSegment");
        assert_eq!(reason("spiffe://td/x/"), "TrailingSlash");
        // ID5
        assert_eq!(reason("spiffe://td/%41"), "PercentEncoded");
        assert_eq!(reason("spiffe://td/x?q"), "QueryOrFragment");
        assert_eq!(reason("spiffe://td/x#f"), "QueryOrFragment");
        assert_eq!(reason("spiffe://[::1]/x"), "InvalidTrustDomainCharacter");
        // ID6
        let long = format!("spiffe://td/{}", "a".repeat(2040));
        assert_eq!(reason(&long), "SpiffeIdTooLong");
        assert_eq!(
            reason(&format!("spiffe://{}/x", "a".repeat(256))),
            "TrustDomainTooLong"
        );
        // ID7
        assert_eq!(reason("spiffe://td./x"), "TrustDomainEmptyLabel");
        assert_eq!(reason("spiffe://td/x y"), "InvalidPathCharacter");
        assert_eq!(reason(""), "EmptySpiffeId");
    }

    #[test]
    fn client_id_forms() {
        let a = SpiffeId::from_client_id("beta.local/ns/beta-system/sa/egress").unwrap();
        let b = SpiffeId::from_client_id("spiffe://beta.local/ns/beta-system/sa/egress").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_client_id(), "beta.local/ns/beta-system/sa/egress");
    }

    #[test]
    fn hostnames_canonicalize() {
        let h = Hostname::canonicalize("Orders.Shop.SVC.cluster.local.").unwrap();
        assert_eq!(h.as_str(), "orders.shop.svc.cluster.local");
        assert!("Orders.shop".parse::<Hostname>().is_err());
    }

    #[test]
    fn service_keys() {
        let k: ServiceKey = "shop/orders".parse().unwrap();
        assert_eq!(k.to_string(), "shop/orders");
        assert_eq!(
            k.hostname_in(&"cluster.local".parse().unwrap())
                .unwrap()
                .as_str(),
            "orders.shop.svc.cluster.local"
        );
        assert_eq!(
            "shop".parse::<ServiceKey>().unwrap_err().reason(),
            "BadServiceKey"
        );
        assert_eq!(
            "shop/1abc".parse::<ServiceKey>().unwrap_err().reason(),
            "BadStart"
        );
    }

    #[test]
    fn peer_names_leave_room_for_suffixes() {
        assert!("a".repeat(55).parse::<PeerName>().is_ok());
        assert_eq!(
            "a".repeat(56).parse::<PeerName>().unwrap_err().reason(),
            "TooLong"
        );
    }
}
