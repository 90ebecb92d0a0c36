//! The store's tier of the session cache (gateway.md §8): verdicts other replicas made, a lock so
//! that one replica introspects a session for all, and revocations in both directions.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use moka::future::Cache;

use super::cache::{Clock, Entry, Key, KeyBits, Packed, Ttls, Verdict};
use crate::shared::revocations::{subscribe, Subscription};
pub(crate) use crate::shared::Lookup;
use crate::shared::Store;

/// How often a replica waiting on another's lock looks for the verdict.
const WAIT_STEP: Duration = Duration::from_millis(10);

pub(crate) struct SharedTier {
    pub(crate) store: Arc<Store>,
    _subscription: Subscription,
}

/// A verdict read from the store, as a local entry: its expiry, never past the local TTL rules.
/// `None` when it has already expired here. Pure.
pub(crate) fn local_entry(
    ttls: &Ttls,
    valid: bool,
    expires_ms: u64,
    now: Duration,
) -> Option<Entry> {
    let (verdict, ttl) = if valid {
        (Verdict::Valid, ttls.valid)
    } else {
        (Verdict::Invalid, ttls.invalid)
    };
    let entry = Entry {
        verdict,
        expires: Duration::from_millis(expires_ms).min(now + ttl),
    };
    entry.is_fresh(now).then_some(entry)
}

impl SharedTier {
    /// Subscribes to revocations: a revoked session's valid verdict leaves `cache`; after a gap
    /// in the subscription every valid verdict made before the gap began does (`clock` is the
    /// cache's, which stamps each entry).
    pub(crate) fn start(
        store: Arc<Store>,
        cache: Cache<Key, Packed, KeyBits>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let on_revoked = cache.clone();
        let subscription = subscribe(
            store.clone(),
            move || clock.now(),
            move |key: u128| {
                let cache = on_revoked.clone();
                async move {
                    if cache
                        .get(&key)
                        .await
                        .is_some_and(|p| Entry::from(p).verdict == Verdict::Valid)
                    {
                        cache.invalidate(&key).await;
                        super::cache::bump_generation();
                    }
                }
            },
            move |gap_began| {
                if let Err(e) =
                    cache.invalidate_entries_if(move |_, p| p.dropped_after_gap(gap_began))
                {
                    tracing::warn!(error = %e, "could not clear local valid verdicts");
                }
                super::cache::bump_generation();
            },
        );
        SharedTier {
            store,
            _subscription: subscription,
        }
    }

    /// The session's id in the store: an HMAC of both tokens, never a token.
    pub(crate) fn id(&self, authorization: &HeaderValue, session: &HeaderValue) -> String {
        self.store
            .hmac_hex(&[authorization.as_bytes(), session.as_bytes()])
    }

    /// Waits up to `timeout` for another replica's verdict; `None` when none came (its holder
    /// died or is slow) or the store failed: the caller then asks itself.
    pub(crate) async fn wait(&self, id: &str, timeout: Duration) -> Option<(bool, u64)> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(WAIT_STEP).await;
            match self.store.get(id).await {
                Ok(Some(found)) => return Some(found),
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Looks the session up, taking the lock to make its verdict when `lock` is set.
    pub(crate) async fn lookup(&self, id: &str, lock: Option<Duration>) -> Option<Lookup> {
        self.store
            .lookup(id, lock.map(|d| d.as_millis() as u64))
            .await
            .ok()
    }

    /// Writes a verdict (and publishes an invalid one), off the request path.
    pub(crate) fn put(
        &self,
        id: String,
        entry: Entry,
        now: Duration,
        release_lock: bool,
        key: Key,
    ) {
        let store = self.store.clone();
        let valid = entry.verdict == Verdict::Valid;
        let ttl = entry.expires.saturating_sub(now);
        if ttl.is_zero() {
            return;
        }
        let expires_ms = entry.expires.as_millis() as u64;
        tokio::spawn(async move {
            let revoked = (!valid).then_some(key);
            let _ = store
                .put(&id, valid, expires_ms, ttl, release_lock, revoked)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_verdict_keeps_its_expiry_within_the_local_ttls() {
        let t = Ttls {
            valid: Duration::from_secs(60),
            invalid: Duration::from_secs(10),
            stale_if_error: Duration::ZERO,
        };
        let now = Duration::from_secs(1000);
        let e = local_entry(&t, true, 1_030_000, now).unwrap();
        assert_eq!(
            (e.verdict, e.expires),
            (Verdict::Valid, Duration::from_secs(1030))
        );
        // Written by a replica with a longer TTL: capped by ours.
        let e = local_entry(&t, true, 5_000_000, now).unwrap();
        assert_eq!(e.expires, Duration::from_secs(1060));
        let e = local_entry(&t, false, 5_000_000, now).unwrap();
        assert_eq!(
            (e.verdict, e.expires),
            (Verdict::Invalid, Duration::from_secs(1010))
        );
        // Already past here (clock skew): not used.
        assert_eq!(local_entry(&t, true, 999_000, now), None);
    }
}
