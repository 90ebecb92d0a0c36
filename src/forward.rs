//! The innermost service: rewrites a request for the upstream and sends it through the
//! connection pool, bounded by `request_timeout` until the response head.
//!
//! `request_timeout` starts once the request body has been handed to the upstream whole (at
//! once for a buffered or empty body). While a streamed body is still arriving, the client's
//! `body_read_timeout` governs: a slow upload is a 408, its upstream request aborted mid-body,
//! never an upstream timeout. A body the upstream stops reading is bounded by both timeouts.
//!
//! A streamed body that §9 keeps for replay (an idempotent method, at most 64 KiB declared by
//! `Content-Length`: `retry::replay_length`) is collected before the first attempt, within
//! `body_read_timeout`, and sent as it came (same bytes, same `Content-Length`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Limited};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tower::Service;

use crate::body::{client_fault, BodyEnd, ClientFault, WatchedBody};
use crate::config::UpstreamTarget;
use crate::context::{ContractState, RequestCtx};
use crate::error::GatewayError;
use crate::headers::{append_via, rewrite_request_headers, strip_hop_by_hop, ConnInfo};
use crate::otel::{self, ClientSpan, UpstreamSpans};
use crate::outcome::{Outcome, UpstreamAddr, UpstreamErrorKind, UpstreamTiming};
use crate::pool::{Pool, PoolError, PooledBody, SendFuture};
use crate::{box_body, full_body, Body, BoxError};

/// What the forwarder needs to know, built once at start-up.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub target: UpstreamTarget,
    pub request_timeout: Duration,
    /// The client's whole-body deadline (`limits.body_read_timeout`); with `request_timeout`, it
    /// bounds a request whose streamed body the upstream stops reading.
    pub body_read_timeout: Duration,
}

/// Rewrites a client request into the upstream request: the target comes from config alone, the
/// query passes byte for byte, hop-by-hop and method/URL-override headers go, `Host` becomes the
/// upstream's, `Via` and the forwarded headers are set. Method, body and other end-to-end headers
/// are untouched.
pub fn upstream_request(
    mut req: Request<Body>,
    cfg: &ForwardConfig,
    conn: ConnInfo,
) -> Result<Request<Body>, GatewayError> {
    let target = &cfg.target;
    // Taken out before anything else: a `Connection` header naming `Host` does not change the
    // host the client asked for.
    let client_host = req.headers_mut().remove(HOST).or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path = req.uri().path();
    let pq = match req.uri().path_and_query() {
        // No base path: the client's path and query, as parsed, without a copy.
        Some(pq) if target.base_path.is_empty() && path.starts_with('/') => pq.clone(),
        _ => {
            let mut pq = String::with_capacity(target.base_path.len() + path.len() + 64);
            pq.push_str(&target.base_path);
            if !path.starts_with('/') {
                pq.push('/');
            }
            pq.push_str(path);
            if let Some(q) = req.uri().query() {
                pq.push('?');
                pq.push_str(q);
            }
            PathAndQuery::try_from(pq)
                .map_err(|e| GatewayError::Internal(format!("upstream path: {e}")))?
        }
    };
    // Origin-form: the pool writes `Host` (HTTP/1) or `:authority` (h2) for the upstream.
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
    rewrite_request_headers(req.headers_mut(), conn, client_host.as_ref());
    Ok(req)
}

/// Cleans an upstream response for the client.
pub(crate) fn client_response(res: Response<PooledBody>) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers);
    Response::from_parts(parts, box_body(body))
}

#[derive(Clone)]
pub struct Forward {
    pool: Pool,
    cfg: Arc<ForwardConfig>,
}

