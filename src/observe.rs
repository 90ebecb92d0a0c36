//! The observer: every request once in the metrics, once in the access log and once as a SERVER
//! span, whoever answered it. Only closed label sets are used (gateway.md §3); the only header
//! values logged are `Host` and `User-Agent` (§7), never a token, a query string or a body.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::access_log::{AccessLog, Line};
use crate::context::{RequestCtx, Routes};
use crate::headers::ConnInfo;
use crate::metrics::{method_index, method_name, Metrics};
use crate::otel::{self, ServerEnd, ServerRequest, Telemetry, Trace};
use crate::outcome::{Outcome, OutcomeKind, ProblemSlug};
use crate::request_id::RequestId;
use crate::shed_client::client_ip;

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
    access: Option<AccessLog>,
    telemetry: Option<Telemetry>,
    trusted_proxies: Arc<[IpNet]>,
}

impl ObserveLayer {
    pub(crate) fn new(
        metrics: Metrics,
        access: Option<AccessLog>,
        telemetry: Option<Telemetry>,
        trusted_proxies: &[IpNet],
    ) -> Self {
        ObserveLayer {
            metrics,
            access,
            telemetry,
            trusted_proxies: trusted_proxies.into(),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    layer: ObserveLayer,
}

/// What the access line needs beyond the metrics; kept only when the log is on. Shared
/// handles on the request's bytes (refcounts), no copies.
struct Logged {
    log: AccessLog,
    /// The path is read from it when the line is written.
    uri: Uri,
    version: Version,
    authority: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    bytes_in: Option<u64>,
}

/// What is known of a request before it is answered.
struct Pending {
    metrics: Metrics,
    started: Instant,
    /// The request's routes and its slot in them (gateway.md §3's `route`), from the context.
    routes: Option<Arc<Routes>>,
    route: usize,
    /// Index into `METHOD_LABELS`.
    method: usize,
    request_id: Option<RequestId>,
    client: Option<ConnInfo>,
    client_ip: Option<IpAddr>,
    logged: Option<Logged>,
    /// The request's trace (its SERVER span when sampled).
    trace: Option<Trace>,
}

/// What the response told, beyond its status and outcome.
#[derive(Default)]
struct Answered {
    problem: Option<&'static str>,
    bytes_out: Option<u64>,
}

impl Pending {
    fn finish(self, status: StatusCode, outcome: Outcome, answered: Answered) {
        // An aborted request is 499 (nginx's "client closed request") whether it was dropped
        // unanswered or answered to a client already gone mid-body.
        let status = match outcome.kind {
            OutcomeKind::Aborted => client_closed(),
            _ => status,
        };
        let m = &self.metrics;
        let upstream = outcome.upstream;
        let elapsed = self.started.elapsed();
        let series = self
            .routes
            .as_deref()
            .map_or(m.other_route(), Routes::series);
        let route = series.label(self.route);
        m.count_request(series, self.route, self.method, status, outcome.kind);
        m.observe_request_duration(series, self.route, outcome.kind, elapsed.as_secs_f64());
        if let Some(reason) = outcome.reason {
            m.rejections
                .with_label_values(&[route, reason.as_str()])
                .inc();
        }
        if let Some(kind) = outcome.upstream_error {
            m.upstream_errors.with_label_values(&[kind.as_str()]).inc();
        }
        if let Some(t) = upstream {
            m.observe_upstream_duration(series, self.route, t.status, t.elapsed.as_secs_f64());
            if t.validated && matches!(t.status.as_u16(), 400 | 422) {
                m.contract_drift.with_label_values(&[route]).inc();
                // The line the drift runbook (GatewayContractDrift) points at: §7.
                tracing::warn!(
                    request_id = self.request_id.as_ref().map(|r| r.as_str()).unwrap_or(""),
                    route,
                    upstream_status = t.status.as_u16(),
                    "contract drift: the upstream refused a request the gateway validated"
                );
            }
        }
        if let Some(trace) = &self.trace {
            otel::end_server(
                trace,
                &ServerEnd {
                    status,
                    outcome: outcome.kind.as_str(),
                    reason: outcome.reason.map(|r| r.as_str()),
                    problem: answered.problem,
                },
            );
        }
        if let Some(l) = self.logged {
            let ids = self.trace.as_ref().map(otel::ids);
            l.log.log(&Line {
                request_id: self.request_id.as_ref().map(|r| r.as_str()),
                trace_id: ids.map(|i| i.0),
                span_id: ids.map(|i| i.1),
                method: method_name(self.method),
                route,
                path: Some(l.uri.path()),
                protocol: Some(protocol(l.version)),
                authority: l.authority.as_ref().map(HeaderValue::as_bytes),
                status: status.as_u16(),
                outcome: outcome.kind.as_str(),
                reason: outcome.reason.map(|r| r.as_str()),
                upstream_status: upstream.map(|t| t.status.as_u16()),
                upstream_addr: upstream.and_then(|t| t.addr),
                duration_us: elapsed.as_micros() as u64,
                upstream_us: upstream.map(|t| t.elapsed.as_micros() as u64),
                bytes_in: l.bytes_in,
                bytes_out: answered.bytes_out,
                client: self.client_ip,
                peer: self.client.map(|c| c.peer),
                user_agent: l.user_agent.as_ref().map(HeaderValue::as_bytes),
            });
        }
    }
}

/// The access line's `protocol`.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

impl<S, B, ResBody> Service<Request<B>> for ObserveService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: HttpBody,
    ResBody: HttpBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let layer = &self.layer;
        layer.metrics.inflight_requests.inc();
        let ctx = req.extensions().get::<RequestCtx>();
        let conn = ctx.and_then(|c| c.conn);
        let logging = layer.access.is_some() && crate::telemetry::access_enabled();
        // The client after `trusted_proxies`, for the log and the span.
        let client_ip = (logging || layer.telemetry.is_some())
            .then(|| conn.map(|c| client_ip(&c, &layer.trusted_proxies, req.headers())))
            .flatten();
        let trace = layer.telemetry.as_ref().map(|t| {
            t.start_server(&ServerRequest {
                method: otel::semconv_method(req.method()),
                template: ctx.and_then(RequestCtx::operation).map(|op| op.template()),
                path: req.uri().path(),
                version: req.version(),
                tls: conn.is_some_and(|c| c.tls),
                client: client_ip,
                // Looked up only for a sampled request.
                user_agent: None,
                headers: req.headers(),
            })
        });
        let logged = match &layer.access {
            Some(log) if logging => Some(Logged {
                log: log.clone(),
                uri: req.uri().clone(),
                version: req.version(),
                authority: req.headers().get(HOST).cloned().or_else(|| {
                    req.uri()
                        .authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                }),
                user_agent: req.headers().get(USER_AGENT).cloned(),
                bytes_in: req.body().size_hint().exact(),
            }),
            _ => None,
        };
        let pending = Pending {
            metrics: layer.metrics.clone(),
            started: Instant::now(),
            routes: ctx.map(RequestCtx::routes_arc),
            route: ctx.map_or(0, RequestCtx::route_slot),
            method: method_index(req.method()),
            request_id: req.extensions().get::<RequestId>().cloned(),
            client: conn,
            client_ip,
            logged,
            trace: trace.clone(),
        };
        if let Some(t) = &trace {
            if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
                ctx.trace = Some(t.clone());
            }
        }
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Guard(Some(pending)),
            trace,
        }
    }
}

