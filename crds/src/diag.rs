//! Diagnostics: field paths, severities, and the problem records `meshfed validate` prints.

use std::fmt;

use serde::Serialize;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path into a document, printed like `spec.exportRules[0].nameSelector.alias.namespace`;
/// keys that are not plain identifiers print as `["topology.kubernetes.io/zone"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses a dotted path of plain keys (`spec.security.trustDomain`).
    pub fn parse(dotted: &str) -> Self {
        Self(
            dotted
                .split('.')
                .filter(|s| !s.is_empty())
                .map(|s| Segment::Key(s.to_owned()))
                .collect(),
        )
    }

    #[must_use]
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Key(k.to_owned()));
        Self(v)
    }

    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Index(i));
        Self(v)
    }

    /// Appends a relative dotted path with optional `[i]` indices (`matchExpressions[1].key`).
    #[must_use]
    pub fn join(&self, rel: &str) -> Self {
        let mut out = self.clone();
        for part in rel.split('.').filter(|s| !s.is_empty()) {
            let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
            if !name.is_empty() {
                out = out.key(name);
            }
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    out = out.index(i);
                }
            }
        }
        out
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[{k:?}]")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How bad a problem is. Errors make `meshfed validate` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
        })
    }
}

/// One problem in one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable CamelCase token.
    pub reason: &'static str,
    pub file: String,
    /// 0-based document index in the file.
    pub document: usize,
    /// 1-based line and column, 0 when unknown.
    pub line: usize,
    pub column: usize,
    /// `Kind namespace/name` of the object, when known.
    pub object: Option<String>,
    pub path: FieldPath,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}[{}]",
            self.file, self.line, self.column, self.severity, self.reason
        )?;
        write!(f, " document {}", self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}: {}", self.path, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n    hint: {h}")?;
        }
        Ok(())
    }
}

/// A problem before it is placed in a file: path, reason, message, hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub reason: &'static str,
    pub path: FieldPath,
    pub message: String,
    pub hint: Option<String>,
}

impl Finding {
    pub fn error(reason: &'static str, path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            reason,
            path,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(reason: &'static str, path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            reason,
            path,
            message: message.into(),
            hint: None,
        }
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_print() {
        let p = FieldPath::parse("spec.exportRules")
            .index(0)
            .key("labelSelector")
            .key("selector")
            .key("matchLabels")
            .key("topology.kubernetes.io/zone");
        assert_eq!(
            p.to_string(),
            "spec.exportRules[0].labelSelector.selector.matchLabels[\"topology.kubernetes.io/zone\"]"
        );
        let j = FieldPath::parse("spec.x").join("matchExpressions[1].values[2]");
        assert_eq!(j.to_string(), "spec.x.matchExpressions[1].values[2]");
        assert_eq!(FieldPath::root().to_string(), "(document)");
    }
}
