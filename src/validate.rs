//! The update-contact contract, stages 1–5 (gateway.md §2): headers, size, then path and body.
//! The first failing stage answers with every problem of that stage. A request that passes is
//! forwarded with the exact bytes the client sent; other routes stream through untouched.

use std::future::Future;
use std::pin::Pin;
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
use crate::config::{Mode, UnknownFields};
use crate::contract::{self, Violations};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::observe::Validated;
use crate::outcome::Reason;
use crate::request_id::RequestId;
use crate::route::{match_route, Route, RouteLabel};
use crate::{box_body, full_body, Body};

/// The contract layer's part of the config.
#[derive(Debug, Clone, Copy)]
pub struct ContractConfig {
    pub mode: Mode,
    pub unknown_fields: UnknownFields,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
}

/// Put on an update-contact request that passed stages 1–5 (or that report mode lets through),
/// for the session layer.
#[derive(Debug, Clone, Copy)]
pub struct ContractPassed;

/// Stages 1–3: Authorization, X-Session-Token, Content-Type.
pub fn check_headers(headers: &HeaderMap) -> Result<(), GatewayError> {
    contract::check_authorization(headers).map_err(|problems| GatewayError::Unauthorized {
        reason: Reason::Authorization,
        problems,
    })?;
    contract::check_session_token(headers).map_err(|problems| GatewayError::Unauthorized {
        reason: Reason::SessionToken,
        problems,
    })?;
    contract::check_content_type(headers).map_err(GatewayError::UnsupportedMediaType)
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

/// Stage 5: every violation of the path and the body, path first.
pub fn check_path_and_body(
    company_id: &str,
    contact_id: &str,
    body: &[u8],
    unknown: UnknownFields,
) -> Result<(), Violations> {
    let path = contract::check_path_params(company_id, contact_id);
    let body = contract::check_body(body, unknown);
    match (path, body) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(mut p), Err(b)) => {
            p.append(b);
            Err(p)
        }
        (Err(v), Ok(())) | (Ok(()), Err(v)) => Err(v),
    }
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
    fn record(&self, violations: &Violations, request_id: Option<&RequestId>) {
        for (field, code, n) in violations.counts() {
            self.metrics
                .contract_violations
                .with_label_values(&[field.as_str(), code.as_str()])
                .inc_by(n);
        }
        if self.cfg.mode == Mode::Report {
            self.metrics
                .report_only
                .with_label_values(&[RouteLabel::UpdateContact.as_str()])
                .inc();
            let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
            let codes: Vec<&str> = violations.iter().map(|v| v.code.as_str()).collect();
            tracing::warn!(
                request_id = request_id.map(|r| r.as_str()).unwrap_or(""),
                ?fields,
                ?codes,
                "report mode: forwarding a request that breaks the contract"
            );
        }
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
        let is_route = matches!(
            match_route(req.method(), req.uri().path()),
            Route::UpdateContact { .. }
        );
        let cfg = self.judge.cfg;
        if !is_route {
            // Streamed through, under the same whole-body deadline.
            let timeout = cfg.body_read_timeout;
            let req = req.map(|body| box_body(DeadlineBody::new(body, timeout)));
            return ResponseFuture::calling(self.inner.call(req), false);
        }
        if let Err(e) = check_headers(req.headers())
            .and_then(|()| check_declared_length(req.headers(), cfg.max_body_bytes))
        {
            return ResponseFuture::failed(e);
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

impl Judge {
    /// Stage 4 (while reading) and stage 5, once the body is in.
    fn judge(
        &self,
        parts: &mut Parts,
        read: Result<
            Result<http_body_util::Collected<Bytes>, crate::BoxError>,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<(Bytes, bool), GatewayError> {
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
        let (company_id, contact_id) = match match_route(&parts.method, parts.uri.path()) {
            Route::UpdateContact {
                company_id,
                contact_id,
            } => (company_id, contact_id),
            Route::Other => return Err(GatewayError::Internal("route lost".into())),
        };
        match check_path_and_body(company_id, contact_id, &bytes, self.cfg.unknown_fields) {
            Ok(()) => {
                parts.extensions.insert(ContractPassed);
                Ok((bytes, true))
            }
            Err(violations) => {
                self.record(&violations, parts.extensions.get::<RequestId>());
                match self.cfg.mode {
                    Mode::Enforce => Err(GatewayError::InvalidRequest(violations)),
                    Mode::Report => {
                        parts.extensions.insert(ContractPassed);
                        Ok((bytes, false))
                    }
                }
            }
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
        Calling { #[pin] fut: S::Future, validated: bool },
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
    fn calling(fut: S::Future, validated: bool) -> Self {
        ResponseFuture {
            state: State::Calling { fut, validated },
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
                        Ok((bytes, validated)) => {
                            let req = Request::from_parts(parts, full_body(bytes));
                            State::Calling {
                                fut: inner.call(req),
                                validated,
                            }
                        }
                        Err(e) => State::Failed { err: Some(e) },
                    }
                }
                StateProj::Calling { fut, validated } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if *validated {
                        res.extensions_mut().insert(Validated);
                    }
                    return Poll::Ready(Ok(res));
                }
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
