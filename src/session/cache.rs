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

/// Bumped after every write to any session cache (insert, invalidation, clearing): a verdict
/// remembered outside the cache (`super::memo`) stands only while this has not moved since it was
/// read, before the lookup that found the verdict.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The write generation; read before a lookup whose verdict is to be remembered.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Called after (never before) a write to a cache, so that no lookup can see the old entry with
/// the new generation.
pub(crate) fn bump_generation() {
    GENERATION.fetch_add(1, Ordering::Release);
}

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

/// An entry as the cache stores it, in eight bytes (moka's own bookkeeping dominates each entry
/// anyway): the verdict in bit 0, the expiry in milliseconds in the next 42 bits (to the year
/// 2109), and in the top 21 bits how long before its expiry the entry was made (milliseconds, up to
/// ~35 min; all ones: unknown). The age lets a re-subscription to revocations tell the verdicts
/// made before a gap from those made during it (`made_before`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed(u64);

const EXPIRES_BITS: u32 = 42;
const EXPIRES_MAX: u64 = (1 << EXPIRES_BITS) - 1;
/// The age field's all-ones value: made at an unknown time, so older than any gap.
const AGE_UNKNOWN: u64 = (1 << (63 - EXPIRES_BITS)) - 1;

impl Packed {
    /// `entry`, made (cached) at `made`. An entry whose TTL exceeds the age field (~35 min) is
    /// stamped unknown: it then counts as made before any gap (re-checked after one), never after.
    pub fn stamped(entry: Entry, made: Duration) -> Packed {
        let expires = u64::try_from(entry.expires.as_millis())
            .unwrap_or(u64::MAX)
            .min(EXPIRES_MAX);
        let made = u64::try_from(made.as_millis()).unwrap_or(u64::MAX);
        let age = match expires.checked_sub(made) {
            Some(age) if age < AGE_UNKNOWN => age,
            // Made after its own expiry (a clock step) or too long ago to say: unknown.
            _ => AGE_UNKNOWN,
        };
        Packed(
            (age << (EXPIRES_BITS + 1))
                | (expires << 1)
                | u64::from(entry.verdict == Verdict::Valid),
        )
    }

    fn expires_ms(self) -> u64 {
        (self.0 >> 1) & EXPIRES_MAX
    }

    /// When the entry was made, to the millisecond (floored); `None` when unknown.
    pub fn made(self) -> Option<Duration> {
        let age = self.0 >> (EXPIRES_BITS + 1);
        (age != AGE_UNKNOWN).then(|| Duration::from_millis(self.expires_ms().saturating_sub(age)))
    }

    /// Whether a re-subscription after a gap in the revocations that began at `gap_began` drops
    /// this entry: a valid verdict that may have been made before the gap (the same millisecond
    /// counts as before, and so does an unknown time), which may have missed its revocation. Pure.
    pub fn dropped_after_gap(self, gap_began: Duration) -> bool {
        if self.0 & 1 == 0 {
            return false;
        }
        let gap = u64::try_from(gap_began.as_millis()).unwrap_or(u64::MAX);
        self.made().is_none_or(|m| m.as_millis() as u64 <= gap)
    }
}

/// Without a time of making: unknown, so older than any gap.
impl From<Entry> for Packed {
    fn from(e: Entry) -> Packed {
        Packed::stamped(e, Duration::MAX)
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
            expires: Duration::from_millis(p.expires_ms()),
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
    /// valid verdicts that can be cleared by when they were made (after a gap in the revocations).
    pub(crate) fn with_store(self, capacity: u64, store: Arc<crate::shared::Store>) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .support_invalidation_closures()
            .build_with_hasher(KeyBits);
        let (k0, k1) = store.derived_keys("companies-gateway session cache key");
        let shared = super::shared::SharedTier::start(store, cache.clone(), self.clock.clone());
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
    fn a_stamp_says_when_an_entry_was_made_without_growing_it() {
        let made = Duration::from_millis(1_800_000_000_123) + Duration::from_micros(900);
        let e = Entry {
            verdict: Verdict::Valid,
            expires: made + Duration::from_secs(60),
        };
        let p = Packed::stamped(e, made);
        assert_eq!(std::mem::size_of::<Packed>(), 8);
        // The expiry and verdict read back as before; the time of making to the millisecond.
        assert_eq!(
            Entry::from(p).expires,
            Duration::from_millis(1_800_000_060_123)
        );
        assert_eq!(Entry::from(p).verdict, Verdict::Valid);
        assert_eq!(p.made(), Some(Duration::from_millis(1_800_000_000_123)));
        // The longest age that fits (~35 min) is kept; past it, and for an entry made after its
        // own expiry, the time is unknown.
        let long = Duration::from_millis(AGE_UNKNOWN - 1);
        let e_long = Entry {
            expires: made + long,
            ..e
        };
        assert!(Packed::stamped(e_long, made).made().is_some());
        let e_longer = Entry {
            expires: made + long + Duration::from_millis(1),
            ..e
        };
        assert_eq!(Packed::stamped(e_longer, made).made(), None);
        assert_eq!(
            Packed::stamped(e, e.expires + Duration::from_secs(1)).made(),
            None
        );
        assert_eq!(Packed::from(e).made(), None);
    }

    #[test]
    fn after_a_gap_only_valid_verdicts_made_before_it_began_are_dropped() {
        let gap = Duration::from_millis(1_800_000_000_500);
        let entry = |verdict| Entry {
            verdict,
            expires: gap + Duration::from_secs(30),
        };
        let ms = Duration::from_millis;
        let valid = |made| Packed::stamped(entry(Verdict::Valid), made);
        assert!(valid(gap - ms(1)).dropped_after_gap(gap));
        assert!(valid(gap - Duration::from_secs(20)).dropped_after_gap(gap));
        // The same millisecond may be either side: dropped (one re-check), never kept wrongly.
        assert!(valid(gap + Duration::from_micros(999)).dropped_after_gap(gap));
        assert!(!valid(gap + ms(1)).dropped_after_gap(gap));
        assert!(!valid(gap + Duration::from_secs(10)).dropped_after_gap(gap));
        // Unknown: as old as can be.
        assert!(Packed::from(entry(Verdict::Valid)).dropped_after_gap(gap));
        // An invalid verdict stays whenever it was made: a missed message cannot make it valid.
        for made in [gap - ms(1), gap + ms(1)] {
            assert!(!Packed::stamped(entry(Verdict::Invalid), made).dropped_after_gap(gap));
        }
        assert!(!Packed::from(entry(Verdict::Invalid)).dropped_after_gap(gap));
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let a = c.now();
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now() - a, Duration::from_secs(5));
    }
}
