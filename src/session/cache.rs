//! The session verdict cache: moka's `future::Cache`, keyed by a keyed hash of the two tokens (raw
//! tokens are never stored), with each entry's expiry kept in its value and judged by an
//! injectable clock.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use moka::policy::EvictionPolicy;
use siphasher::sip128::{Hasher128, SipHasher13};

/// Wall-clock time as a duration since the Unix epoch. Tests inject a manual one.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Starts at the real current time.
    pub fn new() -> Self {
        ManualClock(Arc::new(AtomicU64::new(
            SystemClock.now().as_millis() as u64
        )))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// A cached verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub verdict: Verdict,
    /// Unix time after which the entry is stale.
    pub expires: Duration,
}

impl Entry {
    pub(crate) fn is_fresh(&self, now: Duration) -> bool {
        now < self.expires
    }
}

/// An entry as the cache stores it: expiry in milliseconds, shifted, and the verdict in the low
/// bit. Eight bytes instead of twenty-four; moka's own bookkeeping dominates each entry anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed(u64);

impl From<Entry> for Packed {
    fn from(e: Entry) -> Packed {
        let ms = u64::try_from(e.expires.as_millis()).unwrap_or(u64::MAX >> 1);
        Packed((ms.min(u64::MAX >> 1) << 1) | u64::from(e.verdict == Verdict::Valid))
    }
}

impl From<Packed> for Entry {
    fn from(p: Packed) -> Entry {
        Entry {
            verdict: if p.0 & 1 == 1 {
                Verdict::Valid
            } else {
                Verdict::Invalid
            },
            expires: Duration::from_millis(p.0 >> 1),
        }
    }
}

/// A 128-bit keyed SipHash of the two tokens: no raw token is kept, and the key is random per
/// process so nobody can aim a collision.
pub(crate) type Key = u128;

/// Hashes sessions into cache keys.
#[derive(Clone)]
pub struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl Default for KeyHasher {
    fn default() -> Self {
        // std seeds every RandomState from the OS, so a hash under one is as unpredictable as its
        // keys.
        let seed = |n: u8| RandomState::new().hash_one(n);
        KeyHasher {
            k0: seed(0),
            k1: seed(1),
        }
    }
}

impl KeyHasher {
    /// A hasher with these keys: replicas that share a store derive the same ones from its
    /// secret, so that a revocation names a session by the key every replica has.
    pub(crate) fn with_keys(k0: u64, k1: u64) -> Self {
        KeyHasher { k0, k1 }
    }

    pub fn key(&self, bearer: &[u8], session: &[u8]) -> Key {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        // Length-prefixed, so (ab, c) and (a, bc) differ.
        h.write_usize(bearer.len());
        h.write(bearer);
        h.write(session);
        h.finish128().as_u128()
    }
}

/// The cache's own hasher. Keys are already uniform keyed hashes, so their bits serve as they are
/// and a lookup does not hash a third time.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyBits;

impl BuildHasher for KeyBits {
    type Hasher = KeyBitsHasher;
    fn build_hasher(&self) -> KeyBitsHasher {
        KeyBitsHasher(0)
    }
}

#[derive(Debug)]
pub struct KeyBitsHasher(u64);

impl Hasher for KeyBitsHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }

    /// Only a `Key` (a `u128`) is ever hashed; any other input is still mixed, just slower.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}

/// A short fingerprint of a key, for logs.
pub(crate) fn fingerprint(key: Key) -> String {
    format!("{:08x}", (key >> 96) as u32)
}

/// How long verdicts live.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub valid: Duration,
    pub invalid: Duration,
    pub stale_if_error: Duration,
}

impl Ttls {
    /// A valid entry: `valid_ttl`, shortened by `max-age`, never past the token's `exp`.
    pub(crate) fn valid_entry(
        &self,
        now: Duration,
        max_age: Option<Duration>,
        exp: Option<u64>,
    ) -> Entry {
        let mut expires = now + max_age.map_or(self.valid, |m| m.min(self.valid));
        if let Some(exp) = exp {
            expires = expires.min(Duration::from_secs(exp));
        }
        Entry {
            verdict: Verdict::Valid,
            expires,
        }
    }

    pub(crate) fn invalid_entry(&self, now: Duration) -> Entry {
        Entry {
            verdict: Verdict::Invalid,
            expires: now + self.invalid,
        }
    }

    /// A valid entry expired less than `stale_if_error` ago may stand in when the verifier errs.
    pub(crate) fn usable_stale(&self, entry: &Entry, now: Duration) -> bool {
        entry.verdict == Verdict::Valid && now < entry.expires + self.stale_if_error
    }
}

