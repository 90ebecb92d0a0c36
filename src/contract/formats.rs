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
