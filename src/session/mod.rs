//! Stage 6: is the session — the pair (bearer token, `X-Session-Token`) — valid? Verdicts come from
//! the cache, then local JWT checks, then remote introspection, and are learned from upstream
//! 401s. Every request on an operation that requires the session token is checked once it passed
//! the contract; the verdict goes into its context, where Forward looks for it (fail closed).

pub mod cache;
pub(crate) mod introspect;
pub mod jwt;
mod memo;
pub(crate) mod shared;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::config::OnVerifierError;
use crate::context::{ContractState, RequestCtx};
use crate::error::GatewayError;
use crate::metrics::{CacheResult, Metrics, VerdictLabel, VerdictSource};
use crate::Body;
use cache::{fingerprint, Entry, Key, Packed, SessionCache, Verdict};
use introspect::Introspector;
use jwt::{JwtInfo, JwtKey};

/// Stage 6 let the request through. Only this module can make one (its field is private), so a
/// context that carries one was judged by the session layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionVerdict {
    /// The session's cache key (`SessionCache::hasher` of the bearer and the token), or `None`
    /// when the request carries no token: a later layer keys on it without hashing the tokens
    /// again (the rate limiter).
    key: Option<Key>,
}

impl SessionVerdict {
    pub(crate) fn key(&self) -> Option<Key> {
        self.key
    }
}

/// What the session layer does with a request, from its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage6 {
    /// No operation, or one that does not require the token: nothing to decide.
    Skip,
    /// The operation requires the token but the contract has not decided yet (the layers are out
    /// of order): no verdict is given, so Forward refuses the request.
    NotYet,
    /// Decide the session.
    Decide,
}

/// The session layer's decision on a request's context. Pure.
pub(crate) fn stage_6(ctx: Option<&RequestCtx>) -> Stage6 {
    match ctx {
        Some(ctx) if ctx.requires_session() => match ctx.contract() {
            ContractState::Unchecked => Stage6::NotYet,
            ContractState::Passed | ContractState::Reported => Stage6::Decide,
        },
        _ => Stage6::Skip,
    }
}

/// Everything the session check needs, built once at start-up.
pub struct Session {
    pub cache: SessionCache,
    pub jwt: JwtKey,
    pub introspector: Option<Introspector>,
    pub leeway: Duration,
    pub learn_from_upstream: bool,
    pub on_verifier_error: OnVerifierError,
    pub metrics: Metrics,
}

impl Session {
    fn label(verdict: Verdict) -> VerdictLabel {
        match verdict {
            Verdict::Valid => VerdictLabel::Valid,
            Verdict::Invalid => VerdictLabel::Invalid,
        }
    }

    fn answer(verdict: Verdict) -> Result<(), GatewayError> {
        match verdict {
            Verdict::Valid => Ok(()),
            Verdict::Invalid => Err(GatewayError::InvalidSession),
        }
    }

    fn update_gauge(&self) {
        self.metrics
            .session_cache_entries
            .set(self.cache.cache.entry_count() as i64);
    }

    /// Decides the session of a request. `Ok` forwards; the key is kept to learn from the answer.
    pub async fn decide(
        &self,
        authorization: &HeaderValue,
        session: &HeaderValue,
    ) -> Result<Key, GatewayError> {
        self.decide_with(authorization, session, None).await
    }

    /// `decide`; with `remember`, a fresh valid hit is also kept in this thread's memo.
    async fn decide_with(
        &self,
        authorization: &HeaderValue,
        session: &HeaderValue,
        remember: Option<&Arc<Session>>,
    ) -> Result<Key, GatewayError> {
        // Read before the lookup: a write after it moves the generation past the memo's.
        let generation = cache::generation();
        let key = self
            .cache
            .hasher
            .key(authorization.as_bytes(), session.as_bytes());
        let now = self.cache.now();
        let old = self.cache.cache.get(&key).await.map(Entry::from);
        if let Some(entry) = old.filter(|e| e.is_fresh(now)) {
            self.metrics.cache_lookup(CacheResult::Hit);
            if let (Some(this), Verdict::Valid) = (remember, entry.verdict) {
                memo::remember(
                    this,
                    authorization.as_bytes(),
                    session.as_bytes(),
                    key,
                    entry.expires,
                    generation,
                );
            }
            return Self::answer(entry.verdict).map(|()| key);
        }
        // Boxed, so that the hit path's future stays small.
        Box::pin(self.decide_miss(key, old, now, authorization, session)).await
    }

