//! Which operation a request is, and whether its path is canonical. Pure functions.
//!
//! The matcher is deliberately generous: literal segments compare case-insensitively and one
//! trailing slash is allowed, so no spelling the upstream might route to update-contact escapes
//! validation. The request is still forwarded as the client spelled it.

use http::Method;

/// The most path parameters one template may hold: the spans of a match live in a fixed array,
/// so recognising a request allocates nothing.
pub(crate) const MAX_PARAMS: usize = 16;

/// What a request is, recognised once per request from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The operation at `index` in the document's list, with its raw path parameters.
    Operation { index: usize, params: Params },
    /// No operation has this method and path, but one has this path and a method that differs
    /// only in letter case (`patch` for `PATCH`): the edge refuses it rather than forwarding it.
    MethodCase,
    /// No operation: forwarded unvalidated, or refused by `unknown_routes = "reject"`.
    None,
}

/// The byte spans of a match's path parameters, in template order; still percent-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// `u16` is enough: `http::Uri` holds at most 65,534 bytes.
    spans: [(u16, u16); MAX_PARAMS],
    len: u8,
}

impl Params {
    const EMPTY: Params = Params {
        spans: [(0, 0); MAX_PARAMS],
        len: 0,
    };

    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// The parameters' text in `path`, the path they were matched in; an out-of-range span (a
    /// different path) reads as empty rather than panicking.
    pub(crate) fn values<'a>(&self, path: &'a str) -> ([&'a str; MAX_PARAMS], usize) {
        let mut out = [""; MAX_PARAMS];
        for (slot, &(start, end)) in out.iter_mut().zip(&self.spans[..self.len()]) {
            *slot = path.get(start as usize..end as usize).unwrap_or("");
        }
        (out, self.len())
    }

    fn push(&mut self, start: usize, end: usize) {
        let at = self.len();
        if let (Some(slot), Ok(start), Ok(end)) = (
            self.spans.get_mut(at),
            u16::try_from(start),
            u16::try_from(end),
        ) {
            *slot = (start, end);
            self.len += 1;
        }
    }
}

/// Why a list of operations cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("path template {template:?}: {why}")]
    Template { template: String, why: &'static str },
    #[error("{method} {first:?} and {method} {second:?} match the same requests")]
    Duplicate {
        method: Method,
        first: String,
        second: String,
    },
}

/// Method and path template to operation, compiled once per load. Literal segments compare
/// case-insensitively and one trailing slash is allowed (gateway.md §4), so no spelling the
/// upstream might route to an operation escapes its validation; the request is still forwarded
/// as the client spelled it. A concrete segment wins over a templated one at the first place two
/// templates differ (OpenAPI's rule), and a path whose concrete match has no operation for the
/// method falls back to a templated one that has: every request an operation could cover is
/// validated by one.
#[derive(Debug, Clone, Default)]
pub struct Router {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Literal segments, lower-cased and sorted (see `cmp_folded`), and their nodes.
    literals: Vec<(Box<[u8]>, usize)>,
    /// The node after a `{param}` segment.
    param: Option<usize>,
    /// Operations whose template ends here, by method.
    ops: Vec<(Method, usize)>,
    /// The template that put each of `ops` here, for the duplicate error.
    templates: Vec<String>,
}

/// One segment of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    Param,
}

/// The segments of a template: `/` alone has none, and one trailing slash is dropped.
fn template_segments(template: &str) -> Result<Vec<Segment<'_>>, &'static str> {
    let rest = template
        .strip_prefix('/')
        .ok_or("a path template starts with `/`")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/')
        .map(|seg| {
            if seg.is_empty() {
                Err("a path template has no empty segment")
            } else if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    Err("a parameter segment is `{name}`")
                } else {
                    Ok(Segment::Param)
                }
            } else if seg.contains(['{', '}']) {
                Err("a segment is either a literal or one whole `{parameter}`")
            } else {
                Ok(Segment::Literal(seg))
            }
        })
        .collect()
}

