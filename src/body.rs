//! A streamed request body with a deadline for the whole body (`body_read_timeout`), not a
//! per-chunk idle timer: one byte every few seconds cannot keep a request alive. Its errors are
//! marked as the client's, so that a broken client body is never blamed on the upstream.
//!
//! `WatchedBody` reports when a streamed body has been handed to the upstream connection whole,
//! or failed: `request_timeout` starts only then, so a slow upload is judged by
//! `body_read_timeout` (408) and never counted as an upstream timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
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
    /// `body_read_timeout` passed.
    Deadline,
    /// The client went away mid-body: the connection closed or reset, or the h2 stream was reset.
    Aborted,
    /// The body's framing was broken (a bad chunk, a length mismatch).
    Body,
}

pub fn client_fault(err: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        if cur.is::<BodyDeadline>() {
            return Some(ClientFault::Deadline);
        }
        if cur.is::<ClientBodyError>() {
            return Some(if is_client_abort(cur) {
                ClientFault::Aborted
            } else {
                ClientFault::Body
            });
        }
        e = cur.source();
    }
    None
}

/// Whether a failed client body (hyper's error, or anything wrapping it) means the client went
/// away rather than sent something malformed: hyper reports a connection that ended mid-body as
/// an `UnexpectedEof` I/O error, a reset one as its OS error, and an h2 client's `RST_STREAM`
/// or `GOAWAY` as a remote h2 error. Decided by type and kind, never by message.
pub fn is_client_abort(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            );
        }
        if let Some(h2) = cur.downcast_ref::<h2::Error>() {
            return h2.is_io() || (h2.is_remote() && (h2.is_reset() || h2.is_go_away()));
        }
        if let Some(hyper) = cur.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() {
                return true;
            }
        }
        e = cur.source();
    }
    false
}

/// How a watched body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The last frame was handed to the upstream connection.
    Sent,
    /// The client's body failed.
    Failed(ClientFault),
}

pin_project! {
    /// A streamed request body that tells, once, how it ended. Dropped unfinished (the upstream
    /// answered early, or the connection failed), it tells nothing: the receiver sees the
    /// sender gone.
    pub struct WatchedBody {
        #[pin]
        inner: Body,
        tx: Option<oneshot::Sender<BodyEnd>>,
    }
}

impl WatchedBody {
    pub fn new(inner: Body) -> (Self, oneshot::Receiver<BodyEnd>) {
        let (tx, rx) = oneshot::channel();
        (
            WatchedBody {
                inner,
                tx: Some(tx),
            },
            rx,
        )
    }
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let end = match &frame {
            None => Some(BodyEnd::Sent),
            Some(Ok(_)) if this.inner.is_end_stream() => Some(BodyEnd::Sent),
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(BodyEnd::Failed(
                client_fault(e.as_ref()).unwrap_or(ClientFault::Body),
            )),
        };
        if let Some(end) = end {
            if let Some(tx) = this.tx.take() {
                // The forwarder may have gone already; nothing to tell then.
                let _ = tx.send(end);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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

    #[tokio::test]
    async fn a_watched_body_tells_when_it_was_sent_whole() {
        let stream = futures_util::stream::iter(vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]);
        let (body, mut rx) = WatchedBody::new(crate::box_body(StreamBody::new(stream)));
        let mut body = std::pin::pin!(body);
        assert!(body.frame().await.is_some());
        assert!(rx.try_recv().is_err(), "told before the end");
        assert!(body.frame().await.is_some());
        assert!(body.frame().await.is_none());
        assert_eq!(rx.await.unwrap(), BodyEnd::Sent);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_body_tells_the_clients_fault() {
        let stream = futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>();
        let slow = DeadlineBody::new(
            crate::box_body(StreamBody::new(stream)),
            Duration::from_secs(1),
        );
        let (body, rx) = WatchedBody::new(crate::box_body(slow));
        assert!(body.collect().await.is_err());
        assert_eq!(rx.await.unwrap(), BodyEnd::Failed(ClientFault::Deadline));
    }

    #[test]
    fn a_client_that_went_away_is_told_from_a_malformed_body() {
        use std::io::{Error, ErrorKind};
        let wrapped = |e: Error| ClientBodyError(Box::new(e));
        for kind in [
            ErrorKind::UnexpectedEof,
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
        ] {
            let e = wrapped(Error::new(kind, "x"));
            assert_eq!(client_fault(&e), Some(ClientFault::Aborted), "{kind:?}");
        }
        for kind in [ErrorKind::InvalidInput, ErrorKind::InvalidData] {
            let e = wrapped(Error::new(kind, "x"));
            assert_eq!(client_fault(&e), Some(ClientFault::Body), "{kind:?}");
        }
        let reset = ClientBodyError(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        // A reset h2 made locally (a protocol error it found) is not the client going away.
        assert_eq!(client_fault(&reset), Some(ClientFault::Body));
    }
}