    /// Not a fresh hit: the local JWT checks, then introspection (or none).
    async fn decide_miss(
        &self,
        key: Key,
        old: Option<Entry>,
        now: Duration,
        authorization: &HeaderValue,
        session: &HeaderValue,
    ) -> Result<Key, GatewayError> {
        // Local checks: an expired or forged token never costs a lookup.
        let token = session.to_str().unwrap_or("");
        let exp = match jwt::check(token, &self.jwt, now, self.leeway) {
            Err(why) => {
                self.metrics.cache_lookup(CacheResult::Miss);
                self.metrics
                    .session_check(VerdictSource::Jwt, VerdictLabel::Invalid);
                tracing::debug!(session = %fingerprint(key), ?why, "session refused locally");
                return Err(GatewayError::InvalidSession);
            }
            Ok(JwtInfo::Valid { exp, .. }) => {
                self.metrics
                    .session_check(VerdictSource::Jwt, VerdictLabel::Valid);
                exp
            }
            Ok(JwtInfo::Opaque) => None,
        };
        if old.is_some() {
            self.cache.cache.invalidate(&key).await;
            cache::bump_generation();
        }

        let tier = self.cache.shared.as_deref();
        let Some(introspector) = &self.introspector else {
            self.metrics.cache_lookup(CacheResult::Miss);
            // The store may know the session was revoked at another replica.
            if let Some(tier) = tier {
                let id = tier.id(authorization, session);
                if let Some(shared::Lookup::Found { valid, expires_ms }) =
                    tier.lookup(&id, None).await
                {
                    if let Some(entry) =
                        shared::local_entry(&self.cache.ttls, valid, expires_ms, now)
                    {
                        self.cache
                            .cache
                            .insert(key, Packed::stamped(entry, now))
                            .await;
                        cache::bump_generation();
                        self.update_gauge();
                        return Self::answer(entry.verdict).map(|()| key);
                    }
                }
            }
            // Nothing else to ask: valid until the upstream says otherwise.
            let entry = self.cache.ttls.valid_entry(now, None, exp);
            self.cache
                .cache
                .insert(key, Packed::stamped(entry, now))
                .await;
            cache::bump_generation();
            self.update_gauge();
            return Ok(key);
        };

        // One call per key however many requests wait on it; errors are not cached.
        let ran = AtomicBool::new(false);
        let asked = self
            .cache
            .cache
            .entry(key)
            .or_try_insert_with(async {
                ran.store(true, Ordering::Relaxed);
                // Stamped with the start of the decision, before any answer it rests on: a verdict
                // counts as made no later than what it knows (see `Packed::dropped_after_gap`).
                let made = now;
                // The store first: another replica's verdict, or the lock to make it for all.
                let mut held = None;
                if let Some(tier) = tier {
                    let id = tier.id(authorization, session);
                    let wait = introspector.timeout();
                    let (found, lock) = match tier.lookup(&id, Some(wait)).await {
                        Some(shared::Lookup::Found { valid, expires_ms }) => {
                            (Some((valid, expires_ms)), false)
                        }
                        // Another replica is asking; past its lock's timeout (a holder that
                        // died, or is slow), ask without the lock.
                        Some(shared::Lookup::Locked) => (tier.wait(&id, wait).await, false),
                        Some(shared::Lookup::Acquired) => (None, true),
                        _ => (None, false),
                    };
                    let now = self.cache.now();
                    if let Some(entry) = found.and_then(|(valid, ms)| {
                        shared::local_entry(&self.cache.ttls, valid, ms, now)
                    }) {
                        return Ok(Packed::stamped(entry, made));
                    }
                    held = Some((id, lock));
                }
                let started = Instant::now();
                let result = introspector
                    .check(authorization.clone(), session.clone())
                    .await;
                self.metrics
                    .session_introspection_duration
                    .observe(started.elapsed().as_secs_f64());
                let now = self.cache.now();
                match result {
                    Ok(remote) => {
                        self.metrics.session_check(
                            VerdictSource::Introspection,
                            Self::label(remote.verdict),
                        );
                        let entry = match remote.verdict {
                            Verdict::Valid => self.cache.ttls.valid_entry(now, remote.max_age, exp),
                            Verdict::Invalid => self.cache.ttls.invalid_entry(now),
                        };
                        if let (Some(tier), Some((id, lock))) = (tier, held) {
                            tier.put(id, entry, now, lock, key);
                        }
                        Ok(Packed::stamped(entry, made))
                    }
                    Err(e) => {
                        self.metrics
                            .session_check(VerdictSource::Introspection, VerdictLabel::Error);
                        Err(e)
                    }
                }
            })
            .await;
        cache::bump_generation();
        if !ran.load(Ordering::Relaxed) {
            self.metrics.session_coalesced.inc();
        }
        match asked {
            Ok(entry) => {
                self.metrics.cache_lookup(CacheResult::Miss);
                self.update_gauge();
                Self::answer(Entry::from(entry.into_value()).verdict).map(|()| key)
            }
            Err(e) => {
                if let Some(stale) = old.filter(|o| self.cache.ttls.usable_stale(o, now)) {
                    self.metrics.cache_lookup(CacheResult::Stale);
                    tracing::warn!(session = %fingerprint(key), error = %e, "verifier failed; serving a stale verdict");
                    return Self::answer(stale.verdict).map(|()| key);
                }
                self.metrics.cache_lookup(CacheResult::Miss);
                tracing::warn!(session = %fingerprint(key), error = %e, "session verifier failed");
                match self.on_verifier_error {
                    OnVerifierError::Reject => Err(GatewayError::SessionUnavailable),
                    OnVerifierError::Allow => Ok(key),
                }
            }
        }
    }

