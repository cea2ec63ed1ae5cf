//! Syntax checks for the DNS-style names Kubernetes and meshfed use: RFC 1123 labels and
//! subdomains, RFC 1035 labels, and label keys/values. Each check returns a [`NameError`]
//! whose [`NameError::reason`] is a stable token.

use std::fmt;

/// Longest DNS-1123 label (Kubernetes namespaces, many object names).
pub const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain (hostnames, most Kubernetes object names).
pub const MAX_SUBDOMAIN: usize = 253;

/// Why a name was refused. `what` names the kind of name ("namespace", "hostname", …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value} is {len} bytes long; the limit is {max}")]
    TooLong {
        what: &'static str,
        value: Shown,
        len: usize,
        max: usize,
    },
    #[error("{what} {value} contains {ch:?} at byte {at}; use lower-case letters, digits{extra}")]
    InvalidCharacter {
        what: &'static str,
        value: Shown,
        ch: char,
        at: usize,
        extra: &'static str,
    },
    #[error("{what} {value} must start with {need}")]
    BadStart {
        what: &'static str,
        value: Shown,
        need: &'static str,
    },
    #[error("{what} {value} must end with a letter or digit")]
    BadEnd { what: &'static str, value: Shown },
    #[error("{what} {value} has an empty label (leading, trailing or doubled '.')")]
    EmptyLabel { what: &'static str, value: Shown },
    #[error("{what} {value} has a label longer than {max} bytes")]
    LabelTooLong {
        what: &'static str,
        value: Shown,
        max: usize,
    },
}

impl NameError {
    /// Stable CamelCase token for status reasons, metric labels and tests.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty { .. } => "Empty",
            Self::TooLong { .. } => "TooLong",
            Self::InvalidCharacter { .. } => "InvalidCharacter",
            Self::BadStart { .. } => "BadStart",
            Self::BadEnd { .. } => "BadEnd",
            Self::EmptyLabel { .. } => "EmptyLabel",
            Self::LabelTooLong { .. } => "LabelTooLong",
        }
    }
}

/// A possibly hostile string, quoted and cut to a readable length for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    pub fn new(s: &str) -> Self {
        const KEEP: usize = 64;
        if s.chars().count() <= KEEP {
            Self(format!("{s:?}"))
        } else {
            let head: String = s.chars().take(KEEP).collect();
            Self(format!("{head:?}… ({} bytes)", s.len()))
        }
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong {
            what,
            value: Shown::new(s),
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn check_label_chars(
    what: &'static str,
    full: &str,
    label: &str,
    offset: usize,
) -> Result<(), NameError> {
    for (i, ch) in label.char_indices() {
        if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-') {
            return Err(NameError::InvalidCharacter {
                what,
                value: Shown::new(full),
                ch,
                at: offset + i,
                extra: " and '-'",
            });
        }
    }
    if !label.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadStart {
            what,
            value: Shown::new(full),
            need: "a letter or digit",
        });
    }
    if !label.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadEnd {
            what,
            value: Shown::new(full),
        });
    }
    Ok(())
}

/// RFC 1123 label: 1–63 of `a-z 0-9 -`, alphanumeric at both ends (Kubernetes namespaces).
pub fn dns1123_label(what: &'static str, s: &str) -> Result<(), NameError> {
    dns1123_label_max(what, s, MAX_LABEL)
}

/// [`dns1123_label`] with a tighter length limit, for names that are embedded in longer labels.
pub fn dns1123_label_max(what: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    check_len(what, s, max)?;
    check_label_chars(what, s, s, 0)
}

/// RFC 1035 label: a DNS-1123 label that starts with a letter (Kubernetes Service names).
pub fn dns1035_label(what: &'static str, s: &str) -> Result<(), NameError> {
    dns1123_label(what, s)?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::BadStart {
            what,
            value: Shown::new(s),
            need: "a letter",
        });
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated DNS-1123 labels, at most 253 bytes, no trailing dot.
pub fn dns1123_subdomain(what: &'static str, s: &str) -> Result<(), NameError> {
    check_len(what, s, MAX_SUBDOMAIN)?;
    let mut offset = 0;
    for label in s.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel {
                what,
                value: Shown::new(s),
            });
        }
        if label.len() > MAX_LABEL {
            return Err(NameError::LabelTooLong {
                what,
                value: Shown::new(s),
                max: MAX_LABEL,
            });
        }
        check_label_chars(what, s, label, offset)?;
        offset += label.len() + 1;
    }
    Ok(())
}

