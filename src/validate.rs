//! The contract of the request's operation, stages 1–5 (gateway.md §2): headers, size, then path,
//! query, header parameters and body. The first failing stage answers with every problem of that
//! stage. A request that passes is forwarded with the exact bytes the client sent, and its context
//! records the decision; requests on no operation stream through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::DeadlineBody;
use crate::config::Mode;
use crate::context::{ContractState, RequestCtx, Routes};
use crate::contract::Violations;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::request_id::RequestId;
use crate::route::Match;
use crate::{box_body, full_body, Body};

/// The contract layer's part of the config.
#[derive(Debug, Clone, Copy)]
pub struct ContractConfig {
    pub mode: Mode,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
}

/// Stage 4, before reading: a declared length over the limit.
pub fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), GatewayError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(GatewayError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Stage 5 for the operation the context recognised: its path parameters (raw, in template
/// order), the query, the header parameters and `body`; every violation. A request without an
/// operation has nothing to check here.
pub fn check_stage_5(ctx: &RequestCtx, parts: &Parts, body: &[u8]) -> Result<(), Violations> {
    let Some(op) = ctx.operation() else {
        return Ok(());
    };
    let (params, n) = ctx.params(parts.uri.path());
    op.check_request(&params[..n], parts.uri.query(), &parts.headers, body)
}

#[derive(Clone)]
pub struct ContractLayer {
    cfg: ContractConfig,
    metrics: Metrics,
}

impl ContractLayer {
    pub fn new(cfg: ContractConfig, metrics: Metrics) -> Self {
        ContractLayer { cfg, metrics }
    }
}

impl<S> Layer<S> for ContractLayer {
    type Service = ContractService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ContractService {
            inner,
            judge: Judge {
                cfg: self.cfg,
                metrics: self.metrics.clone(),
            },
        }
    }
}

#[derive(Clone)]
pub struct ContractService<S> {
    inner: S,
    judge: Judge,
}

/// What the layer decides with, once the body is in.
#[derive(Clone)]
struct Judge {
    cfg: ContractConfig,
    metrics: Metrics,
}

impl Judge {
    fn record(&self, violations: &Violations, route: &str, request_id: Option<&RequestId>) {
        for (field, code, n) in violations.counts() {
            self.metrics
                .contract_violations
                .with_label_values(&[field.as_str(), code.as_str()])
                .inc_by(n);
        }
        if self.cfg.mode == Mode::Report {
            self.metrics.report_only.with_label_values(&[route]).inc();
            let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
            let codes: Vec<&str> = violations.iter().map(|v| v.code.as_str()).collect();
            tracing::warn!(
                request_id = request_id.map(|r| r.as_str()).unwrap_or(""),
                route,
                ?fields,
                ?codes,
                "report mode: forwarding a request that breaks the contract"
            );
        }
    }

    /// Stage 5 on the request (its body in `body`), recorded in its context: `Ok` forwards.
    fn decide(&self, parts: &mut Parts, body: &[u8]) -> Result<(), GatewayError> {
        let Some(ctx) = parts.extensions.get::<RequestCtx>() else {
            return Err(GatewayError::Undecided("route"));
        };
        let state = match check_stage_5(ctx, parts, body) {
            Ok(()) => ContractState::Passed,
            Err(violations) => {
                self.record(
                    &violations,
                    ctx.label(),
                    parts.extensions.get::<RequestId>(),
                );
                match self.cfg.mode {
                    Mode::Enforce => return Err(GatewayError::InvalidRequest(violations)),
                    Mode::Report => ContractState::Reported,
                }
            }
        };
        if let Some(ctx) = parts.extensions.get_mut::<RequestCtx>() {
            ctx.set_contract(state);
        }
        Ok(())
    }

    /// Stage 4 (while reading) and stage 5, once the body is in.
    fn judge(
        &self,
        parts: &mut Parts,
        read: Result<
            Result<http_body_util::Collected<Bytes>, crate::BoxError>,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<Bytes, GatewayError> {
        let bytes = match read {
            Err(_) => return Err(GatewayError::RequestTimeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(GatewayError::PayloadTooLarge {
                    limit: self.cfg.max_body_bytes,
                })
            }
            // The client went away mid-body: counted as aborted, not as a framing rejection.
            Ok(Err(e)) if crate::body::is_client_abort(&*e) => {
                return Err(GatewayError::ClientAborted)
            }
            Ok(Err(_)) => return Err(GatewayError::BadRequest("the request body was malformed")),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        self.decide(parts, &bytes).map(|()| bytes)
    }
}

/// The compiled routes and the operation's index, when the context recognised one.
fn operation_of<B>(req: &Request<B>) -> Option<(Arc<Routes>, usize)> {
    let ctx = req.extensions().get::<RequestCtx>()?;
    match ctx.route() {
        Match::Operation { index, .. } => Some((ctx.routes_arc(), index)),
        _ => None,
    }
}

impl<S> Service<Request<Body>> for ContractService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError> + Clone,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let cfg = self.judge.cfg;
        let found = operation_of(&req);
        let Some(op) = found
            .as_ref()
            .and_then(|(routes, index)| routes.api().operations().get(*index))
        else {
            // No operation: streamed through, under the same whole-body deadline.
            let timeout = cfg.body_read_timeout;
            let req = req.map(|body| box_body(DeadlineBody::new(body, timeout)));
            return ResponseFuture::calling(self.inner.call(req));
        };
        let head = op.check_head(req.headers()).and_then(|()| {
            if op.has_body() {
                check_declared_length(req.headers(), cfg.max_body_bytes)
            } else {
                Ok(())
            }
        });
        if let Err(e) = head {
            return ResponseFuture::failed(e);
        }
        if !op.has_body() {
            // Nothing to buffer: stage 5 on the head, and any body streams through.
            let (mut parts, body) = req.into_parts();
            if let Err(e) = self.judge.decide(&mut parts, &[]) {
                return ResponseFuture::failed(e);
            }
            let body = box_body(DeadlineBody::new(body, cfg.body_read_timeout));
            return ResponseFuture::calling(self.inner.call(Request::from_parts(parts, body)));
        }
        // The ready inner service goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        ResponseFuture {
            state: State::Reading {
                read: tokio::time::timeout(
                    cfg.body_read_timeout,
                    Limited::new(body, cfg.max_body_bytes).collect(),
                ),
                parts: Some(parts),
                inner: Some(inner),
                judge: Some(self.judge.clone()),
            },
        }
    }
}