impl Forward {
    pub(crate) fn new(pool: Pool, cfg: ForwardConfig) -> Self {
        Forward {
            pool,
            cfg: Arc::new(cfg),
        }
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool is always ready: it connects when no idle connection is left.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (decided, trace, buffered) = match req.extensions().get::<RequestCtx>() {
            Some(ctx) => (
                Some((ctx.undecided(), ctx.conn, ctx.contract())),
                ctx.trace.clone(),
                buffered(ctx),
            ),
            None => (None, None, false),
        };
        let (prepared, validated) = match decided {
            // Fail closed: whatever the order of the layers above, a request on an operation
            // goes out only with the contract's decision and, where required, a session verdict.
            Some((undecided, conn, contract)) => match (undecided, conn) {
                (Some(what), _) => (Err(GatewayError::Undecided(what)), false),
                (None, Some(conn)) => (
                    upstream_request(req, &self.cfg, conn),
                    contract == ContractState::Passed,
                ),
                (None, None) => (
                    Err(GatewayError::Internal(
                        "request without connection info".into(),
                    )),
                    false,
                ),
            },
            None => (Err(GatewayError::Undecided("route")), false),
        };
        let mut span = None;
        let state = match prepared {
            Ok(req) => {
                let cfg = &self.cfg;
                // The whole body, when known, so that an idempotent request can be replayed
                // (never looked up for PATCH or POST, which are not).
                let whole = if req.body().is_end_stream() {
                    Some(bytes::Bytes::new())
                } else if crate::retry::idempotent(req.method()) {
                    req.extensions()
                        .get::<crate::retry::Buffered>()
                        .map(|b| b.0.clone())
                } else {
                    None
                };
                // A small streamed body of an idempotent request, collected so that it too can be
                // replayed (only when retries are on at all).
                let collect = match whole {
                    None if self.pool.replays() => crate::retry::replay_length(
                        req.method(),
                        req.headers(),
                        req.body().size_hint().exact(),
                    ),
                    _ => None,
                };
                // Each upstream attempt gets its CLIENT span from the pool, the parent of the
                // `traceparent` it carries (an invalid one from the client is replaced).
                let spans = trace.map(|t| UpstreamSpans::new(t, &cfg.target.authority));
                span = spans.as_ref().and_then(UpstreamSpans::last);
                if let Some(len) = collect {
                    let (parts, body) = req.into_parts();
                    // Boxed as a `Send` future here: inside the async fn, rustc cannot prove
                    // `Limited`'s error conversion for every lifetime.
                    let read: Collect = Box::pin(Limited::new(body, len as usize).collect());
                    // Boxed: the common case's future stays as small as before.
                    State::Collecting {
                        fut: Box::pin(collect_body(parts, read, len, cfg.body_read_timeout)),
                        pool: self.pool.clone(),
                        request_timeout: cfg.request_timeout,
                        spans,
                    }
                } else {
                    // A body still to come is watched; the timer starts when it has been sent.
                    // One already in memory is handed over at once, as an empty one is.
                    let (req, body, first) = if buffered || req.body().is_end_stream() {
                        (req, None, cfg.request_timeout)
                    } else {
                        let (parts, body) = req.into_parts();
                        let (body, rx) = WatchedBody::new(body);
                        let req = Request::from_parts(parts, box_body(body));
                        (req, Some(rx), cfg.body_read_timeout + cfg.request_timeout)
                    };
                    State::Sending {
                        fut: self.pool.send(req, whole, spans),
                        timer: tokio::time::sleep(first),
                        body,
                        request_timeout: cfg.request_timeout,
                    }
                }
            }
            Err(e) => State::Failed { err: Some(e) },
        };
        ResponseFuture {
            state,
            started: Instant::now(),
            validated,
            span,
        }
    }
}

/// Whether the request's body is already whole in memory: the contract buffers (and checks) the
/// body of an operation that declares one before it decides (`Operation::has_body`), so a decided
/// request on such an operation carries the buffered bytes, not a stream.
fn buffered(ctx: &RequestCtx) -> bool {
    ctx.contract() != ContractState::Unchecked
        && ctx
            .operation()
            .is_some_and(crate::contract::Operation::has_body)
}

type Collect =
    Pin<Box<dyn Future<Output = Result<http_body_util::Collected<Bytes>, BoxError>> + Send>>;

/// A body kept for replay being read: then the request to send, and its body.
type Collecting =
    Pin<Box<dyn Future<Output = Result<(Request<Body>, Bytes), GatewayError>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State {
        // A body kept for replay is being read; then `Sending` with it whole.
        Collecting {
            fut: Collecting,
            pool: Pool,
            request_timeout: Duration,
            // The trace's attempts, handed to the pool with the body.
            spans: Option<UpstreamSpans>,
        },
        Sending {
            #[pin] fut: SendFuture,
            // `request_timeout` from the body's end, or a bound on the body plus the wait.
            #[pin] timer: Sleep,
            body: Option<oneshot::Receiver<BodyEnd>>,
            request_timeout: Duration,
        },
        Failed { err: Option<GatewayError> },
    }
}

