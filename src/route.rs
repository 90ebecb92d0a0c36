//! Which operation a request is, and whether its path is canonical. Pure functions.
//!
//! The matcher is deliberately generous: literal segments compare case-insensitively and one
//! trailing slash is allowed, so no spelling the upstream might route to update-contact escapes
//! validation. The request is still forwarded as the client spelled it.

use http::Method;

/// The `route` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteLabel {
    UpdateContact,
    Other,
}

impl RouteLabel {
    pub const ALL: [RouteLabel; 2] = [RouteLabel::UpdateContact, RouteLabel::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::UpdateContact => "update_contact",
            RouteLabel::Other => "other",
        }
    }
}

/// A request's operation, with its raw path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    UpdateContact {
        company_id: &'a str,
        contact_id: &'a str,
    },
    Other,
}

impl Route<'_> {
    pub fn label(&self) -> RouteLabel {
        match self {
            Route::UpdateContact { .. } => RouteLabel::UpdateContact,
            Route::Other => RouteLabel::Other,
        }
    }
}

/// `PATCH /companies/v2/rs/{companyId}/contacts/{contactId}`, generously matched.
pub fn match_route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    if method != Method::PATCH {
        return Route::Other;
    }
    match_update_contact_path(path).unwrap_or(Route::Other)
}

/// The update-contact path, whatever the method. Byte work only, since four layers ask for it
/// on every request.
pub fn match_update_contact_path(path: &str) -> Option<Route<'_>> {
    const PREFIX: &[u8] = b"/companies/v2/rs/";
    const MIDDLE: &[u8] = b"contacts/";
    let bytes = path.as_bytes();
    let head = bytes.get(..PREFIX.len())?;
    // The exact spelling first: a plain compare is cheaper than folding case.
    if head != PREFIX && !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let start = PREFIX.len();
    let end = bytes.len() - usize::from(bytes.len() > start && bytes[bytes.len() - 1] == b'/');
    let rest = &bytes[start..end];
    let slash = rest.iter().position(|&b| b == b'/')?;
    let after = &rest[slash + 1..];
    let middle = after.get(..MIDDLE.len())?;
    if (middle != MIDDLE && !middle.eq_ignore_ascii_case(MIDDLE))
        || after[MIDDLE.len()..].contains(&b'/')
    {
        return None;
    }
    // Every cut is next to an ASCII byte, so each is a char boundary.
    Some(Route::UpdateContact {
        company_id: path.get(start..start + slash)?,
        contact_id: path.get(start + slash + 1 + MIDDLE.len()..end)?,
    })
}

/// A method that equals the method of an operation at this path only when case is ignored
/// (`patch`, `Patch` for `PATCH`). Methods are case-sensitive (RFC 9110 §9.1), so the gateway
/// would not validate it as that operation, yet upstreams that fold case (ASP.NET Core,
/// Werkzeug) would run it as one. `operation_methods` are the methods of the operations whose
/// path matches.
pub fn differs_only_in_case(method: &Method, operation_methods: &[Method]) -> bool {
    operation_methods
        .iter()
        .any(|m| m != method && m.as_str().eq_ignore_ascii_case(method.as_str()))
}

/// Why a path is not canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonCanonical {
    EmptySegment,
    DotSegment,
    EncodedUnreserved,
    EncodedSlash,
}

impl NonCanonical {
    pub fn detail(self) -> &'static str {
        match self {
            NonCanonical::EmptySegment => "the path has an empty segment (`//`)",
            NonCanonical::DotSegment => "the path has a `.` or `..` segment",
            NonCanonical::EncodedUnreserved => "the path percent-encodes an unreserved character",
            NonCanonical::EncodedSlash => {
                "the path percent-encodes a slash or backslash (`%2F`, `%5C`)"
            }
        }
    }
}

