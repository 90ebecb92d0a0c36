//! Stage 5: path, query and header parameters (styles `simple` and `form`, with `explode`). Each
//! value is read from its text as its schema's type says (an integer parameter must be a plain
//! decimal integer), then checked by the same code as a body value.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};

use super::engine::{check_value_at, Num, Tree};
use super::schema::{ty, Format, NodeId, Schemas};
use super::*;

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
                location: Location::Path(name),
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

pub(crate) fn is_decimal_i64(value: &str) -> bool {
    decimal_i64(value).is_some()
}

/// The value of a plain decimal integer within i64, read once.
fn decimal_i64(value: &str) -> Option<i64> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    // `str::parse` alone would also take a leading `+`.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<i64>().ok()
}

/// Where a parameter is.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// The index of its `{name}` in the template.
    Path(usize),
    Query,
    Header(HeaderName),
}

/// How an array or object is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Simple,
    Form,
}

/// One compiled parameter.
#[derive(Debug, Clone)]
pub(crate) struct Param {
    /// As the document spells it: the `parameter`/`header` of a problem and the `field` label.
    pub name: &'static str,
    pub field: Field,
    pub place: Place,
    pub required: bool,
    pub node: Option<NodeId>,
    pub explode: bool,
    /// Set (at the end of the compile) when the schema is a plain integer whose only
    /// constraints are an i64 range: a path value spelled as a decimal i64 within it passes
    /// without the generic check (`integer_range`).
    pub int_range: Option<(i64, i64)>,
}

impl Param {
    fn location(&self) -> Location {
        match self.place {
            Place::Header(_) => Location::Header(self.name),
            Place::Path(_) => Location::Path(self.name),
            Place::Query => Location::Query(self.name),
        }
    }

    fn violation(&self, code: Code, detail: String) -> Violation {
        Violation {
            field: self.field,
            code,
            location: self.location(),
            detail,
        }
    }
}

/// The inclusive range of a schema that accepts exactly the decimal i64 text within it, when
/// nothing else about it needs checking: type `integer` (or `integer` and `null`), no format but
/// `int32`/`int64`, bounds that are integers, and no other keyword that applies to a number.
/// Such a parameter's value read by `typed` is `Num::I`, and the generic check of it passes
/// exactly when it is in this range, so the two agree on every value the shortcut accepts.
pub(crate) fn integer_range(schemas: &Schemas, id: Option<NodeId>) -> Option<(i64, i64)> {
    let node = schemas.node(id?);
    let plain = node.types & !ty::NULL == ty::INTEGER
        && !node.never
        && !node.read_only
        && !node.checks_more
        && node.enum_values.is_none()
        && node.const_value.is_none()
        && node.multiple_of.is_none()
        && node.all_of.is_empty()
        && node.any_of.is_empty()
        && node.one_of.is_empty()
        && node.not.is_none();
    if !plain {
        return None;
    }
    let (mut lo, mut hi) = match node.format {
        None | Some(Format::Int64) => (i64::MIN, i64::MAX),
        Some(Format::Int32) => (i64::from(i32::MIN), i64::from(i32::MAX)),
        Some(_) => return None,
    };
    if let Some(min) = &node.minimum {
        let v = min.value.as_i64()?;
        lo = lo.max(if min.exclusive { v.checked_add(1)? } else { v });
    }
    if let Some(max) = &node.maximum {
        let v = max.value.as_i64()?;
        hi = hi.min(if max.exclusive { v.checked_sub(1)? } else { v });
    }
    Some((lo, hi))
}

/// The label of every unknown query parameter: a client's name never becomes a label.
const UNKNOWN_QUERY: &str = "unknown";

