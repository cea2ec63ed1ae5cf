//! Request routing within a service, with Istio's names and meaning: `subsets` (a
//! `DestinationRule`'s named groups of endpoints, chosen by workload labels) and `http` (a
//! `VirtualService`'s ordered HTTP routes: the first route with a matching `match` entry wins;
//! its `route` destinations split traffic by `weight`).
//!
//! Matching follows Istio: entries of one `match` list are alternatives (OR); within one entry
//! `uri`, `method` and every header must match (AND). A string match is `exact`, `prefix` or
//! `regex` (RE2 syntax, matched against the whole value). The URI is the request path without
//! its query. When routes exist and none matches, the request gets 404 (Envoy's "no route").

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

/// Longest regex source accepted.
pub const MAX_REGEX_LEN: usize = 1024;
/// Compiled-size bound for one regex (keeps hostile patterns from costing memory or time).
const REGEX_SIZE_LIMIT: usize = 256 << 10;

/// A regular expression matched against a whole value (anchored at both ends).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    re: regex::Regex,
}

impl Pattern {
    /// Compiles `source` (RE2 syntax, like Istio's `regex`).
    pub fn new(source: &str) -> Result<Self, PatternError> {
        if source.len() > MAX_REGEX_LEN {
            return Err(PatternError(format!(
                "{} characters; the limit is {MAX_REGEX_LEN}",
                source.len()
            )));
        }
        let re = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| PatternError(first_line(&e.to_string())))?;
        Ok(Self {
            source: source.to_owned(),
            re,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, v: &str) -> bool {
        self.re.is_match(v)
    }
}

/// The regex parser's message, on one line.
fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// Why a regex was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regex: {0}")]
pub struct PatternError(pub String);

/// Istio `StringMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

impl StringMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(v),
        }
    }
}

/// One entry of a route's `match` list: every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpMatch {
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    /// By lower-case header name; an absent header never matches.
    pub headers: BTreeMap<String, StringMatch>,
}

impl HttpMatch {
    /// Whether a request matches; `header` looks up a request header by lower-case name.
    pub fn matches<'h>(
        &self,
        method: &str,
        path: &str,
        header: &impl Fn(&str) -> Option<&'h str>,
    ) -> bool {
        self.uri.as_ref().is_none_or(|m| m.matches(path))
            && self.method.as_ref().is_none_or(|m| m.matches(method))
            && self
                .headers
                .iter()
                .all(|(name, m)| header(name).is_some_and(|v| m.matches(v)))
    }
}

/// A route destination: a subset (or every endpoint when `None`) and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    pub subset: Option<String>,
    pub weight: u32,
}

/// One HTTP route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Alternatives; empty matches every request.
    pub matches: Vec<HttpMatch>,
    /// At least one; weights sum to 100.
    pub route: Vec<Destination>,
}

/// A named group of a service's endpoints, chosen by workload labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Subset {
    /// True when the workload carries every label of the subset.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A service's routing: no routes means every request goes to every endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Routing {
    pub subsets: Vec<Subset>,
    pub http: Vec<HttpRoute>,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Any endpoint of the service.
    All,
    /// The endpoints of this subset.
    Subset(&'a str),
    /// Routes exist and none matched.
    NoRoute,
}

impl Routing {
    /// Routes a request; `roll` is a uniform draw from 0 to 99 that picks among weighted
    /// destinations.
    pub fn decide<'h>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'h str>,
        roll: u32,
    ) -> Target<'_> {
        if self.http.is_empty() {
            return Target::All;
        }
        let Some(route) = self.http.iter().find(|r| {
            r.matches.is_empty() || r.matches.iter().any(|m| m.matches(method, path, &header))
        }) else {
            return Target::NoRoute;
        };
        let mut left = roll;
        let chosen = route
            .route
            .iter()
            .find(|d| {
                if left < d.weight {
                    true
                } else {
                    left -= d.weight;
                    false
                }
            })
            .or(route.route.last());
        match chosen.and_then(|d| d.subset.as_deref()) {
            Some(s) => Target::Subset(s),
            None => Target::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_headers(_: &str) -> Option<&'static str> {
        None
    }

    fn routing() -> Routing {
        let dest = |s: &str, w| Destination {
            subset: Some(s.into()),
            weight: w,
        };
        Routing {
            subsets: vec![],
            http: vec![
                HttpRoute {
                    name: Some("canary".into()),
                    matches: vec![
                        HttpMatch {
                            headers: [("x-canary".to_owned(), StringMatch::Exact("1".into()))]
                                .into(),
                            ..HttpMatch::default()
                        },
                        HttpMatch {
                            uri: Some(StringMatch::Regex(Pattern::new("/v2/[a-z]+").unwrap())),
                            method: Some(StringMatch::Exact("GET".into())),
                            ..HttpMatch::default()
                        },
                    ],
                    route: vec![dest("v2", 100)],
                },
                HttpRoute {
                    name: None,
                    matches: vec![HttpMatch {
                        uri: Some(StringMatch::Prefix("/api".into())),
                        ..HttpMatch::default()
                    }],
                    route: vec![dest("v1", 90), dest("v2", 10)],
                },
            ],
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn first_matching_route_wins_and_weights_split() {
        let r = routing();
        let canary = |n: &str| (n == "x-canary").then_some("1");
        assert_eq!(r.decide("POST", "/api/x", canary, 0), Target::Subset("v2"));
        assert_eq!(
            r.decide("GET", "/v2/abc", no_headers, 0),
            Target::Subset("v2")
        );
        // The regex is anchored: a longer path does not match it, nor another method.
        assert_eq!(r.decide("GET", "/v2/abc/d", no_headers, 0), Target::NoRoute);
        assert_eq!(r.decide("PUT", "/v2/abc", no_headers, 0), Target::NoRoute);
        assert_eq!(
            r.decide("GET", "/api/x", no_headers, 0),
            Target::Subset("v1")
        );
        assert_eq!(
            r.decide("GET", "/api/x", no_headers, 89),
            Target::Subset("v1")
        );
        assert_eq!(
            r.decide("GET", "/api/x", no_headers, 90),
            Target::Subset("v2")
        );
        assert_eq!(
            r.decide("GET", "/api/x", no_headers, 99),
            Target::Subset("v2")
        );
        assert_eq!(r.decide("GET", "/other", no_headers, 0), Target::NoRoute);
        assert_eq!(
            Routing::default().decide("GET", "/", no_headers, 0),
            Target::All
        );
    }

    #[test]
    fn hostile_and_broken_patterns_are_refused() {
        assert!(Pattern::new("(unclosed").is_err());
        assert!(Pattern::new(&"a".repeat(MAX_REGEX_LEN + 1)).is_err());
        // Compiled size is bounded.
        assert!(Pattern::new("(\\w{100}){100}").is_err());
        let e = Pattern::new("[z-a]").unwrap_err();
        assert!(!e.0.contains('\n'), "{e}");
    }

    #[test]
    fn subsets_select_by_every_label() {
        let s = Subset {
            name: "v1".into(),
            labels: [("version".to_owned(), "v1".to_owned())].into(),
        };
        let l = |v: &str| {
            [
                ("version".to_owned(), v.to_owned()),
                ("app".into(), "x".into()),
            ]
            .into()
        };
        assert!(s.selects(&l("v1")));
        assert!(!s.selects(&l("v2")));
        assert!(!s.selects(&BTreeMap::new()));
    }
}
