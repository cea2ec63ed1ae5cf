//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), validated at construction.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::name::{self, NameError};

/// A set of labels on a service.
pub type Labels = BTreeMap<String, String>;

/// A selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "In" => Self::In,
            "NotIn" => Self::NotIn,
            "Exists" => Self::Exists,
            "DoesNotExist" => Self::DoesNotExist,
            _ => return None,
        })
    }
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

/// A validated label selector. The empty selector matches everything, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// Why a selector was refused; `index` is the position in `matchExpressions` where relevant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchLabels key {key:?}: {source}")]
    LabelKey { key: String, source: NameError },
    #[error("matchLabels value for {key:?}: {source}")]
    LabelValue { key: String, source: NameError },
    #[error("matchExpressions[{index}].key: {source}")]
    ExpressionKey { index: usize, source: NameError },
    #[error(
        "matchExpressions[{index}].operator {operator:?} is not one of In, NotIn, Exists, DoesNotExist"
    )]
    UnknownOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator:?} needs at least one value")]
    MissingValues {
        index: usize,
        operator: &'static str,
    },
    #[error("matchExpressions[{index}]: operator {operator:?} takes no values")]
    UnexpectedValues {
        index: usize,
        operator: &'static str,
    },
    #[error("matchExpressions[{index}].values[{value_index}]: {source}")]
    ExpressionValue {
        index: usize,
        value_index: usize,
        source: NameError,
    },
}

impl SelectorError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::LabelKey { .. } | Self::ExpressionKey { .. } => "InvalidLabelKey",
            Self::LabelValue { .. } | Self::ExpressionValue { .. } => "InvalidLabelValue",
            Self::UnknownOperator { .. } => "UnknownOperator",
            Self::MissingValues { .. } => "MissingValues",
            Self::UnexpectedValues { .. } => "UnexpectedValues",
        }
    }

    /// Field path below the selector, e.g. `matchExpressions[1].operator`.
    pub fn field(&self) -> String {
        match self {
            Self::LabelKey { key, .. } | Self::LabelValue { key, .. } => {
                format!("matchLabels.{key}")
            }
            Self::ExpressionKey { index, .. } => format!("matchExpressions[{index}].key"),
            Self::UnknownOperator { index, .. } => format!("matchExpressions[{index}].operator"),
            Self::MissingValues { index, .. } | Self::UnexpectedValues { index, .. } => {
                format!("matchExpressions[{index}].values")
            }
            Self::ExpressionValue {
                index, value_index, ..
            } => {
                format!("matchExpressions[{index}].values[{value_index}]")
            }
        }
    }
}

/// An unvalidated `matchExpressions` entry, as written in YAML.
#[derive(Debug, Clone, Copy)]
pub struct RawRequirement<'a> {
    pub key: &'a str,
    pub operator: &'a str,
    pub values: &'a [String],
}

impl LabelSelector {
    /// Validates a selector written as `matchLabels` + `matchExpressions`.
    pub fn new<'a>(
        match_labels: impl IntoIterator<Item = (&'a String, &'a String)>,
        match_expressions: impl IntoIterator<Item = RawRequirement<'a>>,
    ) -> Result<Self, SelectorError> {
        let mut sel = Self::default();
        for (k, v) in match_labels {
            name::label_key(k).map_err(|source| SelectorError::LabelKey {
                key: k.clone(),
                source,
            })?;
            name::label_value(v).map_err(|source| SelectorError::LabelValue {
                key: k.clone(),
                source,
            })?;
            sel.match_labels.insert(k.clone(), v.clone());
        }
        for (index, raw) in match_expressions.into_iter().enumerate() {
            name::label_key(raw.key)
                .map_err(|source| SelectorError::ExpressionKey { index, source })?;
            let operator =
                Operator::parse(raw.operator).ok_or_else(|| SelectorError::UnknownOperator {
                    index,
                    operator: raw.operator.to_owned(),
                })?;
            match operator {
                Operator::In | Operator::NotIn if raw.values.is_empty() => {
                    return Err(SelectorError::MissingValues {
                        index,
                        operator: if operator == Operator::In {
                            "In"
                        } else {
                            "NotIn"
                        },
                    });
                }
                Operator::Exists | Operator::DoesNotExist if !raw.values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues {
                        index,
                        operator: if operator == Operator::Exists {
                            "Exists"
                        } else {
                            "DoesNotExist"
                        },
                    });
                }
                _ => {}
            }
            for (value_index, v) in raw.values.iter().enumerate() {
                name::label_value(v).map_err(|source| SelectorError::ExpressionValue {
                    index,
                    value_index,
                    source,
                })?;
            }
            sel.match_expressions.push(Requirement {
                key: raw.key.to_owned(),
                operator,
                values: raw.values.iter().cloned().collect(),
            });
        }
        Ok(sel)
    }

    /// True when the selector has no terms and so matches every object.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Kubernetes semantics: every term must hold.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matching() {
        let ml = labels(&[("federation-export", "true")]);
        let vals = vec!["internal".to_string()];
        let sel = LabelSelector::new(
            ml.iter(),
            [RawRequirement {
                key: "tier",
                operator: "NotIn",
                values: &vals,
            }],
        )
        .unwrap();
        assert!(sel.matches(&labels(&[("federation-export", "true")])));
        assert!(sel.matches(&labels(&[("federation-export", "true"), ("tier", "web")])));
        assert!(!sel.matches(&labels(&[
            ("federation-export", "true"),
            ("tier", "internal")
        ])));
        assert!(!sel.matches(&labels(&[("tier", "web")])));
        assert!(LabelSelector::default().matches(&Labels::new()));
    }

    #[test]
    fn invalid_selectors() {
        let none: Vec<String> = vec![];
        let some = vec!["x".to_string()];
        let bad = |op: &str, values: &[String]| {
            LabelSelector::new(
                std::iter::empty(),
                [RawRequirement {
                    key: "k",
                    operator: op,
                    values,
                }],
            )
            .unwrap_err()
            .reason()
        };
        assert_eq!(bad("in", &some), "UnknownOperator");
        assert_eq!(bad("In", &none), "MissingValues");
        assert_eq!(bad("Exists", &some), "UnexpectedValues");
        let ml = labels(&[("bad key", "v")]);
        assert_eq!(
            LabelSelector::new(ml.iter(), std::iter::empty())
                .unwrap_err()
                .reason(),
            "InvalidLabelKey"
        );
    }
}
