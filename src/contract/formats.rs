//! The `format`s of gateway.md §5 that are checked; `email` keeps §2's tightenings.

use email_address::{EmailAddress, Options as EmailOptions};

/// A plain addr-spec: no display name, no domain literal, and a dotted domain.
pub(crate) fn email_syntax(text: &str) -> Result<(), String> {
    if plain_email(text) {
        return Ok(());
    }
    email_syntax_full(text)
}

/// Longest local part, domain and domain label `email_address` 0.2 takes, in bytes.
pub(crate) const EMAIL_LOCAL_MAX_BYTES: usize = 64;
pub(crate) const EMAIL_DOMAIN_MAX_BYTES: usize = 254;
pub(crate) const EMAIL_LABEL_MAX_BYTES: usize = 63;

/// The usual shape, checked without the crate: an ASCII dot-atom local part, `@`, then at least two
/// dot-separated labels of letters, digits and inner hyphens. `true` means `email_syntax_full`
/// passes too; `false` only means "not this shape" and leaves the answer to it.
pub(crate) fn plain_email(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some(at) = plain_local_part(bytes) else {
        return false;
    };
    let domain = bytes.get(at + 1..).unwrap_or_default();
    at <= EMAIL_LOCAL_MAX_BYTES && domain.len() <= EMAIL_DOMAIN_MAX_BYTES && plain_domain(domain)
}

/// RFC 5322 `atext` in ASCII (what the crate takes there).
pub(crate) const fn is_ascii_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'/' | b'=' | b'?' | b'^'..=b'`' | b'{'..=b'~'
        )
}

/// Classes of bytes for the fast path, one load per byte.
pub(crate) const ATEXT: u8 = 1;
pub(crate) const ALNUM: u8 = 2;
pub(crate) static EMAIL_BYTES: [u8; 256] = {
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
pub(crate) fn is_class(b: u8, class: u8) -> bool {
    EMAIL_BYTES[usize::from(b)] & class != 0
}

/// Where the `@` is, if all before it is non-empty runs of `atext` joined by single dots.
pub(crate) fn plain_local_part(text: &[u8]) -> Option<usize> {
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
pub(crate) fn plain_domain(part: &[u8]) -> bool {
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
pub(crate) fn email_syntax_full(text: &str) -> Result<(), String> {
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
// The other formats of gateway.md §5.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::engine::{Num, Scalar};
use super::schema::Format;

/// `Err(detail)` when `s` breaks `format`. A string format says nothing about a number and the
/// other way round (JSON Schema applies a format to its own type only).
pub(crate) fn check_format(format: Format, s: &Scalar<'_>) -> Result<(), String> {
    match (format, s) {
        (Format::Email, Scalar::Str(text)) => email_syntax(text)
            .map_err(|why| format!("must be a plain email address (local@domain.tld): {why}")),
        (Format::Uuid, Scalar::Str(text)) => ok(
            is_uuid(text),
            "must be a UUID (8-4-4-4-12 hexadecimal digits)",
        ),
        (Format::Date, Scalar::Str(text)) => ok(
            is_date(text.as_bytes()),
            "must be an RFC 3339 full-date (YYYY-MM-DD)",
        ),
        (Format::Time, Scalar::Str(text)) => ok(
            is_time(text.as_bytes()),
            "must be an RFC 3339 full-time (hh:mm:ss with an offset)",
        ),
        (Format::DateTime, Scalar::Str(text)) => ok(
            is_date_time(text.as_bytes()),
            "must be an RFC 3339 date-time (YYYY-MM-DDThh:mm:ss with an offset)",
        ),
        (Format::Uri, Scalar::Str(text)) => ok(is_uri(text), "must be an absolute URI (RFC 3986)"),
        (Format::Hostname, Scalar::Str(text)) => {
            ok(is_hostname(text), "must be a host name (RFC 1123)")
        }
        (Format::Ipv4, Scalar::Str(text)) => ok(
            is_ipv4(text),
            "must be an IPv4 address in dotted-decimal form",
        ),
        (Format::Ipv6, Scalar::Str(text)) => {
            ok(text.parse::<Ipv6Addr>().is_ok(), "must be an IPv6 address")
        }
        (Format::Int32, Scalar::Num(n)) => ok(
            in_range(*n, i32::MIN.into(), i32::MAX.into()),
            "must be an integer from -2147483648 to 2147483647 (int32)",
        ),
        (Format::Int64, Scalar::Num(n)) => ok(
            in_range(*n, i64::MIN.into(), i64::MAX.into()),
            "must be an integer from -9223372036854775808 to 9223372036854775807 (int64)",
        ),
        (Format::Float, Scalar::Num(n)) => ok(
            n.as_f64().abs() <= f64::from(f32::MAX),
            "must fit a 32-bit float",
        ),
        // Every number serde_json reads is a finite f64.
        (Format::Double, Scalar::Num(_)) => Ok(()),
        _ => Ok(()),
    }
}

fn ok(pass: bool, detail: &str) -> Result<(), String> {
    if pass {
        Ok(())
    } else {
        Err(detail.to_owned())
    }
}

fn in_range(n: Num, min: i128, max: i128) -> bool {
    n.as_i128_lossless()
        .is_some_and(|v| (min..=max).contains(&v))
}

fn is_uuid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |n, &d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// `YYYY-MM-DD` with a day that exists.
fn is_date(b: &[u8]) -> bool {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(year), Some(month), Some(day)) = (digits(&b[..4]), digits(&b[5..7]), digits(&b[8..]))
    else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// `hh:mm:ss[.frac](Z|±hh:mm)`; second 60 is a leap second.
fn is_time(b: &[u8]) -> bool {
    if b.len() < 9 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let (Some(h), Some(m), Some(s)) = (digits(&b[..2]), digits(&b[3..5]), digits(&b[6..8])) else {
        return false;
    };
    if h > 23 || m > 59 || s > 60 {
        return false;
    }
    let mut rest = &b[8..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            matches!((digits(&[*h1, *h2]), digits(&[*m1, *m2])), (Some(h), Some(m)) if h <= 23 && m <= 59)
        }
        _ => false,
    }
}

fn is_date_time(b: &[u8]) -> bool {
    b.len() > 11 && matches!(b[10], b'T' | b't') && is_date(&b[..10]) && is_time(&b[11..])
}

/// `scheme ":" rest`, where rest is URI characters and well-formed percent-escapes.
fn is_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let mut s = scheme.bytes();
    if !s.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !s.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
    {
        return false;
    }
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' | b':' | b'/' | b'?' | b'#' | b'[' | b']' | b'@' | b'!'
            | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

fn is_hostname(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            let b = label.as_bytes();
            (1..=63).contains(&b.len())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Four decimal octets, no leading zeros (Rust's parser already refuses them).
fn is_ipv4(text: &str) -> bool {
    text.parse::<Ipv4Addr>().is_ok()
}
