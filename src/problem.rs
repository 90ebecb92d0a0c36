//! Where errors become responses: every `GatewayError` from the layers below, and every panic,
//! is answered with its problem body (`GatewayError::into_response`). Below this layer services
//! return `Result<_, GatewayError>`; above it, only responses.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::future::{CatchUnwind, FutureExt};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::request_id::RequestId;
use crate::Body;

#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemLayer;

impl<S> Layer<S> for ProblemLayer {
    type Service = ProblemService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProblemService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ProblemService<S> {
    inner: S,
}

/// What the problem body names: the request path and id. Both are reference-counted clones, so
/// a request that succeeds allocates nothing here.
struct ProblemContext {
    uri: http::Uri,
    request_id: Option<RequestId>,
}

impl ProblemContext {
    fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .map(RequestId::as_str)
            .unwrap_or("")
    }
}

impl<S, B> Service<Request<B>> for ProblemService<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An inner service that is not ready with an error still gets an answer: the error is
        // kept and returned from `call`. Our inner services never fail readiness.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ctx = ProblemContext {
            uri: req.uri().clone(),
            request_id: req.extensions().get::<RequestId>().cloned(),
        };
        let inner = &mut self.inner;
        let state = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
            Ok(fut) => State::Running {
                fut: AssertUnwindSafe(fut).catch_unwind(),
            },
            Err(panic) => State::Panicked {
                message: Some(panic_message(&*panic)),
            },
        };
        ResponseFuture { state, ctx }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] fut: CatchUnwind<AssertUnwindSafe<F>> },
        Panicked { message: Option<String> },
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        ctx: ProblemContext,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err = match this.state.project() {
            StateProj::Running { fut } => match ready!(fut.poll(cx)) {
                Ok(Ok(res)) => return Poll::Ready(Ok(res)),
                Ok(Err(e)) => e,
                Err(panic) => GatewayError::Internal(panic_message(&*panic)),
            },
            StateProj::Panicked { message } => {
                GatewayError::Internal(message.take().unwrap_or_default())
            }
        };
        let request_id = this.ctx.request_id();
        match &err {
            GatewayError::Internal(message) => {
                tracing::error!(request_id, %message, "internal error");
            }
            // The client gets only the kind; the operator needs the cause (refused, certificate
            // name, timeout, ...). It comes from the connection, never from the request.
            GatewayError::Upstream { kind, source } => {
                tracing::warn!(request_id, kind = kind.as_str(), error = %source, "upstream request failed");
            }
            _ => {}
        }
        Poll::Ready(Ok(err.into_response(this.ctx.uri.path(), request_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Outcome, OutcomeKind};
    use tower::ServiceExt;

    fn req() -> Request<()> {
        let mut r = Request::builder().uri("/a?b=c").body(()).unwrap();
        r.extensions_mut()
            .insert(RequestId(http::HeaderValue::from_static("rid")));
        r
    }

    #[tokio::test]
    async fn an_error_becomes_its_problem() {
        let svc = ProblemLayer.layer(tower::service_fn(|_: Request<()>| async {
            Err::<Response<Body>, _>(GatewayError::UnknownRoute)
        }));
        let res = svc.oneshot(req()).await.unwrap();
        assert_eq!(res.status(), 404);
    }

    #[tokio::test]
    async fn a_panic_in_the_future_is_a_500() {
        let svc = ProblemLayer.layer(tower::service_fn(|_: Request<()>| async {
            if true {
                panic!("boom");
            }
            Ok::<Response<Body>, GatewayError>(Response::new(crate::empty_body()))
        }));
        let res = svc.oneshot(req()).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(
            res.extensions().get::<Outcome>().map(|o| o.kind),
            Some(OutcomeKind::Error)
        );
    }

    #[derive(Clone)]
    struct PanicsInCall;
    impl Service<Request<()>> for PanicsInCall {
        type Response = Response<Body>;
        type Error = GatewayError;
        type Future = std::future::Ready<Result<Response<Body>, GatewayError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            panic!("in call")
        }
    }

    #[tokio::test]
    async fn a_panic_in_call_is_a_500() {
        let res = ProblemLayer
            .layer(PanicsInCall)
            .oneshot(req())
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
    }
}
