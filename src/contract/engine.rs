//! Stage 5, the body: one streaming pass of a serde visitor driven by `serde_json`'s deserializer.
//! It borrows strings where it can, finds duplicate keys at every level (a `serde_json::Value`
//! would silently keep the last one) and records every violation as it goes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::*;

// ---------------------------------------------------------------------------------------------
// Stage 5: body.

/// Stage 5 (body): one UTF-8 JSON object, nothing after it but whitespace, no duplicate key at any
/// level, and the members of `ContactUpdate` (openapi.yaml). Every violation is reported.
///
/// A document that does not parse gets exactly one `document`/`syntax` violation. A duplicate key
/// is reported once per document (the first one found, as `document`/`duplicate_key` at `""`),
/// together with every other violation; a repeated member is only reported as the duplicate, its
/// later values are not checked again.
pub fn check_body(body: &[u8], unknown: UnknownFields) -> Result<(), Violations> {
    // A body that is UTF-8 as a whole (the usual case) is read as a `str`: serde_json then skips
    // the UTF-8 check of each string, with the same outcome. Otherwise the byte reader finds and
    // reports the bad bytes exactly as before.
    match std::str::from_utf8(body) {
        Ok(text) => check_document(serde_json::Deserializer::from_str(text), unknown),
        Err(_) => check_document(serde_json::Deserializer::from_slice(body), unknown),
    }
}

/// `check_body` on either reader; both give the same result on UTF-8 input.
pub(crate) fn check_document<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    unknown: UnknownFields,
) -> Result<(), Violations> {
    let mut report = Report::default();
    let parsed = BodySeed {
        report: &mut report,
        unknown,
    }
    .deserialize(&mut de)
    .and_then(|is_object| de.end().map(|()| is_object));
    match parsed {
        Err(error) => Err(Violations::from(vec![Violation {
            field: Field::Document,
            code: Code::Syntax,
            location: Location::Pointer(String::new()),
            detail: format!("the body is not a single valid JSON document: {error}"),
        }])),
        Ok(false) => {
            let mut violations = Violations::from(vec![Violation {
                field: Field::Document,
                code: Code::Type,
                location: Location::Pointer(String::new()),
                detail: "the body must be a JSON object".to_owned(),
            }]);
            violations.append(report.violations);
            Err(violations)
        }
        Ok(true) if report.violations.is_empty() => Ok(()),
        Ok(true) => Err(report.violations),
    }
}

/// Violations gathered during the walk.
#[derive(Default)]
pub(crate) struct Report {
    violations: Violations,
    duplicate_found: bool,
}

impl Report {
    /// A violation at `path`; `detail` is only called if the violation is listed.
    fn add(&mut self, field: Field, code: Code, path: &Path<'_>, detail: impl FnOnce() -> String) {
        self.violations.push_with(field, code, || {
            (Location::Pointer(path.pointer()), detail())
        });
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

    fn wrong_type(&mut self, field: Field, path: &Path<'_>, expected: &str, got: &Shape<'_>) {
        self.add(field, Code::Type, path, || {
            format!("must be {expected}, got {}", got.describe())
        });
    }

    fn max_length(&mut self, field: Field, path: &Path<'_>, text: &str, max: usize) -> bool {
        // A char takes at least one byte: a short text needs no counting.
        if text.len() <= max {
            return true;
        }
        let chars = text.chars().count();
        if chars > max {
            self.add(field, Code::MaxLength, path, || {
                format!("must be at most {max} characters, got {chars}")
            });
            return false;
        }
        true
    }
}

/// Where a value sits, as a chain of stack frames; the pointer text is built only when needed.
#[derive(Clone, Copy)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    step: Step<'a>,
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
};

impl<'a> Path<'a> {
    fn child(&'a self, step: Step<'a>) -> Path<'a> {
        Path {
            parent: Some(self),
            step,
        }
    }

    /// The RFC 6901 pointer, `""` for the root.
    fn pointer(&self) -> String {
        let mut steps = Vec::new();
        let mut at = Some(self);
        while let Some(path) = at {
            steps.push(path.step);
            at = path.parent;
        }
        let mut out = String::new();
        for step in steps.iter().rev() {
            match step {
                Step::Root => {}
                Step::Key(key) => {
                    out.push('/');
                    push_pointer_token(&mut out, key);
                }
                Step::Index(index) => {
                    let _ = write!(out, "/{index}");
                }
            }
        }
        out
    }
}

/// RFC 6901 escaping of one reference token: `~` as `~0`, `/` as `~1`.
pub(crate) fn push_pointer_token(out: &mut String, key: &str) {
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

/// What a value turned out to be. Strings are kept for the checks of the known members.
pub(crate) enum Shape<'de> {
    Null,
    Bool,
    Number,
    Str(Cow<'de, str>),
    Array(usize),
    Object,
}

impl Shape<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Shape::Null => "null",
            Shape::Bool => "a boolean",
            Shape::Number => "a number",
            Shape::Str(_) => "a string",
            Shape::Array(_) => "an array",
            Shape::Object => "an object",
        }
    }
}