pin_project! {
    pub struct ResponseFuture {
        #[pin]
        state: State,
        started: Instant,
        validated: bool,
        // The last attempt's recorded CLIENT span, ended with the response head or the error.
        span: Option<Arc<std::sync::Mutex<Option<ClientSpan>>>>,
    }
}

/// The client's part in a failed request, as its error.
fn client_error(fault: ClientFault) -> GatewayError {
    match fault {
        ClientFault::Deadline => GatewayError::RequestTimeout,
        ClientFault::Aborted => GatewayError::ClientAborted,
        ClientFault::Body => GatewayError::BadRequest("the request body was malformed"),
    }
}

/// An upstream request failed: the client's fault if its body failed (told by the watched
/// body, or found in the error), else the upstream's.
fn send_error(e: PoolError, body: Option<&mut oneshot::Receiver<BodyEnd>>) -> GatewayError {
    if let Some(Ok(BodyEnd::Failed(fault))) = body.map(|rx| rx.try_recv()) {
        return client_error(fault);
    }
    match client_fault(&e) {
        Some(fault) => client_error(fault),
        None => GatewayError::upstream(e.kind(), e),
    }
}

/// The timer ran out: `request_timeout` after the body was sent, or before it ever was.
#[derive(Debug, thiserror::Error)]
#[error("no response head within request_timeout ({0:?}) of sending the request")]
struct NoResponseHead(Duration);

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(poll_state(this.state, this.started, *this.validated, cx));
        if let Some(span) = this.span.take().and_then(|open| otel::take_open(&open)) {
            match &result {
                Ok(res) => span.answered(res.status()),
                Err(e) => span.failed(
                    e.outcome()
                        .upstream_error
                        .map_or_else(|| e.status().1, |k| k.as_str()),
                ),
            }
        }
        Poll::Ready(result)
    }
}

