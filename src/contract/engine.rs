//! Stage 5, the body: one streaming pass of a serde visitor driven by `serde_json`'s deserializer,
//! against a compiled schema. It borrows strings where it can, finds duplicate keys at every level
//! (a `serde_json::Value` would silently keep the last one) and records every violation as it
//! goes. A container whose schema needs the whole value at once (combinators, `enum`/`const`,
//! `uniqueItems`, `patternProperties`) is buffered into a small borrowed tree and checked there;
//! scalars and plain typed properties never are.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::fast::Fast;
use super::formats::check_format;
use super::schema::{as_f64, ty, Additional, Node, NodeId, Schemas};
use super::*;

/// At most this many characters of a client's text are echoed in a detail.
pub(crate) const MAX_ECHO_CHARS: usize = 100;
/// Objects up to this many keys look for duplicates by a linear scan; larger ones use a hash set.
const LINEAR_KEYS: usize = 16;
/// The deepest nesting of arrays and objects a body may have, the body itself at level 1
/// ("deeper than 128" is refused). The walk counts it itself (serde_json's own limit is off), and
/// it also bounds the walk's recursion.
pub(crate) const MAX_NESTING: usize = 128;

/// The schema of one request body, and the labels of its top-level properties.
#[derive(Debug, Clone)]
pub(crate) struct BodySchema {
    /// `None`: any JSON document (a JSON media type without a schema).
    pub root: Option<NodeId>,
    /// Every property a schema at the root names (through allOf/anyOf/oneOf too): its `field`.
    pub top: Vec<(Box<str>, Field)>,
}

impl BodySchema {
    fn top_field(&self, key: &str) -> Field {
        self.top
            .iter()
            .find(|(name, _)| &**name == key)
            .map_or(Field::Unknown, |&(_, field)| field)
    }
}

/// What the walk reads the schemas with.
struct Cx<'s> {
    schemas: &'s Schemas,
    body: &'s BodySchema,
}

/// Stage 5 (body): one UTF-8 JSON document, nothing after it but whitespace, no duplicate key at
/// any level, valid against `body`. Every violation is reported.
///
/// A document that does not parse gets exactly one `document`/`syntax` violation. A duplicate key
/// is reported once per document (the first one found, as `document`/`duplicate_key` at `""`),
/// together with every other violation; a repeated member is only reported as the duplicate, its
/// later values are not checked again.
pub(crate) fn check_json(
    schemas: &Schemas,
    body: &BodySchema,
    bytes: &[u8],
) -> Result<(), Violations> {
    let cx = Cx { schemas, body };
    // A body that is UTF-8 as a whole (the usual case) is read as a `str`: serde_json then skips
    // the UTF-8 check of each string, with the same outcome. Otherwise the byte reader finds and
    // reports the bad bytes.
    match std::str::from_utf8(bytes) {
        Ok(text) => check_fast(&cx, text)
            .unwrap_or_else(|| check_document(&cx, serde_json::Deserializer::from_str(text))),
        Err(_) => check_document(&cx, serde_json::Deserializer::from_slice(bytes)),
    }
}

/// The usual body by the fast reader (`fast::Fast`): `None` when it gave up, and then nothing of
/// its walk is kept (serde_json reads the body again from the start).
fn check_fast(cx: &Cx<'_>, text: &str) -> Option<Result<(), Violations>> {
    let mut de = Fast::new(text);
    let mut report = Report::default();
    walk_body(cx, &mut report, &mut de)
        .and_then(|()| de.end())
        .ok()?;
    Some(report.verdict())
}

/// The streaming walk of a whole body, by either reader.
fn walk_body<'de, D: de::Deserializer<'de>>(
    cx: &Cx<'_>,
    report: &mut Report,
    de: D,
) -> Result<(), D::Error> {
    Check {
        cx,
        report,
        path: &ROOT,
        node: cx.body.root,
        field: Field::Document,
    }
    .deserialize(de)
}

/// `check_fast` alone, for the tests that it takes the usual body.
#[cfg(test)]
pub(crate) fn check_json_fast(
    schemas: &Schemas,
    body: &BodySchema,
    text: &str,
) -> Option<Result<(), Violations>> {
    check_fast(&Cx { schemas, body }, text)
}

/// `check_json` by the `str` reader and by the byte reader, for a test that they agree.
#[cfg(test)]
pub(crate) fn check_json_both(
    schemas: &Schemas,
    body: &BodySchema,
    text: &str,
) -> (Result<(), Violations>, Result<(), Violations>) {
    let cx = Cx { schemas, body };
    (
        check_document(&cx, serde_json::Deserializer::from_str(text)),
        check_document(&cx, serde_json::Deserializer::from_slice(text.as_bytes())),
    )
}