impl Router {
    /// Compiles `(method, template)` pairs, in the document's order; a match returns the index.
    pub fn new<'a>(
        operations: impl IntoIterator<Item = (&'a Method, &'a str)>,
    ) -> Result<Router, RouteError> {
        let mut router = Router {
            nodes: vec![Node::default()],
        };
        for (index, (method, template)) in operations.into_iter().enumerate() {
            let fail = |why| RouteError::Template {
                template: template.to_string(),
                why,
            };
            let segments = template_segments(template).map_err(fail)?;
            if segments.iter().filter(|s| **s == Segment::Param).count() > MAX_PARAMS {
                return Err(fail("a path template has at most 16 parameters"));
            }
            let mut node = 0;
            for segment in segments {
                node = match segment {
                    Segment::Param => match router.nodes[node].param {
                        Some(next) => next,
                        None => {
                            let next = router.push_node();
                            router.nodes[node].param = Some(next);
                            next
                        }
                    },
                    Segment::Literal(text) => {
                        let lower = text.to_ascii_lowercase().into_bytes().into_boxed_slice();
                        let found = router.nodes[node]
                            .literals
                            .binary_search_by(|(l, _)| cmp_folded(l, &lower));
                        match found {
                            Ok(at) => router.nodes[node].literals[at].1,
                            Err(at) => {
                                let next = router.push_node();
                                router.nodes[node].literals.insert(at, (lower, next));
                                next
                            }
                        }
                    }
                };
            }
            let leaf = &mut router.nodes[node];
            if let Some(at) = leaf.ops.iter().position(|(m, _)| m == method) {
                return Err(RouteError::Duplicate {
                    method: method.clone(),
                    first: leaf.templates[at].clone(),
                    second: template.to_string(),
                });
            }
            leaf.ops.push((method.clone(), index));
            leaf.templates.push(template.to_string());
        }
        Ok(router)
    }

    fn push_node(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// Recognises a request. Byte work on the path, no allocation.
    pub fn recognise(&self, method: &Method, path: &str) -> Match {
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Match::None;
        }
        let end = bytes.len() - usize::from(bytes.len() > 1 && bytes[bytes.len() - 1] == b'/');
        let first = (end > 1).then_some(1);
        let mut walk = Walk {
            nodes: &self.nodes,
            path: bytes,
            end,
            method,
            params: Params::EMPTY,
            method_case: false,
        };
        match walk.from(0, first) {
            Some(index) => Match::Operation {
                index,
                params: walk.params,
            },
            None if walk.method_case => Match::MethodCase,
            None => Match::None,
        }
    }
}

/// Orders a lower-cased literal against a segment as if the segment were lower-cased too: by
/// length first (a cheap way to tell most literals apart), then byte by byte.
fn cmp_folded(literal: &[u8], segment: &[u8]) -> std::cmp::Ordering {
    literal.len().cmp(&segment.len()).then_with(|| {
        literal
            .iter()
            .zip(segment)
            .map(|(l, s)| l.cmp(&s.to_ascii_lowercase()))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    })
}

/// One recognition: a depth-first walk, literal before parameter at every node.
struct Walk<'r, 'p> {
    nodes: &'r [Node],
    path: &'p [u8],
    /// The path's end, without its trailing slash.
    end: usize,
    method: &'r Method,
    params: Params,
    method_case: bool,
}

impl Walk<'_, '_> {
    /// From `node`, with the next segment starting at `at` (`None`: the path is consumed). A loop
    /// down the trie; it recurses only where a node has both a matching literal and a parameter,
    /// to come back to the parameter if the literal's branch finds nothing.
    fn from(&mut self, mut node: usize, mut at: Option<usize>) -> Option<usize> {
        loop {
            let n = self.nodes.get(node)?;
            let Some(start) = at else {
                if let Some(&(_, index)) = n.ops.iter().find(|(m, _)| m == self.method) {
                    return Some(index);
                }
                let wanted = self.method.as_str().as_bytes();
                self.method_case |= n
                    .ops
                    .iter()
                    .any(|(m, _)| m.as_str().as_bytes().eq_ignore_ascii_case(wanted));
                return None;
            };
            let rest = self.path.get(start..self.end)?;
            // The next segment starts after `len` bytes of `rest`, if a `/` follows them.
            let after = |len: usize| (len < rest.len()).then_some(start + len + 1);
            let mut segment_len = None;
            let literal = if n.literals.is_empty() {
                None
            } else if n.literals.len() <= 4 {
                // A literal is compared in place: no scan for the segment's end first.
                // At most one matches: they are unique once lower-cased.
                n.literals
                    .iter()
                    .find(|(lit, _)| {
                        rest.get(..lit.len())
                            .is_some_and(|head| folded_eq(head, lit))
                            && rest.get(lit.len()).is_none_or(|&b| b == b'/')
                    })
                    .map(|(lit, child)| (*child, after(lit.len())))
            } else {
                let len = segment_end(rest);
                segment_len = Some(len);
                find_sorted(&n.literals, &rest[..len]).map(|child| (child, after(len)))
            };
            let Some(param) = n.param else {
                // No parameter to fall back to: the literal's branch is the only one.
                (node, at) = literal?;
                continue;
            };
            if let Some((child, next)) = literal {
                let saved = self.params.len;
                if let Some(index) = self.from(child, next) {
                    return Some(index);
                }
                self.params.len = saved;
            }
            let len = segment_len.unwrap_or_else(|| segment_end(rest));
            self.params.push(start, start + len);
            (node, at) = (param, after(len));
        }
    }
}

