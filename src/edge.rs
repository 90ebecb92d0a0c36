//! The HTTP edge (gateway.md §4) on every route: what hyper lets through but a proxy must not
//! forward. Decisions are pure functions; the layer only applies them.

use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::{CONNECTION, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, Method, Request, Response, Version};
use tower::{Layer, Service};

use crate::config::UnknownRoutes;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::headers::connection_tokens;
use crate::route::{check_canonical, Match};

/// Headers that `Connection` may not name: dropping them as hop-by-hop would change what the
/// request means (or let it skip validation).
const PROTECTED: [&str; 6] = [
    "authorization",
    "x-session-token",
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
];

/// Every §4 check that needs only the request head and its route, as the context recognised it.
pub fn check_edge<B>(
    req: &Request<B>,
    route: Match,
    unknown_routes: UnknownRoutes,
) -> Result<(), GatewayError> {
    check_target(req.method(), req.uri())?;
    let path = req.uri().path();
    check_canonical(path).map_err(|why| GatewayError::BadRequest(why.detail()))?;
    check_host(req.version(), req.headers())?;
    check_headers(req.headers())?;
    if route == Match::MethodCase {
        // `patch` or `Patch` on a path an operation matches would bypass the contract at an
        // upstream that folds case (ASP.NET Core, Werkzeug).
        return Err(GatewayError::BadRequest(
            "the method differs from the operation's only in letter case: methods are case-sensitive",
        ));
    }
    let operation = matches!(route, Match::Operation { .. });
    if operation && req.headers().contains_key(UPGRADE) {
        return Err(GatewayError::BadRequest(
            "Upgrade is not allowed on this route",
        ));
    }
    if !operation && unknown_routes == UnknownRoutes::Reject {
        return Err(GatewayError::UnknownRoute);
    }
    Ok(())
}

/// Targets a reverse proxy has no upstream meaning for: `CONNECT` (a tunnel through a forward
/// proxy) and the asterisk form (`OPTIONS *`, which no base path can prefix).
pub(crate) fn check_target(method: &Method, uri: &http::Uri) -> Result<(), GatewayError> {
    if method == Method::CONNECT {
        return Err(GatewayError::BadRequest(
            "CONNECT is not served: the gateway is not a forward proxy",
        ));
    }
    if uri.path() == "*" {
        return Err(GatewayError::BadRequest(
            "the asterisk-form target `*` is not forwarded",
        ));
    }
    Ok(())
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; any `Host` sent is one host and an
/// optional port. It becomes `X-Forwarded-Host` and `Forwarded`'s `host`, so it must be sound.
pub(crate) fn check_host(version: Version, headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut hosts = headers.get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        return if version == Version::HTTP_11 {
            Err(GatewayError::BadRequest("an HTTP/1.1 request needs a Host"))
        } else {
            Ok(())
        };
    };
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("Host may be sent only once"));
    }
    if !is_host_and_port(host.as_bytes()) {
        return Err(GatewayError::BadRequest(
            "Host must be a host name or address, and an optional port",
        ));
    }
    Ok(())
}

/// `host [":" port]`: a name of letters, digits, `-`, `.`, `_` and `~` (an IPv4 address is one),
/// or an IPv6 address in brackets; the port at most five digits. RFC 3986 would also let a name
/// hold `%`-escapes and `!$&'()*+,;=`; no DNS name does, and `,`, `;` and `=` would split the
/// `X-Forwarded-Host` and `Forwarded` values the host is copied into.
fn is_host_and_port(text: &[u8]) -> bool {
    let (host_ok, port) = match text.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let ip = &rest[..end];
            let ok = ip.len() >= 2
                && ip
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            (ok, &rest[end + 1..])
        }
        None => {
            let colon = text.iter().position(|&b| b == b':').unwrap_or(text.len());
            let name = &text[..colon];
            let ok = !name.is_empty()
                && name
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            (ok, &text[colon..])
        }
    };
    let port_ok = match port.strip_prefix(b":") {
        Some(digits) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        None => port.is_empty(),
    };
    host_ok && port_ok
}