/// `check_json` on either reader; both give the same result on UTF-8 input.
fn check_document<'de, R: serde_json::de::Read<'de>>(
    cx: &Cx<'_>,
    mut de: serde_json::Deserializer<R>,
) -> Result<(), Violations> {
    // The walk refuses nesting beyond MAX_NESTING itself (`Path::enter`); serde_json's limit
    // would refuse the 128th level.
    de.disable_recursion_limit();
    let mut report = Report::default();
    let parsed = walk_body(cx, &mut report, &mut de).and_then(|()| de.end());
    match parsed {
        Err(error) => Err(Violations::from(vec![Violation {
            field: Field::Document,
            code: Code::Syntax,
            location: Location::Pointer(String::new()),
            detail: format!("the body is not a single valid JSON document: {error}"),
        }])),
        Ok(()) => report.verdict(),
    }
}

/// Every violation of a parameter's value (read from its text) against `id`, with `field`.
pub(crate) fn check_value_at(
    schemas: &Schemas,
    id: NodeId,
    tree: &Tree<'_>,
    field: Field,
) -> Violations {
    let body = BodySchema {
        root: Some(id),
        top: Vec::new(),
    };
    let cx = Cx {
        schemas,
        body: &body,
    };
    let mut report = Report::default();
    let ctx = Ctx {
        path: &ROOT,
        field,
        root: false,
    };
    cx.check_tree(id, tree, &ctx, &mut report);
    report.violations
}

/// Violations gathered during the walk.
#[derive(Default)]
pub(crate) struct Report {
    pub violations: Violations,
    duplicate_found: bool,
}

impl Report {
    fn verdict(self) -> Result<(), Violations> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(self.violations)
        }
    }

    /// A violation at `path`; `detail` is only called if the violation is listed.
    fn add(&mut self, field: Field, code: Code, path: &Path<'_>, detail: impl FnOnce() -> String) {
        self.violations.push_with(field, code, || {
            (Location::Pointer(path.pointer()), detail())
        });
    }

    /// Like `add`, but listed at `at` (before violations found inside the value).
    fn add_at(&mut self, at: usize, field: Field, code: Code, path: &Path<'_>, detail: String) {
        self.violations.insert(
            at,
            Violation {
                field,
                code,
                location: Location::Pointer(path.pointer()),
                detail,
            },
        );
    }

    fn duplicate(&mut self, path: &Path<'_>) {
        if self.duplicate_found {
            return;
        }
        self.duplicate_found = true;
        let mut pointer = path.pointer();
        if let Some((cut, _)) = pointer.char_indices().nth(2 * MAX_ECHO_CHARS) {
            pointer.truncate(cut);
            pointer.push('…');
        }
        self.violations.push(Violation {
            field: Field::Document,
            code: Code::DuplicateKey,
            location: Location::Pointer(String::new()),
            detail: format!("duplicate key at {pointer:?}: member names must be unique"),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Values as the checks see them.

/// A JSON number as serde_json hands it over.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl Num {
    /// JSON Schema's integer: any number without a fraction (`1.0` is one).
    fn is_integer(self) -> bool {
        match self {
            Num::I(_) | Num::U(_) => true,
            Num::F(f) => f.is_finite() && f.fract() == 0.0,
        }
    }

    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::U(u) => u as f64,
            Num::F(f) => f,
        }
    }

    /// The value as an integer, if it is one (`2.0` too).
    pub(crate) fn as_i128_lossless(self) -> Option<i128> {
        match self {
            Num::F(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 => Some(f as i128),
            Num::F(_) => None,
            n => n.as_i128(),
        }
    }

    fn as_i128(self) -> Option<i128> {
        match self {
            Num::I(i) => Some(i.into()),
            Num::U(u) => Some(u.into()),
            Num::F(_) => None,
        }
    }

    /// Exact for two integers, else by `f64`.
    fn cmp_number(self, n: &Number) -> Option<Ordering> {
        let b = n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
        match (self.as_i128(), b) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => self.as_f64().partial_cmp(&as_f64(n)),
        }
    }
}

/// A value that is not a container.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(&'a str),
}

/// A buffered value, borrowing from the body where it can; members in the order sent.
#[derive(Debug)]
pub(crate) enum Tree<'de> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'de, str>),
    Arr(Vec<Tree<'de>>),
    Obj(Vec<(Cow<'de, str>, Tree<'de>)>),
}

/// What kind of value it is, for the type check and its detail.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Null,
    Bool,
    Number { integer: bool },
    Str,
    Array,
    Object,
}

