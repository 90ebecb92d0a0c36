//! The request contract of the update-contact route (`PATCH /companies/v2/rs/{companyId}/contacts/{contactId}`).
//!
//! Pure checks, no I/O and no panics on any input. Each check returns every problem of its stage
//! (gateway.md §2): stage 1 `Authorization`, stage 2 `X-Session-Token`, stage 3 `Content-Type`,
//! stage 5 the path parameters and the body.
//!
//! The body is checked in one pass by a serde visitor driven by `serde_json`'s deserializer: it
//! borrows strings where it can, finds duplicate keys at every level (a `serde_json::Value` would
//! silently keep the last one) and records violations as it goes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};

use email_address::{EmailAddress, Options as EmailOptions};
use http::header::{HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// What to do with body members the contract does not name (`validation.unknown_fields`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    #[default]
    Reject,
    Allow,
}

/// Metric label `field` (gateway.md §3): notify, name, email, phones, comment, companyId, contactId, document, unknown
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Notify,
    Name,
    Email,
    Phones,
    Comment,
    CompanyId,
    ContactId,
    Document,
    Unknown,
}

impl Field {
    pub const ALL: [Field; 9] = [
        Field::Notify,
        Field::Name,
        Field::Email,
        Field::Phones,
        Field::Comment,
        Field::CompanyId,
        Field::ContactId,
        Field::Document,
        Field::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Notify => "notify",
            Field::Name => "name",
            Field::Email => "email",
            Field::Phones => "phones",
            Field::Comment => "comment",
            Field::CompanyId => "companyId",
            Field::ContactId => "contactId",
            Field::Document => "document",
            Field::Unknown => "unknown",
        }
    }
}

/// Metric label `code`: required, type, max_length, max_items, format, integer, unknown_field, duplicate_key, syntax
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Required,
    Type,
    MaxLength,
    MaxItems,
    Format,
    Integer,
    UnknownField,
    DuplicateKey,
    Syntax,
}

impl Code {
    pub const ALL: [Code; 9] = [
        Code::Required,
        Code::Type,
        Code::MaxLength,
        Code::MaxItems,
        Code::Format,
        Code::Integer,
        Code::UnknownField,
        Code::DuplicateKey,
        Code::Syntax,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Required => "required",
            Code::Type => "type",
            Code::MaxLength => "max_length",
            Code::MaxItems => "max_items",
            Code::Format => "format",
            Code::Integer => "integer",
            Code::UnknownField => "unknown_field",
            Code::DuplicateKey => "duplicate_key",
            Code::Syntax => "syntax",
        }
    }
}

/// Where a violation is: an RFC 6901 pointer into the body (no leading `#`), a path parameter or a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Pointer(String),
    Parameter(&'static str),
    Header(&'static str),
}

/// One contract violation of the path or body (stage 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: Field,
    pub code: Code,
    pub location: Location,
    pub detail: String,
}

/// Most violations one answer lists in full. The rest are still counted, by field and code, for
/// the metrics and the answer's `detail`: a small body cannot make a large answer.
pub const MAX_LISTED: usize = 100;

/// Every violation of one request (stage 5), in order: the first `MAX_LISTED` in full, the rest as
/// counts. Reads as the slice of the listed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    listed: Vec<Violation>,
    unlisted: Vec<(Field, Code, u64)>,
}

impl Violations {
    pub fn push(&mut self, v: Violation) {
        let Violation {
            field,
            code,
            location,
            detail,
        } = v;
        self.push_with(field, code, || (location, detail));
    }

    /// Like `push`, but the location and detail are built only if the violation is listed.
    fn push_with(&mut self, field: Field, code: Code, build: impl FnOnce() -> (Location, String)) {
        if self.listed.len() < MAX_LISTED {
            let (location, detail) = build();
            self.listed.push(Violation {
                field,
                code,
                location,
                detail,
            });
        } else {
            self.count(field, code, 1);
        }
    }

    /// Puts `v` at `at` among the listed; a violation pushed past the limit becomes a count.
    fn insert(&mut self, at: usize, v: Violation) {
        self.listed.insert(at.min(self.listed.len()), v);
        if self.listed.len() > MAX_LISTED {
            if let Some(last) = self.listed.pop() {
                self.count(last.field, last.code, 1);
            }
        }
    }

    fn count(&mut self, field: Field, code: Code, n: u64) {
        match self
            .unlisted
            .iter_mut()
            .find(|(f, c, _)| *f == field && *c == code)
        {
            Some((_, _, count)) => *count += n,
            None => self.unlisted.push((field, code, n)),
        }
    }

    /// `other`'s violations after these.
    pub fn append(&mut self, other: Violations) {
        for v in other.listed {
            self.push(v);
        }
        for (field, code, n) in other.unlisted {
            self.count(field, code, n);
        }
    }

    /// How many there are, listed or not.
    pub fn total(&self) -> u64 {
        self.listed.len() as u64 + self.unlisted()
    }

    /// How many are only counted.
    pub fn unlisted(&self) -> u64 {
        self.unlisted.iter().map(|(_, _, n)| n).sum()
    }

    /// `(field, code, how many)` over all of them, for the metrics.
    pub fn counts(&self) -> impl Iterator<Item = (Field, Code, u64)> + '_ {
        self.listed
            .iter()
            .map(|v| (v.field, v.code, 1))
            .chain(self.unlisted.iter().copied())
    }
}

impl std::ops::Deref for Violations {
    type Target = [Violation];
    fn deref(&self) -> &[Violation] {
        &self.listed
    }
}

impl From<Vec<Violation>> for Violations {
    fn from(list: Vec<Violation>) -> Violations {
        let mut out = Violations::default();
        for v in list {
            out.push(v);
        }
        out
    }
}

impl IntoIterator for Violations {
    type Item = Violation;
    type IntoIter = std::vec::IntoIter<Violation>;
    /// The listed ones.
    fn into_iter(self) -> Self::IntoIter {
        self.listed.into_iter()
    }
}

/// One header problem (stages 1-3). `code` is a short snake_case word: missing, repeated, malformed, too_long, unsupported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderProblem {
    pub header: &'static str,
    pub code: &'static str,
    pub detail: String,
}

// ---------------------------------------------------------------------------------------------
// Limits of the contract (openapi.yaml).

const MAX_TOKEN_BYTES: usize = 4096;
const MAX_NAME_CHARS: usize = 250;
const MAX_EMAIL_CHARS: usize = 250;
const MAX_PHONES: usize = 5;
const MAX_PHONE_CHARS: usize = 50;
const MAX_COMMENT_CHARS: usize = 2500;
/// At most this many characters of a client's text are echoed in a detail.
const MAX_ECHO_CHARS: usize = 100;
/// Objects up to this many keys look for duplicates by a linear scan; larger ones use a hash set.
const LINEAR_KEYS: usize = 16;
/// The deepest nesting of arrays and objects a body may have, the body itself at level 1
/// ("deeper than 128" is refused). It also bounds the walk's recursion.
pub const MAX_NESTING: usize = 128;

// ---------------------------------------------------------------------------------------------
// Stages 1-3: headers.

const AUTHORIZATION_LABEL: &str = "Authorization";
const SESSION_TOKEN_LABEL: &str = "X-Session-Token";
const CONTENT_TYPE_LABEL: &str = "Content-Type";
const SESSION_TOKEN: HeaderName = HeaderName::from_static("x-session-token");

fn problem(
    header: &'static str,
    code: &'static str,
    detail: impl Into<String>,
) -> Vec<HeaderProblem> {
    vec![HeaderProblem {
        header,
        code,
        detail: detail.into(),
    }]
}

/// The value of a header that must appear exactly once.
fn exactly_one<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'a [u8], Vec<HeaderProblem>> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(problem(
            label,
            "missing",
            format!("the {label} header is required"),
        )),
        (Some(value), None) => Ok(value.as_bytes()),
        (Some(_), Some(_)) => Err(problem(
            label,
            "repeated",
            format!("the {label} header must appear exactly once"),
        )),
    }
}

