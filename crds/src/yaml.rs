//! A YAML loader that keeps source positions, so every problem can be reported with a line.
//!
//! It builds a small tree from the parser's events, resolves plain scalars by the YAML 1.2
//! core schema, refuses duplicate mapping keys, bounds nesting depth and alias expansion
//! (no "billion laughs"), and never panics on any input.

use std::borrow::Cow;
use std::fmt;

use granit_parser::{Event, Parser, ScalarStyle, Span, Tag};

use crate::diag::FieldPath;

/// Deepest nesting accepted; real manifests stay far below.
pub const MAX_DEPTH: usize = 64;
/// Most nodes one document may expand to, aliases included.
pub const MAX_NODES: usize = 200_000;
/// Largest input accepted, in bytes.
pub const MAX_INPUT: usize = 16 << 20;

/// A position in the source: 1-based line, 1-based column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn of(span: &Span) -> Self {
        Self {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// A resolved YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string; `plain` is true for an unquoted scalar (YAML 1.1 readers may take `yes`,
    /// `on`, … as booleans there).
    Str {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One mapping entry; `key_pos` is where the key is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Value {
    /// Short name of the value's type for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "boolean",
            Self::Int(_) => "integer",
            Self::Float(_) => "number",
            Self::Str { .. } => "string",
            Self::Seq(_) => "list",
            Self::Map(_) => "mapping",
        }
    }
}

impl Node {
    /// The mapping entry `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// The items of a list (none for anything else).
    pub fn items(&self) -> &[Node] {
        match &self.value {
            Value::Seq(items) => items,
            _ => &[],
        }
    }

    /// The string at `key`, if present and a string.
    pub fn str_at(&self, key: &str) -> Option<&str> {
        match &self.get(key)?.value {
            Value::Str { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The position best describing `path`: the key of the deepest entry that exists.
    pub fn locate(&self, path: &FieldPath) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for seg in path.segments() {
            let next = match (&node.value, seg) {
                (Value::Map(entries), crate::diag::Segment::Key(k)) => entries
                    .iter()
                    .find(|e| &e.key == k)
                    .map(|e| (e.key_pos, &e.value)),
                (Value::Seq(items), crate::diag::Segment::Index(i)) => {
                    items.get(*i).map(|n| (n.pos, n))
                }
                _ => None,
            };
            match next {
                Some((p, n)) => {
                    pos = p;
                    node = n;
                }
                None => break,
            }
        }
        pos
    }

    /// Converts to JSON for typed deserialization. Non-finite floats become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or_else(|| J::String(f.to_string()), J::Number)
            }
            Value::Str { text, .. } => J::String(text.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A problem found while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub pos: Pos,
    /// Stable token: `YamlSyntax`, `DuplicateKey`, `TooDeep`, `TooManyNodes`, `ComplexKey`,
    /// `UnknownAlias`, `InputTooLarge`.
    pub reason: &'static str,
    pub message: String,
    /// Path of the offending key, where known.
    pub path: FieldPath,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.pos.line, self.message)
    }
}

/// One document of a YAML stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 0-based position in the stream.
    pub index: usize,
    /// `None` for an empty document.
    pub root: Option<Node>,
    /// Problems inside this document (the tree keeps the first of duplicate keys).
    pub errors: Vec<LoadError>,
}

/// The result of loading a stream: its documents, and a fatal error that stopped reading (the
/// documents before it are complete).
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub documents: Vec<Document>,
    pub fatal: Option<LoadError>,
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<(String, Pos)>,
    },
}

struct Builder {
    frames: Vec<Frame>,
    anchors: Vec<(usize, Node)>,
    nodes: usize,
    root: Option<Node>,
    errors: Vec<LoadError>,
}

impl Builder {
    fn new() -> Self {
        Self {
            frames: Vec::new(),
            anchors: Vec::new(),
            nodes: 0,
            root: None,
            errors: Vec::new(),
        }
    }

