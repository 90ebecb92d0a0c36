//! Stages 1-3 on the request head: security (`Authorization: Bearer`, API keys), the session token
//! header, and Content-Type against the operation's request-body media types.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE};

use super::*;

/// The most bytes of a session token (a JWT in practice); `max_header_bytes` bounds it anyway.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Stages 1-3: headers.

pub(crate) const AUTHORIZATION_LABEL: &str = "Authorization";
pub(crate) const SESSION_TOKEN_LABEL: &str = "X-Session-Token";
pub(crate) const CONTENT_TYPE_LABEL: &str = "Content-Type";
pub(crate) const SESSION_TOKEN: HeaderName = HeaderName::from_static("x-session-token");

pub(crate) fn problem(
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
pub(crate) fn exactly_one<'a>(
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

pub(crate) fn is_b64token_char(b: u8) -> bool {
    B64TOKEN[usize::from(b)]
}

/// `is_b64token_char` as a table: one load per byte of a bearer token instead of a chain of
/// range compares.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        i += 1;
    }
    table
};

/// `is_b64token_char` by compares, so that a loop over a token vectorises.
#[inline]
pub(crate) fn b64token_char_by_compares(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// Whether every byte is a b64token character (not `=`).
fn all_b64token_chars(token: &[u8]) -> bool {
    token.chunks(32).all(|c| {
        c.iter()
            .fold(true, |ok, &b| ok & b64token_char_by_compares(b))
    })
}

/// `"Bearer" 1*SP b64token`, the scheme in any case.
pub(crate) fn bearer_token(value: &[u8]) -> Result<(), (&'static str, String)> {
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
    // The usual token has no padding: every byte in the class, checked without an early exit
    // (the compiler vectorises it); padding and refusals take the byte-by-byte path below.
    if all_b64token_chars(token) {
        return Ok(());
    }
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
    check_token_header(headers, &SESSION_TOKEN, SESSION_TOKEN_LABEL)
}

/// Stage 2 for `session.token_header` (`label` as the document spells it), or an API key: exactly
/// one non-empty value of visible ASCII, at most 4096 bytes. The value is a secret and never
/// appears in a detail.
pub(crate) fn check_token_header(
    headers: &HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<(), Vec<HeaderProblem>> {
    let value = exactly_one(headers, name, label)?;
    if value.is_empty() {
        // Present but empty: the header is there, its value breaks the rule.
        return Err(problem(label, "malformed", "must not be empty"));
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(problem(
            label,
            "too_long",
            format!(
                "must be at most {MAX_TOKEN_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    if !all_visible_ascii(value) {
        return Err(problem(
            label,
            "malformed",
            "must be visible ASCII (0x21-0x7E) only",
        ));
    }
    Ok(())
}

/// Whether every byte is visible ASCII (0x21-0x7E). No early exit, so the compiler vectorises it.
pub(crate) fn all_visible_ascii(value: &[u8]) -> bool {
    value.chunks(32).all(|c| {
        c.iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
    })
}

/// Stage 3: `Content-Type: application/json` in any case, with RFC 9110 parameters; a `charset`
/// other than utf-8 is refused. Repeating the header with the very same value is tolerated.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), Vec<HeaderProblem>> {
    static JSON: [MediaRange; 1] = [MediaRange {
        kind: Cow::Borrowed("application"),
        subtype: Cow::Borrowed("json"),
    }];
    check_media_type(headers, &JSON).map(drop)
}

/// One media range of a `requestBody`'s `content`, lower case: `application/json`,
/// `application/*`, `*/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MediaRange {
    pub kind: Cow<'static, str>,
    pub subtype: Cow<'static, str>,
}

impl MediaRange {
    /// The key of a `content` map (its parameters, if any, are dropped).
    pub(crate) fn parse(key: &str) -> Option<MediaRange> {
        let essence = key
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let (kind, subtype) = essence.split_once('/')?;
        let token = |t: &str| !t.is_empty() && t.bytes().all(is_tchar);
        (token(kind) && token(subtype) && (kind != "*" || subtype == "*")).then(|| MediaRange {
            kind: Cow::Owned(kind.to_owned()),
            subtype: Cow::Owned(subtype.to_owned()),
        })
    }

    fn matches(&self, kind: &[u8], subtype: &[u8]) -> bool {
        (self.kind == "*" || kind.eq_ignore_ascii_case(self.kind.as_bytes()))
            && (self.subtype == "*" || subtype.eq_ignore_ascii_case(self.subtype.as_bytes()))
    }

    /// `matches(b"application", b"json")` for a lower-case range, without folding case.
    fn takes_json(&self) -> bool {
        (self.kind == "application" || self.kind == "*")
            && (self.subtype == "json" || self.subtype == "*")
    }

    fn text(&self) -> String {
        format!("{}/{}", self.kind, self.subtype)
    }
}

/// Whether a media type is JSON: `application/json` or any `+json` type (validated, utf-8 only).
pub(crate) fn is_json(kind: &[u8], subtype: &[u8]) -> bool {
    (kind.eq_ignore_ascii_case(b"application") && subtype.eq_ignore_ascii_case(b"json"))
        || (subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Stage 3 against the ranges of an operation: which one matched, and whether the body is JSON.
pub(crate) fn check_media_type(
    headers: &HeaderMap,
    ranges: &[MediaRange],
) -> Result<(usize, bool), Vec<HeaderProblem>> {
    let list = || {
        ranges
            .iter()
            .map(MediaRange::text)
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(first) = values.next() else {
        return Err(problem(
            CONTENT_TYPE_LABEL,
            "missing",
            format!("the Content-Type header is required ({})", list()),
        ));
    };
    if values.any(|other| other != first) {
        return Err(problem(
            CONTENT_TYPE_LABEL,
            "repeated",
            "the Content-Type header appears more than once with different values",
        ));
    }
    let value = first.as_bytes();
    if value == b"application/json" {
        // The usual spelling exactly: the first range that takes it, by plain compares (ranges
        // are lower case).
        if let Some(at) = ranges.iter().position(MediaRange::takes_json) {
            return Ok((at, true));
        }
    }
    let (kind, subtype, charset_ok) = if value.eq_ignore_ascii_case(b"application/json") {
        // The usual spelling, without the grammar walk.
        (&b"application"[..], &b"json"[..], true)
    } else {
        media_type(value).map_err(|(code, detail)| problem(CONTENT_TYPE_LABEL, code, detail))?
    };
    let Some(at) = ranges.iter().position(|r| r.matches(kind, subtype)) else {
        return Err(problem(
            CONTENT_TYPE_LABEL,
            "unsupported",
            format!("the media type must be {}, got {}", list(), echo(value)),
        ));
    };
    let json = is_json(kind, subtype);
    if json && !charset_ok {
        return Err(problem(
            CONTENT_TYPE_LABEL,
            "unsupported",
            format!("the charset must be utf-8, got {}", echo(value)),
        ));
    }
    Ok((at, json))
}

/// Text of a header for a detail: lossy UTF-8, at most 100 characters, quoted and escaped.
pub(crate) fn echo(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut shown: String = text.chars().take(MAX_ECHO_CHARS).collect();
    let cut = shown.len() < text.len();
    shown = format!("{shown:?}");
    if cut {
        shown.push('…');
    }
    shown
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte cursor for the media-type grammar; it never indexes out of bounds.
pub(crate) struct Cursor<'a> {
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

/// A parsed media type: type, subtype, and whether every `charset` parameter is utf-8.
pub(crate) type MediaType<'a> = (&'a [u8], &'a [u8], bool);

/// `type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )` (RFC 9110 §8.3.1).
pub(crate) fn media_type(value: &[u8]) -> Result<MediaType<'_>, (&'static str, String)> {
    let malformed = |why: &str| {
        (
            "malformed",
            format!("{} is not a valid media type: {why}", echo(value)),
        )
    };
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
    Ok((kind, subtype, charset_ok))
}