/// Percent-decoding (`+` is a space in a query); `None` if the result is not UTF-8.
fn decode(text: &str, plus_is_space: bool) -> Option<Cow<'_, str>> {
    if !text
        .bytes()
        .any(|b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Some(Cow::Borrowed(text));
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |at: usize| b.get(at).and_then(|c| (*c as char).to_digit(16));
        match b[i] {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// A JSON number's text (no `+`, no leading dot, no hex), read as a number.
fn number(text: &str) -> Option<Num> {
    let b = text.as_bytes();
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let int_len = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if int_len == 0 {
        return None;
    }
    let rest = &digits[int_len..];
    let mut i = 0;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        i = 1 + n;
    }
    if matches!(rest.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(rest.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = rest[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        i += n;
    }
    if i != rest.len() {
        return None;
    }
    if i == 0 {
        if let Ok(v) = text.parse::<i64>() {
            return Some(Num::I(v));
        }
        if let Ok(v) = text.parse::<u64>() {
            return Some(Num::U(v));
        }
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Num::F)
}

/// A parameter's value, read from its (decoded) text as the schema's types and format say.
fn typed<'a>(
    text: Cow<'a, str>,
    types: u8,
    format: Option<Format>,
) -> Result<Tree<'a>, (Code, &'static str)> {
    if types & (ty::NUMBER | ty::INTEGER) != 0 {
        if types & ty::NUMBER == 0 && types & ty::STRING == 0 {
            // An integer parameter: a plain decimal integer, whatever the spelling of the value
            // (leading zeros and -0 are fine, `+1`, spaces and exponents are not).
            if let Some(n) = decimal_i64(&text) {
                return Ok(Tree::Num(Num::I(n)));
            }
            if matches!(format, Some(Format::Int32 | Format::Int64)) {
                return Err((
                    Code::Integer,
                    "must be a decimal integer from -9223372036854775808 to 9223372036854775807",
                ));
            }
            // No width: a larger integer is still one, read as a JSON body's number would be.
            let digits = text.strip_prefix('-').unwrap_or(&text);
            return match number(&text) {
                Some(n) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(Tree::Num(n))
                }
                _ => Err((Code::Integer, "must be a decimal integer")),
            };
        }
        if let Some(n) = number(&text) {
            return Ok(Tree::Num(n));
        }
    }
    if types & ty::BOOLEAN != 0 {
        match &*text {
            "true" => return Ok(Tree::Bool(true)),
            "false" => return Ok(Tree::Bool(false)),
            _ => {}
        }
    }
    if types & ty::STRING != 0 {
        return Ok(Tree::Str(text));
    }
    if types & ty::NULL != 0 && text.is_empty() {
        return Ok(Tree::Null);
    }
    Err((
        Code::Type,
        match types & !ty::NULL {
            t if t & ty::NUMBER != 0 => "must be a number",
            t if t & ty::BOOLEAN != 0 => "must be true or false",
            _ => "must be a value of the type the contract names",
        },
    ))
}

impl Param {
    /// A piece of the raw value, percent-decoded (not for headers).
    fn decode<'a>(&self, text: &'a str) -> Result<Cow<'a, str>, Violation> {
        match self.place {
            Place::Header(_) => Ok(Cow::Borrowed(text)),
            Place::Path(_) | Place::Query => decode(text, matches!(self.place, Place::Query))
                .ok_or_else(|| {
                    self.violation(
                        Code::Type,
                        format!("{} must be UTF-8 text once percent-decoded", self.name),
                    )
                }),
        }
    }

    /// The parameter's value from its raw pieces (one per query occurrence, else one), checked.
    fn check(&self, schemas: &Schemas, raw: &[&str], out: &mut Violations) {
        let Some(id) = self.node else { return };
        let node = schemas.node(id);
        let query = matches!(self.place, Place::Query);
        let decode_one = |text| self.decode(text);
        let item_shape = |id: Option<NodeId>| {
            id.map_or((ty::ANY, None), |id| {
                let node = schemas.node(id);
                (node.types, node.format)
            })
        };
        let value: Result<Tree<'_>, Violation> = (|| {
            let fail =
                |(code, why): (Code, &str)| self.violation(code, format!("{} {why}", self.name));
            if node.types & ty::ARRAY != 0 && node.types & !(ty::ARRAY | ty::NULL) == 0 {
                let pieces: Vec<&str> = if query && self.explode {
                    raw.to_vec()
                } else if raw == [""] {
                    // `fields=` (form) or an empty header (simple): the empty array.
                    Vec::new()
                } else {
                    raw.iter().flat_map(|r| r.split(',')).collect()
                };
                let mut items = Vec::with_capacity(pieces.len());
                for (i, piece) in pieces.into_iter().enumerate() {
                    let child = node.prefix_items.get(i).copied().or(node.items);
                    let (types, format) = item_shape(child);
                    items.push(typed(decode_one(piece)?, types, format).map_err(fail)?);
                }
                return Ok(Tree::Arr(items));
            }
            if raw.len() > 1 {
                return Err(self.violation(Code::Type, format!("{} must appear once", self.name)));
            }
            let text = raw.first().copied().unwrap_or("");
            if node.types & ty::OBJECT != 0 && node.types & !(ty::OBJECT | ty::NULL) == 0 {
                let mut members = Vec::new();
                let pairs: Vec<(&str, &str)> = if self.explode {
                    text.split(',')
                        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                        .collect()
                } else {
                    let parts: Vec<&str> = text.split(',').collect();
                    if parts.len() % 2 != 0 {
                        return Err(self.violation(
                            Code::Type,
                            format!("{} must be name,value pairs", self.name),
                        ));
                    }
                    parts.chunks(2).map(|p| (p[0], p[1])).collect()
                };
                for (k, v) in pairs {
                    let key = decode_one(k)?;
                    let child = node.property(&key).or(match node.additional {
                        schema::Additional::Schema(id) => Some(id),
                        _ => None,
                    });
                    let (types, format) = item_shape(child);
                    members.push((key, typed(decode_one(v)?, types, format).map_err(fail)?));
                }
                return Ok(Tree::Obj(members));
            }
            typed(decode_one(text)?, node.types, node.format).map_err(fail)
        })();
        match value {
            Err(v) => out.push(v),
            Ok(tree) => {
                let found = check_value_at(schemas, id, &tree, self.field);
                for v in found.into_iter() {
                    out.push(Violation {
                        location: self.location(),
                        detail: format!("{} {}", self.name, v.detail),
                        ..v
                    });
                }
            }
        }
    }
}