/// 499: nginx's "client closed request".
fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Records an abandoned request (the client went away) as `aborted` when dropped unfinished.
struct Guard(Option<Pending>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.metrics.inflight_requests.dec();
            let aborted = Outcome {
                kind: OutcomeKind::Aborted,
                reason: None,
                upstream_error: None,
                upstream: None,
            };
            // No status was sent.
            p.finish(client_closed(), aborted, Answered::default());
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Guard,
        // Current while the layers below run, so that introspection finds its parent span.
        trace: Option<Trace>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: HttpBody,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let result = ready!(otel::within(this.trace, || inner.poll(cx)));
        if let Some(p) = this.guard.0.take() {
            p.metrics.inflight_requests.dec();
            match &result {
                Ok(res) => {
                    let outcome = res
                        .extensions()
                        .get::<Outcome>()
                        .copied()
                        .unwrap_or(Outcome {
                            kind: OutcomeKind::Error,
                            reason: None,
                            upstream_error: None,
                            upstream: None,
                        });
                    let answered = Answered {
                        problem: res.extensions().get::<ProblemSlug>().map(|s| s.0),
                        bytes_out: res.body().size_hint().exact(),
                    };
                    p.finish(res.status(), outcome, answered);
                }
                Err(_) => {
                    let error = Outcome {
                        kind: OutcomeKind::Error,
                        reason: None,
                        upstream_error: None,
                        upstream: None,
                    };
                    p.finish(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        error,
                        Answered::default(),
                    );
                }
            }
        }
        Poll::Ready(result)
    }
}