/// Stage 1: exactly one `Authorization: Bearer <b64token>` (RFC 6750 §2.1). The value is a secret
/// and never appears in a detail.
pub fn check_authorization(headers: &HeaderMap) -> Result<(), Vec<HeaderProblem>> {
    let value = exactly_one(headers, &AUTHORIZATION, AUTHORIZATION_LABEL)?;
    bearer_token(value).map_err(|(code, detail)| problem(AUTHORIZATION_LABEL, code, detail))
}

fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// `"Bearer" 1*SP b64token`, the scheme in any case.
fn bearer_token(value: &[u8]) -> Result<(), (&'static str, String)> {
    let malformed = |why: &str| ("malformed", format!("must be `Bearer <token>`: {why}"));
    let rest = match value.split_at_checked(6) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer") => rest,
        _ => return Err(malformed("the scheme must be Bearer")),
    };
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let token = rest.get(spaces..).unwrap_or_default();
    if token.is_empty() {
        return Err(malformed("the token is missing"));
    }
    if spaces == 0 {
        return Err(malformed("the scheme must be followed by a space"));
    }
    // No length limit of its own: the contract sets none, and `max_header_bytes` bounds it.
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let mut rest = token.iter().copied().skip_while(|&b| is_b64token_char(b));
    if !token.first().copied().is_some_and(is_b64token_char) || !rest.all(|b| b == b'=') {
        return Err(malformed(
            "the token must be a b64token (letters, digits, - . _ ~ + /, then optional =)",
        ));
    }
    Ok(())
}

/// Stage 2: exactly one non-empty `X-Session-Token` of visible ASCII, at most 4096 bytes. The value
/// is a secret and never appears in a detail.
pub fn check_session_token(headers: &HeaderMap) -> Result<(), Vec<HeaderProblem>> {
    let value = exactly_one(headers, &SESSION_TOKEN, SESSION_TOKEN_LABEL)?;
    if value.is_empty() {
        // Present but empty: the header is there, its value breaks the rule.
        return Err(problem(
            SESSION_TOKEN_LABEL,
            "malformed",
            "must not be empty",
        ));
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(problem(
            SESSION_TOKEN_LABEL,
            "too_long",
            format!(
                "must be at most {MAX_TOKEN_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    if !all_visible_ascii(value) {
        return Err(problem(
            SESSION_TOKEN_LABEL,
            "malformed",
            "must be visible ASCII (0x21-0x7E) only",
        ));
    }
    Ok(())
}

/// Whether every byte is visible ASCII (0x21-0x7E). No early exit, so the compiler vectorises it.
pub fn all_visible_ascii(value: &[u8]) -> bool {
    value.chunks(32).all(|c| {
        c.iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
    })
}

/// Stage 3: `Content-Type: application/json` in any case, with RFC 9110 parameters; a `charset`
/// other than utf-8 is refused. Repeating the header with the very same value is tolerated.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), Vec<HeaderProblem>> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(first) = values.next() else {
        return Err(problem(
            CONTENT_TYPE_LABEL,
            "missing",
            "the Content-Type header is required (application/json)",
        ));
    };
    if values.any(|other| other != first) {
        return Err(problem(
            CONTENT_TYPE_LABEL,
            "repeated",
            "the Content-Type header appears more than once with different values",
        ));
    }
    media_type(first.as_bytes()).map_err(|(code, detail)| problem(CONTENT_TYPE_LABEL, code, detail))
}

/// Text of a header for a detail: lossy UTF-8, at most 100 characters, quoted and escaped.
fn echo(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut shown: String = text.chars().take(MAX_ECHO_CHARS).collect();
    let cut = shown.len() < text.len();
    shown = format!("{shown:?}");
    if cut {
        shown.push('…');
    }
    shown
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte cursor for the media-type grammar; it never indexes out of bounds.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.bump();
        }
    }

    fn token(&mut self) -> &'a [u8] {
        let n = self.rest.iter().take_while(|&&b| is_tchar(b)).count();
        let (token, rest) = self.rest.split_at_checked(n).unwrap_or((self.rest, &[]));
        self.rest = rest;
        token
    }

    /// A quoted-string (RFC 9110 §5.6.4) after its opening quote, unescaped.
    fn quoted(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match self.bump()? {
                b'"' => return Some(out),
                b'\\' => match self.bump()? {
                    b @ (b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => out.push(b),
                    _ => return None,
                },
                b @ (b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff) => out.push(b),
                _ => return None,
            }
        }
    }
}

