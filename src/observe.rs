//! The observer: every request once in the metrics and once in the access log, whoever answered
//! it. Only closed label sets are used (gateway.md §3), and no header value is ever logged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::{RequestCtx, Routes};
use crate::headers::ConnInfo;
use crate::metrics::{method_index, method_name, Metrics};
use crate::outcome::{Outcome, OutcomeKind};
use crate::request_id::RequestId;

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    metrics: Metrics,
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
    /// Kept only when the access log is on.
    path: Option<String>,
    client: Option<ConnInfo>,
}

impl Pending {
    fn finish(self, status: StatusCode, outcome: Outcome) {
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
        if let Some(path) = self.path {
            tracing::info!(
                target: "access",
                request_id = self.request_id.as_ref().map(|r| r.as_str()).unwrap_or(""),
                method = method_name(self.method),
                route,
                path = path.as_str(),
                status = status.as_u16(),
                outcome = outcome.kind.as_str(),
                reason = outcome.reason.map(|r| r.as_str()).unwrap_or(""),
                upstream_status = upstream.map(|t| t.status.as_u16()).unwrap_or(0),
                duration_us = elapsed.as_micros() as u64,
                upstream_us = upstream.map(|t| t.elapsed.as_micros() as u64).unwrap_or(0),
                client = %self.client.map(|c| c.peer.to_string()).unwrap_or_default(),
            );
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for ObserveService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.metrics.inflight_requests.inc();
        let ctx = req.extensions().get::<RequestCtx>();
        let pending = Pending {
            metrics: self.metrics.clone(),
            started: Instant::now(),
            routes: ctx.map(RequestCtx::routes_arc),
            route: ctx.map_or(0, RequestCtx::route_slot),
            method: method_index(req.method()),
            request_id: req.extensions().get::<RequestId>().cloned(),
            path: tracing::enabled!(target: "access", tracing::Level::INFO)
                .then(|| req.uri().path().to_string()),
            client: ctx.and_then(|c| c.conn),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Guard(Some(pending)),
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
            p.finish(client_closed(), aborted);
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Guard,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
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
                    p.finish(res.status(), outcome);
                }
                Err(_) => {
                    let error = Outcome {
                        kind: OutcomeKind::Error,
                        reason: None,
                        upstream_error: None,
                        upstream: None,
                    };
                    p.finish(StatusCode::INTERNAL_SERVER_ERROR, error);
                }
            }
        }
        Poll::Ready(result)
    }
}