/// The cache itself, plus its clock.
#[derive(Clone)]
pub struct SessionCache {
    pub cache: Cache<Key, Packed, KeyBits>,
    pub clock: Arc<dyn Clock>,
    pub ttls: Ttls,
    pub hasher: KeyHasher,
    /// The store's tier (gateway.md §8), when `[shared]` names a store.
    pub(crate) shared: Option<Arc<super::shared::SharedTier>>,
}

impl SessionCache {
    pub fn new(capacity: u64, ttls: Ttls, clock: Arc<dyn Clock>) -> Self {
        // Freshness is judged by `clock` against each entry's own expiry. Stale entries make way
        // for new ones under the capacity bound; a moka TTL on top would cost ~65 bytes an entry.
        // LRU, not TinyLFU: a new session is always admitted, and there is no frequency sketch
        // (16 MB at 1M entries) to keep or update on every read.
        SessionCache {
            cache: Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .build_with_hasher(KeyBits),
            clock,
            ttls,
            hasher: KeyHasher::default(),
            shared: None,
        }
    }

    /// The same cache as a tier in front of `store`: keys derived from the store's secret, and
    /// valid verdicts that can be cleared at once (after a gap in the revocations).
    pub(crate) fn with_store(self, capacity: u64, store: Arc<crate::shared::Store>) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .support_invalidation_closures()
            .build_with_hasher(KeyBits);
        let (k0, k1) = store.derived_keys("companies-gateway session cache key");
        let shared = super::shared::SharedTier::start(store, cache.clone());
        SessionCache {
            cache,
            clock: self.clock,
            ttls: self.ttls,
            hasher: KeyHasher::with_keys(k0, k1),
            shared: Some(Arc::new(shared)),
        }
    }

    pub(crate) fn now(&self) -> Duration {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_either_token_and_by_the_split() {
        let h = KeyHasher::default();
        let k = h.key(b"bearer", b"session");
        assert_eq!(k, h.key(b"bearer", b"session"));
        assert_ne!(k, h.key(b"bearer", b"session2"));
        assert_ne!(k, h.key(b"bearer2", b"session"));
        assert_ne!(h.key(b"ab", b"c"), h.key(b"a", b"bc"));
        // Another process (another hasher) gets other keys.
        assert_ne!(k, KeyHasher::default().key(b"bearer", b"session"));
        assert_eq!(fingerprint(k).len(), 8);
    }

    #[test]
    fn the_cache_hasher_uses_both_halves_of_a_key() {
        let hash = |k: Key| KeyBits.hash_one(k);
        assert_ne!(hash(1), hash(2));
        assert_ne!(hash(1 << 64), hash(2 << 64));
        let mut other = KeyBits.build_hasher();
        other.write(b"not a key");
        assert_ne!(other.finish(), 0);
    }

    #[test]
    fn valid_entries_are_bounded_by_ttl_max_age_and_exp() {
        let t = Ttls {
            valid: Duration::from_secs(60),
            invalid: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(30),
        };
        let now = Duration::from_secs(1000);
        assert_eq!(
            t.valid_entry(now, None, None).expires,
            Duration::from_secs(1060)
        );
        assert_eq!(
            t.valid_entry(now, Some(Duration::from_secs(5)), None)
                .expires,
            Duration::from_secs(1005)
        );
        assert_eq!(
            t.valid_entry(now, Some(Duration::from_secs(500)), None)
                .expires,
            Duration::from_secs(1060)
        );
        assert_eq!(
            t.valid_entry(now, None, Some(1020)).expires,
            Duration::from_secs(1020)
        );
        assert_eq!(t.invalid_entry(now).expires, Duration::from_secs(1010));
        let e = t.valid_entry(now, None, None);
        assert!(e.is_fresh(Duration::from_secs(1059)));
        assert!(!e.is_fresh(Duration::from_secs(1060)));
        assert!(t.usable_stale(&e, Duration::from_secs(1089)));
        assert!(!t.usable_stale(&e, Duration::from_secs(1090)));
        assert!(!t.usable_stale(&t.invalid_entry(now), now));
    }

    #[test]
    fn entries_pack_into_eight_bytes_and_back() {
        for verdict in [Verdict::Valid, Verdict::Invalid] {
            let e = Entry {
                verdict,
                expires: Duration::from_millis(1_800_000_000_123),
            };
            assert_eq!(Entry::from(Packed::from(e)), e);
        }
        assert_eq!(std::mem::size_of::<Packed>(), 8);
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let a = c.now();
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now() - a, Duration::from_secs(5));
    }
}
