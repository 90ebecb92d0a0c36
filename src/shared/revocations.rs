//! Revocations across replicas: a replica that learns a session is invalid publishes its key on
//! `<prefix>revoked`; every replica subscribes and drops the session from its local cache. The
//! subscription is kept up by this task: after a disconnect it re-subscribes with backoff and,
//! since messages may have been missed meanwhile, has the local valid verdicts cleared.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;

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

/// Subscribes to the revocations channel for as long as the returned handle lives. `revoked` is
/// called with each revoked key; `missed` after a re-subscription that followed a gap.
pub(crate) fn subscribe<R, F>(
    store: Arc<Store>,
    revoked: R,
    missed: impl Fn() + Send + Sync + 'static,
) -> Subscription
where
    R: Fn(u128) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send,
{
    Subscription(tokio::spawn(async move {
        let channel = store.channel();
        let mut pause = FIRST_PAUSE;
        // Nothing was cached before the first subscription, so there is no gap yet.
        let mut gap = false;
        loop {
            let connect = async {
                let mut pubsub = store.client().get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok(mut pubsub)) => {
                    if gap {
                        missed();
                        tracing::info!("revocations re-subscribed; local valid verdicts from before the gap cleared");
                    }
                    pause = FIRST_PAUSE;
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        match parse_message(msg.get_payload_bytes()) {
                            Some(key) => {
                                store.metrics().session_revocations_received.inc();
                                revoked(key).await;
                            }
                            None => tracing::warn!("malformed revocation message ignored"),
                        }
                    }
                    tracing::warn!("revocations subscription lost; re-subscribing");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = ?e.kind(), "revocations subscription failed")
                }
                Err(_) => tracing::debug!("revocations subscription timed out"),
            }
            gap = true;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }))
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
