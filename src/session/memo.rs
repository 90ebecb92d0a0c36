//! The last valid verdict each worker thread found in the session cache, with the exact tokens it
//! was for: a request that carries byte-identical tokens (the common case on a keep-alive
//! connection) reuses its key and verdict without hashing the tokens or looking up the cache. It
//! stands only while nothing can have changed it: before its expiry, for the same `Session` (a
//! reload builds a new one), and while no cache has been written since the lookup that found it
//! (`cache::generation`: every insert, invalidation, revocation and clearing moves it).

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::cache::Key;
use super::Session;

/// A remembered verdict (always valid: an invalid one is an answer the gateway gives locally).
pub(crate) struct Memo {
    /// Compared by address only; a `Weak` keeps the address from being reused by a new `Session`.
    session: Weak<Session>,
    /// Copies, never views into hyper's read buffer (which a header value is).
    authorization: Vec<u8>,
    token: Vec<u8>,
    key: Key,
    expires: Duration,
    generation: u64,
}

impl Memo {
    /// The key of the valid verdict this memo holds for these tokens, if it still stands at
    /// `now` under cache generation `generation`. Pure.
    pub(crate) fn lookup(
        &self,
        session: &Arc<Session>,
        authorization: &[u8],
        token: &[u8],
        now: Duration,
        generation: u64,
    ) -> Option<Key> {
        // The memo may hold another client's tokens (it is per thread, not per connection):
        // compared in constant time, as the cache's keyed hash never revealed how much matched.
        let same_tokens =
            same_bytes(&self.token, token) & same_bytes(&self.authorization, authorization);
        (std::ptr::eq(self.session.as_ptr(), Arc::as_ptr(session))
            && self.generation == generation
            && now < self.expires
            && same_tokens)
            .then_some(self.key)
    }

    /// Remembers a valid verdict found by a lookup made under `generation` (read before it).
    fn set(
        &mut self,
        session: &Arc<Session>,
        authorization: &[u8],
        token: &[u8],
        key: Key,
        expires: Duration,
        generation: u64,
    ) {
        if !std::ptr::eq(self.session.as_ptr(), Arc::as_ptr(session)) {
            self.session = Arc::downgrade(session);
        }
        self.authorization.clear();
        self.authorization.extend_from_slice(authorization);
        self.token.clear();
        self.token.extend_from_slice(token);
        self.key = key;
        self.expires = expires;
        self.generation = generation;
    }

    fn empty() -> Self {
        Memo {
            session: Weak::new(),
            authorization: Vec::new(),
            token: Vec::new(),
            key: 0,
            expires: Duration::ZERO,
            generation: 0,
        }
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths: the differences
/// of all eight-byte words are gathered before one test (no early exit, unlike `==`). `subtle`'s
/// byte-wise `ct_eq` costs ~1.2k instructions more per request for the bench's tokens.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    a.chunks(8)
        .zip(b.chunks(8))
        .fold(0u64, |diff, (x, y)| diff | (word(x) ^ word(y)))
        == 0
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::empty());
}

/// This thread's memo's key for the tokens, if it stands (see `Memo::lookup`).
pub(crate) fn lookup(
    session: &Arc<Session>,
    authorization: &[u8],
    token: &[u8],
    now: Duration,
    generation: u64,
) -> Option<Key> {
    MEMO.with(|m| {
        m.try_borrow()
            .ok()?
            .lookup(session, authorization, token, now, generation)
    })
}

/// Remembers a fresh valid verdict on this thread (see `Memo::set`).
pub(crate) fn remember(
    session: &Arc<Session>,
    authorization: &[u8],
    token: &[u8],
    key: Key,
    expires: Duration,
    generation: u64,
) {
    MEMO.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.set(session, authorization, token, key, expires, generation);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnVerifierError;
    use crate::metrics::Metrics;
    use crate::session::cache::{ManualClock, SessionCache, Ttls};
    use crate::session::jwt::JwtKey;

    fn session() -> Arc<Session> {
        let ttls = Ttls {
            valid: Duration::from_secs(60),
            invalid: Duration::from_secs(10),
            stale_if_error: Duration::ZERO,
        };
        Arc::new(Session {
            cache: SessionCache::new(10, ttls, Arc::new(ManualClock::new())),
            jwt: JwtKey::None,
            introspector: None,
            leeway: Duration::ZERO,
            learn_from_upstream: true,
            on_verifier_error: OnVerifierError::Reject,
            metrics: Metrics::new(&[1.0]).unwrap(),
        })
    }

    #[test]
    fn same_bytes_is_equality() {
        let text: Vec<u8> = (0..40u8).collect();
        for len in 0..text.len() {
            let a = &text[..len];
            assert!(same_bytes(a, a));
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same_bytes(a, &b), "{len} {at}");
            }
            assert!(!same_bytes(a, &text[..len + 1]));
        }
    }

    #[test]
    fn a_memo_stands_only_for_the_same_tokens_session_generation_and_before_expiry() {
        let s = session();
        let t = Duration::from_secs(1000);
        let mut m = Memo::empty();
        assert_eq!(m.lookup(&s, b"Bearer a", b"tok", t, 0), None);
        m.set(&s, b"Bearer a", b"tok", 42, t + Duration::from_secs(5), 7);
        assert_eq!(m.lookup(&s, b"Bearer a", b"tok", t, 7), Some(42));
        // Any other byte in either token, or a split elsewhere.
        assert_eq!(m.lookup(&s, b"Bearer b", b"tok", t, 7), None);
        assert_eq!(m.lookup(&s, b"Bearer a", b"tok2", t, 7), None);
        assert_eq!(m.lookup(&s, b"Bearer at", b"ok", t, 7), None);
        // A cache write since (a revocation, an upstream 401, a gap's clearing, a new verdict).
        assert_eq!(m.lookup(&s, b"Bearer a", b"tok", t, 8), None);
        // At and after the verdict's expiry.
        assert_eq!(
            m.lookup(&s, b"Bearer a", b"tok", t + Duration::from_secs(5), 7),
            None
        );
        // Another session (a reload builds a new one), even while the old one lives.
        let other = session();
        assert_eq!(m.lookup(&other, b"Bearer a", b"tok", t, 7), None);
        m.set(
            &other,
            b"Bearer a",
            b"tok",
            43,
            t + Duration::from_secs(5),
            9,
        );
        assert_eq!(m.lookup(&s, b"Bearer a", b"tok", t, 9), None);
        assert_eq!(m.lookup(&other, b"Bearer a", b"tok", t, 9), Some(43));
    }

    #[test]
    fn the_memo_copies_the_tokens() {
        let s = session();
        let raw = bytes::Bytes::from_static(b"Bearer a tok").slice(..8);
        let mut m = Memo::empty();
        m.set(&s, &raw, b"tok", 1, Duration::MAX, 0);
        assert_ne!(m.authorization.as_ptr(), raw.as_ptr());
        assert_eq!(m.authorization, b"Bearer a");
    }
}