/// A body kept for replay could not be read whole: the client's fault, as when streamed.
fn collect_error(e: &(dyn std::error::Error + 'static)) -> GatewayError {
    match client_fault(e) {
        Some(fault) => client_error(fault),
        None => GatewayError::BadRequest("the request body was malformed"),
    }
}

/// Reads a streamed body kept for replay whole, within `body_read_timeout` (a 408 past it, as
/// when streamed): the request to send, with the same bytes under the same `Content-Length`.
async fn collect_body(
    parts: http::request::Parts,
    read: Collect,
    len: u64,
    body_read_timeout: Duration,
) -> Result<(Request<Body>, Bytes), GatewayError> {
    let bytes = tokio::time::timeout(body_read_timeout, read)
        .await
        .map_err(|_| GatewayError::RequestTimeout)?
        .map_err(|e| collect_error(&*e))?
        .to_bytes();
    // Hyper frames the body by its `Content-Length`; were it ever otherwise, fail closed rather
    // than send what the client did not declare.
    if bytes.len() as u64 != len {
        return Err(GatewayError::BadRequest("the request body was malformed"));
    }
    Ok((Request::from_parts(parts, full_body(bytes.clone())), bytes))
}

/// Drives one attempt: the body kept for replay, the send, the body's end and the timer.
fn poll_state(
    mut state: Pin<&mut State>,
    started: &Instant,
    validated: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<Body>, GatewayError>> {
    loop {
        match state.as_mut().project() {
            StateProj::Collecting {
                fut,
                pool,
                request_timeout,
                spans,
            } => {
                let next = match ready!(fut.as_mut().poll(cx)) {
                    Ok((req, bytes)) => State::Sending {
                        fut: pool.send(req, Some(bytes), spans.take()),
                        timer: tokio::time::sleep(*request_timeout),
                        body: None,
                        request_timeout: *request_timeout,
                    },
                    Err(err) => State::Failed { err: Some(err) },
                };
                state.set(next);
            }
            StateProj::Failed { err } => {
                return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                    GatewayError::Internal("polled after completion".into())
                })))
            }
            StateProj::Sending {
                fut,
                mut timer,
                body,
                request_timeout,
            } => {
                if let Poll::Ready(result) = fut.poll(cx) {
                    return Poll::Ready(match result {
                        Err(e) => Err(send_error(e, body.as_mut())),
                        // The gateway strips `Upgrade`, so it never asks for one: a 101 would
                        // hand the client a connection nobody validated.
                        Ok(res) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                            Err(GatewayError::upstream(
                                UpstreamErrorKind::Protocol,
                                "101 Switching Protocols to a request that asked for no upgrade",
                            ))
                        }
                        Ok(res) => {
                            let timing = UpstreamTiming {
                                status: res.status(),
                                elapsed: started.elapsed(),
                                validated,
                                addr: res.extensions().get::<UpstreamAddr>().map(|a| a.0),
                            };
                            let mut res = client_response(res);
                            res.extensions_mut().insert(Outcome::forwarded(timing));
                            Ok(res)
                        }
                    });
                }
                if let Some(rx) = body.as_mut() {
                    if let Poll::Ready(end) = Pin::new(rx).poll(cx) {
                        *body = None;
                        match end {
                            // Answer now; dropping the send aborts what is left upstream, which
                            // never saw the whole body.
                            Ok(BodyEnd::Failed(fault)) => {
                                return Poll::Ready(Err(client_error(fault)))
                            }
                            // Sent whole, or no longer wanted: the wait for the head starts.
                            Ok(BodyEnd::Sent) | Err(_) => {
                                let deadline = tokio::time::Instant::now() + *request_timeout;
                                timer.as_mut().reset(deadline);
                            }
                        }
                    }
                }
                ready!(timer.poll(cx));
                let err: BoxError = Box::new(NoResponseHead(*request_timeout));
                return Poll::Ready(Err(GatewayError::upstream(UpstreamErrorKind::Timeout, err)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::empty_body;
    use std::net::SocketAddr;

    fn cfg(url: &str) -> ForwardConfig {
        ForwardConfig {
            target: UpstreamTarget::parse(url).unwrap(),
            request_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
        }
    }

    fn conn() -> ConnInfo {
        ConnInfo::new(SocketAddr::from(([192, 0, 2, 1], 4000)), false, &[])
    }

    #[test]
    fn the_target_comes_from_config_and_the_query_passes_as_is() {
        let req = Request::builder()
            .method("PATCH")
            .uri("http://evil.example:1/companies/v2/rs/1/contacts/2?a=1&b=%2F%20x&&c")
            .header("host", "evil.example:1")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .body(empty_body())
            .unwrap();
        let out = upstream_request(req, &cfg("https://api.example:8443/main/"), conn()).unwrap();
        // Origin-form: the pool adds the upstream's authority (`Host` or `:authority`).
        assert_eq!(
            out.uri().to_string(),
            "/main/companies/v2/rs/1/contacts/2?a=1&b=%2F%20x&&c"
        );
        assert_eq!(out.method(), "PATCH");
        // The client's Host is gone; the pool writes the upstream's.
        assert!(out.headers().get("host").is_none());
        assert_eq!(out.headers()["x-forwarded-host"], "evil.example:1");
        assert_eq!(out.headers()["via"], "1.1 companies-gateway");
        let custom: Vec<_> = out.headers().get_all("x-custom").iter().collect();
        assert_eq!(custom, vec!["one", "two"]);
    }

    fn ctx(method: &str, path: &str) -> RequestCtx {
        RequestCtx::builtin_for_test(method, path)
    }

    #[test]
    fn only_a_decided_body_of_an_operation_that_declares_one_counts_as_buffered() {
        let mut patch = ctx("PATCH", "/companies/v2/rs/1/contacts/2");
        assert!(patch.operation().is_some_and(|op| op.has_body()));
        assert!(!buffered(&patch), "not yet read by the contract");
        patch.set_contract(ContractState::Passed);
        assert!(buffered(&patch));
        patch.set_contract(ContractState::Reported);
        assert!(buffered(&patch));
        // Not an operation (the built-in document has one): its body streams through.
        let mut other = ctx("POST", "/anything");
        other.set_contract(ContractState::Passed);
        assert!(!buffered(&other));
    }

    #[test]
    fn a_root_base_path_adds_nothing() {
        for (target, sent) in [
            ("/x/y", "/x/y"),
            ("/x/y?", "/x/y?"),
            ("/x/y?a=1&&b=%2F", "/x/y?a=1&&b=%2F"),
            ("http://evil.example/x?q", "/x?q"),
            ("*", "/*"),
        ] {
            let req = Request::builder().uri(target).body(empty_body()).unwrap();
            let out = upstream_request(req, &cfg("https://api.example"), conn()).unwrap();
            assert_eq!(out.uri().to_string(), sent, "{target}");
        }
    }
}