    /// An upstream 401 to a forwarded request: remember the session as invalid (and, with a
    /// store, tell every replica).
    pub(crate) async fn learn_invalid(&self, key: Key, tokens: Option<Tokens>) {
        let now = self.cache.now();
        let entry = self.cache.ttls.invalid_entry(now);
        self.cache
            .cache
            .insert(key, Packed::stamped(entry, now))
            .await;
        cache::bump_generation();
        if let (Some(tier), Some(tokens)) = (&self.cache.shared, tokens) {
            tier.put(tier.id(&tokens.0, &tokens.1), entry, now, false, key);
        }
        self.metrics
            .session_check(VerdictSource::Upstream, VerdictLabel::Invalid);
        self.update_gauge();
        tracing::debug!(session = %fingerprint(key), "upstream refused the session; cached as invalid");
    }
}

#[derive(Clone)]
pub struct SessionLayer {
    session: Arc<Session>,
    /// `session.token_header`: with `Authorization`, the session's key.
    token_header: HeaderName,
}

impl SessionLayer {
    pub(crate) fn new(session: Arc<Session>, token_header: HeaderName) -> Self {
        SessionLayer {
            session,
            token_header,
        }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            session: self.session.clone(),
            token_header: self.token_header.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    session: Arc<Session>,
    token_header: HeaderName,
}

type Deciding = Pin<Box<dyn Future<Output = Result<Key, GatewayError>> + Send>>;

/// A request's bearer and session token, kept (boxed, so that the future stays small) only with a
/// store, to name the session there after an upstream 401.
type Tokens = Box<(HeaderValue, HeaderValue)>;

impl<S> Service<Request<Body>> for SessionService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError> + Clone,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if stage_6(req.extensions().get::<RequestCtx>()) != Stage6::Decide {
            return ResponseFuture {
                state: State::Calling {
                    fut: self.inner.call(req),
                    key: None,
                    tokens: None,
                },
                session: self.session.clone(),
            };
        };
        let Some(token) = req.headers().get(&self.token_header).cloned() else {
            // The contract passed the request on a security alternative without the token:
            // there is no session to judge, and the contract, not this layer, decides which
            // alternatives an operation accepts.
            let mut req = req;
            if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
                ctx.set_session(SessionVerdict { key: None });
            }
            return ResponseFuture {
                state: State::Calling {
                    fut: self.inner.call(req),
                    key: None,
                    tokens: None,
                },
                session: self.session.clone(),
            };
        };
        // An operation may ask for the token without a bearer: the key then has an empty one.
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""));
        // This thread's last valid verdict, when it stands for these very tokens.
        let remembered = memo::lookup(
            &self.session,
            authorization.as_bytes(),
            token.as_bytes(),
            self.session.cache.now(),
            cache::generation(),
        );
        if let Some(key) = remembered {
            self.session.metrics.cache_lookup(CacheResult::Hit);
            let tokens = self
                .session
                .cache
                .shared
                .is_some()
                .then(|| Box::new((authorization, token)));
            let mut req = req;
            if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
                ctx.set_session(SessionVerdict { key: Some(key) });
            }
            return ResponseFuture {
                state: State::Calling {
                    fut: self.inner.call(req),
                    key: Some(key),
                    tokens,
                },
                session: self.session.clone(),
            };
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let session = self.session.clone();
        // Kept only to tell the store about an upstream 401 (its key is an HMAC of both).
        let tokens = session
            .cache
            .shared
            .is_some()
            .then(|| Box::new((authorization.clone(), token.clone())));
        let deciding: Deciding = Box::pin(async move {
            session
                .decide_with(&authorization, &token, Some(&session))
                .await
        });
        ResponseFuture {
            state: State::Deciding {
                deciding,
                req: Some(req),
                inner: Some(inner),
                tokens,
            },
            session: self.session.clone(),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<Body>>> {
        Deciding { deciding: Deciding, req: Option<Request<Body>>, inner: Option<S>, tokens: Option<Tokens> },
        Calling { #[pin] fut: S::Future, key: Option<Key>, tokens: Option<Tokens> },
        Learning { learning: Pin<Box<dyn Future<Output = ()> + Send>>, res: Option<Response<Body>> },
    }
}

pin_project! {
    pub struct ResponseFuture<S: Service<Request<Body>>> {
        #[pin]
        state: State<S>,
        session: Arc<Session>,
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Deciding {
                    deciding,
                    req,
                    inner,
                    tokens,
                } => {
                    let key = ready!(deciding.as_mut().poll(cx))?;
                    let (Some(mut req), Some(mut inner)) = (req.take(), inner.take()) else {
                        return Poll::Ready(Err(GatewayError::Internal(
                            "session future reused".into(),
                        )));
                    };
                    if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
                        ctx.set_session(SessionVerdict { key: Some(key) });
                    }
                    State::Calling {
                        fut: inner.call(req),
                        key: Some(key),
                        tokens: tokens.take(),
                    }
                }
                StateProj::Calling { fut, key, tokens } => {
                    let res = ready!(fut.poll(cx))?;
                    match key {
                        Some(key)
                            if res.status() == StatusCode::UNAUTHORIZED
                                && this.session.learn_from_upstream =>
                        {
                            let session = this.session.clone();
                            let key = *key;
                            let tokens = tokens.take();
                            State::Learning {
                                learning: Box::pin(async move {
                                    session.learn_invalid(key, tokens).await
                                }),
                                res: Some(res),
                            }
                        }
                        _ => return Poll::Ready(Ok(res)),
                    }
                }
                StateProj::Learning { learning, res } => {
                    ready!(learning.as_mut().poll(cx));
                    return Poll::Ready(
                        res.take()
                            .ok_or_else(|| GatewayError::Internal("session future reused".into())),
                    );
                }
            };
            this.state.set(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(method: &str, path: &str) -> RequestCtx {
        RequestCtx::builtin_for_test(method, path)
    }

    #[test]
    fn stage_6_runs_only_after_the_contract_on_an_operation_that_requires_it() {
        let mut c = ctx("PATCH", "/companies/v2/rs/1/contacts/2");
        assert!(c.requires_session());
        assert_eq!(stage_6(Some(&c)), Stage6::NotYet);
        c.set_contract(ContractState::Passed);
        assert_eq!(stage_6(Some(&c)), Stage6::Decide);
        c.set_contract(ContractState::Reported);
        assert_eq!(stage_6(Some(&c)), Stage6::Decide);
        let other = ctx("GET", "/companies/v2/rs/1/contacts/2");
        assert_eq!(stage_6(Some(&other)), Stage6::Skip);
        assert_eq!(stage_6(None), Stage6::Skip);
    }

    #[test]
    fn a_request_is_forwardable_only_with_every_decision_it_needs() {
        let mut c = ctx("PATCH", "/companies/v2/rs/1/contacts/2/");
        assert_eq!(c.undecided(), Some("contract"));
        c.set_contract(ContractState::Passed);
        assert_eq!(c.undecided(), Some("session"));
        c.set_session(SessionVerdict { key: None });
        assert_eq!(c.undecided(), None);
        // No operation: nothing to decide.
        assert_eq!(ctx("POST", "/anything").undecided(), None);
    }
}