impl Shape {
    fn of_scalar(s: &Scalar<'_>) -> Shape {
        match s {
            Scalar::Null => Shape::Null,
            Scalar::Bool(_) => Shape::Bool,
            Scalar::Num(n) => Shape::Number {
                integer: n.is_integer(),
            },
            Scalar::Str(_) => Shape::Str,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Shape::Null => ty::NULL,
            Shape::Bool => ty::BOOLEAN,
            Shape::Number { integer: true } => ty::INTEGER,
            Shape::Number { integer: false } => ty::NUMBER,
            Shape::Str => ty::STRING,
            Shape::Array => ty::ARRAY,
            Shape::Object => ty::OBJECT,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Shape::Null => "null",
            Shape::Bool => "a boolean",
            Shape::Number { .. } => "a number",
            Shape::Str => "a string",
            Shape::Array => "an array",
            Shape::Object => "an object",
        }
    }
}

impl Tree<'_> {
    fn scalar(&self) -> Option<Scalar<'_>> {
        Some(match self {
            Tree::Null => Scalar::Null,
            Tree::Bool(b) => Scalar::Bool(*b),
            Tree::Num(n) => Scalar::Num(*n),
            Tree::Str(s) => Scalar::Str(s),
            Tree::Arr(_) | Tree::Obj(_) => return None,
        })
    }
}

fn scalar_eq(s: &Scalar<'_>, v: &Value) -> bool {
    match (s, v) {
        (Scalar::Null, Value::Null) => true,
        (Scalar::Bool(a), Value::Bool(b)) => a == b,
        (Scalar::Num(a), Value::Number(b)) => a.cmp_number(b) == Some(Ordering::Equal),
        (Scalar::Str(a), Value::String(b)) => *a == b.as_str(),
        _ => false,
    }
}

/// JSON equality (numbers by value, objects whatever their order) of a buffered value and one of
/// the document.
fn tree_eq_value(t: &Tree<'_>, v: &Value) -> bool {
    match (t, v) {
        (Tree::Arr(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| tree_eq_value(x, y))
        }
        (Tree::Obj(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, x)| b.get(k.as_ref()).is_some_and(|y| tree_eq_value(x, y)))
        }
        (t, v) => t.scalar().is_some_and(|s| scalar_eq(&s, v)),
    }
}

fn tree_eq(a: &Tree<'_>, b: &Tree<'_>) -> bool {
    match (a, b) {
        (Tree::Null, Tree::Null) => true,
        (Tree::Bool(x), Tree::Bool(y)) => x == y,
        (Tree::Num(x), Tree::Num(y)) => match (x.as_i128(), y.as_i128()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Tree::Str(x), Tree::Str(y)) => x == y,
        (Tree::Arr(x), Tree::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| tree_eq(p, q))
        }
        (Tree::Obj(x), Tree::Obj(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.iter().any(|(l, q)| k == l && tree_eq(p, q)))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The checks of one node, shared by the streaming walk and the buffered tree.

/// "a string or null", "an array of strings": what a node's `type` allows.
fn expected(out: &mut String, schemas: &Schemas, node: &Node, root: bool) {
    // (text, plural of the items) per allowed type, in this order; no list to allocate.
    let mut parts: [(&str, &str); 6] = [("", ""); 6];
    let mut n = 0;
    let mut part = |text: &'static str, of: &'static str| {
        parts[n] = (text, of);
        n += 1;
    };
    let t = node.types;
    if t & ty::OBJECT != 0 {
        part(if root { "a JSON object" } else { "an object" }, "");
    }
    if t & ty::ARRAY != 0 {
        let of = node
            .items
            .filter(|_| node.prefix_items.is_empty())
            .map(|id| schemas.node(id).types)
            .and_then(plural);
        match of {
            Some(of) => part("an array of ", of),
            None => part("an array", ""),
        }
    }
    if t & ty::STRING != 0 {
        part("a string", "");
    }
    if t & ty::NUMBER != 0 {
        part("a number", "");
    } else if t & ty::INTEGER != 0 {
        part("an integer", "");
    }
    if t & ty::BOOLEAN != 0 {
        part("a boolean", "");
    }
    if t & ty::NULL != 0 {
        part("null", "");
    }
    if n == 0 {
        out.push_str("nothing");
    }
    for (i, (text, of)) in parts[..n].iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == n { " or " } else { ", " });
        }
        out.push_str(text);
        out.push_str(of);
    }
}

fn plural(types: u8) -> Option<&'static str> {
    Some(match types {
        ty::STRING => "strings",
        ty::BOOLEAN => "booleans",
        ty::OBJECT => "objects",
        ty::ARRAY => "arrays",
        ty::INTEGER => "integers",
        t if t == ty::NUMBER | ty::INTEGER => "numbers",
        _ => return None,
    })
}

/// Text of the document for a detail, at most 100 characters.
fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_ECHO_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

