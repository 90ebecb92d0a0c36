//! When an upstream request may be sent again (gateway.md §9), and the budget that keeps retries
//! from multiplying an outage. The decisions are pure; `pool.rs` runs the attempts.
//!
//! - Bytes never reached the upstream (connect or TLS failure, a connection that failed before
//!   the request was written): any method, with the request handed back untouched.
//! - `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE` also after a reset before the response head, or a
//!   502/503 answer, when the body can be replayed: empty, the validated route's buffered body, or
//!   a streamed body of at most 64 KiB sent with `Content-Length` (collected before the first
//!   attempt: see `replay_length`).
//! - `PATCH`, `POST` (and any other method) never once a byte was written.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Request, Uri, Version};
use prometheus::IntCounter;

use crate::{empty_body, full_body, Body};

/// The validated route's buffered body, put beside the request so that it can be replayed.
#[derive(Debug, Clone)]
pub(crate) struct Buffered(pub(crate) Bytes);

/// Why an attempt failed, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request was never written: it is in hand, untouched.
    NotSent,
    /// The connection broke after the request was (partly) written, before a response head.
    Reset,
    /// The upstream answered 502 or 503.
    Unavailable,
    /// Anything else (a malformed response, a timeout): never retried.
    Other,
}

/// `gateway_upstream_retries_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    NotSent,
    Idempotent,
}

impl Reason {
    pub(crate) const ALL: [Reason; 2] = [Reason::NotSent, Reason::Idempotent];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::NotSent => "not_sent",
            Reason::Idempotent => "idempotent",
        }
    }
}

pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Whether a failed attempt may be retried, and under which reason: the whole of §9's rule.
/// `replayable`: a copy of the request can be rebuilt (method idempotent, body known).
pub(crate) fn decide(method: &Method, failure: Failure, replayable: bool) -> Option<Reason> {
    match failure {
        Failure::NotSent => Some(Reason::NotSent),
        Failure::Reset | Failure::Unavailable if idempotent(method) && replayable => {
            Some(Reason::Idempotent)
        }
        _ => None,
    }
}

/// The largest streamed body kept for replay (gateway.md §9).
pub(crate) const REPLAY_MAX: u64 = 64 * 1024;

/// The length of a streamed body worth collecting before the first attempt so that it can be
/// replayed: that of an idempotent request whose body is declared by one `Content-Length` of at
/// most 64 KiB, which its framing agrees with (`exact`, the body's exact size hint). `None`: the
/// body streams as it arrives, and is retried only while none of it was sent (a chunked body, a
/// larger one, or a method never replayed).
pub(crate) fn replay_length(
    method: &Method,
    headers: &HeaderMap,
    exact: Option<u64>,
) -> Option<u64> {
    if !idempotent(method) {
        return None;
    }
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let declared = values.next()?.to_str().ok()?;
    // Digits only (`u64`'s parser takes a `+`).
    if !declared.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let declared = declared.parse::<u64>().ok()?;
    (values.next().is_none() && declared <= REPLAY_MAX && exact == Some(declared))
        .then_some(declared)
}

/// Full jitter on an exponential base: up to 25 ms, 50 ms, 100 ms, … at most 250 ms.
pub(crate) fn backoff(retry: u32, random: u64) -> Duration {
    let cap_ms = (25u64 << retry.saturating_sub(1).min(4)).min(250);
    Duration::from_millis(random % (cap_ms + 1))
}

/// An idempotent request, kept so that it can be sent again after bytes of it were written.
pub(crate) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    /// A copy of `req` whose body is `body`; `None` unless the method may be retried after
    /// being written, so that PATCH and POST pay nothing.
    pub(crate) fn of(req: &Request<Body>, body: Option<Bytes>) -> Option<Replay> {
        let body = body?;
        idempotent(req.method()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        })
    }

    pub(crate) fn request(&self) -> Request<Body> {
        let body = if self.body.is_empty() {
            empty_body()
        } else {
            full_body(self.body.clone())
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Seconds in the budget's window.
const WINDOW: usize = 10;
/// Retries allowed in any window on top of the share of requests.
const FLOOR: f64 = 10.0;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

/// In any 10-second window, retries <= `ratio` × requests + 10, counted per second.
pub(crate) struct RetryBudget {
    ratio: f64,
    epoch: Instant,
    slots: Mutex<[Slot; WINDOW]>,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            epoch: Instant::now(),
            slots: Mutex::new([Slot::default(); WINDOW]),
        }
    }

    fn second(&self) -> u64 {
        // From 1, so that a zeroed slot is never taken for the current second.
        self.epoch.elapsed().as_secs() + 1
    }

    pub(crate) fn record_request(&self) {
        self.record_request_at(self.second());
    }

    pub(crate) fn try_retry(&self) -> bool {
        self.try_retry_at(self.second())
    }

    fn slot(slots: &mut [Slot; WINDOW], second: u64) -> &mut Slot {
        let slot = &mut slots[(second % WINDOW as u64) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot
    }

    fn record_request_at(&self, second: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            Self::slot(&mut slots, second).requests += 1;
        }
    }

    fn try_retry_at(&self, second: u64) -> bool {
        let Ok(mut slots) = self.slots.lock() else {
            return false;
        };
        let (requests, retries) = slots
            .iter()
            .filter(|s| s.second + (WINDOW as u64) > second && s.second <= second)
            .fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries));
        if (retries + 1) as f64 <= self.ratio * requests as f64 + FLOOR {
            Self::slot(&mut slots, second).retries += 1;
            true
        } else {
            false
        }
    }
}