    fn path(&self) -> FieldPath {
        let mut p = FieldPath::root();
        for f in &self.frames {
            match f {
                Frame::Seq { items, .. } => p = p.index(items.len()),
                Frame::Map {
                    key: Some((k, _)), ..
                } => p = p.key(k),
                Frame::Map { .. } => {}
            }
        }
        p
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), LoadError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(LoadError {
                pos,
                reason: "TooManyNodes",
                message: format!("document expands to more than {MAX_NODES} nodes (alias bomb?)"),
                path: self.path(),
            });
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), LoadError> {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.frames.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { key, entries, .. }) => match key.take() {
                None => {
                    let k = match &node.value {
                        Value::Str { text, .. } => text.clone(),
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null => "null".to_owned(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(LoadError {
                                pos: node.pos,
                                reason: "ComplexKey",
                                message: "mapping keys must be scalars".to_owned(),
                                path: self.path(),
                            });
                        }
                    };
                    *key = Some((k, node.pos));
                }
                Some((k, key_pos)) => {
                    if let Some(first) = entries.iter().find(|e| e.key == k) {
                        let first_line = first.key_pos.line;
                        let mut path = self.path();
                        path = path.key(&k);
                        self.errors.push(LoadError {
                            pos: key_pos,
                            reason: "DuplicateKey",
                            message: format!(
                                "key {k:?} appears again (first at line {first_line}); YAML readers disagree on which wins, so remove one"
                            ),
                            path,
                        });
                    } else {
                        entries.push(Entry {
                            key: k,
                            key_pos,
                            value: node,
                        });
                    }
                }
            },
        }
        Ok(())
    }

    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), LoadError> {
        let pos = Pos::of(&span);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, pos)?;
                let value = resolve(text, style, tag.as_deref());
                self.push(Node { pos, value }, anchor)?;
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                self.count(1, pos)?;
                if self.frames.len() >= MAX_DEPTH {
                    return Err(LoadError {
                        pos,
                        reason: "TooDeep",
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                        path: self.path(),
                    });
                }
                let frame = if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    }
                };
                self.frames.push(frame);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.frames.pop() {
                    let (node, anchor) = match frame {
                        Frame::Seq { pos, anchor, items } => (
                            Node {
                                pos,
                                value: Value::Seq(items),
                            },
                            anchor,
                        ),
                        Frame::Map {
                            pos,
                            anchor,
                            entries,
                            ..
                        } => (
                            Node {
                                pos,
                                value: Value::Map(entries),
                            },
                            anchor,
                        ),
                    };
                    self.push(node, anchor)?;
                }
            }
            Event::Alias(id) => {
                let Some(node) = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                else {
                    return Err(LoadError {
                        pos,
                        reason: "UnknownAlias",
                        message: "alias refers to an unknown anchor".to_owned(),
                        path: self.path(),
                    });
                };
                self.count(node_count(&node), pos)?;
                self.push(Node { pos, ..node }, 0)?;
            }
            Event::UnresolvedAlias(name) => {
                return Err(LoadError {
                    pos,
                    reason: "UnknownAlias",
                    message: format!("alias *{name} has no anchor before it"),
                    path: self.path(),
                });
            }
            _ => {}
        }
        Ok(())
    }
}

fn node_count(n: &Node) -> usize {
    match &n.value {
        Value::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|e| 1 + node_count(&e.value))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Resolves a scalar by the YAML 1.2 core schema; quoted and block scalars are strings.
fn resolve(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag {
        if tag.is_yaml_core_schema() {
            return match tag.suffix() {
                "str" => Value::Str {
                    text: text.into_owned(),
                    plain: false,
                },
                "null" => Value::Null,
                "bool" | "int" | "float" => resolve_plain(text),
                _ => Value::Str {
                    text: text.into_owned(),
                    plain: false,
                },
            };
        }
        return Value::Str {
            text: text.into_owned(),
            plain: false,
        };
    }
    if style != ScalarStyle::Plain {
        return Value::Str {
            text: text.into_owned(),
            plain: false,
        };
    }
    resolve_plain(text)
}

fn resolve_plain(text: Cow<'_, str>) -> Value {
    let s = text.as_ref();
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if !hex.is_empty()
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && let Ok(i) = i64::from_str_radix(hex, 16)
        {
            return Value::Int(i);
        }
    } else if let Some(oct) = s.strip_prefix("0o") {
        if !oct.is_empty()
            && oct.bytes().all(|b| (b'0'..=b'7').contains(&b))
            && let Ok(i) = i64::from_str_radix(oct, 8)
        {
            return Value::Int(i);
        }
    } else if is_int(s) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Int(i);
        }
        // Too large for i64: keep it a number so the schema reports it as out of range.
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    } else if is_float(s)
        && let Ok(f) = s.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str {
        text: text.into_owned(),
        plain: true,
    }
}