impl Cx<'_> {
    /// The type check; `false` (and a violation) when the value's kind is not allowed. At the
    /// root the violation comes first (`at`), as the answer's headline.
    #[inline]
    fn type_ok(
        &self,
        node: &Node,
        shape: Shape,
        ctx: &Ctx<'_>,
        report: &mut Report,
        at: usize,
    ) -> bool {
        // The allowed kind, the usual case, is decided inline; a violation out of line.
        (!node.never && node.types & shape.bits() != 0)
            || self.type_refused(node, shape, ctx, report, at)
    }

    #[cold]
    #[inline(never)]
    fn type_refused(
        &self,
        node: &Node,
        shape: Shape,
        ctx: &Ctx<'_>,
        report: &mut Report,
        at: usize,
    ) -> bool {
        if node.never {
            report.add(ctx.field, Code::Type, ctx.path, || {
                "no value is allowed here".to_owned()
            });
            return false;
        }
        if node.types & shape.bits() != 0 {
            return true;
        }
        let code = match shape {
            Shape::Number { integer: false } if node.types & ty::INTEGER != 0 => Code::Integer,
            _ => Code::Type,
        };
        if ctx.root {
            let mut detail = String::with_capacity(64);
            detail.push_str("the body must be ");
            expected(&mut detail, self.schemas, node, true);
            report.add_at(at, ctx.field, code, ctx.path, detail);
        } else {
            report.add(ctx.field, code, ctx.path, || {
                let mut detail = String::with_capacity(64);
                detail.push_str("must be ");
                expected(&mut detail, self.schemas, node, false);
                detail.push_str(", got ");
                detail.push_str(shape.describe());
                detail
            });
        }
        false
    }

    /// Every keyword of `id` on a scalar.
    fn check_scalar(&self, id: NodeId, s: Scalar<'_>, ctx: &Ctx<'_>, report: &mut Report) {
        let node = self.schemas.node(id);
        let at = report.violations.len();
        if !self.type_ok(node, Shape::of_scalar(&s), ctx, report, at) {
            return;
        }
        let field = ctx.field;
        let path = ctx.path;
        if node.read_only {
            report.add(field, Code::ReadOnly, path, || {
                "is read-only: a request must not send it".to_owned()
            });
        }
        match s {
            Scalar::Str(text) => {
                let mut length_ok = true;
                if let Some(max) = node.max_length {
                    // A char takes at least one byte: a short text needs no counting.
                    if text.len() as u64 > max {
                        let chars = text.chars().count();
                        if chars as u64 > max {
                            report.add(field, Code::MaxLength, path, || {
                                format!("must be at most {max} characters, got {chars}")
                            });
                            length_ok = false;
                        }
                    }
                }
                if let Some(min) = node.min_length {
                    let chars = text.chars().count();
                    if (chars as u64) < min {
                        report.add(field, Code::MinLength, path, || {
                            format!("must be at least {min} characters, got {chars}")
                        });
                        length_ok = false;
                    }
                }
                if let Some(pattern) = &node.pattern {
                    if !pattern.is_match(text) {
                        report.add(field, Code::Pattern, path, || {
                            format!("must match the pattern {:?}", shown(pattern.as_str()))
                        });
                    }
                }
                if length_ok {
                    self.format(node, &s, ctx, report);
                }
            }
            Scalar::Num(n) => {
                if let Some(min) = &node.minimum {
                    let low = match n.cmp_number(&min.value) {
                        Some(Ordering::Less) | None => true,
                        Some(Ordering::Equal) => min.exclusive,
                        Some(Ordering::Greater) => false,
                    };
                    if low {
                        report.add(field, Code::Minimum, path, || {
                            let how = if min.exclusive {
                                "greater than"
                            } else {
                                "at least"
                            };
                            format!("must be {how} {}", min.value)
                        });
                    }
                }
                if let Some(max) = &node.maximum {
                    let high = match n.cmp_number(&max.value) {
                        Some(Ordering::Greater) | None => true,
                        Some(Ordering::Equal) => max.exclusive,
                        Some(Ordering::Less) => false,
                    };
                    if high {
                        report.add(field, Code::Maximum, path, || {
                            let how = if max.exclusive {
                                "less than"
                            } else {
                                "at most"
                            };
                            format!("must be {how} {}", max.value)
                        });
                    }
                }
                if let Some(m) = &node.multiple_of {
                    if !multiple_of(n, m) {
                        report.add(field, Code::MultipleOf, path, || {
                            format!("must be a multiple of {m}")
                        });
                    }
                }
                self.format(node, &s, ctx, report);
            }
            Scalar::Null | Scalar::Bool(_) => {}
        }
        if !node.checks_more {
            return;
        }
        if let Some(values) = &node.enum_values {
            if !values.iter().any(|v| scalar_eq(&s, v)) {
                report.add(field, Code::Enum, path, || {
                    format!(
                        "must be one of the {} values the contract lists",
                        values.len()
                    )
                });
            }
        }
        if let Some(value) = &node.const_value {
            if !scalar_eq(&s, value) {
                report.add(field, Code::Const, path, || {
                    "must be the one value the contract fixes".to_owned()
                });
            }
        }
        self.combinators(node, ctx, report, |cx, id, ctx, report| {
            cx.check_scalar(id, s, ctx, report)
        });
    }

    fn format(&self, node: &Node, s: &Scalar<'_>, ctx: &Ctx<'_>, report: &mut Report) {
        if let Some(format) = node.format {
            if let Err(detail) = check_format(format, s) {
                report.add(ctx.field, Code::Format, ctx.path, || detail);
            }
        }
    }

    /// `allOf` (its violations as they are), `anyOf`, `oneOf`, `not` (one violation each).
    fn combinators(
        &self,
        node: &Node,
        ctx: &Ctx<'_>,
        report: &mut Report,
        check: impl Fn(&Self, NodeId, &Ctx<'_>, &mut Report),
    ) {
        for &id in &node.all_of {
            check(self, id, ctx, report);
        }
        let passes = |id: NodeId| {
            let mut scratch = Report::default();
            check(self, id, ctx, &mut scratch);
            scratch.violations.total() == 0
        };
        if !node.any_of.is_empty() && !node.any_of.iter().any(|&id| passes(id)) {
            let n = node.any_of.len();
            report.add(ctx.field, Code::AnyOf, ctx.path, || {
                format!("must match at least one of the {n} schemas of anyOf")
            });
        }
        if !node.one_of.is_empty() {
            let matched = node.one_of.iter().filter(|&&id| passes(id)).count();
            if matched != 1 {
                let n = node.one_of.len();
                report.add(ctx.field, Code::OneOf, ctx.path, || {
                    format!("must match exactly one of the {n} schemas of oneOf, matched {matched}")
                });
            }
        }
        if let Some(id) = node.not {
            if passes(id) {
                report.add(ctx.field, Code::Not, ctx.path, || {
                    "must not match the schema of not".to_owned()
                });
            }
        }
    }

    /// minItems, maxItems and uniqueItems, listed before the items' own violations (`at`).
    fn array_checks(
        &self,
        node: &Node,
        len: usize,
        duplicate_items: Option<(usize, usize)>,
        ctx: &Ctx<'_>,
        report: &mut Report,
        at: usize,
    ) {
        let mut own = Vec::new();
        if let Some(min) = node.min_items {
            if (len as u64) < min {
                own.push((
                    Code::MinItems,
                    format!("must have at least {min} items, got {len}"),
                ));
            }
        }
        if let Some(max) = node.max_items {
            if len as u64 > max {
                own.push((
                    Code::MaxItems,
                    format!("must have at most {max} items, got {len}"),
                ));
            }
        }
        if let Some((a, b)) = duplicate_items {
            own.push((
                Code::UniqueItems,
                format!("items must be unique: {a} and {b} are equal"),
            ));
        }
        for (i, (code, detail)) in own.into_iter().enumerate() {
            report.add_at(at + i, ctx.field, code, ctx.path, detail);
        }
    }

    /// minProperties and maxProperties, listed after the members' own violations.
    fn object_counts(&self, node: &Node, count: usize, ctx: &Ctx<'_>, report: &mut Report) {
        if let Some(min) = node.min_properties {
            if (count as u64) < min {
                report.add(ctx.field, Code::MinProperties, ctx.path, || {
                    format!("must have at least {min} members, got {count}")
                });
            }
        }
        if let Some(max) = node.max_properties {
            if count as u64 > max {
                report.add(ctx.field, Code::MaxProperties, ctx.path, || {
                    format!("must have at most {max} members, got {count}")
                });
            }
        }
    }

    /// A required member that is missing, at its own path.
    fn missing(&self, name: &str, named: Field, ctx: &Ctx<'_>, report: &mut Report) {
        let path = ctx.path.child(Step::Key(name));
        let field = if ctx.root { named } else { ctx.field };
        report.add(field, Code::Required, &path, || {
            format!("{name} is required")
        });
    }

    fn unknown(&self, node: &Node, path: &Path<'_>, report: &mut Report) {
        report.add(Field::Unknown, Code::UnknownField, path, || {
            format!("unknown field: {}", node.names_text)
        });
    }

    /// The field of a member of this value: at the root, the member's own label.
    fn member_field(&self, ctx: &Ctx<'_>, key: &str) -> Field {
        if ctx.root {
            self.body.top_field(key)
        } else {
            ctx.field
        }
    }

    /// Every keyword of `id` on a buffered value.
    fn check_tree(&self, id: NodeId, t: &Tree<'_>, ctx: &Ctx<'_>, report: &mut Report) {
        if let Some(s) = t.scalar() {
            return self.check_scalar(id, s, ctx, report);
        }
        let node = self.schemas.node(id);
        let at = report.violations.len();
        match t {
            Tree::Arr(items) => {
                if !self.type_ok(node, Shape::Array, ctx, report, at) {
                    return;
                }
                for (i, item) in items.iter().enumerate() {
                    if let Some(child) = node.prefix_items.get(i).copied().or(node.items) {
                        let path = ctx.path.child(Step::Index(i));
                        let inner = ctx.inner(&path, ctx.field);
                        self.check_tree(child, item, &inner, report);
                    }
                }
                let dup = if node.unique_items {
                    first_equal_pair(items)
                } else {
                    None
                };
                self.array_checks(node, items.len(), dup, ctx, report, at);
            }
            Tree::Obj(members) => {
                if !self.type_ok(node, Shape::Object, ctx, report, at) {
                    return;
                }
                for (key, value) in members {
                    let path = ctx.path.child(Step::Key(key));
                    let inner = ctx.inner(&path, self.member_field(ctx, key));
                    let mut named = false;
                    if let Some(child) = node.property(key) {
                        self.check_tree(child, value, &inner, report);
                        named = true;
                    }
                    for (pattern, child) in &node.pattern_properties {
                        if pattern.is_match(key) {
                            self.check_tree(*child, value, &inner, report);
                            named = true;
                        }
                    }
                    if !named {
                        match node.additional {
                            Additional::Any => {}
                            Additional::Refuse => self.unknown(node, &path, report),
                            Additional::Schema(child) => {
                                self.check_tree(child, value, &inner, report)
                            }
                        }
                    }
                }
                for (name, named) in &node.required {
                    if !members.iter().any(|(k, _)| k == &**name) {
                        self.missing(name, *named, ctx, report);
                    }
                }
                self.object_counts(node, members.len(), ctx, report);
            }
            _ => {}
        }
        if node.read_only {
            report.add(ctx.field, Code::ReadOnly, ctx.path, || {
                "is read-only: a request must not send it".to_owned()
            });
        }
        if let Some(values) = &node.enum_values {
            if !values.iter().any(|v| tree_eq_value(t, v)) {
                report.add(ctx.field, Code::Enum, ctx.path, || {
                    format!(
                        "must be one of the {} values the contract lists",
                        values.len()
                    )
                });
            }
        }
        if let Some(value) = &node.const_value {
            if !tree_eq_value(t, value) {
                report.add(ctx.field, Code::Const, ctx.path, || {
                    "must be the one value the contract fixes".to_owned()
                });
            }
        }
        self.combinators(node, ctx, report, |cx, id, ctx, report| {
            cx.check_tree(id, t, ctx, report)
        });
    }
}

