//! Header hygiene, as pure functions: hop-by-hop stripping, `Via`, and the `X-Forwarded-*` /
//! `Forwarded` headers that describe the real client.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the gateway adds to `Via`.
pub const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 companies-gateway");

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

/// The header names listed in every `Connection` header (lower-cased by `HeaderName`).
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
}

/// Removes `Connection`, every header it names, and the fixed hop-by-hop headers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers).collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in fixed_hop_by_hop() {
        headers.remove(name);
    }
}

/// Adds the gateway to `Via`, after any value already there.
pub fn append_via(headers: &mut HeaderMap) {
    headers.append(VIA, VIA_VALUE);
}

/// How the client reached the gateway: set per connection by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Rewrites `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` to describe the real client.
/// A peer in `trusted` has its values extended; anyone else has them replaced. `client_host` is the
/// host the client asked for (its `Host` header or the authority of its target).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    conn: ConnInfo,
    client_host: Option<&HeaderValue>,
    trusted: &[IpNet],
) {
    let peer_ip = conn.peer.ip();
    let proto = if conn.tls { "https" } else { "http" };
    let is_trusted = trusted.iter().any(|net| net.contains(&peer_ip));
    let peer_text = peer_ip.to_string();

    let mut xff = if is_trusted {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    xff = Some(match xff {
        Some(prev) if !prev.is_empty() => format!("{prev}, {peer_text}"),
        _ => peer_text,
    });

    let mut forwarded_element = format!("for={}", forwarded_node(peer_ip));
    if let Some(host) = client_host.and_then(|h| h.to_str().ok()) {
        forwarded_element.push_str(";host=");
        forwarded_element.push_str(&quoted(host));
    }
    forwarded_element.push_str(";proto=");
    forwarded_element.push_str(proto);
    let forwarded = match is_trusted.then(|| joined(headers, &FORWARDED)).flatten() {
        Some(prev) if !prev.is_empty() => format!("{prev}, {forwarded_element}"),
        _ => forwarded_element,
    };

    let keep_proto = is_trusted && headers.contains_key(&X_FORWARDED_PROTO);
    let keep_host = is_trusted && headers.contains_key(&X_FORWARDED_HOST);
    if !keep_proto {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !keep_host {
        headers.remove(&X_FORWARDED_HOST);
        if let Some(host) = client_host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
    set_text(headers, &X_FORWARDED_FOR, xff);
    set_text(headers, &FORWARDED, Some(forwarded));
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

fn set_text(headers: &mut HeaderMap, name: &HeaderName, value: Option<String>) {
    headers.remove(name);
    if let Some(v) = value.and_then(|v| HeaderValue::try_from(v).ok()) {
        headers.insert(name.clone(), v);
    }
}

/// RFC 7239 node: IPv6 in brackets and quotes.
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// An RFC 7230 quoted-string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
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
    fn via_is_appended() {
        let mut h = map(&[("via", "1.0 fred")]);
        append_via(&mut h);
        let all: Vec<_> = h.get_all(VIA).iter().collect();
        assert_eq!(all, vec!["1.0 fred", "1.1 companies-gateway"]);
    }

    fn conn(ip: &str) -> ConnInfo {
        ConnInfo {
            peer: SocketAddr::new(ip.parse().unwrap(), 5000),
            tls: false,
        }
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
        set_forwarded(&mut h, conn("203.0.113.7"), Some(&host), &[]);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.7;host=\"gw.example\";proto=http"
        );
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
        set_forwarded(&mut h, conn("10.1.2.3"), Some(&host), &trusted);
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
        set_forwarded(&mut h, conn("::1"), None, &[]);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
    }
}
