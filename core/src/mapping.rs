//! Name patterns and aliases shared by export and import rules (Maistra's `nameSelector`).
//!
//! A pattern part is an exact value, or `""`/`*` for any value; partial globs (`orders-*`) are
//! refused rather than silently never matching. An alias part replaces the matched part, or
//! keeps it when `""`/`*`.

use std::fmt;

use serde::Serialize;

use crate::id::{Namespace, ServiceKey, ServiceName};
use crate::name::NameError;

/// One part of a name pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern<T> {
    Any,
    Exact(T),
}

impl<T: PartialEq> Pattern<T> {
    pub fn matches(&self, value: &T) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(v) => v == value,
        }
    }
}

impl<T: fmt::Display> fmt::Display for Pattern<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(v) => v.fmt(f),
        }
    }
}

impl<T: fmt::Display> Serialize for Pattern<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a pattern or alias part was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0:?} is a partial wildcard; use \"*\" (or \"\") for any value, or an exact name")]
    PartialWildcard(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

impl PatternError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PartialWildcard(_) => "PartialWildcard",
            Self::Name(e) => e.reason(),
        }
    }
}

fn parse_part<T>(
    s: &str,
    parse: impl FnOnce(&str) -> Result<T, NameError>,
) -> Result<Pattern<T>, PatternError> {
    match s {
        "" | "*" => Ok(Pattern::Any),
        _ if s.contains('*') => Err(PatternError::PartialWildcard(s.to_owned())),
        _ => Ok(Pattern::Exact(parse(s)?)),
    }
}

impl Pattern<Namespace> {
    pub fn parse_namespace(s: &str) -> Result<Self, PatternError> {
        parse_part(s, str::parse)
    }
}

impl Pattern<ServiceName> {
    pub fn parse_name(s: &str) -> Result<Self, PatternError> {
        parse_part(s, str::parse)
    }
}

impl<T> Pattern<T> {
    /// The fixed value, if any (an alias part that is not a wildcard).
    pub fn fixed(&self) -> Option<&T> {
        match self {
            Self::Any => None,
            Self::Exact(v) => Some(v),
        }
    }
}

/// A `nameSelector` (or a label selector's alias entry): which names match, and how they are
/// renamed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NameMapping {
    pub namespace: Pattern<Namespace>,
    pub name: Pattern<ServiceName>,
    /// Alias parts: `Any` keeps the matched part.
    pub alias_namespace: Pattern<Namespace>,
    pub alias_name: Pattern<ServiceName>,
}

impl NameMapping {
    /// A mapping that matches `namespace`/`name` and keeps names unchanged.
    pub fn select(namespace: Pattern<Namespace>, name: Pattern<ServiceName>) -> Self {
        Self {
            namespace,
            name,
            alias_namespace: Pattern::Any,
            alias_name: Pattern::Any,
        }
    }

    pub fn matches(&self, key: &ServiceKey) -> bool {
        self.namespace.matches(&key.namespace) && self.name.matches(&key.name)
    }

    /// The renamed key if `key` matches.
    pub fn apply(&self, key: &ServiceKey) -> Option<ServiceKey> {
        self.matches(key).then(|| self.rename(key))
    }

    /// Applies only the alias.
    pub fn rename(&self, key: &ServiceKey) -> ServiceKey {
        ServiceKey {
            namespace: self
                .alias_namespace
                .fixed()
                .unwrap_or(&key.namespace)
                .clone(),
            name: self.alias_name.fixed().unwrap_or(&key.name).clone(),
        }
    }

    /// True when both selector parts are wildcards: the mapping selects every service.
    pub fn selects_all(&self) -> bool {
        self.namespace == Pattern::Any && self.name == Pattern::Any
    }

    /// True when the alias fixes a name while the selector could match several names, or a
    /// namespace while it could match several namespaces, so distinct services may collapse
    /// onto one name (services of one name in two namespaces meet in the alias namespace).
    pub fn collapses(&self) -> bool {
        (self.alias_name.fixed().is_some() && self.name == Pattern::Any) || self.merges_namespaces()
    }

    /// True when the alias fixes a namespace while the selector could match several.
    pub fn merges_namespaces(&self) -> bool {
        self.alias_namespace.fixed().is_some() && self.namespace == Pattern::Any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ns: &str, name: &str, ans: &str, aname: &str) -> NameMapping {
        NameMapping {
            namespace: Pattern::parse_namespace(ns).unwrap(),
            name: Pattern::parse_name(name).unwrap(),
            alias_namespace: Pattern::parse_namespace(ans).unwrap(),
            alias_name: Pattern::parse_name(aname).unwrap(),
        }
    }

    fn k(s: &str) -> ServiceKey {
        s.parse().unwrap()
    }

    #[test]
    fn maistra_alias_examples() {
        // */foo -> */bar renames in place
        assert_eq!(
            m("*", "foo", "*", "bar").apply(&k("x/foo")),
            Some(k("x/bar"))
        );
        // */foo -> bar/bar
        assert_eq!(
            m("*", "foo", "bar", "bar").apply(&k("x/foo")),
            Some(k("bar/bar"))
        );
        // foo/* -> bar/* moves a namespace
        assert_eq!(
            m("foo", "*", "bar", "*").apply(&k("foo/a")),
            Some(k("bar/a"))
        );
        assert_eq!(m("foo", "*", "bar", "*").apply(&k("baz/a")), None);
        // */* -> */* changes nothing
        assert_eq!(m("", "", "", "").apply(&k("a/b")), Some(k("a/b")));
        assert!(m("", "*", "", "").selects_all());
        assert!(m("shop", "*", "", "one").collapses());
        assert!(!m("shop", "orders", "", "one").collapses());
        // orders of every namespace, all into shop: shop/orders for each of them.
        assert!(m("*", "orders", "shop", "").collapses());
        assert!(!m("billing", "orders", "shop", "").collapses());
    }

    #[test]
    fn partial_wildcards_refused() {
        assert_eq!(
            Pattern::parse_name("orders-*").unwrap_err().reason(),
            "PartialWildcard"
        );
        assert_eq!(
            Pattern::parse_namespace("Shop").unwrap_err().reason(),
            "InvalidCharacter"
        );
    }
}