/// The first two equal items, by index.
fn first_equal_pair(items: &[Tree<'_>]) -> Option<(usize, usize)> {
    for (j, b) in items.iter().enumerate() {
        if let Some(i) = items[..j].iter().position(|a| tree_eq(a, b)) {
            return Some((i, j));
        }
    }
    None
}

fn multiple_of(n: Num, m: &Number) -> bool {
    let m_int = m.as_i64().map(i128::from).or(m.as_u64().map(i128::from));
    match (n.as_i128(), m_int) {
        (Some(a), Some(b)) if b != 0 => a % b == 0,
        _ => {
            // Decimal steps (0.01) have no exact binary form: 19.99 / 0.01 is 1998.9999999999998.
            let q = n.as_f64() / as_f64(m);
            q.is_finite() && (q - q.round()).abs() <= 1e-9 * q.abs().max(1.0)
        }
    }
}

/// Where the walk is and what it reports under.
#[derive(Clone, Copy)]
struct Ctx<'p> {
    path: &'p Path<'p>,
    field: Field,
    /// The whole body: type violations come first and members carry their own labels.
    root: bool,
}

impl<'p> Ctx<'p> {
    fn inner<'q>(&self, path: &'q Path<'q>, field: Field) -> Ctx<'q> {
        Ctx {
            path,
            field,
            root: false,
        }
    }
}
/// Where a value sits, as a chain of stack frames; the pointer text is built only when needed.
#[derive(Clone, Copy)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    step: Step<'a>,
    /// How many steps lead here from the root: the nesting level of a container at this path,
    /// less one.
    depth: usize,
}