/// A path is canonical when it has no `//`, no `.` or `..` segment, no percent-encoded
/// unreserved character (RFC 3986 §2.3) and no `%2F` or `%5C`, so that the upstream sees the
/// spelling the gateway matched: an upstream that decodes `%2F` (or takes `\` for `/`) would
/// route to segments the gateway never saw. One pass over the bytes; a segment problem is
/// reported before an encoded slash, and that before an encoded unreserved character.
pub fn check_canonical(path: &str) -> Result<(), NonCanonical> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        // `*` (OPTIONS) and the like: nothing to normalise.
        return Ok(());
    }
    let mut encoded = false;
    let mut slash = false;
    let mut segment = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        // Letters and digits sort above `/`, `.` and `%`: one compare passes them.
        if b > b'/' {
            continue;
        }
        if b == b'/' {
            check_segment(&bytes[segment..i], false)?;
            segment = i + 1;
        } else if b == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                let c = h * 16 + l;
                encoded |= c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
                slash |= matches!(c, b'/' | b'\\');
            }
        }
    }
    check_segment(&bytes[segment..], true)?;
    if slash {
        return Err(NonCanonical::EncodedSlash);
    }
    if encoded {
        return Err(NonCanonical::EncodedUnreserved);
    }
    Ok(())
}