type Read = tokio::time::Timeout<http_body_util::combinators::Collect<Limited<Body>>>;

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<Body>>> {
        Reading {
            #[pin] read: Read,
            parts: Option<Parts>,
            inner: Option<S>,
            judge: Option<Judge>,
        },
        Calling { #[pin] fut: S::Future },
        Failed { err: Option<GatewayError> },
    }
}

pin_project! {
    pub struct ResponseFuture<S: Service<Request<Body>>> {
        #[pin]
        state: State<S>,
    }
}

impl<S: Service<Request<Body>>> ResponseFuture<S> {
    fn calling(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
        }
    }

    fn failed(err: GatewayError) -> Self {
        ResponseFuture {
            state: State::Failed { err: Some(err) },
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Reading {
                    read,
                    parts,
                    inner,
                    judge,
                } => {
                    let result = ready!(read.poll(cx));
                    let (Some(mut parts), Some(mut inner), Some(judge)) =
                        (parts.take(), inner.take(), judge.take())
                    else {
                        return Poll::Ready(Err(GatewayError::Internal(
                            "contract future polled after completion".into(),
                        )));
                    };
                    match judge.judge(&mut parts, result) {
                        Ok(bytes) => {
                            // Kept beside an idempotent request, so that it can be replayed.
                            if crate::retry::idempotent(&parts.method) {
                                parts
                                    .extensions
                                    .insert(crate::retry::Buffered(bytes.clone()));
                            }
                            let req = Request::from_parts(parts, full_body(bytes));
                            State::Calling {
                                fut: inner.call(req),
                            }
                        }
                        Err(e) => State::Failed { err: Some(e) },
                    }
                }
                StateProj::Calling { fut } => return fut.poll(cx),
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                        GatewayError::Internal("contract future polled after completion".into())
                    })))
                }
            };
            this.state.set(next);
        }
    }
}