/// Stage 5 (parameters): every violation of the path, query and header parameters, in that order.
pub(crate) fn check_params(
    schemas: &Schemas,
    params: &[Param],
    unknown_query: UnknownQuery,
    path_params: &[&str],
    query: Option<&str>,
    headers: &HeaderMap,
    out: &mut Violations,
) {
    for param in params {
        if let Place::Path(i) = param.place {
            match path_params.get(i) {
                Some(raw) => {
                    // The usual integer id: one parse, no value tree, no report.
                    if let Some((lo, hi)) = param.int_range {
                        if decimal_i64(raw).is_some_and(|n| lo <= n && n <= hi) {
                            continue;
                        }
                    }
                    param.check(schemas, &[raw], out)
                }
                None => {
                    out.push(param.violation(Code::Required, format!("{} is required", param.name)))
                }
            }
        }
    }
    let pairs: Vec<(Cow<'_, str>, &str)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (decode(name, true).unwrap_or(Cow::Borrowed(name)), value)
        })
        .collect();
    for param in params.iter().filter(|p| matches!(p.place, Place::Query)) {
        let raw: Vec<&str> = pairs
            .iter()
            .filter(|(name, _)| name == param.name)
            .map(|&(_, value)| value)
            .collect();
        if raw.is_empty() {
            if param.required {
                out.push(param.violation(Code::Required, format!("{} is required", param.name)));
            }
            continue;
        }
        param.check(schemas, &raw, out);
    }
    if unknown_query == UnknownQuery::Reject {
        for (name, _) in &pairs {
            let declared = params
                .iter()
                .any(|p| matches!(p.place, Place::Query) && p.name == name);
            if !declared {
                out.push(Violation {
                    field: Field::Unknown,
                    code: Code::UnknownField,
                    location: Location::Query(UNKNOWN_QUERY),
                    detail: format!(
                        "unknown query parameter {}: the operation does not declare it",
                        echo(name.as_bytes())
                    ),
                });
            }
        }
    }
    for param in params {
        let Place::Header(name) = &param.place else {
            continue;
        };
        let mut lines = headers.get_all(name).iter();
        if let (Some(one), None) = (lines.next(), lines.next()) {
            // One line, the usual case: its text as it is, no list to build and join.
            match header_text(one.as_bytes()) {
                Some(text) => param.check(schemas, &[text], out),
                None => out.push(param.violation(
                    Code::Type,
                    format!("{} must be visible ASCII text", param.name),
                )),
            }
            continue;
        }
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.len() != headers.get_all(name).iter().count() {
            out.push(param.violation(
                Code::Type,
                format!("{} must be visible ASCII text", param.name),
            ));
            continue;
        }
        if values.is_empty() {
            if param.required {
                out.push(param.violation(Code::Required, format!("{} is required", param.name)));
            }
            continue;
        }
        // Repeated header lines are one comma-separated list (RFC 9110 §5.3).
        let joined = values.join(",");
        param.check(schemas, &[&joined], out);
    }
}

