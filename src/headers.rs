//! Header hygiene, as pure functions: hop-by-hop stripping, `Via`, and the `X-Forwarded-*` /
//! `Forwarded` headers that describe the real client.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that ask an upstream framework to run another method or URL than the request line
/// names (gateway.md §4). The gateway validated the request line, so they never go on.
const OVERRIDES: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Client-address headers other than `X-Forwarded-*` and `Forwarded`: only a trusted proxy may
/// send them on; from anyone else they are made up.
const CLIENT_ADDRESS: [&str; 4] = [
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
];

/// What the gateway adds to `Via`.
pub(crate) const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 companies-gateway");

/// Hop-by-hop headers that never cross the gateway, whatever `Connection` says.
fn fixed_hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &http::header::PROXY_AUTHORIZATION,
        &http::header::PROXY_AUTHENTICATE,
    ]
}

/// A name's place in `fixed_hop_by_hop()`. A `match` on the text tests the length first, so a
/// name costs a few instructions rather than nine comparisons.
fn fixed_hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        "proxy-authorization" => Some(7),
        "proxy-authenticate" => Some(8),
        _ => None,
    }
}

/// Whether `token` names a fixed hop-by-hop header, in any case. By length first: a token is
/// compared with at most two names.
fn is_fixed_hop_by_hop_text(token: &str) -> bool {
    let is = |name: &str| token.eq_ignore_ascii_case(name);
    match token.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("keep-alive") || is("connection"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// The header names listed in every `Connection` header (lower-cased by `HeaderName`).
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    connection_token_texts(headers).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
}

/// The trimmed tokens of every `Connection` header, as the client wrote them.
fn connection_token_texts(headers: &HeaderMap) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes `Connection`, every header it names, and the fixed hop-by-hop headers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, no hashing: most messages carry none, and a response often carries
    // only `Connection: keep-alive`, so only the names present are removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = fixed_hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present != 0 {
        strip_present(headers, present);
    }
}

