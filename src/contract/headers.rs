//! Stages 1-3 on the request head: security (`Authorization: Bearer`, API keys), the session token
//! header, and Content-Type against the operation's request-body media types.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE};

use super::*;

// ---------------------------------------------------------------------------------------------
// Limits of the contract (openapi.yaml).

pub(crate) const MAX_TOKEN_BYTES: usize = 4096;
pub(crate) const MAX_NAME_CHARS: usize = 250;
pub(crate) const MAX_EMAIL_CHARS: usize = 250;
pub(crate) const MAX_PHONES: usize = 5;
pub(crate) const MAX_PHONE_CHARS: usize = 50;
pub(crate) const MAX_COMMENT_CHARS: usize = 2500;
/// At most this many characters of a client's text are echoed in a detail.
pub(crate) const MAX_ECHO_CHARS: usize = 100;
/// Objects up to this many keys look for duplicates by a linear scan; larger ones use a hash set.
pub(crate) const LINEAR_KEYS: usize = 16;

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
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
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

/// `type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )` (RFC 9110 §8.3.1).
pub(crate) fn media_type(value: &[u8]) -> Result<(), (&'static str, String)> {
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