/// Kubernetes label or annotation key: optional DNS-1123 subdomain prefix and `/`, then a name
/// of 1–63 of `A-Z a-z 0-9 - _ .` with alphanumerics at both ends.
pub fn label_key(s: &str) -> Result<(), NameError> {
    const WHAT: &str = "label key";
    check_len(WHAT, s, MAX_SUBDOMAIN + 1 + MAX_LABEL)?;
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            dns1123_subdomain("label key prefix", prefix)?;
            name
        }
        None => s,
    };
    check_len("label key name", name, MAX_LABEL)?;
    qualified_chars(WHAT, name)
}

/// Kubernetes label value: empty, or up to 63 of `A-Z a-z 0-9 - _ .` with alphanumerics at both
/// ends.
pub fn label_value(s: &str) -> Result<(), NameError> {
    const WHAT: &str = "label value";
    if s.is_empty() {
        return Ok(());
    }
    check_len(WHAT, s, MAX_LABEL)?;
    qualified_chars(WHAT, s)
}

fn qualified_chars(what: &'static str, s: &str) -> Result<(), NameError> {
    for (at, ch) in s.char_indices() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')) {
            return Err(NameError::InvalidCharacter {
                what,
                value: Shown::new(s),
                ch,
                at,
                extra: ", upper-case letters, '-', '_' and '.'",
            });
        }
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadStart {
            what,
            value: Shown::new(s),
            need: "a letter or digit",
        });
    }
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadEnd {
            what,
            value: Shown::new(s),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns1123_label("n", "shop-prod").is_ok());
        assert!(dns1123_label("n", "0abc").is_ok());
        assert_eq!(dns1123_label("n", "").unwrap_err().reason(), "Empty");
        assert_eq!(
            dns1123_label("n", "Shop").unwrap_err().reason(),
            "InvalidCharacter"
        );
        assert_eq!(
            dns1123_label("n", "a_b").unwrap_err().reason(),
            "InvalidCharacter"
        );
        assert_eq!(dns1123_label("n", "-a").unwrap_err().reason(), "BadStart");
        assert_eq!(dns1123_label("n", "a-").unwrap_err().reason(), "BadEnd");
        assert_eq!(
            dns1123_label("n", &"a".repeat(64)).unwrap_err().reason(),
            "TooLong"
        );
        // Cyrillic look-alike "а" (U+0430)
        assert_eq!(
            dns1123_label("n", "shop-\u{430}").unwrap_err().reason(),
            "InvalidCharacter"
        );
        assert_eq!(dns1035_label("n", "1abc").unwrap_err().reason(), "BadStart");
    }

    #[test]
    fn subdomains() {
        assert!(dns1123_subdomain("h", "orders.shop.svc.cluster.local").is_ok());
        assert_eq!(
            dns1123_subdomain("h", "a..b").unwrap_err().reason(),
            "EmptyLabel"
        );
        assert_eq!(
            dns1123_subdomain("h", "a.b.").unwrap_err().reason(),
            "EmptyLabel"
        );
        let long = format!("{}.b", "a".repeat(64));
        assert_eq!(
            dns1123_subdomain("h", &long).unwrap_err().reason(),
            "LabelTooLong"
        );
        let huge = vec!["abc"; 70].join(".");
        assert_eq!(
            dns1123_subdomain("h", &huge).unwrap_err().reason(),
            "TooLong"
        );
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key("app").is_ok());
        assert!(label_key("topology.kubernetes.io/zone").is_ok());
        assert!(label_key("Federation_Export").is_ok());
        assert!(label_key("bad key").is_err());
        assert!(label_key("/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("true").is_ok());
        assert!(label_value("-x").is_err());
    }

    #[test]
    fn shown_cuts_long_values() {
        let s = Shown::new(&"x".repeat(10_000));
        assert!(s.to_string().len() < 100);
        assert!(s.to_string().contains("10000 bytes"));
    }
}
