//! `X-Request-Id`: keep a client's well-formed id or make one, send it upstream, and return it on
//! every response, the gateway's own included.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, as a request extension for the layers below.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub HeaderValue);

impl RequestId {
    pub(crate) fn as_str(&self) -> &str {
        // Only visible ASCII ever gets here (see `accept`), so this never falls back.
        self.0.to_str().unwrap_or("")
    }
}

/// A client's id is kept when it is exactly one header of 1–128 visible ASCII characters.
pub fn accept(values: http::header::GetAll<'_, HeaderValue>) -> Option<HeaderValue> {
    let mut iter = values.iter();
    let first = iter.next()?;
    if iter.next().is_some() {
        return None;
    }
    let bytes = first.as_bytes();
    let ok = (1..=128).contains(&bytes.len()) && crate::contract::all_visible_ascii(bytes);
    ok.then(|| first.clone())
}

/// A fresh id in UUID v4 form. A per-process random key (one `getrandom` call) and a counter,
/// mixed by SplitMix64: unique within the process, unguessable across processes, and no system
/// call per request.
pub(crate) fn generate() -> HeaderValue {
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (k1, k2) = *KEY.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = (u128::from(splitmix(n ^ k1)) << 64) | u128::from(splitmix(n.wrapping_add(k2)));
    let id = uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("invalid"))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = accept(req.headers().get_all(&X_REQUEST_ID)).unwrap_or_else(generate);
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        req.extensions_mut().insert(RequestId(id.clone()));
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// Sets the id on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    fn ids(values: &[&[u8]]) -> Option<HeaderValue> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(X_REQUEST_ID.clone(), HeaderValue::from_bytes(v).unwrap());
        }
        accept(h.get_all(&X_REQUEST_ID))
    }

    #[test]
    fn only_one_visible_ascii_id_of_1_to_128_is_kept() {
        assert!(ids(&[b"abc-123"]).is_some());
        assert!(ids(&[&[b'a'; 128]]).is_some());
        assert!(ids(&[&[b'a'; 129]]).is_none());
        assert!(ids(&[b""]).is_none());
        assert!(ids(&[b"has space"]).is_none());
        assert!(ids(&[b"caf\xc3\xa9"]).is_none());
        assert!(ids(&[b"a", b"b"]).is_none());
        assert!(ids(&[]).is_none());
    }

    #[test]
    fn generated_ids_are_distinct_v4_uuids() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
        }
    }

    #[tokio::test]
    async fn the_id_goes_down_and_comes_back() {
        let svc = RequestIdLayer.layer(tower::service_fn(|req: Request<()>| async move {
            let ext = req.extensions().get::<RequestId>().unwrap().clone();
            assert_eq!(req.headers()[&X_REQUEST_ID], ext.0);
            Ok::<_, Infallible>(Response::new(()))
        }));
        let req = Request::builder()
            .header("x-request-id", "client-id-1")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers()[&X_REQUEST_ID], "client-id-1");
        let req = Request::builder()
            .header("x-request-id", "bad id")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.headers()[&X_REQUEST_ID].len(), 36);
    }
}