#[derive(Clone, Copy)]
pub(crate) enum Step<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

pub(crate) static ROOT: Path<'static> = Path {
    parent: None,
    step: Step::Root,
    depth: 0,
};

impl<'a> Path<'a> {
    fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    fn child(&'a self, step: Step<'a>) -> Path<'a> {
        Path {
            parent: Some(self),
            step,
            depth: self.depth + 1,
        }
    }

    /// Entering an array or object here: past `MAX_NESTING` levels (the body itself is level 1),
    /// a syntax error, before the walk's recursion can grow the stack any further.
    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth >= MAX_NESTING {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_NESTING} levels"
            )));
        }
        Ok(())
    }

    /// The RFC 6901 pointer, `""` for the root.
    fn pointer(&self) -> String {
        let mut out = String::new();
        self.write_pointer(&mut out);
        out
    }

    /// The parents' steps first, then this one; no list of steps to allocate (the depth is
    /// bounded by MAX_NESTING).
    fn write_pointer(&self, out: &mut String) {
        if let Some(parent) = self.parent {
            parent.write_pointer(out);
        }
        match self.step {
            Step::Root => {}
            Step::Key(key) => {
                out.push('/');
                push_pointer_token(out, key);
            }
            Step::Index(index) => {
                let _ = write!(out, "/{index}");
            }
        }
    }
}