/// Removes the fixed hop-by-hop headers whose bits are set in `present` and, when `Connection`
/// is one, every header it names.
fn strip_present(headers: &mut HeaderMap, present: u16) {
    let fixed = fixed_hop_by_hop();
    // `fixed[0]` is `Connection`.
    if present & 1 != 0 {
        // Tokens naming fixed hop-by-hop headers (`keep-alive`, the usual one) are compared as
        // text: they go below anyway, and no header name is built for them.
        let named: Vec<HeaderName> = connection_token_texts(headers)
            .filter(|t| !is_fixed_hop_by_hop_text(t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in fixed.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Adds the gateway to `Via`, after any value already there.
pub(crate) fn append_via(headers: &mut HeaderMap) {
    headers.append(VIA, VIA_VALUE);
}

/// How the client reached the gateway: set per connection by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The peer is in `trusted_proxies`: its forwarded headers are extended, not replaced.
    pub(crate) trusted: bool,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, trusted_proxies: &[IpNet]) -> Self {
        let ip = peer.ip();
        ConnInfo {
            peer,
            tls,
            trusted: trusted_proxies.iter().any(|net| net.contains(&ip)),
        }
    }
}

/// Rewrites `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` to describe the real client.
/// A trusted peer has its values extended; anyone else has them replaced, and loses any other
/// `X-Forwarded-*` header (`-Port`, `-Prefix`, ...) and the other client-address headers
/// (`X-Real-IP`, `CF-Connecting-IP`, ...), which it could only have made up.
/// `client_host` is the host the client asked for (its `Host` header or the authority of its
/// target).
pub fn set_forwarded(headers: &mut HeaderMap, conn: ConnInfo, client_host: Option<&HeaderValue>) {
    let other = !conn.trusted && headers.keys().any(is_other_forwarded);
    set_forwarded_found(headers, conn, client_host, other);
}

/// Which of the names a forwarded request loses are present, from one pass over its header
/// names: most requests carry none, and then no removal pass runs.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    /// Bit `i`: `fixed_hop_by_hop()[i]`.
    hop: u16,
    overrides: bool,
    /// `is_other_forwarded`.
    other_forwarded: bool,
}

fn scan(headers: &HeaderMap) -> Present {
    let mut found = Present::default();
    for name in headers.keys() {
        if let Some(i) = fixed_hop_by_hop_index(name) {
            found.hop |= 1 << i;
        } else if is_override(name.as_str()) {
            found.overrides = true;
        } else if is_other_forwarded(name) {
            found.other_forwarded = true;
        }
    }
    found
}

/// The request-side rewrite of the headers, in `upstream_request`'s order: hop-by-hop headers,
/// the method- and URL-override headers, then the forwarded headers and `Via`. `Host` is the
/// caller's (already taken out as `client_host`). The names are looked at once for all three.
pub(crate) fn rewrite_request_headers(
    headers: &mut HeaderMap,
    conn: ConnInfo,
    client_host: Option<&HeaderValue>,
) {
    // A header found here and then removed as one `Connection` names is looked for again below
    // in vain: the flags may only over-report, never miss one.
    let found = scan(headers);
    if found.hop != 0 {
        strip_present(headers, found.hop);
    }
    if found.overrides {
        for name in OVERRIDES {
            headers.remove(name);
        }
    }
    set_forwarded_found(
        headers,
        conn,
        client_host,
        !conn.trusted && found.other_forwarded,
    );
    append_via(headers);
}

/// `set_forwarded`, told whether an untrusted peer sent headers it loses (`other`).
fn set_forwarded_found(
    headers: &mut HeaderMap,
    conn: ConnInfo,
    client_host: Option<&HeaderValue>,
    other: bool,
) {
    if other {
        remove_other_forwarded(headers);
    }
    let proto = if conn.tls { "https" } else { "http" };
    let (ip, element) = base_values(conn, client_host);
    let (xff, forwarded) = if conn.trusted {
        (
            extended(headers, &X_FORWARDED_FOR, ip),
            extended(headers, &FORWARDED, element),
        )
    } else {
        (ip, element)
    };
    if !(conn.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(conn.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match client_host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    set_value(headers, &X_FORWARDED_FOR, xff);
    set_value(headers, &FORWARDED, forwarded);
}

/// A trusted peer's values of `name` with `new` after them (`None`: not a valid header value).
fn extended(
    headers: &HeaderMap,
    name: &HeaderName,
    new: Option<HeaderValue>,
) -> Option<HeaderValue> {
    let new = new?;
    match joined(headers, name) {
        None => Some(new),
        Some(prev) => {
            // `new` is text: it was made from text.
            let new = new.to_str().unwrap_or_default();
            HeaderValue::try_from(format!("{prev}, {new}")).ok()
        }
    }
}

/// The values describing the peer alone: the `X-Forwarded-For` element (its address) and the
/// `Forwarded` element (`for=...;host=...;proto=...`), `None` if not a valid header value.
fn build_base_values(
    conn: ConnInfo,
    client_host: Option<&HeaderValue>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let proto = if conn.tls { "https" } else { "http" };
    let mut ip = String::with_capacity(48);
    push_ip(&mut ip, conn.peer.ip(), false);

    let mut element = String::with_capacity(64);
    element.push_str("for=");
    push_ip(&mut element, conn.peer.ip(), true);
    if let Some(host) = client_host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        push_quoted(&mut element, host);
    }
    element.push_str(";proto=");
    element.push_str(proto);
    (
        HeaderValue::try_from(ip).ok(),
        HeaderValue::try_from(element).ok(),
    )
}

/// The last peer's base values on this thread, and what they were made from.
struct LastBase {
    ip: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
    values: (Option<HeaderValue>, Option<HeaderValue>),
}

thread_local! {
    static LAST_BASE: std::cell::RefCell<Option<LastBase>> = const { std::cell::RefCell::new(None) };
}

/// `build_base_values`, remembered for the last peer and host on this thread: a keep-alive
/// connection's requests come from one peer and nearly always name one host, so they share the
/// values (cloning a `HeaderValue` is a reference count). The values depend on nothing else.
fn base_values(
    conn: ConnInfo,
    client_host: Option<&HeaderValue>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let ip = conn.peer.ip();
    let same = |last: &LastBase| {
        last.ip == ip
            && last.tls == conn.tls
            && last.host.as_ref().map(HeaderValue::as_bytes)
                == client_host.map(HeaderValue::as_bytes)
    };
    LAST_BASE
        .try_with(|cell| {
            let mut last = cell.borrow_mut();
            match last.as_ref() {
                Some(hit) if same(hit) => hit.values.clone(),
                _ => {
                    let values = build_base_values(conn, client_host);
                    // A copy of the host: the request's value is a view into hyper's whole read
                    // buffer, which the memo would otherwise keep alive.
                    let host = match client_host {
                        None => Some(None),
                        Some(h) => HeaderValue::from_bytes(h.as_bytes()).ok().map(Some),
                    };
                    *last = host.map(|host| LastBase {
                        ip,
                        tls: conn.tls,
                        host,
                        values: values.clone(),
                    });
                    values
                }
            }
        })
        // The thread is being torn down: build them.
        .unwrap_or_else(|_| build_base_values(conn, client_host))
}

/// Whether `name` is one of `OVERRIDES`.
fn is_override(name: &str) -> bool {
    OVERRIDES.contains(&name)
}

/// Whether `name` is an `X-Forwarded-*` header other than the three the gateway sets, or another
/// client-address header.
fn is_other_forwarded(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.strip_prefix("x-forwarded-") {
        Some(rest) => !matches!(rest, "for" | "proto" | "host"),
        None => CLIENT_ADDRESS.contains(&name),
    }
}

/// Removes every `X-Forwarded-*` header the gateway does not set itself, and the other
/// client-address headers.
fn remove_other_forwarded(headers: &mut HeaderMap) {
    if headers.keys().any(is_other_forwarded) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| is_other_forwarded(n))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// The values of every `name` header joined by ", ", if all are text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(v);
    }
    (!out.is_empty()).then_some(out)
}