/// `Expect`, `Transfer-Encoding` and `Connection` abuse.
pub fn check_headers(headers: &HeaderMap) -> Result<(), GatewayError> {
    for expect in headers.get_all(EXPECT) {
        if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(GatewayError::ExpectationFailed);
        }
    }
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding must be exactly `chunked`",
            ));
        }
    }
    if headers.contains_key(CONNECTION) {
        let protected =
            connection_tokens(headers).any(|name: HeaderName| PROTECTED.contains(&name.as_str()));
        if protected {
            return Err(GatewayError::BadRequest(
                "Connection may not name an end-to-end header the gateway checks",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct EdgeLayer {
    unknown_routes: UnknownRoutes,
}

impl EdgeLayer {
    pub(crate) fn new(unknown_routes: UnknownRoutes) -> Self {
        EdgeLayer { unknown_routes }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            unknown_routes: self.unknown_routes,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EdgeService<S> {
    inner: S,
    unknown_routes: UnknownRoutes,
}

impl<S, B, ResBody> Service<Request<B>> for EdgeService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>, Error = GatewayError>,
{
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = Either<S::Future, std::future::Ready<Result<Response<ResBody>, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Without a context no operation is known; Forward refuses such a request anyway.
        let route = req
            .extensions()
            .get::<RequestCtx>()
            .map_or(Match::None, RequestCtx::route);
        match check_edge(&req, route, self.unknown_routes) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(e) => Either::Right(std::future::ready(Err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 request, with `Host: gw` unless `headers` name a host.
    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "gw");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(r: Request<()>, unknown: UnknownRoutes) -> u16 {
        let router = crate::route::Router::new([(
            &http::Method::PATCH,
            "/companies/v2/rs/{companyId}/contacts/{contactId}",
        )])
        .unwrap();
        let route = router.recognise(r.method(), r.uri().path());
        match check_edge(&r, route, unknown) {
            Ok(()) => 0,
            Err(e) => e.status().0.as_u16(),
        }
    }

    #[test]
    fn edge_rows() {
        use UnknownRoutes::Forward;
        let route = "/companies/v2/rs/1/contacts/2";
        let cases: Vec<(Request<()>, u16)> = vec![
            (req("PATCH", route, &[]), 0),
            (req("PATCH", route, &[("expect", "100-continue")]), 0),
            (req("PATCH", route, &[("expect", "100-Continue")]), 0),
            (req("PATCH", route, &[("expect", "200-ok")]), 417),
            (req("GET", "/x", &[("expect", "nope")]), 417),
            (req("PATCH", route, &[("transfer-encoding", "chunked")]), 0),
            (
                req("PATCH", route, &[("transfer-encoding", "gzip, chunked")]),
                400,
            ),
            (req("POST", "/x", &[("transfer-encoding", "identity")]), 400),
            (
                req(
                    "PATCH",
                    route,
                    &[("upgrade", "h2c"), ("connection", "upgrade")],
                ),
                400,
            ),
            (req("GET", "/x", &[("upgrade", "websocket")]), 0),
            (req("PATCH", route, &[("connection", "close")]), 0),
            (
                req(
                    "PATCH",
                    route,
                    &[("connection", "keep-alive, Authorization")],
                ),
                400,
            ),
            (req("GET", "/x", &[("connection", "x-session-token")]), 400),
            (req("GET", "/x", &[("connection", "Content-Type")]), 400),
            (req("GET", "/x", &[("connection", "content-length")]), 400),
            (
                req("GET", "/x", &[("connection", "transfer-encoding")]),
                400,
            ),
            (req("GET", "/x", &[("connection", "host")]), 400),
            (req("GET", "/a//b", &[]), 400),
            (req("GET", "/a/../b", &[]), 400),
            (req("PATCH", "/companies/v2/rs/%31/contacts/2", &[]), 400),
            (req("PATCH", "/companies/v2/rs/1/contacts%2F2", &[]), 400),
            (req("PATCH", "/companies%2fv2/rs/1/contacts/2", &[]), 400),
            (req("GET", "/any/a%5Cb", &[]), 400),
            (req("GET", "/any/a%5cb", &[]), 400),
            (req("GET", "/any?path=a%2Fb", &[]), 0),
            (req("patch", route, &[]), 400),
            (req("Patch", route, &[]), 400),
            (req("patch", "/Companies/v2/rs/1/contacts/2/", &[]), 400),
            (req("patch", "/other", &[]), 0),
            (req("get", route, &[]), 0),
            (req("CONNECT", "evil.example:443", &[]), 400),
            (req("OPTIONS", "*", &[]), 400),
            (req("OPTIONS", "/x", &[]), 0),
            (req("GET", "/x", &[("host", "api.example:8443")]), 0),
            (req("GET", "/x", &[("host", "127.0.0.1")]), 0),
            (req("GET", "/x", &[("host", "[::1]:80")]), 0),
            (req("GET", "/x", &[("host", "")]), 400),
            (req("GET", "/x", &[("host", "a b")]), 400),
            (req("GET", "/x", &[("host", "a, for=6.6.6.6")]), 400),
            (req("GET", "/x", &[("host", "user@api.example")]), 400),
            (req("GET", "/x", &[("host", "a/b")]), 400),
            (req("GET", "/x", &[("host", "a"), ("host", "b")]), 400),
            (req("GET", "/x", &[("host", "a,for=6.6.6.6")]), 400),
            (req("GET", "/x", &[("host", "api.example:")]), 0),
            (req("GET", "/x", &[("host", "api.example:123456")]), 400),
            (req("GET", "/x", &[("host", "api.example:8a")]), 400),
            (req("GET", "/x", &[("host", "[::1")]), 400),
            (req("GET", "/x", &[("host", "[]")]), 400),
            (req("GET", "/x", &[("host", "[fe80::1%eth0]")]), 400),
            (req("GET", "/x", &[("host", "[2001:db8::1]")]), 0),
            (req("GET", "/x", &[("host", ":80")]), 400),
            (req("GET", "/x", &[("host", "my_host.internal")]), 0),
        ];
        for (r, want) in cases {
            let line = format!("{} {} {:?}", r.method(), r.uri(), r.headers());
            assert_eq!(status(r, Forward), want, "{line}");
        }
    }

    #[test]
    fn only_http_1_1_requires_a_host() {
        let without = |version| {
            let mut r = Request::get("/x").body(()).unwrap();
            *r.version_mut() = version;
            status(r, UnknownRoutes::Forward)
        };
        assert_eq!(without(Version::HTTP_11), 400);
        assert_eq!(without(Version::HTTP_10), 0);
        assert_eq!(without(Version::HTTP_2), 0);
    }

    #[test]
    fn unknown_routes_are_404_only_when_rejecting() {
        let r = || req("GET", "/companies/v2/rs/1/contacts/2", &[]);
        assert_eq!(status(r(), UnknownRoutes::Forward), 0);
        assert_eq!(status(r(), UnknownRoutes::Reject), 404);
        let ok = req("PATCH", "/companies/v2/rs/1/contacts/2/", &[]);
        assert_eq!(status(ok, UnknownRoutes::Reject), 0);
    }
}
