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
    let fixed = fixed_hop_by_hop();
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = fixed_hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `fixed[0]` is `Connection`.
    if present & 1 != 0 {
        // Tokens naming fixed hop-by-hop headers (`keep-alive`, the usual one) are compared as
        // text: they go below anyway, and no header name is built for them.
        let named: Vec<HeaderName> = connection_token_texts(headers)
            .filter(|t| !fixed.iter().any(|f| f.as_str().eq_ignore_ascii_case(t)))
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

/// Removes the method- and URL-override headers (`X-HTTP-Method-Override`, `X-Original-URL`,
/// ...), from every peer.
pub(crate) fn strip_overrides(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names decides.
    if !headers.keys().any(|n| OVERRIDES.contains(&n.as_str())) {
        return;
    }
    for name in OVERRIDES {
        headers.remove(name);
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
    if !conn.trusted {
        remove_other_forwarded(headers);
    }
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

    let (xff, forwarded) = if conn.trusted {
        let extend = |prev: Option<String>, new: &str| match prev {
            Some(p) => format!("{p}, {new}"),
            None => new.to_string(),
        };
        (
            extend(joined(headers, &X_FORWARDED_FOR), &ip),
            extend(joined(headers, &FORWARDED), &element),
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
    set_text(headers, &X_FORWARDED_FOR, xff);
    set_text(headers, &FORWARDED, forwarded);
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

/// Replaces every `name` header with `value` (dropped if it is not a valid header value).
fn set_text(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    match HeaderValue::try_from(value) {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(_) => {
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
        strip_overrides(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["x-http-methods", "x-url"]);
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
}