/// What the pool needs to retry: how many times, the budget, and the counters.
pub(crate) struct RetryPolicy {
    pub(crate) retries: u32,
    pub(crate) budget: RetryBudget,
    /// By `Reason`, in `Reason::ALL`'s order.
    pub(crate) counted: [IntCounter; 2],
    pub(crate) exhausted: IntCounter,
}

impl RetryPolicy {
    pub(crate) fn count(&self, reason: Reason) {
        self.counted[reason as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_section_9_retries() {
        for m in [Method::PATCH, Method::POST, Method::GET, Method::PUT] {
            assert_eq!(decide(&m, Failure::NotSent, false), Some(Reason::NotSent));
            assert_eq!(decide(&m, Failure::Other, true), None);
        }
        for m in [Method::PATCH, Method::POST, Method::CONNECT] {
            assert_eq!(decide(&m, Failure::Reset, true), None, "{m}");
            assert_eq!(decide(&m, Failure::Unavailable, true), None, "{m}");
        }
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert_eq!(decide(&m, Failure::Reset, true), Some(Reason::Idempotent));
            assert_eq!(
                decide(&m, Failure::Unavailable, true),
                Some(Reason::Idempotent)
            );
            // A streamed body that was (partly) sent cannot be sent again.
            assert_eq!(decide(&m, Failure::Reset, false), None);
        }
    }

    #[test]
    fn a_patch_keeps_no_copy() {
        let req = |m: Method| Request::builder().method(m).body(empty_body()).unwrap();
        assert!(Replay::of(&req(Method::PATCH), Some(Bytes::new())).is_none());
        assert!(Replay::of(&req(Method::GET), None).is_none());
        let replay = Replay::of(&req(Method::PUT), Some(Bytes::from_static(b"{}"))).unwrap();
        assert_eq!(replay.request().method(), Method::PUT);
    }

    #[test]
    fn only_a_small_declared_body_of_an_idempotent_method_is_collected() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(CONTENT_LENGTH, v.parse().unwrap());
            }
            h
        };
        let small = headers(&["5"]);
        for m in [Method::PUT, Method::DELETE, Method::GET, Method::OPTIONS] {
            assert_eq!(replay_length(&m, &small, Some(5)), Some(5), "{m}");
        }
        for m in [Method::PATCH, Method::POST] {
            assert_eq!(replay_length(&m, &small, Some(5)), None, "{m}");
        }
        let put = Method::PUT;
        assert_eq!(
            replay_length(&put, &headers(&["65536"]), Some(65_536)),
            Some(65_536)
        );
        // Larger, chunked (no length), framed otherwise than declared, or declared twice.
        assert_eq!(
            replay_length(&put, &headers(&["65537"]), Some(65_537)),
            None
        );
        assert_eq!(replay_length(&put, &headers(&[]), None), None);
        assert_eq!(replay_length(&put, &small, None), None);
        assert_eq!(replay_length(&put, &small, Some(4)), None);
        assert_eq!(replay_length(&put, &headers(&["5", "5"]), Some(5)), None);
        assert_eq!(replay_length(&put, &headers(&["+5"]), Some(5)), None);
    }

    #[test]
    fn backoff_is_jittered_and_bounded() {
        assert_eq!(backoff(1, 0), Duration::ZERO);
        assert_eq!(backoff(1, 25), Duration::from_millis(25));
        assert_eq!(backoff(1, 26), Duration::ZERO);
        assert!((0..1000).all(|r| backoff(9, r) <= Duration::from_millis(250)));
    }

    #[test]
    fn the_budget_allows_a_share_plus_ten_per_window() {
        let budget = RetryBudget::new(0.2);
        for _ in 0..100 {
            budget.record_request_at(5);
        }
        // 0.2 × 100 + 10 = 30 retries in the window.
        let allowed = (0..100).filter(|_| budget.try_retry_at(5)).count();
        assert_eq!(allowed, 30);
        // Nine seconds on, the same window still holds them.
        assert!(!budget.try_retry_at(14));
        // Ten seconds on, the old second has left the window: the floor of 10 again.
        let allowed = (0..100).filter(|_| budget.try_retry_at(15)).count();
        assert_eq!(allowed, 10);
    }
}
