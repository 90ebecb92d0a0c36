//! A streamed request body with a deadline for the whole body (`body_read_timeout`), not a
//! per-chunk idle timer: one byte every few seconds cannot keep a request alive. Its errors are
//! marked as the client's, so that a broken client body is never blamed on the upstream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{Body, BoxError};

/// The body did not arrive within `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within the deadline")]
pub struct BodyDeadline;

/// The client's body failed (bad chunk, connection lost).
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
pub struct ClientBodyError(#[source] BoxError);

pin_project! {
    pub struct DeadlineBody {
        #[pin]
        inner: Body,
        #[pin]
        deadline: Sleep,
    }
}

impl DeadlineBody {
    pub fn new(inner: Body, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: tokio::time::sleep_until(Instant::now() + timeout),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(
                frame.map(|f| f.map_err(|e| Box::new(ClientBodyError(e)) as BoxError)),
            );
        }
        match this.deadline.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyDeadline)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a streamed body's failure says about the client, found in an error's source chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    Deadline,
    Body,
}

pub fn client_fault(err: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        if cur.is::<BodyDeadline>() {
            return Some(ClientFault::Deadline);
        }
        if cur.is::<ClientBodyError>() {
            return Some(ClientFault::Body);
        }
        e = cur.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_fails_at_the_deadline_even_if_bytes_trickle() {
        let stream = futures_util::stream::unfold(0u8, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from(vec![n]))),
                n.wrapping_add(1),
            ))
        });
        let body = crate::box_body(StreamBody::new(stream));
        let err = DeadlineBody::new(body, Duration::from_millis(3500))
            .collect()
            .await
            .err()
            .unwrap();
        assert_eq!(client_fault(&*err), Some(ClientFault::Deadline));
    }

    #[tokio::test]
    async fn a_prompt_body_passes() {
        let body = DeadlineBody::new(crate::full_body("abc"), Duration::from_secs(1));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abc");
    }
}