/// Replaces every `name` header with `value` (all dropped when `None`: not a valid value).
fn set_value(headers: &mut HeaderMap, name: &HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name.clone(), v);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// An address as text; an RFC 7239 node (IPv6 bracketed and quoted) when `node`.
fn push_ip(out: &mut String, ip: IpAddr, node: bool) {
    use std::fmt::Write;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                let o = *octet;
                if o >= 100 {
                    out.push((b'0' + o / 100) as char);
                }
                if o >= 10 {
                    out.push((b'0' + o / 10 % 10) as char);
                }
                out.push((b'0' + o % 10) as char);
            }
        }
        IpAddr::V6(v6) if node => {
            let _ = write!(out, "\"[{v6}]\"");
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// An RFC 9110 quoted-string.
fn push_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_index_names_each_fixed_hop_by_hop_header() {
        for (i, name) in fixed_hop_by_hop().into_iter().enumerate() {
            assert_eq!(fixed_hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in ["host", "content-type", "x-session-token", "tee", "upgrades"] {
            let name = HeaderName::from_static(other);
            assert_eq!(fixed_hop_by_hop_index(&name), None, "{other}");
        }
    }

    #[test]
    fn fixed_hop_by_hop_tokens_are_known_in_any_case_and_nothing_else_is() {
        for name in fixed_hop_by_hop() {
            let text = name.as_str();
            assert!(is_fixed_hop_by_hop_text(text), "{text}");
            assert!(
                is_fixed_hop_by_hop_text(&text.to_ascii_uppercase()),
                "{text}"
            );
            let mut longer = text.to_owned();
            longer.push('s');
            assert!(!is_fixed_hop_by_hop_text(&longer), "{longer}");
            assert!(!is_fixed_hop_by_hop_text(&text[1..]), "{text}");
        }
        for other in ["", "t", "tf", "x-trailer", "keep-alivf", "upgrad3", "close"] {
            assert!(!is_fixed_hop_by_hop_text(other), "{other}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("x-end-to-end", "a"),
            ("x-end-to-end", "b"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(left, vec![("x-end-to-end", "a"), ("x-end-to-end", "b")]);
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
        ] {
            let mut out = String::new();
            push_ip(&mut out, ip.parse().unwrap(), false);
            assert_eq!(out, ip);
        }
        let mut out = String::new();
        push_ip(&mut out, "2001:db8::1".parse().unwrap(), true);
        assert_eq!(out, "\"[2001:db8::1]\"");
    }

    #[test]
    fn a_quoted_host_escapes_quotes_and_backslashes() {
        let mut out = String::new();
        push_quoted(&mut out, "a\"b\\c");
        assert_eq!(out, "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn via_is_appended() {
        let mut h = map(&[("via", "1.0 fred")]);
        append_via(&mut h);
        let all: Vec<_> = h.get_all(VIA).iter().collect();
        assert_eq!(all, vec!["1.0 fred", "1.1 companies-gateway"]);
    }

    fn conn(ip: &str, trusted: &[IpNet]) -> ConnInfo {
        ConnInfo::new(SocketAddr::new(ip.parse().unwrap(), 5000), false, trusted)
    }

    #[test]
    fn an_untrusted_peer_replaces_client_values() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let host = HeaderValue::from_static("gw.example");
        set_forwarded(&mut h, conn("203.0.113.7", &[]), Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.7;host=\"gw.example\";proto=http"
        );
    }

    #[test]
    fn an_untrusted_peer_loses_other_forwarded_headers_and_a_trusted_one_keeps_them() {
        let sent = [
            ("x-forwarded-port", "8443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-server", "evil"),
            ("x-forwarded-port", "9443"),
            ("x-forwardedness", "not one of them"),
            ("x-end-to-end", "kept"),
        ];
        let mut h = map(&sent);
        set_forwarded(&mut h, conn("203.0.113.7", &[]), None);
        for name in [
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-server",
        ] {
            assert!(!h.contains_key(name), "{name} went on");
        }
        assert_eq!(h["x-forwardedness"], "not one of them");
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");

        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&sent);
        set_forwarded(&mut h, conn("10.1.2.3", &trusted), None);
        let ports: Vec<_> = h.get_all("x-forwarded-port").iter().collect();
        assert_eq!(ports, vec!["8443", "9443"]);
        assert_eq!(h["x-forwarded-prefix"], "/admin");
    }

    #[test]
    fn override_headers_are_removed_and_others_kept() {
        let mut h = map(&[
            ("x-http-method-override", "PATCH"),
            ("X-HTTP-Method", "PATCH"),
            ("x-method-override", "PATCH"),
            ("x-original-url", "/companies/v2/rs/1/contacts/2"),
            ("x-rewrite-url", "/companies/v2/rs/1/contacts/2"),
            ("x-http-method-override", "DELETE"),
            ("x-http-methods", "not one of them"),
            ("x-url", "kept"),
        ]);
        rewrite_request_headers(&mut h, conn("203.0.113.7", &[]), None);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            vec![
                "forwarded",
                "via",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-http-methods",
                "x-url"
            ]
        );
    }

    #[test]
    fn client_address_headers_go_from_an_untrusted_peer_and_stay_from_a_trusted_one() {
        let sent = [
            ("x-real-ip", "6.6.6.6"),
            ("X-Client-IP", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-real-ips", "kept"),
        ];
        let mut h = map(&sent);
        set_forwarded(&mut h, conn("203.0.113.7", &[]), None);
        for (name, _) in &sent[..4] {
            assert!(!h.contains_key(*name), "{name} went on");
        }
        assert_eq!(h["x-real-ips"], "kept");

        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&sent);
        set_forwarded(&mut h, conn("10.1.2.3", &trusted), None);
        for (name, value) in sent {
            assert_eq!(h[name], value, "{name}");
        }
    }

    #[test]
    fn a_trusted_peer_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let host = HeaderValue::from_static("gw.internal");
        set_forwarded(&mut h, conn("10.1.2.3", &trusted), Some(&host));
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 198.51.100.2, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=10.1.2.3;host=\"gw.internal\";proto=http"
        );
    }

    #[test]
    fn ipv6_peers_are_bracketed_in_forwarded() {
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, conn("::1", &[]), None);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    /// The rewrite as it was: one pass per concern, each function on its own.
    fn rewrite_reference(h: &mut HeaderMap, conn: ConnInfo, host: Option<&HeaderValue>) {
        strip_hop_by_hop(h);
        if h.keys().any(|n| is_override(n.as_str())) {
            for name in OVERRIDES {
                h.remove(name);
            }
        }
        set_forwarded(h, conn, host);
        append_via(h);
    }

    fn listed(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        h.iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_one_pass_rewrite_does_what_the_separate_passes_did() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let sets: [&[(&str, &str)]; 7] = [
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer x"),
            ],
            &[
                (
                    "connection",
                    "x-forwarded-port, X-HTTP-Method-Override, x-forwarded-for",
                ),
                ("x-forwarded-port", "1"),
                ("x-http-method-override", "DELETE"),
                ("x-forwarded-for", "198.51.100.9"),
                ("forwarded", "for=198.51.100.9"),
            ],
            &[
                ("x-forwarded-prefix", "/a"),
                ("x-real-ip", "6.6.6.6"),
                ("x-original-url", "/b"),
                ("te", "trailers"),
                ("keep-alive", "1"),
            ],
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
            ],
            &[
                ("forwarded", "for=\"[::1]\""),
                ("x-forwarded-proto", "https"),
            ],
            &[("connection", "close"), ("via", "1.0 fred")],
            &[("x-forwarded-host", "a.example"), ("upgrade", "h2c")],
        ];
        let hosts = [
            None,
            Some(HeaderValue::from_static("gw.example")),
            Some(HeaderValue::from_static("q\"uote")),
            Some(HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()),
        ];
        let peers = [
            conn("203.0.113.7", &trusted),
            conn("10.1.2.3", &trusted),
            conn("::1", &trusted),
            ConnInfo::new(
                SocketAddr::new("10.1.2.3".parse().unwrap(), 1),
                true,
                &trusted,
            ),
        ];
        // Every combination, twice over, so that the remembered base values of one are met by
        // the next with another peer, TLS or host.
        for _ in 0..2 {
            for set in sets {
                for host in &hosts {
                    for peer in peers {
                        let mut got = map(set);
                        rewrite_request_headers(&mut got, peer, host.as_ref());
                        let mut want = map(set);
                        rewrite_reference(&mut want, peer, host.as_ref());
                        assert_eq!(listed(&got), listed(&want), "{set:?} {host:?} {peer:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn remembered_base_values_are_those_of_the_same_peer_and_host() {
        let a = conn("203.0.113.7", &[]);
        let b = conn("203.0.113.8", &[]);
        let h1 = HeaderValue::from_static("one.example");
        let h2 = HeaderValue::from_static("two.example");
        let calls = [
            (a, Some(&h1)),
            (a, Some(&h1)),
            (a, Some(&h2)),
            (b, Some(&h2)),
            (b, None),
            (a, None),
            (a, Some(&h1)),
        ];
        for (peer, host) in calls {
            assert_eq!(base_values(peer, host), build_base_values(peer, host));
        }
        // The memo holds a copy of the host, not the request's buffer.
        let buffer = bytes::Bytes::from(b"three.example and the rest of a read buffer".to_vec());
        let h3 = HeaderValue::from_maybe_shared(buffer.slice(..13)).unwrap();
        assert_eq!(base_values(a, Some(&h3)), build_base_values(a, Some(&h3)));
        drop(h3);
        assert!(buffer.is_unique(), "the memo kept a view into the buffer");
        assert_eq!(
            base_values(a, Some(&HeaderValue::from_static("three.example"))),
            build_base_values(a, Some(&HeaderValue::from_static("three.example")))
        );
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, b, Some(&h1));
        assert_eq!(h["x-forwarded-for"], "203.0.113.8");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.8;host=\"one.example\";proto=http"
        );
    }
}
