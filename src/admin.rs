//! The admin listener: `/metrics`, `/healthz` and `/readyz`, on its own port.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::metrics::Metrics;
use crate::{full_body, Body};

/// Whether the gateway takes traffic: false until start-up completes and again while draining.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Answers one admin request.
pub fn handle<B>(req: &Request<B>, metrics: &Metrics, ready: &Readiness) -> Response<Body> {
    let text = |status: StatusCode, body: &'static str| {
        let mut res = Response::new(full_body(body));
        *res.status_mut() = status;
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.get() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => match metrics.render() {
            Ok(body) => {
                let mut res = Response::new(full_body(body));
                res.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot render metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The admin service for the listener.
pub fn service(
    metrics: Metrics,
    ready: Readiness,
) -> impl Fn(Request<hyper::body::Incoming>) -> std::future::Ready<Result<Response<Body>, Infallible>>
       + Clone {
    move |req| std::future::ready(Ok(handle(&req, &metrics, &ready)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, m: &Metrics, r: &Readiness) -> StatusCode {
        let req = Request::get(path).body(()).unwrap();
        handle(&req, m, r).status()
    }

    #[test]
    fn health_readiness_and_metrics() {
        let m = Metrics::new(&[1.0]).unwrap();
        let r = Readiness::default();
        assert_eq!(get("/healthz", &m, &r), 200);
        assert_eq!(get("/readyz", &m, &r), 503);
        r.set(true);
        assert_eq!(get("/readyz", &m, &r), 200);
        assert_eq!(get("/metrics", &m, &r), 200);
        assert_eq!(get("/nope", &m, &r), 404);
    }
}
