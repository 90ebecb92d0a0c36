//! `max_concurrent_requests`: beyond it a request is shed at once with 503 `overloaded`, never
//! queued, so latency holds under overload.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::error::GatewayError;

#[derive(Debug, Clone)]
pub struct ShedLayer {
    slots: Arc<Semaphore>,
}

impl ShedLayer {
    pub fn new(max_concurrent_requests: usize) -> Self {
        ShedLayer {
            slots: Arc::new(Semaphore::new(max_concurrent_requests)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = ShedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            slots: self.slots.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ShedService<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

impl<S, B, ResBody> Service<Request<B>> for ShedService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>, Error = GatewayError>,
{
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future, OwnedSemaphorePermit>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => ResponseFuture::Running {
                fut: self.inner.call(req),
                permit: Some(permit),
            },
            Err(_) => ResponseFuture::Shed {
                err: Some(GatewayError::Overloaded),
            },
        }
    }
}

pin_project! {
    /// Holds a slot, the gateway's or one client's (`shed_client`), until the response head is
    /// ready; a shed request answers its error at once.
    #[project = Proj]
    pub enum ResponseFuture<F, P> {
        Running { #[pin] fut: F, permit: Option<P> },
        Shed { err: Option<GatewayError> },
    }
}

impl<F, T, P> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<T, GatewayError>>,
{
    type Output = Result<T, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Running { fut, permit } => {
                let out = ready!(fut.poll(cx));
                permit.take();
                Poll::Ready(out)
            }
            Proj::Shed { err } => Poll::Ready(Err(err.take().unwrap_or(GatewayError::Overloaded))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_beyond_the_limit_are_shed_and_slots_come_back() {
        let (tx, rx) = oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let svc = ShedLayer::new(1).layer(tower::service_fn(move |_: Request<()>| {
            let rx = rx.clone();
            async move {
                if let Some(rx) = rx.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, GatewayError>(Response::new(()))
            }
        }));
        let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        let shed = svc.clone().oneshot(Request::new(())).await;
        assert!(matches!(shed, Err(GatewayError::Overloaded)));
        tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert!(svc.oneshot(Request::new(())).await.is_ok());
    }
}