/// RFC 6901 escaping of one reference token: `~` as `~0`, `/` as `~1`.
pub(crate) fn push_pointer_token(out: &mut String, key: &str) {
    // The usual key has neither: one copy.
    if !key.bytes().any(|b| b == b'~' || b == b'/') {
        out.push_str(key);
        return;
    }
    for c in key.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

/// The keys seen so far in one object.
#[derive(Default)]
pub(crate) struct Keys<'de> {
    list: Vec<Cow<'de, str>>,
    set: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> Keys<'de> {
    fn contains(&self, key: &str) -> bool {
        match &self.set {
            Some(set) => set.contains(key),
            None => self.list.iter().any(|k| k == key),
        }
    }

    fn insert(&mut self, key: Cow<'de, str>) {
        if let Some(set) = &mut self.set {
            set.insert(key);
        } else if self.list.len() < LINEAR_KEYS {
            self.list.push(key);
        } else {
            let mut set: HashSet<_> = self.list.drain(..).collect();
            set.insert(key);
            self.set = Some(set);
        }
    }
}

/// An object key, borrowed from the body unless it had escapes.
pub(crate) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

// ---------------------------------------------------------------------------------------------
// The streaming walk.

/// Checks one value against `node` as it streams by (`None`: anything goes, but duplicate keys
/// are still found).
struct Check<'c, 'r, 'p> {
    cx: &'c Cx<'c>,
    report: &'r mut Report,
    path: &'p Path<'p>,
    node: Option<NodeId>,
    field: Field,
}

impl<'p> Ctx<'p> {
    fn at(path: &'p Path<'p>, field: Field) -> Ctx<'p> {
        Ctx {
            path,
            field,
            root: path.is_root(),
        }
    }
}

