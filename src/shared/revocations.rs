//! Revocations across replicas: a replica that learns a session is invalid publishes its key on
//! `<prefix>revoked`; every replica subscribes and drops the session from its local cache. The
//! subscription is kept up by this task: after a disconnect it re-subscribes with backoff and,
//! since messages may have been missed meanwhile, has the local valid verdicts made before the gap
//! cleared.
//!
//! When the gap began is known from signs of life on the subscription connection: its
//! confirmation, any message, and the answer to a `PING` sent every second. Each is a moment up to
//! which every message the store sent has arrived (replies and messages share one ordered
//! connection, and the time taken is the answer's arrival, after the store sent it). The last sign
//! before the subscription failed (its connection closed or errored, or a `PING` went unanswered
//! for a second) is when the gap began: messages after it may be lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::Value;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Store;

/// The subscription task; it ends when the stack that owns it is dropped (a reload builds anew).
pub(crate) struct Subscription(JoinHandle<()>);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A revocation message: the local key, 32 hex digits.
pub(crate) fn parse_message(payload: &[u8]) -> Option<u128> {
    if payload.len() != 32 {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(payload).ok()?, 16).ok()
}

const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);
/// How often the subscription is checked with a `PING`, and how long its answer may take: a
/// subscription that died silently (no close, e.g. a network partition) is noticed within 2 s.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Subscribes to the revocations channel for as long as the returned handle lives. `revoked` is
/// called with each revoked key; `missed` after a re-subscription that followed a gap, with the
/// moment the gap began on `now`'s clock (the session cache's).
pub(crate) fn subscribe<R, F>(
    store: Arc<Store>,
    now: impl Fn() -> Duration + Send + Sync + 'static,
    revoked: R,
    missed: impl Fn(Duration) + Send + Sync + 'static,
) -> Subscription
where
    R: Fn(u128) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send,
{
    Subscription(tokio::spawn(async move {
        let channel = store.channel();
        let mut pause = FIRST_PAUSE;
        // Nothing was cached before the task started (the cache is as new as the stack), so
        // before the first subscription the gap is as old as the task: nothing to clear.
        let mut gap_began: Option<Duration> = None;
        let mut last_sign = now();
        loop {
            let connect = async {
                let mut pubsub = store.client().get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok(pubsub)) => {
                    last_sign = now();
                    if let Some(began) = gap_began.take() {
                        missed(began);
                        tracing::info!("revocations re-subscribed; local valid verdicts from before the gap cleared");
                    }
                    pause = FIRST_PAUSE;
                    let (mut sink, mut messages) = pubsub.split();
                    let mut ping = tokio::time::interval(PING_EVERY);
                    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    ping.tick().await;
                    let lost = loop {
                        tokio::select! {
                            msg = messages.next() => {
                                let Some(msg) = msg else { break "closed" };
                                last_sign = now();
                                on_message(&store, &revoked, &msg).await;
                            }
                            _ = ping.tick() => {
                                // Messages that arrived before the answer wait in `messages`,
                                // and are handled before this task looks at the gap again.
                                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<Value>()).await {
                                    Ok(Ok(_)) => last_sign = now(),
                                    Ok(Err(_)) => break "ping failed",
                                    Err(_) => break "ping unanswered",
                                }
                            }
                        }
                    };
                    // What arrived before the loss still counts.
                    while let Some(Some(msg)) = messages.next().now_or_never() {
                        on_message(&store, &revoked, &msg).await;
                    }
                    tracing::warn!(why = lost, "revocations subscription lost; re-subscribing");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = ?e.kind(), "revocations subscription failed")
                }
                Err(_) => tracing::debug!("revocations subscription timed out"),
            }
            gap_began.get_or_insert(last_sign);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }))
}

async fn on_message<R, F>(store: &Store, revoked: &R, msg: &redis::Msg)
where
    R: Fn(u128) -> F,
    F: std::future::Future<Output = ()>,
{
    match parse_message(msg.get_payload_bytes()) {
        Some(key) => {
            store.metrics().session_revocations_received.inc();
            revoked(key).await;
        }
        None => tracing::warn!("malformed revocation message ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_32_digit_hex_key_is_a_revocation() {
        let key = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        assert_eq!(parse_message(format!("{key:032x}").as_bytes()), Some(key));
        assert_eq!(parse_message(b"123"), None);
        assert_eq!(parse_message(&[b'g'; 32]), None);
        assert_eq!(parse_message(&[0xff; 32]), None);
    }
}