/// A header line's text, as `HeaderValue::to_str` reads it (visible ASCII, space and tab), checked
/// without an early exit so that the compiler vectorises it: a session token is 200 bytes or more.
fn header_text(bytes: &[u8]) -> Option<&str> {
    let visible = bytes.chunks(32).all(|c| {
        c.iter().fold(true, |ok, &b| {
            ok & ((b.wrapping_sub(b' ') < 0x5f) | (b == b'\t'))
        })
    });
    if visible {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer shortcut of path parameters gives the generic check's verdict, violations and
    /// all, on every schema and value below; and it is taken where it should be.
    #[test]
    fn the_integer_path_shortcut_agrees_with_the_generic_check() {
        let schemas = [
            (r#"{"type": "integer"}"#, Some((i64::MIN, i64::MAX))),
            (
                r#"{"type": "integer", "format": "int64", "minimum": -9223372036854775808, "maximum": 9223372036854775807}"#,
                Some((i64::MIN, i64::MAX)),
            ),
            (
                r#"{"type": "integer", "format": "int32"}"#,
                Some((-2147483648, 2147483647)),
            ),
            (
                r#"{"type": "integer", "minimum": 1, "maximum": 10}"#,
                Some((1, 10)),
            ),
            (
                r#"{"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}"#,
                Some((1, 9)),
            ),
            (
                r#"{"type": ["integer", "null"], "maximum": -5}"#,
                Some((i64::MIN, -5)),
            ),
            (r#"{"type": "integer", "minimum": 0.5}"#, None),
            (
                r#"{"type": "integer", "maximum": 18446744073709551615}"#,
                None,
            ),
            (r#"{"type": "integer", "multipleOf": 2}"#, None),
            (r#"{"type": "integer", "enum": [1, 2]}"#, None),
            (r#"{"type": "integer", "not": {"const": 3}}"#, None),
            (r#"{"type": "integer", "format": "double"}"#, None),
            (r#"{"type": "number"}"#, None),
            (r#"{"type": ["integer", "string"]}"#, None),
            (r#"{"minimum": 1}"#, None),
            (r#"{"type": "integer", "readOnly": true}"#, None),
        ];
        let values = [
            "0",
            "1",
            "5",
            "9",
            "10",
            "11",
            "-0",
            "-1",
            "-5",
            "-6",
            "007",
            "+1",
            "1.0",
            "1e2",
            "",
            "x",
            "%31",
            "2147483647",
            "2147483648",
            "-2147483648",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
        ];
        for (schema, range) in schemas {
            let doc = format!(
                r#"{{"openapi": "3.1.0", "info": {{"title": "t", "version": "1"}}, "paths": {{"/a/{{id}}": {{"get": {{"operationId": "getA", "parameters": [{{"name": "id", "in": "path", "required": true, "schema": {schema}}}], "responses": {{"200": {{"description": "ok"}}}}}}}}}}}}"#
            );
            let api = Api::from_text(&doc, &CompileOptions::default()).expect(schema);
            let op = &api.operations()[0];
            assert_eq!(op.params[0].int_range, range, "{schema}");
            let mut generic = op.params.clone();
            generic[0].int_range = None;
            for value in values {
                let check = |params: &[Param]| {
                    let mut out = Violations::default();
                    check_params(
                        &op.schemas,
                        params,
                        UnknownQuery::Allow,
                        &[value],
                        None,
                        &HeaderMap::new(),
                        &mut out,
                    );
                    out
                };
                assert_eq!(check(&op.params), check(&generic), "{schema} {value:?}");
            }
        }
    }

    #[test]
    fn header_text_reads_as_to_str_does() {
        for b in 0..=255u8 {
            for value in [
                vec![b],
                vec![b'a', b, b'z'],
                [b'x'; 40].iter().chain([&b]).copied().collect(),
            ] {
                let Ok(header) = http::HeaderValue::from_bytes(&value) else {
                    continue;
                };
                assert_eq!(
                    header_text(header.as_bytes()),
                    header.to_str().ok(),
                    "{b:#x}"
                );
            }
        }
    }
}