/// Where the segment at the start of `rest` ends.
fn segment_end(rest: &[u8]) -> usize {
    rest.iter().position(|&b| b == b'/').unwrap_or(rest.len())
}

/// `segment` equals the lower-cased `literal` in ASCII case-insensitive comparison: a byte is the
/// literal's, or its upper-case form where the literal has a lower-case letter. Without an early
/// exit, so that long literals compare a word at a time.
fn folded_eq(segment: &[u8], literal: &[u8]) -> bool {
    segment.len() == literal.len()
        && segment.iter().zip(literal).fold(0u8, |diff, (&s, &l)| {
            let fold = u8::from(l.wrapping_sub(b'a') < 26) << 5;
            diff | ((s | fold) ^ l)
        }) == 0
}

/// The child of the literal equal to `segment` (any case) among sorted lower-cased literals.
fn find_sorted(literals: &[(Box<[u8]>, usize)], segment: &[u8]) -> Option<usize> {
    // Lower-cased once into a stack buffer, so that each probe is a plain compare.
    let mut buf = [0u8; 64];
    let found = match buf.get_mut(..segment.len()) {
        Some(out) => {
            out.copy_from_slice(segment);
            out.make_ascii_lowercase();
            let folded = &*out;
            literals
                .binary_search_by(|(lit, _)| {
                    lit.len()
                        .cmp(&folded.len())
                        .then_with(|| (**lit).cmp(folded))
                })
                .ok()
        }
        None => literals
            .binary_search_by(|(lit, _)| cmp_folded(lit, segment))
            .ok(),
    };
    found
        .and_then(|at| literals.get(at))
        .map(|&(_, child)| child)
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
    pub(crate) fn detail(self) -> &'static str {
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

    const UPDATE_CONTACT: &str = "/companies/v2/rs/{companyId}/contacts/{contactId}";

    fn update_contact() -> Router {
        Router::new([(&Method::PATCH, UPDATE_CONTACT)]).unwrap()
    }

    /// The parameters of a match, as text.
    fn params_of(router: &Router, method: &Method, path: &str) -> Option<(usize, Vec<String>)> {
        match router.recognise(method, path) {
            Match::Operation { index, params } => {
                let (values, n) = params.values(path);
                Some((index, values[..n].iter().map(|s| s.to_string()).collect()))
            }
            _ => None,
        }
    }

    #[test]
    fn update_contact_spellings_match() {
        let router = update_contact();
        let cases = [
            "/companies/v2/rs/1/contacts/2",
            "/companies/v2/rs/1/contacts/2/",
            "/COMPANIES/V2/RS/1/Contacts/2",
            "/Companies/v2/rs/abc/contacts/x%2Fy",
        ];
        for path in cases {
            assert!(params_of(&router, &Method::PATCH, path).is_some(), "{path}");
        }
        assert_eq!(
            params_of(&router, &Method::PATCH, "/companies/v2/rs/12/contacts/34/"),
            Some((0, vec!["12".into(), "34".into()]))
        );
    }

    #[test]
    fn other_paths_and_methods_do_not_match() {
        let router = update_contact();
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
            assert_eq!(router.recognise(&m, path), Match::None, "{m} {path}");
        }
    }

    #[test]
    fn a_method_that_differs_only_in_case_is_told_apart() {
        let router = update_contact();
        for method in ["patch", "Patch", "pAtCh"] {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(
                router.recognise(&m, "/companies/v2/rs/1/contacts/2"),
                Match::MethodCase,
                "{method}"
            );
        }
        let brew = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(
            router.recognise(&brew, "/companies/v2/rs/1/contacts/2"),
            Match::None
        );
    }

    #[test]
    fn concrete_wins_over_templated_and_methods_fall_back() {
        let ops = [
            (Method::GET, "/companies/{id}"),
            (Method::GET, "/companies/me"),
            (Method::PATCH, "/companies/{id}"),
            (Method::GET, "/companies/{id}/contacts/{cid}"),
            (Method::GET, "/companies/me/contacts/{cid}"),
            (Method::GET, "/"),
        ];
        let router = Router::new(ops.iter().map(|(m, t)| (m, *t))).unwrap();
        let got = |m: Method, p: &str| params_of(&router, &m, p);
        assert_eq!(got(Method::GET, "/companies/me"), Some((1, vec![])));
        assert_eq!(got(Method::GET, "/Companies/ME/"), Some((1, vec![])));
        assert_eq!(
            got(Method::GET, "/companies/you"),
            Some((0, vec!["you".into()]))
        );
        // No PATCH on the concrete path: the templated one validates it.
        assert_eq!(
            got(Method::PATCH, "/companies/me"),
            Some((2, vec!["me".into()]))
        );
        assert_eq!(
            got(Method::GET, "/companies/me/contacts/7"),
            Some((4, vec!["7".into()]))
        );
        assert_eq!(
            got(Method::GET, "/companies/x/contacts/7"),
            Some((3, vec!["x".into(), "7".into()]))
        );
        assert_eq!(got(Method::GET, "/"), Some((5, vec![])));
        assert_eq!(got(Method::GET, "/companies"), None);
    }

    #[test]
    fn many_literals_and_long_ones_match_in_any_case() {
        let long = "l".repeat(70);
        let names = [
            "alpha",
            "beta",
            "gamma",
            "delta",
            "epsilon",
            "zeta",
            long.as_str(),
        ];
        let templates: Vec<String> = names.iter().map(|n| format!("/x/{n}/{{id}}")).collect();
        let router = Router::new(templates.iter().map(|t| (&Method::GET, t.as_str()))).unwrap();
        for (i, name) in names.iter().enumerate() {
            for spelling in [name.to_string(), name.to_ascii_uppercase()] {
                let path = format!("/X/{spelling}/7/");
                assert_eq!(
                    params_of(&router, &Method::GET, &path),
                    Some((i, vec!["7".to_string()])),
                    "{path}"
                );
            }
        }
        assert_eq!(router.recognise(&Method::GET, "/x/eta/7"), Match::None);
        let longer = format!("/x/{}/7", "L".repeat(71));
        assert_eq!(router.recognise(&Method::GET, &longer), Match::None);
    }

    #[test]
    fn templates_that_cannot_be_routed_are_refused() {
        let bad = [
            "companies",
            "/a//b",
            "/a/{}",
            "/a/{id}.json",
            "/a/x{id}",
            "/a/{{id}}",
        ];
        for template in bad {
            let err = Router::new([(&Method::GET, template)]).unwrap_err();
            assert!(matches!(err, RouteError::Template { .. }), "{template}");
        }
        let err =
            Router::new([(&Method::GET, "/a/{x}/B"), (&Method::GET, "/A/{y}/b/")]).unwrap_err();
        assert!(matches!(err, RouteError::Duplicate { .. }), "{err}");
        let many = format!("/a{}", "/{p}".repeat(MAX_PARAMS + 1));
        assert!(Router::new([(&Method::GET, many.as_str())]).is_err());
        let most = format!("/a{}", "/{p}".repeat(MAX_PARAMS));
        let router = Router::new([(&Method::GET, most.as_str())]).unwrap();
        let path = format!("/a{}", "/v".repeat(MAX_PARAMS));
        assert_eq!(
            params_of(&router, &Method::GET, &path).unwrap().1.len(),
            MAX_PARAMS
        );
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

    /// The reference matcher: every template is tried, segment by segment, and the most concrete
    /// match (literal before parameter at the first place two differ) wins.
    fn naive(ops: &[(Method, String)], method: &Method, path: &str) -> Match {
        let Some(rest) = path.strip_prefix('/') else {
            return Match::None;
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segs: Vec<&str> = if rest.is_empty() {
            vec![]
        } else {
            rest.split('/').collect()
        };
        let mut best: Option<(Vec<bool>, usize, Vec<&str>)> = None;
        let mut case = false;
        for (index, (m, template)) in ops.iter().enumerate() {
            let t = template.trim_start_matches('/');
            let t = t.strip_suffix('/').unwrap_or(t);
            let tsegs: Vec<&str> = if t.is_empty() {
                vec![]
            } else {
                t.split('/').collect()
            };
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut key = vec![];
            let mut params = vec![];
            let ok = tsegs.iter().zip(&segs).all(|(ts, s)| {
                if ts.starts_with('{') {
                    key.push(false);
                    params.push(*s);
                    true
                } else {
                    key.push(true);
                    ts.eq_ignore_ascii_case(s)
                }
            });
            if !ok {
                continue;
            }
            if m != method {
                case |= m.as_str().eq_ignore_ascii_case(method.as_str());
                continue;
            }
            if best.as_ref().is_none_or(|(k, _, _)| key > *k) {
                best = Some((key, index, params));
            }
        }
        match best {
            Some((_, index, _)) => Match::Operation {
                index,
                params: Params::EMPTY,
            },
            None if case => Match::MethodCase,
            None => Match::None,
        }
    }

    /// A match's index and parameter text, so that two matches compare by what they found.
    fn summary(m: Match, path: &str) -> (Option<usize>, bool, Vec<String>) {
        match m {
            Match::Operation { index, params } => {
                let (v, n) = params.values(path);
                (
                    Some(index),
                    false,
                    v[..n].iter().map(|s| s.to_string()).collect(),
                )
            }
            Match::MethodCase => (None, true, vec![]),
            Match::None => (None, false, vec![]),
        }
    }

    fn naive_params(ops: &[(Method, String)], index: usize, path: &str) -> Vec<String> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let t = ops[index].1.trim_start_matches('/');
        t.split('/')
            .zip(rest.split('/'))
            .filter(|(t, _)| t.starts_with('{'))
            .map(|(_, s)| s.to_string())
            .collect()
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
        fn the_router_agrees_with_the_naive_matcher(
            templates in proptest::collection::vec(
                (0usize..3, proptest::collection::vec(
                    proptest::prop_oneof!["a", "B", "me", "c", "Dd", "e", "ff", "\\{p\\}"], 0..4)),
                1..16),
            method in 0usize..4,
            path in "(/(a|A|b|me|ME|x|c|dd|DD|e|fF|)){0,4}/?",
        ) {
            const METHODS: [&str; 4] = ["GET", "PATCH", "POST", "patch"];
            let mut ops: Vec<(Method, String)> = Vec::new();
            for (m, segs) in templates {
                let m = Method::from_bytes(METHODS[m].as_bytes()).unwrap();
                let t = format!("/{}", segs.join("/"));
                let candidate: Vec<(Method, String)> =
                    ops.iter().cloned().chain([(m, t)]).collect();
                // Keep only lists the router accepts (no duplicates).
                if Router::new(candidate.iter().map(|(m, t)| (m, t.as_str()))).is_ok() {
                    ops = candidate;
                }
            }
            let router = Router::new(ops.iter().map(|(m, t)| (m, t.as_str()))).unwrap();
            let method = Method::from_bytes(METHODS[method].as_bytes()).unwrap();
            let got = summary(router.recognise(&method, &path), &path);
            let want = naive(&ops, &method, &path);
            let mut want = summary(want, &path);
            if let Some(index) = want.0 {
                want.2 = naive_params(&ops, index, &path);
            }
            proptest::prop_assert_eq!(got, want, "{:?} {} {}", ops, method, path);
        }

        #[test]
        fn one_pass_canonical_check_agrees_with_the_split_one(
            path in "(/|\\*)?([a-z0-9.é]|/|%|%2[eEfF]|%3[01]|%5[cC]|%7[eE]|%4|%zz){0,16}"
        ) {
            proptest::prop_assert_eq!(check_canonical(&path), canonical_by_split(&path));
        }
    }
}