/// Walks any value, reporting duplicate keys inside it. With `phones`, the items of an array are
/// also checked as phone numbers.
pub(crate) struct Walk<'r, 'p> {
    report: &'r mut Report,
    path: &'p Path<'p>,
    phones: bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = Shape<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = Shape<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Bool)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Shape::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Shape::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shape::Number)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Shape::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Shape::Null)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Shape::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Shape::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Shape::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut len = 0usize;
        loop {
            let path = self.path.child(Step::Index(len));
            let item = seq.next_element_seed(Walk {
                report: &mut *self.report,
                path: &path,
                phones: false,
            })?;
            let Some(item) = item else { break };
            if self.phones {
                match &item {
                    Shape::Str(text) => {
                        self.report
                            .max_length(Field::Phones, &path, text, MAX_PHONE_CHARS);
                    }
                    other => self
                        .report
                        .wrong_type(Field::Phones, &path, "a string", other),
                }
            }
            len = len.saturating_add(1);
        }
        Ok(Shape::Array(len))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let path = self.path.child(Step::Key(&key));
            let repeated = keys.contains(&key);
            if repeated {
                self.report.duplicate(&path);
            }
            map.next_value_seed(Walk {
                report: &mut *self.report,
                path: &path,
                phones: false,
            })?;
            if !repeated {
                keys.insert(key);
            }
        }
        Ok(Shape::Object)
    }
}

/// The members of `ContactUpdate`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Member {
    Notify,
    Name,
    Email,
    Phones,
    Comment,
}

impl Member {
    fn from_key(key: &str) -> Option<Member> {
        match key {
            "notify" => Some(Member::Notify),
            "name" => Some(Member::Name),
            "email" => Some(Member::Email),
            "phones" => Some(Member::Phones),
            "comment" => Some(Member::Comment),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The whole body. Its value says whether the document is an object.
pub(crate) struct BodySeed<'r> {
    report: &'r mut Report,
    unknown: UnknownFields,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        // Walked all the same, so that a syntax error inside still wins over "not an object".
        let walk = Walk {
            report: self.report,
            path: &ROOT,
            phones: false,
        };
        walk.visit_seq(seq).map(|_| false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let report = self.report;
        let mut seen = 0u8;
        let mut others = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let member = Member::from_key(&key);
            let path = ROOT.child(Step::Key(&key));
            let repeated = match member {
                Some(m) => {
                    let before = seen;
                    seen |= m.bit();
                    before & m.bit() != 0
                }
                None => others.contains(&key),
            };
            if repeated {
                report.duplicate(&path);
            }
            let phones_at = report.violations.len();
            let shape = map.next_value_seed(Walk {
                report: &mut *report,
                path: &path,
                phones: member == Some(Member::Phones) && !repeated,
            })?;
            match member {
                // Only the first occurrence of a member is checked.
                _ if repeated => {}
                Some(m) => check_member(report, m, &path, &shape, phones_at),
                None => {
                    if self.unknown == UnknownFields::Reject {
                        let detail =
                            "unknown field: the contract names only notify, name, email, phones and comment";
                        report.add(Field::Unknown, Code::UnknownField, &path, || {
                            detail.to_owned()
                        });
                    }
                    others.insert(key);
                }
            }
        }
        if seen & Member::Notify.bit() == 0 {
            let path = ROOT.child(Step::Key("notify"));
            report.add(Field::Notify, Code::Required, &path, || {
                "notify is required".to_owned()
            });
        }
        Ok(true)
    }
}

/// Checks the first value of a known member. `phones_at` is where its item violations begin.
pub(crate) fn check_member(
    report: &mut Report,
    member: Member,
    path: &Path<'_>,
    shape: &Shape<'_>,
    phones_at: usize,
) {
    match (member, shape) {
        (Member::Notify, Shape::Bool) => {}
        (Member::Notify, other) => report.wrong_type(Field::Notify, path, "a boolean", other),
        (Member::Name, Shape::Str(text)) => {
            report.max_length(Field::Name, path, text, MAX_NAME_CHARS);
        }
        (Member::Name, other) => report.wrong_type(Field::Name, path, "a string", other),
        (Member::Email, Shape::Null) => {}
        (Member::Email, Shape::Str(text)) => {
            if report.max_length(Field::Email, path, text, MAX_EMAIL_CHARS) {
                if let Err(why) = email_syntax(text) {
                    report.add(Field::Email, Code::Format, path, || {
                        format!("must be a plain email address (local@domain.tld): {why}")
                    });
                }
            }
        }
        (Member::Email, other) => report.wrong_type(Field::Email, path, "a string or null", other),
        (Member::Phones, Shape::Array(len)) => {
            if *len > MAX_PHONES {
                // Put it before the item violations, which the walk has already recorded.
                report.violations.insert(
                    phones_at,
                    Violation {
                        field: Field::Phones,
                        code: Code::MaxItems,
                        location: Location::Pointer(path.pointer()),
                        detail: format!("must have at most {MAX_PHONES} items, got {len}"),
                    },
                );
            }
        }
        (Member::Phones, other) => {
            report.wrong_type(Field::Phones, path, "an array of strings", other)
        }
        (Member::Comment, Shape::Null) => {}
        (Member::Comment, Shape::Str(text)) => {
            report.max_length(Field::Comment, path, text, MAX_COMMENT_CHARS);
        }
        (Member::Comment, other) => {
            report.wrong_type(Field::Comment, path, "a string or null", other)
        }
    }
}