fn is_int(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_float(s: &str) -> bool {
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => {
            (!a.is_empty() || !b.is_empty())
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exp_ok
}

/// Loads every document of a YAML stream.
pub fn load(src: &str) -> Stream {
    let mut documents = Vec::new();
    if src.len() > MAX_INPUT {
        return Stream {
            documents,
            fatal: Some(LoadError {
                pos: Pos { line: 1, column: 1 },
                reason: "InputTooLarge",
                message: format!("input is {} bytes; the limit is {MAX_INPUT}", src.len()),
                path: FieldPath::root(),
            }),
        };
    }
    let mut parser = Parser::new_from_str(src);
    let mut builder: Option<Builder> = None;
    while let Some(next) = parser.next_event() {
        let (ev, span) = match next {
            Ok(x) => x,
            Err(e) => {
                let m = e.marker();
                let fatal = LoadError {
                    pos: Pos {
                        line: m.line(),
                        column: m.col() + 1,
                    },
                    reason: "YamlSyntax",
                    message: format!("invalid YAML: {}", e.info()),
                    path: builder
                        .as_ref()
                        .map(Builder::path)
                        .unwrap_or_else(FieldPath::root),
                };
                return Stream {
                    documents,
                    fatal: Some(fatal),
                };
            }
        };
        match ev {
            Event::DocumentStart(..) => builder = Some(Builder::new()),
            Event::DocumentEnd => {
                if let Some(b) = builder.take() {
                    let root = b.root.filter(|r| r.value != Value::Null);
                    documents.push(Document {
                        index: documents.len(),
                        root,
                        errors: b.errors,
                    });
                }
            }
            Event::StreamEnd => break,
            ev => {
                if let Some(b) = builder.as_mut()
                    && let Err(e) = b.event(ev, span)
                {
                    // The document cannot be trusted; keep what was read and skip the rest.
                    let mut errors = std::mem::take(&mut b.errors);
                    errors.push(e);
                    documents.push(Document {
                        index: documents.len(),
                        root: None,
                        errors,
                    });
                    builder = None;
                    // Drain events up to the end of this document.
                    loop {
                        match parser.next_event() {
                            Some(Ok((Event::DocumentEnd, _))) => break,
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => {
                                return Stream {
                                    documents,
                                    fatal: None,
                                };
                            }
                        }
                    }
                }
            }
        }
    }
    Stream {
        documents,
        fatal: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Node {
        let s = load(src);
        assert!(s.fatal.is_none(), "{:?}", s.fatal);
        s.documents[0].root.clone().unwrap()
    }

    #[test]
    fn scalars_resolve_by_yaml_12() {
        let n = one(
            "a: 1\nb: yes\nc: 'true'\nd: true\ne: 0x1F\nf: 1.5\ng: ~\nh: 1e3\ni: 99999999999999999999\n",
        );
        assert_eq!(n.get("a").unwrap().value, Value::Int(1));
        assert_eq!(
            n.get("b").unwrap().value,
            Value::Str {
                text: "yes".into(),
                plain: true
            }
        );
        assert_eq!(
            n.get("c").unwrap().value,
            Value::Str {
                text: "true".into(),
                plain: false
            }
        );
        assert_eq!(n.get("d").unwrap().value, Value::Bool(true));
        assert_eq!(n.get("e").unwrap().value, Value::Int(31));
        assert_eq!(n.get("f").unwrap().value, Value::Float(1.5));
        assert_eq!(n.get("g").unwrap().value, Value::Null);
        assert_eq!(n.get("h").unwrap().value, Value::Float(1000.0));
        assert!(matches!(n.get("i").unwrap().value, Value::Float(_)));
    }

    #[test]
    fn positions_and_paths() {
        let n = one("spec:\n  rules:\n  - name: a\n  - name: b\n");
        let p = FieldPath::root()
            .key("spec")
            .key("rules")
            .index(1)
            .key("name");
        assert_eq!(n.locate(&p).line, 4);
        let missing = FieldPath::root().key("spec").key("nope");
        assert_eq!(n.locate(&missing).line, 1);
    }

    #[test]
    fn multi_document_and_duplicates() {
        let s = load("a: 1\n---\nb: 2\nb: 3\n---\n");
        assert_eq!(s.documents.len(), 3);
        assert_eq!(s.documents[1].errors[0].reason, "DuplicateKey");
        assert_eq!(s.documents[1].errors[0].pos.line, 4);
        assert_eq!(s.documents[2].root, None);
    }

    #[test]
    fn syntax_errors_are_fatal_with_position() {
        let s = load("a: 1\n---\nb: [1, 2\n");
        assert_eq!(s.documents.len(), 1);
        let f = s.fatal.unwrap();
        assert_eq!(f.reason, "YamlSyntax");
        assert!(f.pos.line >= 3);
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            src.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let s = load(&src);
        assert_eq!(s.documents[0].errors.last().unwrap().reason, "TooManyNodes");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let src = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let s = load(&src);
        let reason = s
            .fatal
            .map(|f| f.reason)
            .or_else(|| s.documents[0].errors.last().map(|e| e.reason));
        assert!(
            matches!(reason, Some("TooDeep") | Some("YamlSyntax")),
            "{reason:?}"
        );
    }

    #[test]
    fn aliases_expand() {
        let n = one("base: &b {x: 1}\nother: *b\n");
        assert_eq!(
            n.get("other").unwrap().get("x").unwrap().value,
            Value::Int(1)
        );
    }
}