/// An empty segment is allowed only last (a trailing slash); `.` and `..` never.
fn check_segment(segment: &[u8], last: bool) -> Result<(), NonCanonical> {
    match segment {
        b"" if !last => Err(NonCanonical::EmptySegment),
        b"." | b".." => Err(NonCanonical::DotSegment),
        _ => Ok(()),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_contact_spellings_match() {
        let cases = [
            "/companies/v2/rs/1/contacts/2",
            "/companies/v2/rs/1/contacts/2/",
            "/COMPANIES/V2/RS/1/Contacts/2",
            "/Companies/v2/rs/abc/contacts/x%2Fy",
        ];
        for path in cases {
            assert!(
                matches!(
                    match_route(&Method::PATCH, path),
                    Route::UpdateContact { .. }
                ),
                "{path}"
            );
        }
        assert_eq!(
            match_route(&Method::PATCH, "/companies/v2/rs/12/contacts/34/"),
            Route::UpdateContact {
                company_id: "12",
                contact_id: "34"
            }
        );
    }

    #[test]
    fn other_paths_and_methods_do_not_match() {
        let cases = [
            (Method::GET, "/companies/v2/rs/1/contacts/2"),
            (Method::PUT, "/companies/v2/rs/1/contacts/2"),
            (Method::PATCH, "/companies/v2/rs/1/contacts"),
            (Method::PATCH, "/companies/v2/rs/1/contacts/2/x"),
            (Method::PATCH, "/companies/v2/rs/1/contacts/2//"),
            (Method::PATCH, "/companies/v1/rs/1/contacts/2"),
            (Method::PATCH, "/main/companies/v2/rs/1/contacts/2"),
            (Method::PATCH, "companies/v2/rs/1/contacts/2"),
            (Method::PATCH, "*"),
            (Method::PATCH, "/companies/v2/rs/1/contactsX/2"),
            (Method::PATCH, "/companies/v2/rs/1"),
            (Method::PATCH, "/companies/v2/rs/"),
            (Method::PATCH, "/companies/v2/rsx/1/contacts/2"),
            (Method::PATCH, "/cömpanies/v2/rs/1/contacts/2"),
        ];
        for (m, path) in cases {
            assert_eq!(match_route(&m, path), Route::Other, "{m} {path}");
        }
    }

    #[test]
    fn a_method_differing_only_in_case_is_found() {
        let patch = [Method::PATCH];
        let ext = |m: &str| Method::from_bytes(m.as_bytes()).unwrap();
        for m in ["patch", "Patch", "pATCH", "PATCh"] {
            assert!(differs_only_in_case(&ext(m), &patch), "{m}");
        }
        // The operation's own spelling, another method, or no operation at the path: not this rule.
        assert!(!differs_only_in_case(&Method::PATCH, &patch));
        assert!(!differs_only_in_case(&ext("PATCH"), &patch));
        assert!(!differs_only_in_case(&Method::GET, &patch));
        assert!(!differs_only_in_case(&ext("get"), &patch));
        assert!(!differs_only_in_case(&ext("patchx"), &patch));
        assert!(!differs_only_in_case(&ext("patch"), &[]));
        assert!(differs_only_in_case(
            &ext("get"),
            &[Method::PATCH, Method::GET]
        ));
    }

    #[test]
    fn non_canonical_paths_are_found() {
        use NonCanonical::*;
        let cases = [
            ("/companies//v2", Some(EmptySegment)),
            ("//companies", Some(EmptySegment)),
            ("/a/./b", Some(DotSegment)),
            ("/a/../b", Some(DotSegment)),
            ("/a/..", Some(DotSegment)),
            ("/a/.", Some(DotSegment)),
            ("/companies/v2/rs/%31/contacts/2", Some(EncodedUnreserved)),
            ("/compan%69es", Some(EncodedUnreserved)),
            ("/a%2e%2E/b", Some(EncodedUnreserved)),
            ("/a%7e", Some(EncodedUnreserved)),
            ("/a%2Fb", Some(EncodedSlash)),
            ("/a%2fb", Some(EncodedSlash)),
            ("/a%5Cb", Some(EncodedSlash)),
            ("/a%5c", Some(EncodedSlash)),
            ("/companies/v2/rs/1/contacts%2F1", Some(EncodedSlash)),
            ("/companies%2fv2/rs/1/contacts/1", Some(EncodedSlash)),
            ("/a%2F%41", Some(EncodedSlash)),
            ("/a//%2F", Some(EmptySegment)),
            ("/a%2", None),
            ("/a%252F", None),
            ("/a%20b", None),
            ("/a%", None),
            ("/a%zz", None),
            ("/a/b/", None),
            ("/", None),
            ("/a/.b/..c", None),
            ("*", None),
        ];
        for (path, want) in cases {
            assert_eq!(check_canonical(path).err(), want, "{path}");
        }
    }

    /// The previous, `str`-based matcher and checker: the byte versions must agree with them.
    fn match_by_split(path: &str) -> Option<Route<'_>> {
        const PREFIX: &str = "/companies/v2/rs/";
        const MIDDLE: &str = "contacts/";
        let head = path.get(..PREFIX.len())?;
        if !head.eq_ignore_ascii_case(PREFIX) {
            return None;
        }
        let rest = &path[PREFIX.len()..];
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (company_id, rest) = rest.split_once('/')?;
        let middle = rest.get(..MIDDLE.len())?;
        if !middle.eq_ignore_ascii_case(MIDDLE) {
            return None;
        }
        let contact_id = &rest[MIDDLE.len()..];
        if contact_id.contains('/') {
            return None;
        }
        Some(Route::UpdateContact {
            company_id,
            contact_id,
        })
    }

    fn canonical_by_split(path: &str) -> Result<(), NonCanonical> {
        let Some(rest) = path.strip_prefix('/') else {
            return Ok(());
        };
        let mut segments = rest.as_bytes().split(|&b| b == b'/').peekable();
        while let Some(seg) = segments.next() {
            match seg {
                b"" if segments.peek().is_some() => return Err(NonCanonical::EmptySegment),
                b"." | b".." => return Err(NonCanonical::DotSegment),
                _ => {}
            }
        }
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return Err(NonCanonical::EncodedSlash);
        }
        let bytes = path.as_bytes();
        let mut i = 0;
        while let Some(off) = bytes[i..].iter().position(|&b| b == b'%') {
            let at = i + off;
            if let (Some(h), Some(l)) = (bytes.get(at + 1), bytes.get(at + 2)) {
                if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                    let c = h * 16 + l;
                    if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                        return Err(NonCanonical::EncodedUnreserved);
                    }
                }
            }
            i = at + 1;
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn byte_matcher_agrees_with_the_split_one(
            path in "(/companies/v2/rs/|/COMPANIES/V2/RS/|/comp|/)?([a-z0-9%./é]|contacts/|Contacts/|/){0,24}"
        ) {
            proptest::prop_assert_eq!(match_update_contact_path(&path), match_by_split(&path));
        }

        #[test]
        fn one_pass_canonical_check_agrees_with_the_split_one(
            path in "(/|\\*)?([a-z0-9.é]|/|%|%2[eEfF]|%3[01]|%5[cC]|%7[eE]|%4|%zz){0,16}"
        ) {
            proptest::prop_assert_eq!(check_canonical(&path), canonical_by_split(&path));
        }
    }
}