impl Check<'_, '_, '_> {
    fn scalar<E>(self, s: Scalar<'_>) -> Result<(), E> {
        if let Some(id) = self.node {
            let ctx = Ctx::at(self.path, self.field);
            self.cx.check_scalar(id, s, &ctx, self.report);
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Check<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.scalar(Scalar::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.scalar(Scalar::Num(Num::I(n)))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.scalar(Scalar::Num(Num::U(n)))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.scalar(Scalar::Num(Num::F(n)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Scalar::Null)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.scalar(Scalar::Str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.path.enter()?;
        let cx = self.cx;
        let ctx = Ctx::at(self.path, self.field);
        let at = self.report.violations.len();
        let Some(node) = self.node.map(|id| (id, cx.schemas.node(id))) else {
            return Walk::new(self.report, self.path).visit_seq(seq).map(drop);
        };
        let (id, node) = node;
        if node.never || node.types & ty::ARRAY == 0 {
            // Walked all the same, so that a syntax error inside still wins.
            Walk::new(self.report, self.path).visit_seq(seq)?;
            cx.type_ok(node, Shape::Array, &ctx, self.report, at);
            return Ok(());
        }
        if node.tree {
            let tree = Buffer::new(self.report, self.path).visit_seq(seq)?;
            cx.check_tree(id, &tree, &ctx, self.report);
            return Ok(());
        }
        let mut len = 0usize;
        loop {
            let path = self.path.child(Step::Index(len));
            let child = node.prefix_items.get(len).copied().or(node.items);
            let item = seq.next_element_seed(Check {
                cx,
                report: &mut *self.report,
                path: &path,
                node: child,
                field: self.field,
            })?;
            if item.is_none() {
                break;
            }
            len = len.saturating_add(1);
        }
        cx.array_checks(node, len, None, &ctx, self.report, at);
        if node.read_only {
            self.report.add(self.field, Code::ReadOnly, self.path, || {
                "is read-only: a request must not send it".to_owned()
            });
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.path.enter()?;
        let cx = self.cx;
        let ctx = Ctx::at(self.path, self.field);
        let at = self.report.violations.len();
        let Some(node) = self.node.map(|id| (id, cx.schemas.node(id))) else {
            return Walk::new(self.report, self.path).visit_map(map).map(drop);
        };
        let (id, node) = node;
        if node.never || node.types & ty::OBJECT == 0 {
            Walk::new(self.report, self.path).visit_map(map)?;
            cx.type_ok(node, Shape::Object, &ctx, self.report, at);
            return Ok(());
        }
        if node.tree {
            let tree = Buffer::new(self.report, self.path).visit_map(map)?;
            cx.check_tree(id, &tree, &ctx, self.report);
            return Ok(());
        }
        // The named members seen, by index (the first 64), and every other key.
        let mut seen = 0u64;
        let mut others = Keys::default();
        let mut count = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let path = self.path.child(Step::Key(&key));
            let named = node.property_index(&key);
            let repeated = match named {
                Some(i) if i < 64 => {
                    let before = seen;
                    seen |= 1 << i;
                    before & (1 << i) != 0
                }
                _ => others.contains(&key),
            };
            if repeated {
                // Only the first occurrence of a member is checked.
                self.report.duplicate(&path);
                map.next_value_seed(Walk::new(&mut *self.report, &path))?;
                continue;
            }
            count += 1;
            let field = match named {
                Some(i) if ctx.root => node.property_fields[i],
                _ => cx.member_field(&ctx, &key),
            };
            let child = match (named, node.additional) {
                (Some(i), _) => Some(node.properties[i].1),
                (None, Additional::Schema(child)) => Some(child),
                (None, _) => None,
            };
            map.next_value_seed(Check {
                cx,
                report: &mut *self.report,
                path: &path,
                node: child,
                field,
            })?;
            if named.is_none() && node.additional == Additional::Refuse {
                cx.unknown(node, &path, self.report);
            }
            if !matches!(named, Some(i) if i < 64) {
                others.insert(key);
            }
        }
        for ((name, named), at) in node.required.iter().zip(&node.required_at) {
            let present = match at {
                Some(j) if *j < 64 => seen & (1 << j) != 0,
                _ => others.contains(name),
            };
            if !present {
                cx.missing(name, *named, &ctx, self.report);
            }
        }
        cx.object_counts(node, count, &ctx, self.report);
        if node.read_only {
            self.report.add(self.field, Code::ReadOnly, self.path, || {
                "is read-only: a request must not send it".to_owned()
            });
        }
        Ok(())
    }
}

/// Reads a value into a `Tree`, finding duplicate keys on the way (a repeated member keeps its
/// first value).
struct Buffer<'r, 'p> {
    report: &'r mut Report,
    path: &'p Path<'p>,
}

impl<'r, 'p> Buffer<'r, 'p> {
    fn new(report: &'r mut Report, path: &'p Path<'p>) -> Self {
        Buffer { report, path }
    }
}

impl<'de> DeserializeSeed<'de> for Buffer<'_, '_> {
    type Value = Tree<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Buffer<'_, '_> {
    type Value = Tree<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Tree::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Tree::Num(Num::I(n)))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Tree::Num(Num::U(n)))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(Tree::Num(Num::F(n)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Tree::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Tree::Null)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Tree::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Tree::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Tree::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.path.enter()?;
        let mut items = Vec::new();
        loop {
            let path = self.path.child(Step::Index(items.len()));
            match seq.next_element_seed(Buffer::new(&mut *self.report, &path))? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Tree::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        self.path.enter()?;
        let mut members: Vec<(Cow<'de, str>, Tree<'de>)> = Vec::new();
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let path = self.path.child(Step::Key(&key));
            if keys.contains(&key) {
                self.report.duplicate(&path);
                map.next_value_seed(Walk::new(&mut *self.report, &path))?;
                continue;
            }
            let value = map.next_value_seed(Buffer::new(&mut *self.report, &path))?;
            keys.insert(key.clone());
            members.push((key, value));
        }
        Ok(Tree::Obj(members))
    }
}

/// Walks any value, reporting duplicate keys inside it.
struct Walk<'r, 'p> {
    report: &'r mut Report,
    path: &'p Path<'p>,
}

impl<'r, 'p> Walk<'r, 'p> {
    fn new(report: &'r mut Report, path: &'p Path<'p>) -> Self {
        Walk { report, path }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // Not `deserialize_ignored_any`: that would skip objects without looking at their keys.
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.path.enter()?;
        let mut len = 0usize;
        loop {
            let path = self.path.child(Step::Index(len));
            if seq
                .next_element_seed(Walk::new(&mut *self.report, &path))?
                .is_none()
            {
                return Ok(());
            }
            len = len.saturating_add(1);
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.path.enter()?;
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let path = self.path.child(Step::Key(&key));
            let repeated = keys.contains(&key);
            if repeated {
                self.report.duplicate(&path);
            }
            map.next_value_seed(Walk::new(&mut *self.report, &path))?;
            if !repeated {
                keys.insert(key);
            }
        }
        Ok(())
    }
}