/// `type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )` (RFC 9110 §8.3.1).
fn media_type(value: &[u8]) -> Result<(), (&'static str, String)> {
    let malformed = |why: &str| {
        (
            "malformed",
            format!("{} is not a valid media type: {why}", echo(value)),
        )
    };
    if value.eq_ignore_ascii_case(b"application/json") {
        // The usual spelling, without the grammar walk.
        return Ok(());
    }
    let trimmed = value.trim_ascii();
    let mut cur = Cursor { rest: trimmed };
    let kind = cur.token();
    if kind.is_empty() || !cur.eat(b'/') {
        return Err(malformed("expected type/subtype"));
    }
    let subtype = cur.token();
    if subtype.is_empty() {
        return Err(malformed("expected type/subtype"));
    }
    let mut charset_ok = true;
    loop {
        cur.skip_ows();
        if cur.peek().is_none() {
            break;
        }
        if !cur.eat(b';') {
            return Err(malformed("expected `;` before a parameter"));
        }
        cur.skip_ows();
        if matches!(cur.peek(), None | Some(b';')) {
            continue; // an empty parameter is allowed
        }
        let name = cur.token();
        if name.is_empty() || !cur.eat(b'=') {
            return Err(malformed("a parameter must be name=value"));
        }
        let param: Cow<'_, [u8]> = if cur.eat(b'"') {
            match cur.quoted() {
                Some(text) => Cow::Owned(text),
                None => return Err(malformed("bad quoted parameter value")),
            }
        } else {
            let text = cur.token();
            if text.is_empty() {
                return Err(malformed("a parameter must be name=value"));
            }
            Cow::Borrowed(text)
        };
        if name.eq_ignore_ascii_case(b"charset") && !param.eq_ignore_ascii_case(b"utf-8") {
            charset_ok = false;
        }
    }
    if !(kind.eq_ignore_ascii_case(b"application") && subtype.eq_ignore_ascii_case(b"json")) {
        return Err((
            "unsupported",
            format!(
                "the media type must be application/json, got {}",
                echo(value)
            ),
        ));
    }
    if !charset_ok {
        return Err((
            "unsupported",
            format!("the charset must be utf-8, got {}", echo(value)),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stage 5: path parameters.

/// Stage 5 (path): `companyId` and `contactId` must be plain decimal integers within i64.
///
/// Accepted: an optional `-` then one or more ASCII digits whose value fits in i64. Leading zeros
/// (`007`) and `-0` are plain decimal integers with a value in range, so they pass (the schema
/// constrains the value, not its spelling). Refused: `+1`, spaces, decimals, exponents, empty.
pub fn check_path_params(company_id: &str, contact_id: &str) -> Result<(), Violations> {
    let mut violations = Violations::default();
    for (value, field, name) in [
        (company_id, Field::CompanyId, "companyId"),
        (contact_id, Field::ContactId, "contactId"),
    ] {
        if !is_decimal_i64(value) {
            violations.push(Violation {
                field,
                code: Code::Integer,
                location: Location::Parameter(name),
                detail: format!(
                    "{name} must be a decimal integer from {} to {}",
                    i64::MIN,
                    i64::MAX
                ),
            });
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

fn is_decimal_i64(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    // `str::parse` alone would also take a leading `+`.
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && value.parse::<i64>().is_ok()
}

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
fn check_document<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    unknown: UnknownFields,
) -> Result<(), Violations> {
    // The walk refuses nesting beyond MAX_NESTING itself, before the stack can grow further.
    de.disable_recursion_limit();
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
struct Report {
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
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    step: Step<'a>,
}

#[derive(Clone, Copy)]
enum Step<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

static ROOT: Path<'static> = Path {
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
fn push_pointer_token(out: &mut String, key: &str) {
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
struct Keys<'de> {
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
struct KeySeed;

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
enum Shape<'de> {
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
struct Walk<'r, 'p> {
    report: &'r mut Report,
    path: &'p Path<'p>,
    phones: bool,
    /// How many arrays and objects hold the value walked.
    depth: usize,
}

impl Walk<'_, '_> {
    /// The depth of an array or object this walk is at; past MAX_NESTING, a syntax error.
    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_NESTING {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_NESTING} levels"
            )));
        }
        Ok(depth)
    }
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
        let depth = self.enter()?;
        let mut len = 0usize;
        loop {
            let path = self.path.child(Step::Index(len));
            let item = seq.next_element_seed(Walk {
                report: &mut *self.report,
                path: &path,
                phones: false,
                depth,
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
        let depth = self.enter()?;
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
                depth,
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
enum Member {
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
struct BodySeed<'r> {
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
            depth: 0,
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
            // The body object is level 1.
            let shape = map.next_value_seed(Walk {
                report: &mut *report,
                path: &path,
                phones: member == Some(Member::Phones) && !repeated,
                depth: 1,
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
fn check_member(
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

/// A plain addr-spec: no display name, no domain literal, and a dotted domain.
fn email_syntax(text: &str) -> Result<(), String> {
    if plain_email(text) {
        return Ok(());
    }
    email_syntax_full(text)
}

/// Longest local part, domain and domain label `email_address` 0.2 takes, in bytes.
const EMAIL_LOCAL_MAX_BYTES: usize = 64;
const EMAIL_DOMAIN_MAX_BYTES: usize = 254;
const EMAIL_LABEL_MAX_BYTES: usize = 63;

/// The usual shape, checked without the crate: an ASCII dot-atom local part, `@`, then at least two
/// dot-separated labels of letters, digits and inner hyphens. `true` means `email_syntax_full`
/// passes too; `false` only means "not this shape" and leaves the answer to it.
fn plain_email(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some(at) = plain_local_part(bytes) else {
        return false;
    };
    let domain = bytes.get(at + 1..).unwrap_or_default();
    at <= EMAIL_LOCAL_MAX_BYTES && domain.len() <= EMAIL_DOMAIN_MAX_BYTES && plain_domain(domain)
}

/// RFC 5322 `atext` in ASCII (what the crate takes there).
const fn is_ascii_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'/' | b'=' | b'?' | b'^'..=b'`' | b'{'..=b'~'
        )
}

/// Classes of bytes for the fast path, one load per byte.
const ATEXT: u8 = 1;
const ALNUM: u8 = 2;
static EMAIL_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if is_ascii_atext(b) {
            table[i] |= ATEXT;
        }
        if b.is_ascii_alphanumeric() {
            table[i] |= ALNUM;
        }
        i += 1;
    }
    table
};

/// Whether `b` is in `class` (`ATEXT` or `ALNUM`); never for a non-ASCII byte.
fn is_class(b: u8, class: u8) -> bool {
    EMAIL_BYTES[usize::from(b)] & class != 0
}

/// Where the `@` is, if all before it is non-empty runs of `atext` joined by single dots.
fn plain_local_part(text: &[u8]) -> Option<usize> {
    let mut after_dot = true; // a leading dot is as bad as a doubled one
    for (i, &b) in text.iter().enumerate() {
        if is_class(b, ATEXT) {
            after_dot = false;
        } else if b == b'.' && !after_dot {
            after_dot = true;
        } else {
            return (b == b'@' && !after_dot).then_some(i);
        }
    }
    None
}

/// Two or more labels of 1-63 letters, digits and hyphens, no hyphen at either end of a label.
fn plain_domain(part: &[u8]) -> bool {
    let mut labels = 1usize;
    let mut len = 0usize;
    let mut last = b'.';
    for &b in part {
        if is_class(b, ALNUM) || (b == b'-' && len > 0) {
            len += 1;
            if len > EMAIL_LABEL_MAX_BYTES {
                return false;
            }
        } else if b == b'.' && len > 0 && last != b'-' {
            labels += 1;
            len = 0;
        } else {
            return false;
        }
        last = b;
    }
    labels >= 2 && len > 0 && last != b'-'
}

/// The full check by the `email_address` crate; `email_syntax` only skips it for `plain_email`.
/// `format: email` is RFC 5321's mailbox: ASCII only (RFC 6531's UTF-8 addresses are
/// `idn-email`), and a domain of letters, digits and hyphens, which the crate alone does not hold
/// to.
fn email_syntax_full(text: &str) -> Result<(), String> {
    if !text.is_ascii() {
        return Err("the address must be ASCII".to_owned());
    }
    let options = EmailOptions::default()
        .without_display_text()
        .without_domain_literal();
    EmailAddress::parse_with_options(text, options).map_err(|e| e.to_string())?;
    // The crate still takes ` <a@b.c>` (an angle address with an empty display name), so check the
    // domain as the text really ends; that also refuses anything after it.
    let domain = text.rsplit_once('@').map_or("", |(_, domain)| domain);
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err("the domain must contain a dot".to_owned());
    }
    if domain.len() > EMAIL_DOMAIN_MAX_BYTES || !plain_domain(domain.as_bytes()) {
        return Err("the domain is not a valid host name".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // ----- helpers -----

    type Found = Vec<(Field, Code, String)>;

    fn found(result: Result<(), Violations>) -> Found {
        match result {
            Ok(()) => Vec::new(),
            Err(violations) => violations
                .into_iter()
                .map(|v| match v.location {
                    Location::Pointer(p) => (v.field, v.code, p),
                    Location::Parameter(p) | Location::Header(p) => (v.field, v.code, p.to_owned()),
                })
                .collect(),
        }
    }

    fn want(items: &[(Field, Code, &str)]) -> Found {
        items
            .iter()
            .map(|&(f, c, p)| (f, c, p.to_owned()))
            .collect()
    }

    fn body(text: &str) -> Found {
        found(check_body(text.as_bytes(), UnknownFields::Reject))
    }

    /// `{"notify":true` + members + `}`.
    fn with(members: &str) -> String {
        format!(r#"{{"notify":true{members}}}"#)
    }

    fn js(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    fn rep(s: &str, n: usize) -> String {
        s.repeat(n)
    }

    /// An address of exactly `len` characters (len >= 70): 64-char local part, dotted domain.
    fn email_of_len(len: usize) -> String {
        let local = "l".repeat(64);
        let rest = len - 64 - 1 - 4; // "@" and ".com"
        let count = (rest + 1).div_ceil(64); // labels of at most 63, dots between them
        let total = rest - (count - 1);
        let labels: Vec<String> = (0..count)
            .map(|i| "d".repeat(total / count + usize::from(i < total % count)))
            .collect();
        let e = format!("{local}@{}.com", labels.join("."));
        assert_eq!(e.chars().count(), len, "{e}");
        e
    }

    use Code as C;
    use Field as F;

    // ----- the listing limit -----

    #[test]
    fn past_the_limit_violations_are_counted_not_listed() {
        let phones = vec!["0"; 1000].join(",");
        let Err(v) = check_body(
            with(&format!(r#","phones":[{phones}],"x":1"#)).as_bytes(),
            UnknownFields::Reject,
        ) else {
            panic!("accepted");
        };
        assert_eq!(v.len(), MAX_LISTED);
        assert_eq!(v.total(), 1002);
        assert_eq!(v.unlisted(), 1002 - MAX_LISTED as u64);
        // Max items still comes first, then the items in order.
        assert_eq!((v[0].field, v[0].code), (F::Phones, C::MaxItems));
        assert_eq!(v[1].location, Location::Pointer("/phones/0".into()));
        assert_eq!(
            v[MAX_LISTED - 1].location,
            Location::Pointer("/phones/98".into())
        );
        let mut counts: Vec<_> = v.counts().collect();
        counts.sort_by_key(|&(f, c, _)| (f.as_str(), c.as_str()));
        let sum = |field, code| {
            counts
                .iter()
                .filter(|&&(f, c, _)| f == field && c == code)
                .map(|&(_, _, n)| n)
                .sum::<u64>()
        };
        assert_eq!(sum(F::Phones, C::Type), 1000);
        assert_eq!(sum(F::Phones, C::MaxItems), 1);
        assert_eq!(sum(F::Unknown, C::UnknownField), 1);

        // Appending keeps the order and the counts.
        let mut path = check_path_params("x", "1").unwrap_err();
        path.append(v);
        assert_eq!(path.len(), MAX_LISTED);
        assert_eq!(path.total(), 1003);
        assert_eq!(path[0].location, Location::Parameter("companyId"));
    }

    // ----- labels -----

    #[test]
    fn metric_labels_are_the_documented_sets() {
        let fields: Vec<_> = Field::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "notify",
                "name",
                "email",
                "phones",
                "comment",
                "companyId",
                "contactId",
                "document",
                "unknown"
            ]
        );
        let codes: Vec<_> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            codes,
            [
                "required",
                "type",
                "max_length",
                "max_items",
                "format",
                "integer",
                "unknown_field",
                "duplicate_key",
                "syntax"
            ]
        );
    }

    #[test]
    fn unknown_fields_config_values() {
        assert_eq!(
            serde_json::from_str::<UnknownFields>(r#""reject""#).unwrap(),
            UnknownFields::Reject
        );
        assert_eq!(
            serde_json::from_str::<UnknownFields>(r#""allow""#).unwrap(),
            UnknownFields::Allow
        );
        assert!(serde_json::from_str::<UnknownFields>(r#""Allow""#).is_err());
        assert_eq!(UnknownFields::default(), UnknownFields::Reject);
        assert_eq!(
            serde_json::to_string(&UnknownFields::Allow).unwrap(),
            r#""allow""#
        );
    }

    // ----- body: boundaries -----

    #[rustfmt::skip]
    #[test]
    fn body_table() {
        let ok: &[(Field, Code, &str)] = &[];
        let cases: Vec<(String, String, Found)> = vec![
            // the contract's example and minimal bodies
            (
                "example".into(),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../shared/contract/examples/update-contact.request.json"
                ))
                .into(),
                want(ok),
            ),
            ("notify true".into(), r#"{"notify":true}"#.into(), want(ok)),
            ("notify false".into(), r#" {"notify" : false} "#.into(), want(ok)),
            ("trailing whitespace".into(), "{\"notify\":true}\r\n\t ".into(), want(ok)),
            // name
            ("name 250".into(), with(&format!(r#","name":"{}""#, rep("a", 250))), want(ok)),
            ("name 251".into(), with(&format!(r#","name":"{}""#, rep("a", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
            ("name 250 é".into(), with(&format!(r#","name":"{}""#, rep("é", 250))), want(ok)),
            ("name 251 é".into(), with(&format!(r#","name":"{}""#, rep("é", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
            ("name 250 emoji".into(), with(&format!(r#","name":"{}""#, rep("😀", 250))), want(ok)),
            ("name 251 emoji".into(), with(&format!(r#","name":"{}""#, rep("😀", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
            ("name 250 \\u00e9".into(), with(&format!(r#","name":"{}""#, rep("\\u00e9", 250))), want(ok)),
            ("name 251 \\u00e9".into(), with(&format!(r#","name":"{}""#, rep("\\u00e9", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
            ("name 250 surrogate pairs".into(), with(&format!(r#","name":"{}""#, rep("\\ud83d\\ude00", 250))), want(ok)),
            ("name 251 surrogate pairs".into(), with(&format!(r#","name":"{}""#, rep("\\ud83d\\ude00", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
            ("name 250 mixed escapes".into(), with(&format!(r#","name":"{}{}""#, rep("\\n\\\"", 100), rep("x", 50))), want(ok)),
            ("name empty".into(), with(r#","name":"""#), want(ok)),
            ("name null".into(), with(r#","name":null"#), want(&[(F::Name, C::Type, "/name")])),
            ("name number".into(), with(r#","name":1"#), want(&[(F::Name, C::Type, "/name")])),
            ("name array".into(), with(r#","name":["a"]"#), want(&[(F::Name, C::Type, "/name")])),
            ("name object".into(), with(r#","name":{}"#), want(&[(F::Name, C::Type, "/name")])),
            ("name bool".into(), with(r#","name":false"#), want(&[(F::Name, C::Type, "/name")])),
            // email
            ("email 250".into(), with(&format!(r#","email":"{}""#, email_of_len(250))), want(ok)),
            ("email 251".into(), with(&format!(r#","email":"{}""#, email_of_len(251))), want(&[(F::Email, C::MaxLength, "/email")])),
            ("email plain".into(), with(r#","email":"first.last+tag@sub.example.co""#), want(ok)),
            // format: email is RFC 5321's ASCII mailbox; UTF-8 addresses are idn-email.
            ("email unicode".into(), with(r#","email":"josé@bücher.de""#), want(&[(F::Email, C::Format, "/email")])),
            ("email null".into(), with(r#","email":null"#), want(ok)),
            ("email no dot".into(), with(r#","email":"a@localhost""#), want(&[(F::Email, C::Format, "/email")])),
            ("email trailing dot".into(), with(r#","email":"a@b.com.""#), want(&[(F::Email, C::Format, "/email")])),
            ("email leading dot".into(), with(r#","email":"a@.b.com""#), want(&[(F::Email, C::Format, "/email")])),
            ("email display name".into(), with(r#","email":"John <a@b.com>""#), want(&[(F::Email, C::Format, "/email")])),
            ("email angle".into(), with(r#","email":"<a@b.com>""#), want(&[(F::Email, C::Format, "/email")])),
            ("email empty display".into(), with(r#","email":" <a@b.com>""#), want(&[(F::Email, C::Format, "/email")])),
            ("email domain literal".into(), with(r#","email":"a@[1.2.3.4]""#), want(&[(F::Email, C::Format, "/email")])),
            ("email no at".into(), with(r#","email":"ab.com""#), want(&[(F::Email, C::Format, "/email")])),
            ("email empty".into(), with(r#","email":"""#), want(&[(F::Email, C::Format, "/email")])),
            ("email space".into(), with(r#","email":"a b@c.com""#), want(&[(F::Email, C::Format, "/email")])),
            ("email trailing space".into(), with(r#","email":"a@b.com ""#), want(&[(F::Email, C::Format, "/email")])),
            ("email number".into(), with(r#","email":5"#), want(&[(F::Email, C::Type, "/email")])),
            ("email object".into(), with(r#","email":{"a":1}"#), want(&[(F::Email, C::Type, "/email")])),
            // phones
            ("phones empty".into(), with(r#","phones":[]"#), want(ok)),
            ("phones 5".into(), with(r#","phones":["1","2","3","4","5"]"#), want(ok)),
            ("phones 6".into(), with(r#","phones":["1","2","3","4","5","6"]"#), want(&[(F::Phones, C::MaxItems, "/phones")])),
            ("phone 50".into(), with(&format!(r#","phones":["1","{}"]"#, rep("9", 50))), want(ok)),
            ("phone 51".into(), with(&format!(r#","phones":["1","{}"]"#, rep("9", 51))), want(&[(F::Phones, C::MaxLength, "/phones/1")])),
            ("phone 50 emoji".into(), with(&format!(r#","phones":["{}"]"#, rep("😀", 50))), want(ok)),
            ("phone 51 escaped".into(), with(&format!(r#","phones":["{}"]"#, rep("\\u0031", 51))), want(&[(F::Phones, C::MaxLength, "/phones/0")])),
            ("phone number".into(), with(r#","phones":[1,"2",null]"#), want(&[(F::Phones, C::Type, "/phones/0"), (F::Phones, C::Type, "/phones/2")])),
            (
                "phones 7 with bad items".into(),
                with(&format!(r#","phones":["1",{{}},"3","4","5","6","{}"]"#, rep("x", 51))),
                want(&[(F::Phones, C::MaxItems, "/phones"), (F::Phones, C::Type, "/phones/1"), (F::Phones, C::MaxLength, "/phones/6")]),
            ),
            ("phones null".into(), with(r#","phones":null"#), want(&[(F::Phones, C::Type, "/phones")])),
            ("phones string".into(), with(r#","phones":"123""#), want(&[(F::Phones, C::Type, "/phones")])),
            ("phones object".into(), with(r#","phones":{"0":"1"}"#), want(&[(F::Phones, C::Type, "/phones")])),
            // comment
            ("comment 2500".into(), with(&format!(r#","comment":"{}""#, rep("c", 2500))), want(ok)),
            ("comment 2501".into(), with(&format!(r#","comment":"{}""#, rep("c", 2501))), want(&[(F::Comment, C::MaxLength, "/comment")])),
            ("comment 2500 emoji".into(), with(&format!(r#","comment":"{}""#, rep("😀", 2500))), want(ok)),
            ("comment 2501 é".into(), with(&format!(r#","comment":"{}""#, rep("é", 2501))), want(&[(F::Comment, C::MaxLength, "/comment")])),
            ("comment null".into(), with(r#","comment":null"#), want(ok)),
            ("comment bool".into(), with(r#","comment":true"#), want(&[(F::Comment, C::Type, "/comment")])),
            ("comment array".into(), with(r#","comment":[]"#), want(&[(F::Comment, C::Type, "/comment")])),
            // notify
            ("notify absent".into(), r#"{}"#.into(), want(&[(F::Notify, C::Required, "/notify")])),
            ("notify absent with others".into(), r#"{"name":"x"}"#.into(), want(&[(F::Notify, C::Required, "/notify")])),
            ("notify null".into(), r#"{"notify":null}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
            ("notify string".into(), r#"{"notify":"true"}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
            ("notify number".into(), r#"{"notify":1}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
            ("notify object".into(), r#"{"notify":{}}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
            // all absent optional members
            ("all null-able null".into(), with(r#","email":null,"comment":null"#), want(ok)),
            // not an object
            ("array".into(), "[]".into(), want(&[(F::Document, C::Type, "")])),
            ("array of objects".into(), r#"[{"notify":true}]"#.into(), want(&[(F::Document, C::Type, "")])),
            ("number".into(), "1".into(), want(&[(F::Document, C::Type, "")])),
            ("null".into(), "null".into(), want(&[(F::Document, C::Type, "")])),
            ("string".into(), r#""x""#.into(), want(&[(F::Document, C::Type, "")])),
            ("escaped string".into(), r#""\n""#.into(), want(&[(F::Document, C::Type, "")])),
            ("bool".into(), "true".into(), want(&[(F::Document, C::Type, "")])),
            // syntax
            ("empty".into(), "".into(), want(&[(F::Document, C::Syntax, "")])),
            ("whitespace only".into(), " \n ".into(), want(&[(F::Document, C::Syntax, "")])),
            ("trailing data".into(), r#"{"notify":true} x"#.into(), want(&[(F::Document, C::Syntax, "")])),
            ("two objects".into(), r#"{"notify":true}{"notify":true}"#.into(), want(&[(F::Document, C::Syntax, "")])),
            ("trailing comma".into(), r#"{"notify":true,}"#.into(), want(&[(F::Document, C::Syntax, "")])),
            ("unterminated".into(), r#"{"notify":true"#.into(), want(&[(F::Document, C::Syntax, "")])),
            ("bom".into(), "\u{feff}{\"notify\":true}".into(), want(&[(F::Document, C::Syntax, "")])),
            ("lone surrogate".into(), with(r#","name":"\ud800""#), want(&[(F::Document, C::Syntax, "")])),
            ("raw control char".into(), with(",\"name\":\"a\u{1}b\""), want(&[(F::Document, C::Syntax, "")])),
            ("single quotes".into(), "{'notify':true}".into(), want(&[(F::Document, C::Syntax, "")])),
            ("syntax error wins over other problems".into(), r#"{"name":1,"x":2,"#.into(), want(&[(F::Document, C::Syntax, "")])),
            ("trailing data after array".into(), "[] x".into(), want(&[(F::Document, C::Syntax, "")])),
            // Out of f64's range: serde_json (without arbitrary_precision) refuses it while parsing.
            ("huge number".into(), with(r#","x":1e400"#), want(&[(F::Document, C::Syntax, "")])),
            // unknown fields and their pointers
            ("unknown companyId".into(), with(r#","companyId":1"#), want(&[(F::Unknown, C::UnknownField, "/companyId")])),
            ("unknown escaped".into(), with(r#","a/b~c":1"#), want(&[(F::Unknown, C::UnknownField, "/a~1b~0c")])),
            ("unknown ~1 literal".into(), with(r#","~1":1"#), want(&[(F::Unknown, C::UnknownField, "/~01")])),
            ("unknown empty name".into(), with(r#","":1"#), want(&[(F::Unknown, C::UnknownField, "/")])),
            ("unknown case".into(), with(r#","Notify":true"#), want(&[(F::Unknown, C::UnknownField, "/Notify")])),
            ("unknown two".into(), with(r#","x":1,"y":{"z":[]}"#), want(&[(F::Unknown, C::UnknownField, "/x"), (F::Unknown, C::UnknownField, "/y")])),
            // duplicate keys
            ("dup notify".into(), r#"{"notify":true,"notify":false}"#.into(), want(&[(F::Document, C::DuplicateKey, "")])),
            ("dup notify escaped".into(), r#"{"notify":true,"\u006eotify":"x"}"#.into(), want(&[(F::Document, C::DuplicateKey, "")])),
            ("dup name second value not checked".into(), with(r#","name":"a","name":5"#), want(&[(F::Document, C::DuplicateKey, "")])),
            ("dup unknown".into(), with(r#","x":1,"x":2"#), want(&[(F::Unknown, C::UnknownField, "/x"), (F::Document, C::DuplicateKey, "")])),
            ("dup nested in unknown".into(), with(r#","x":{"a":1,"b":{"a":1},"a":2}"#), want(&[(F::Document, C::DuplicateKey, ""), (F::Unknown, C::UnknownField, "/x")])),
            ("dup in array".into(), with(r#","x":[1,{"k":1,"k":2}]"#), want(&[(F::Document, C::DuplicateKey, ""), (F::Unknown, C::UnknownField, "/x")])),
            ("dup in phones item".into(), with(r#","phones":[{"k":1,"k":2}]"#), want(&[(F::Document, C::DuplicateKey, ""), (F::Phones, C::Type, "/phones/0")])),
            ("dup in top-level array".into(), r#"[{"k":1,"k":2}]"#.into(), want(&[(F::Document, C::Type, ""), (F::Document, C::DuplicateKey, "")])),
            ("same key in sibling objects".into(), with(r#","x":[{"k":1},{"k":2}]"#), want(&[(F::Unknown, C::UnknownField, "/x")])),
            (
                "dup reported once".into(),
                r#"{"notify":true,"notify":true,"name":"a","name":"b"}"#.into(),
                want(&[(F::Document, C::DuplicateKey, "")]),
            ),
            // every violation from one body
            (
                "all gathered".into(),
                format!(
                    r#"{{"name":"{}","email":"nope","phones":["1","{}"],"comment":7,"companyId":3}}"#,
                    rep("n", 251),
                    rep("p", 51)
                ),
                want(&[
                    (F::Name, C::MaxLength, "/name"),
                    (F::Email, C::Format, "/email"),
                    (F::Phones, C::MaxLength, "/phones/1"),
                    (F::Comment, C::Type, "/comment"),
                    (F::Unknown, C::UnknownField, "/companyId"),
                    (F::Notify, C::Required, "/notify"),
                ]),
            ),
        ];
        for (name, text, expected) in cases {
            assert_eq!(body(&text), expected, "case {name:?}: {}", text.chars().take(200).collect::<String>());
        }
    }

    #[test]
    fn allow_lets_unknown_fields_pass() {
        let text = with(r#","companyId":1,"a/b":{"deep":[1,2,{"x":null}]}"#);
        assert_eq!(check_body(text.as_bytes(), UnknownFields::Allow), Ok(()));
        // ...but duplicates inside them are still refused.
        let text = with(r#","x":{"a":{"b":1,"b":2}}"#);
        let violations = check_body(text.as_bytes(), UnknownFields::Allow).unwrap_err();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].code, Code::DuplicateKey);
        assert_eq!(violations[0].location, Location::Pointer(String::new()));
        assert!(
            violations[0].detail.contains("\"/x/a/b\""),
            "{}",
            violations[0].detail
        );
        // and known members are checked as usual
        let text = r#"{"name":null,"x":1}"#;
        assert_eq!(
            found(check_body(text.as_bytes(), UnknownFields::Allow)),
            want(&[
                (F::Name, C::Type, "/name"),
                (F::Notify, C::Required, "/notify")
            ])
        );
    }

    #[test]
    fn duplicate_detail_names_the_pointer() {
        for (text, pointer) in [
            (r#"{"notify":true,"notify":true}"#, "/notify"),
            (r#"{"notify":true,"x":[0,{"a~/":1,"a~/":2}]}"#, "/x/1/a~0~1"),
            (r#"{"notify":true,"x":{"a":1,"\u0061":2}}"#, "/x/a"),
        ] {
            let violations = check_body(text.as_bytes(), UnknownFields::Allow).unwrap_err();
            let dup: Vec<_> = violations
                .iter()
                .filter(|v| v.code == Code::DuplicateKey)
                .collect();
            assert_eq!(dup.len(), 1, "{text}");
            assert_eq!(dup[0].field, Field::Document);
            assert!(
                dup[0].detail.contains(&format!("{pointer:?}")),
                "{text}: {}",
                dup[0].detail
            );
        }
    }

    #[test]
    fn large_objects_use_the_hash_set() {
        // 10k distinct keys, then a duplicate of the first one at the very end.
        let mut text = String::from(r#"{"notify":true,"x":{"#);
        for i in 0..10_000 {
            let _ = write!(text, r#""k{i}":{i},"#);
        }
        let unique = format!("{}}}}}", text.trim_end_matches(','));
        assert_eq!(check_body(unique.as_bytes(), UnknownFields::Allow), Ok(()));
        let dup = format!("{text}\"k0\":1}}}}");
        let violations = check_body(dup.as_bytes(), UnknownFields::Allow).unwrap_err();
        assert_eq!(violations.len(), 1);
        assert!(
            violations[0].detail.contains("\"/x/k0\""),
            "{}",
            violations[0].detail
        );
        // a duplicate among the first 16 and among many, at the top level
        let mut top = String::from(r#"{"notify":true"#);
        for i in 0..40 {
            let _ = write!(top, r#","u{i}":0"#);
        }
        top.push_str(r#","u39":1,"u3":2}"#);
        let violations = check_body(top.as_bytes(), UnknownFields::Allow).unwrap_err();
        assert_eq!(
            found(Err(violations)),
            want(&[(F::Document, C::DuplicateKey, "")])
        );
    }

    #[test]
    fn syntax_detail_names_line_and_column() {
        let violations = check_body(b"{\n  \"notify\": x\n}", UnknownFields::Reject).unwrap_err();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].code, Code::Syntax);
        assert!(
            violations[0].detail.contains("line 2 column 13"),
            "{}",
            violations[0].detail
        );
    }

    #[test]
    fn invalid_utf8_is_a_syntax_error() {
        for bytes in [
            &b"{\"notify\":true,\"name\":\"\xff\"}"[..],
            b"{\"notify\":true,\"n\xc3\":1}",
            b"{\"notify\":true,\"x\":[\"\xed\xa0\x80\"]}", // an encoded surrogate
            b"{\"notify\":true,\"x\":{\"y\":\"ok\xc0\xaf\"}}", // overlong
            b"\xff",
            b"{\"notify\":true}\xff",
        ] {
            for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
                assert_eq!(
                    found(check_body(bytes, unknown)),
                    want(&[(F::Document, C::Syntax, "")]),
                    "{bytes:?}"
                );
            }
        }
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_crash() {
        let arrays = "[".repeat(100_000);
        let objects = r#"{"a":"#.repeat(100_000);
        let in_member = format!(r#"{{"notify":true,"x":{}"#, "[".repeat(100_000));
        let in_phones = format!(r#"{{"notify":true,"phones":{}"#, "[".repeat(100_000));
        for text in [arrays, objects, in_member, in_phones] {
            for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
                assert_eq!(
                    found(check_body(text.as_bytes(), unknown)),
                    want(&[(F::Document, C::Syntax, "")])
                );
            }
        }
        // A nesting well inside the limit is fine.
        let ok = format!(
            r#"{{"notify":true,"x":{}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(check_body(ok.as_bytes(), UnknownFields::Allow), Ok(()));
    }

    #[test]
    fn nesting_of_exactly_128_passes_and_129_is_a_syntax_error() {
        // The body object is level 1: `levels - 1` arrays, or objects, inside it.
        let arrays = |levels: usize| {
            format!(
                r#"{{"notify":true,"x":{}{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        let objects = |levels: usize| {
            format!(
                r#"{{"notify":true,"x":{}1{}}}"#,
                r#"{"a":"#.repeat(levels - 1),
                "}".repeat(levels - 1)
            )
        };
        for (name, text) in [
            ("arrays", &arrays as &dyn Fn(usize) -> String),
            ("objects", &objects),
        ] {
            let at = text(MAX_NESTING);
            assert_eq!(
                found(check_body(at.as_bytes(), UnknownFields::Allow)),
                want(&[]),
                "{name} at {MAX_NESTING}"
            );
            let beyond = text(MAX_NESTING + 1);
            assert_eq!(
                found(check_body(beyond.as_bytes(), UnknownFields::Allow)),
                want(&[(F::Document, C::Syntax, "")]),
                "{name} beyond {MAX_NESTING}"
            );
        }
        // A top-level array counts from 1 as well.
        let top = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let type_only = want(&[(F::Document, C::Type, "")]);
        assert_eq!(
            found(check_body(
                top(MAX_NESTING).as_bytes(),
                UnknownFields::Allow
            )),
            type_only
        );
        assert_eq!(
            found(check_body(
                top(MAX_NESTING + 1).as_bytes(),
                UnknownFields::Allow
            )),
            want(&[(F::Document, C::Syntax, "")])
        );
    }

    #[test]
    fn details_do_not_echo_long_values() {
        let text = with(&format!(
            r#","name":{},"comment":{},"phones":[{}],"email":{}"#,
            js(&rep("N", 300)),
            js(&rep("C", 3000)),
            js(&rep("P", 60)),
            js(&format!("{}@x", rep("E", 40)))
        ));
        let violations = check_body(text.as_bytes(), UnknownFields::Reject).unwrap_err();
        assert_eq!(violations.len(), 4);
        for v in violations.iter() {
            assert!(v.detail.len() < 150, "{v:?}");
            for long in ["NNNNNNNNNN", "CCCCCCCCCC", "PPPPPPPPPP", "EEEEEEEEEE"] {
                assert!(!v.detail.contains(long), "{v:?}");
            }
        }
        assert!(violations[0]
            .detail
            .contains("at most 250 characters, got 300"));
    }

    // ----- fast paths -----

    mod fast_paths {
        use super::super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::{select, Index};

        /// Characters that break or bend an address, put into near-valid ones.
        const ODD: &[&str] = &[
            ".", "..", "-", "@", "+", "_", "\"", " ", " <", "<", ">", "\\", "[", "]", "(", ")",
            ",", ":", ";", "!", "~", "'", "/", "=", "?", "`", "{", "}", "\t", "\n", "\u{0}",
            "\u{7f}", "é", "ü", "ß", "😀", "ǅ", "٣", "\u{a0}", "\u{200b}", "İ", "A", "9",
        ];

        fn odd() -> impl Strategy<Value = String> {
            select(ODD).prop_map(str::to_owned)
        }

        /// Up to two odd pieces put in at random places.
        fn odd_inserts() -> impl Strategy<Value = Vec<(Index, String)>> {
            prop_oneof![2 => Just(Vec::new()), 1 => vec((any::<Index>(), odd()), 1..=2)]
        }

        fn insert_all(mut text: String, inserts: Vec<(Index, String)>) -> String {
            for (at, piece) in inserts {
                let bounds: Vec<usize> = text
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([text.len()])
                    .collect();
                text.insert_str(bounds[at.index(bounds.len())], &piece);
            }
            text
        }

        /// Local parts around the rules: dots anywhere, quotes, lengths around 64.
        fn local() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}(\\.[a-zA-Z0-9_+-]{1,6}){0,2}",
                3 => "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~.-]{0,12}",
                1 => (60usize..=66, "[a-z.]{0,2}").prop_map(|(n, tail)| format!("{}{tail}", "l".repeat(n))),
                1 => "\"[a-z @.\\\\\"]{0,6}\"",
                1 => "[a-zé😀 .]{0,6}",
            ]
        }

        /// Labels around the rules: hyphens at the ends, empty, lengths around 63.
        fn label() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => "[a-z0-9]([a-zA-Z0-9-]{0,6}[a-z0-9])?",
                2 => "[a-zA-Z0-9-]{0,8}",
                2 => (61usize..=65).prop_map(|n| "d".repeat(n)),
                1 => "[a-zü_!-]{1,4}",
            ]
        }

        /// `local@label.label...` (or any text), then maybe odd pieces put in.
        fn near_email() -> impl Strategy<Value = String> {
            // domains around the 254-byte limit, in labels of at most 63
            let long = (248usize..=260).prop_map(|len| {
                let count = (len + 1).div_ceil(64);
                let letters = len - (count - 1);
                (0..count)
                    .map(|i| "d".repeat(letters / count + usize::from(i < letters % count)))
                    .collect::<Vec<_>>()
            });
            let labels = prop_oneof![4 => vec(label(), 1..=4), 1 => vec(label(), 0..=6), 1 => long];
            let ending = prop_oneof![4 => Just(""), 1 => Just("."), 1 => Just("-")];
            let shaped = (local(), labels, ending)
                .prop_map(|(local, labels, end)| format!("{local}@{}{end}", labels.join(".")));
            let soup = vec(prop_oneof![3 => "[a-z0-9]{1,8}", 2 => odd()], 0..12)
                .prop_map(|pieces| pieces.concat());
            (
                prop_oneof![8 => shaped, 1 => soup, 1 => any::<String>()],
                odd_inserts(),
            )
                .prop_map(|(text, inserts)| insert_all(text, inserts))
        }

        /// Addresses of the common shape: the fast path must take all of them.
        fn common_email() -> impl Strategy<Value = String> {
            (
                "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-zA-Z0-9_+-]{1,10}){0,3}",
                vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 2..=4),
            )
                .prop_map(|(local, labels)| format!("{local}@{}", labels.join(".")))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn email_fast_path_agrees_with_the_crate(text in near_email()) {
                let full = email_syntax_full(&text);
                if plain_email(&text) {
                    prop_assert_eq!(&full, &Ok(()), "{:?}", text);
                }
                prop_assert_eq!(email_syntax(&text), full, "{:?}", text);
            }

            #[test]
            fn email_fast_path_takes_the_common_shape(text in common_email()) {
                prop_assert!(plain_email(&text), "{:?}", text);
                prop_assert_eq!(email_syntax_full(&text), Ok(()), "{:?}", text);
            }
        }

        #[test]
        fn email_is_rfc_5321_ascii_with_a_host_name_domain() {
            for bad in [
                "用户@example.com",
                "user@例子.广告",
                "josé@example.com",
                "a@b_c.de",
                "a@exa mple.com",
            ] {
                assert!(email_syntax(bad).is_err(), "{bad}");
            }
            for good in [
                "\"john doe\"@example.com",
                "\"a@b\"@example.com",
                "first.last+tag@sub.example-host.co",
            ] {
                assert_eq!(email_syntax(good), Ok(()), "{good}");
            }
        }

        #[test]
        fn email_byte_classes_match_the_crate() {
            for b in 0..=u8::MAX {
                let one = char::from(b).to_string();
                let atext = b.is_ascii() && EmailAddress::is_valid_local_part(&one);
                let alnum = b.is_ascii() && EmailAddress::is_valid_domain(&one);
                assert_eq!(is_class(b, ATEXT), atext, "{b:#x}");
                assert_eq!(is_class(b, ALNUM), alnum, "{b:#x}");
            }
        }

        #[test]
        fn email_fast_path_limits_are_the_crate_limits() {
            let label63 = "d".repeat(63);
            let cases = [
                format!("{}@b.co", "l".repeat(64)),
                format!("{}@b.co", "l".repeat(65)),
                format!("a@{label63}.co"),
                format!("a@{}.co", "d".repeat(64)),
                // domains of 254 and 255 bytes
                format!("a@{label63}.{label63}.{label63}.{}", "d".repeat(62)),
                format!("a@{label63}.{label63}.{label63}.{label63}"),
                "a@b.c".to_owned(),
                "a@b".to_owned(),
                "a.b@c-d.e".to_owned(),
                "a@-b.c".to_owned(),
                "a@b-.c".to_owned(),
                "a..b@c.d".to_owned(),
                ".a@c.d".to_owned(),
                "a.@c.d".to_owned(),
                "a@b..c".to_owned(),
                "a@b@c.d".to_owned(),
                "@b.c".to_owned(),
            ];
            let taken: Vec<bool> = cases.iter().map(|t| plain_email(t)).collect();
            assert_eq!(
                taken,
                [
                    true, false, true, false, true, false, true, false, true, false, false, false,
                    false, false, false, false, false
                ]
            );
            for text in &cases {
                let full = email_syntax_full(text);
                if plain_email(text) {
                    assert_eq!(full, Ok(()), "{text}");
                }
                assert_eq!(email_syntax(text), full, "{text}");
            }
        }

        /// JSON-ish text: values nested a few levels, keys from a small set (so duplicates happen),
        /// strings plain or escaped, lone surrogates and odd bytes now and then.
        fn json_value() -> impl Strategy<Value = String> {
            let string = prop_oneof![
                3 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
                1 => "\"([a-zé😀 @.]|\\\\u00e9|\\\\ud83d\\\\ude00|\\\\ud800|\\\\udc00|\\\\n|\\\\\"|\\\\u12|\\\\x){0,6}\"",
                1 => Just("\"contact@example.com\"".to_owned()),
            ];
            let leaf = prop_oneof![
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("false".to_owned()),
                "-?[0-9]{1,3}(\\.[0-9]{1,2})?([eE][+-]?[0-9]{1,3})?",
                string.clone(),
            ];
            let key = prop_oneof![
                select(
                    &[
                        "notify",
                        "name",
                        "email",
                        "phones",
                        "comment",
                        "x",
                        "a/b~c",
                        "\\u006eotify"
                    ][..]
                )
                .prop_map(|k| format!("\"{k}\"")),
                string,
            ];
            leaf.prop_recursive(4, 32, 6, move |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(","))),
                    vec((key.clone(), inner), 0..7).prop_map(|members| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(k, v)| format!("{k} : {v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
                ]
            })
        }

        fn json_text() -> impl Strategy<Value = String> {
            (json_value(), odd_inserts()).prop_map(|(text, inserts)| insert_all(text, inserts))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn str_and_slice_readers_agree(text in json_text()) {
                for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
                    let by_str = check_document(serde_json::Deserializer::from_str(&text), unknown);
                    let by_slice =
                        check_document(serde_json::Deserializer::from_slice(text.as_bytes()), unknown);
                    prop_assert_eq!(&by_str, &by_slice, "{}", text);
                    prop_assert_eq!(check_body(text.as_bytes(), unknown), by_slice, "{}", text);
                }
            }
        }
    }

    // ----- path parameters -----

    #[rustfmt::skip]
    #[test]
    fn path_params_table() {
        let max_plus_one = (i64::MAX as i128 + 1).to_string();
        let min_minus_one = (i64::MIN as i128 - 1).to_string();
        let min = i64::MIN.to_string();
        let max = i64::MAX.to_string();
        let good = ["1", "-1", "0", "-0", "007", min.as_str(), max.as_str(), "00000000000000000000000000001"];
        let bad = [
            "", "-", "+1", "1.0", "1e3", " 1", "1 ", "abc", "--1", "0x1", "1_000", "١", max_plus_one.as_str(), min_minus_one.as_str(),
            "99999999999999999999999999999",
        ];
        for id in good {
            assert_eq!(check_path_params(id, id), Ok(()), "{id:?}");
        }
        for id in bad {
            assert_eq!(
                found(check_path_params(id, "1")),
                want(&[(F::CompanyId, C::Integer, "companyId")]),
                "{id:?}"
            );
            assert_eq!(
                found(check_path_params("1", id)),
                want(&[(F::ContactId, C::Integer, "contactId")]),
                "{id:?}"
            );
        }
        let both = check_path_params("x", "y").unwrap_err();
        assert_eq!(both[0].location, Location::Parameter("companyId"));
        assert_eq!(both[1].location, Location::Parameter("contactId"));
    }

    // ----- headers -----

    fn headers(name: &str, values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("x-other", HeaderValue::from_static("1"));
        for value in values {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn codes(result: Result<(), Vec<HeaderProblem>>, header: &str) -> Vec<&'static str> {
        match result {
            Ok(()) => Vec::new(),
            Err(problems) => problems
                .into_iter()
                .map(|p| {
                    assert_eq!(p.header, header);
                    p.code
                })
                .collect(),
        }
    }

    #[rustfmt::skip]
    #[test]
    fn authorization_table() {
        let t4096 = format!("Bearer {}", "A".repeat(4096));
        let t4097 = format!("Bearer {}", "A".repeat(4097));
        let t4096_pad = format!("Bearer {}==", "A".repeat(4094));
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"Bearer SECRETtoken"], &[]),
            (&[b"bearer SECRETtoken"], &[]),
            (&[b"BEARER SECRETtoken"], &[]),
            (&[b"bEaReR SECRETtoken"], &[]),
            (&[b"Bearer    SECRETtoken"], &[]),
            (&[b"Bearer aZ09-._~+/SECRET=="], &[]),
            (&[b"Bearer SECRET="], &[]),
            (&[b"Bearer e30.e30.SECRET"], &[]),
            (&[t4096.as_bytes()], &[]),
            (&[t4096_pad.as_bytes()], &[]),
            (&[], &["missing"]),
            (&[b"Bearer SECRETtoken", b"Bearer SECRETtoken"], &["repeated"]),
            (&[b"Bearer SECRETtoken", b"Bearer other"], &["repeated"]),
            (&[t4097.as_bytes()], &[]),
            (&[b""], &["malformed"]),
            (&[b"Basic SECRETtoken"], &["malformed"]),
            (&[b"Bearer"], &["malformed"]),
            (&[b"Bearer "], &["malformed"]),
            (&[b"Bearer    "], &["malformed"]),
            (&[b"Bearer\tSECRETtoken"], &["malformed"]),
            (&[b"Bearer \tSECRETtoken"], &["malformed"]),
            (&[b"BearerSECRETtoken"], &["malformed"]),
            (&[b"Bearer: SECRETtoken"], &["malformed"]),
            (&[b" Bearer SECRETtoken"], &["malformed"]),
            (&[b"Bearer SECRETtoken "], &["malformed"]),
            (&[b"Bearer SECRET token"], &["malformed"]),
            (&[b"Bearer SECRET=token"], &["malformed"]),
            (&[b"Bearer =SECRETtoken"], &["malformed"]),
            (&[b"Bearer =="], &["malformed"]),
            (&[b"Bearer SECRET$token"], &["malformed"]),
            (&[b"Bearer SECRET,token"], &["malformed"]),
            (&[b"Bearer \"SECRETtoken\""], &["malformed"]),
            (&[b"Bearer SECRET\xfftoken"], &["malformed"]),
            (&[b"Bearer SECRET\xc3\xa9token"], &["malformed"]),
            (&[b"B\xc3\xa9arer SECRETtoken"], &["malformed"]),
        ];
        for &(values, expected) in cases {
            let result = check_authorization(&headers("authorization", values));
            if let Err(problems) = &result {
                for p in problems {
                    assert!(!p.detail.contains("SECRET"), "{p:?}");
                    assert!(!p.detail.contains("AAAA"), "{p:?}");
                }
            }
            assert_eq!(codes(result, "Authorization"), expected, "{values:?}");
        }
    }

    #[rustfmt::skip]
    #[test]
    fn session_token_table() {
        let t4096 = "A".repeat(4096);
        let t4097 = "A".repeat(4097);
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"SECRETtoken"], &[]),
            (&[b"e30.e30.SECRET-_"], &[]),
            (&[b"!SECRET~"], &[]),
            (&[b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~SECRET"], &[]),
            (&[t4096.as_bytes()], &[]),
            (&[], &["missing"]),
            (&[b"SECRETtoken", b"SECRETtoken"], &["repeated"]),
            (&[b""], &["malformed"]),
            (&[t4097.as_bytes()], &["too_long"]),
            (&[b"SECRET token"], &["malformed"]),
            (&[b"SECRET\ttoken"], &["malformed"]),
            (&[b"SECRET\xfftoken"], &["malformed"]),
            (&[b"SECRET\xc3\xa9"], &["malformed"]),
        ];
        for &(values, expected) in cases {
            let result = check_session_token(&headers("x-session-token", values));
            if let Err(problems) = &result {
                for p in problems {
                    assert!(!p.detail.contains("SECRET"), "{p:?}");
                    assert!(!p.detail.contains("AAAA"), "{p:?}");
                }
            }
            assert_eq!(codes(result, "X-Session-Token"), expected, "{values:?}");
        }
    }

    #[rustfmt::skip]
    #[test]
    fn content_type_table() {
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"application/json"], &[]),
            (&[b"Application/JSON"], &[]),
            (&[b"APPLICATION/JSON"], &[]),
            (&[b"application/json; charset=utf-8"], &[]),
            (&[b"application/json;charset=UTF-8"], &[]),
            (&[b"application/json;charset=\"UTF-8\""], &[]),
            (&[b"application/json; charset=\"utf\\-8\""], &[]),
            (&[b"application/json ; CHARSET=Utf-8 ;\tfoo=\"a;b \\\" c\""], &[]),
            (&[b"application/json; foo=bar"], &[]),
            (&[b"application/json;"], &[]),
            (&[b"application/json; ;"], &[]),
            (&[b" application/json "], &[]),
            (&[b"application/json", b"application/json"], &[]),
            (&[], &["missing"]),
            (&[b"application/json", b"application/json; charset=utf-8"], &["repeated"]),
            (&[b"application/json; charset=latin1"], &["unsupported"]),
            (&[b"application/json; charset=\"latin1\""], &["unsupported"]),
            (&[b"application/json; charset=utf8"], &["unsupported"]),
            (&[b"application/json; charset=utf-8; charset=latin1"], &["unsupported"]),
            (&[b"text/plain"], &["unsupported"]),
            (&[b"text/json"], &["unsupported"]),
            (&[b"application/jsonx"], &["unsupported"]),
            (&[b"application/json-patch+json"], &["unsupported"]),
            (&[b"application/problem+json"], &["unsupported"]),
            (&[b"application/x-www-form-urlencoded"], &["unsupported"]),
            (&[b""], &["malformed"]),
            (&[b"application"], &["malformed"]),
            (&[b"application/"], &["malformed"]),
            (&[b"/json"], &["malformed"]),
            (&[b"application / json"], &["malformed"]),
            (&[b"application/json charset=utf-8"], &["malformed"]),
            (&[b"application/json; charset"], &["malformed"]),
            (&[b"application/json; charset="], &["malformed"]),
            (&[b"application/json; charset = utf-8"], &["malformed"]),
            (&[b"application/json; =utf-8"], &["malformed"]),
            (&[b"application/json; charset=\"utf-8"], &["malformed"]),
            (&[b"application/json; charset=\"utf-8\"x"], &["malformed"]),
            (&[b"application/json; charset=utf-8,"], &["malformed"]),
            (&[b"application/json\xff"], &["malformed"]),
            (&[b"application/j\xc3\xa9son"], &["malformed"]),
        ];
        for &(values, expected) in cases {
            let result = check_content_type(&headers("content-type", values));
            assert_eq!(codes(result, "Content-Type"), expected, "{values:?}");
        }
    }

    #[test]
    fn content_type_echo_is_capped() {
        let long = format!("text/{}", "p".repeat(1000));
        let problems =
            check_content_type(&headers("content-type", &[long.as_bytes()])).unwrap_err();
        assert_eq!(problems[0].code, "unsupported");
        assert!(problems[0].detail.len() < 200, "{}", problems[0].detail);
        assert!(problems[0].detail.contains("text/ppp"));
    }

    proptest::proptest! {
        #[test]
        fn visible_ascii_check_agrees_with_the_plain_one(
            mut value in proptest::collection::vec(0x21u8..=0x7e, 0..100),
            odd in proptest::option::of((proptest::num::usize::ANY, proptest::prop_oneof![0u8..=0x20, 0x7fu8..=0xff])),
        ) {
            if let Some((at, b)) = odd {
                value.insert(at % (value.len() + 1), b);
            }
            proptest::prop_assert_eq!(
                all_visible_ascii(&value),
                value.iter().all(|b| (0x21..=0x7e).contains(b))
            );
        }
    }
}
