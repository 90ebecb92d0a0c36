//! `[[rate_limit]]` (gateway.md §8): GCRA per key (`session`, `client` or `route`), on the
//! store's clock across replicas when `[shared]` names one, else per replica.
//!
//! The layer runs innermost, just before Forward: only a request that passed the contract and
//! its session check spends budget, so a 400 or 401 costs none of the upstream-facing limits.
//! With the store, a request costs one round trip (one script for every limit it meets); when
//! the store fails the per-replica table decides (limits fail open to per-replica, never closed).

pub(crate) mod gcra;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request, Response};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use siphasher::sip128::{Hasher128, SipHasher13};
use smallvec::SmallVec;
use tower::{Layer, Service};

use crate::config::{RateKey, RateLimitConfig};
use crate::context::RequestCtx;
use crate::error::{GatewayError, RATELIMIT};
use crate::metrics::Metrics;
use crate::session::cache::{Key, KeyBits, KeyHasher};
use crate::shared::Store;
use crate::upstream::SetupError;
use crate::Body;
use gcra::{decide, Decision, Rule};

/// A request's keys or decisions: up to four limits without a heap allocation.
type Few<T> = SmallVec<[T; 4]>;

/// Keys the per-replica table holds at most; past it new keys are not tracked (fail open).
const MAX_LOCAL_KEYS: usize = 1_000_000;

struct Limit {
    name: String,
    key: RateKey,
    rule: Rule,
    /// `RateLimit-Policy: "<name>";q=<rate>;w=<per>`.
    policy: HeaderValue,
    /// `RateLimit: "<name>";r=<i>;t=0` for the first remaining counts, made once: a request within
    /// its limits then clones one (a reference count) instead of writing and allocating it.
    states: Vec<HeaderValue>,
    /// The value for a request that meets a full bucket (the usual case of a client well within
    /// a limit whose burst is above `READY_STATES`), also made once.
    full: (u64, HeaderValue),
    /// Mixed into a session key to make this limit's per-replica key (random per process).
    salt: u128,
}

/// How many `RateLimit` values each limit keeps ready.
const READY_STATES: u64 = 256;

/// Which limit said what about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Judged {
    pub(crate) limit: usize,
    pub(crate) decision: Decision,
}

/// Of a request's decisions, the one its headers name: a refusing one (the longest wait), else
/// the one closest to exhaustion. `None` for no decisions. Pure.
pub(crate) fn headline(judged: &[Judged]) -> Option<Judged> {
    let refused = judged
        .iter()
        .filter(|j| !j.decision.allowed)
        .max_by_key(|j| j.decision.reset_secs);
    refused.copied().or_else(|| {
        judged
            .iter()
            .min_by_key(|j| {
                (
                    j.decision.remaining,
                    std::cmp::Reverse(j.decision.reset_secs),
                )
            })
            .copied()
    })
}

/// Each limit's route is `*` or a label of the loaded document (`labels[i]` is operation `i`'s):
/// per limit, its operation's index, or `None` for `*`.
pub(crate) fn check_routes(
    configs: &[RateLimitConfig],
    labels: &[&str],
) -> Result<Vec<Option<usize>>, String> {
    configs
        .iter()
        .map(|c| {
            if c.route == "*" {
                return Ok(None);
            }
            labels
                .iter()
                .position(|l| *l == c.route)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                    "rate_limit.route: `{}` (limit `{}`) is no route label of the loaded document",
                    c.route, c.name
                )
                })
        })
        .collect()
}

struct Table {
    /// By `local_key` (which mixes in the limit): uniform already, so not hashed again.
    tats: HashMap<u128, u64, KeyBits>,
    /// Prune stale keys when the table reaches this size.
    prune_at: usize,
}

/// Every limit, which routes each applies to, and the per-replica state.
pub(crate) struct Limiter {
    limits: Vec<Limit>,
    /// Per route slot (0 is `other`), the limits that apply.
    by_slot: Vec<Vec<usize>>,
    table: Mutex<Table>,
    epoch: Instant,
    /// SipHash keys of the per-replica table (random per process).
    k0: u64,
    k1: u64,
    /// The session cache's key hasher: a request the session layer did not judge is keyed as
    /// if it had (the same `Key` of the bearer and the token).
    session_keys: KeyHasher,
    store: Option<Arc<Store>>,
    trusted_proxies: Vec<IpNet>,
    token_header: HeaderName,
    metrics: Metrics,
}

impl Limiter {
    /// Compiles the limits against the loaded document's route labels (`labels[i]` is operation
    /// `i`'s): a limit on a route the document does not have is refused, naming the key.
    /// `session_keys` is the session cache's hasher.
    pub(crate) fn new(
        configs: &[RateLimitConfig],
        labels: &[&str],
        session_keys: KeyHasher,
        store: Option<Arc<Store>>,
        trusted_proxies: &[IpNet],
        token_header: HeaderName,
        metrics: &Metrics,
    ) -> Result<Limiter, SetupError> {
        let seed = |n: u8| std::collections::hash_map::RandomState::new().hash_one(n);
        let mut limits = Vec::with_capacity(configs.len());
        let mut by_slot = vec![Vec::new(); labels.len() + 1];
        let routes = check_routes(configs, labels).map_err(SetupError::Config)?;
        for (i, (c, route)) in configs.iter().zip(routes).enumerate() {
            let per = c.per.0.as_secs();
            let policy = HeaderValue::from_str(&format!("\"{}\";q={};w={per}", c.name, c.rate))
                .map_err(|_| SetupError::Config(format!("rate_limit.name: `{}`", c.name)))?;
            let slots: Vec<usize> = match route {
                None => (0..by_slot.len()).collect(),
                Some(op) => vec![op + 1],
            };
            for slot in slots {
                by_slot[slot].push(i);
                let label = if slot == 0 { "other" } else { labels[slot - 1] };
                metrics.rate_limited.with_label_values(&[label, &c.name]);
            }
            let ready = u64::from(c.burst()).min(READY_STATES);
            let rule = Rule::new(c.rate, c.per.0.as_micros() as u64, c.burst());
            let full = decide(rule, None, 0).remaining;
            limits.push(Limit {
                name: c.name.clone(),
                key: c.key,
                rule,
                policy,
                states: (0..ready).map(|r| state_header(&c.name, r, 0)).collect(),
                full: (full, state_header(&c.name, full, 0)),
                salt: (u128::from(seed(2)) << 64) | u128::from(seed(3)),
            });
        }
        Ok(Limiter {
            limits,
            by_slot,
            table: Mutex::new(Table {
                tats: HashMap::with_hasher(KeyBits),
                prune_at: 1024,
            }),
            epoch: Instant::now(),
            k0: seed(0),
            k1: seed(1),
            session_keys,
            store,
            trusted_proxies: trusted_proxies.to_vec(),
            token_header,
            metrics: metrics.clone(),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The session's key: the session layer's when it judged the request (no second pass over
    /// the tokens), else the same hash made here; `None` without a session token.
    fn session_key(&self, req: &Request<Body>, ctx: &RequestCtx) -> Option<Key> {
        if let Some(verdict) = ctx.session() {
            return verdict.key();
        }
        let token = req.headers().get(&self.token_header)?;
        let bearer = req
            .headers()
            .get(AUTHORIZATION)
            .map_or(&b""[..], HeaderValue::as_bytes);
        Some(self.session_keys.key(bearer, token.as_bytes()))
    }

    /// What a request is keyed by under each limit that applies to its route (a limit with
    /// nothing to key on is left out): the session's key is made at most once.
    fn materials(&self, applicable: &[usize], req: &Request<Body>, ctx: &RequestCtx) -> Keys {
        let mut session: Option<Option<Key>> = None;
        let mut keys = Keys::new();
        for &i in applicable {
            let material = match self.limits[i].key {
                RateKey::Session => {
                    match *session.get_or_insert_with(|| self.session_key(req, ctx)) {
                        Some(key) => Material::Session(key),
                        None => continue,
                    }
                }
                RateKey::Client => {
                    let Some(conn) = ctx.conn.as_ref() else {
                        continue;
                    };
                    let ip =
                        crate::shed_client::client_ip(conn, &self.trusted_proxies, req.headers());
                    Material::Client(match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        IpAddr::V6(v6) => v6.octets(),
                    })
                }
                RateKey::Route => Material::Route(ctx.route_slot() as u64),
            };
            keys.push((i, material));
        }
        keys
    }

    /// The per-replica key of `material` under limit `i`. A session key is already a keyed hash
    /// (uniform, and nobody can aim at it), so the limit's random salt is mixed in without
    /// hashing again; an address or a slot is hashed with the limit.
    fn local_key(&self, i: usize, material: &Material) -> u128 {
        let bytes: &[u8] = match material {
            Material::Session(key) => return key ^ self.limits[i].salt,
            Material::Client(ip) => ip,
            Material::Route(slot) => &slot.to_le_bytes(),
        };
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_usize(i);
        h.write(bytes);
        h.finish128().as_u128()
    }

    /// The store's key of each limit a request meets: `<prefix>rl:<name>:<id>`. For a session,
    /// the id is the session's key in hex: a keyed hash of the bearer and the token that every
    /// replica derives from `key_secret_file` (the revocation messages name sessions by it too),
    /// so no HMAC over the tokens is made per request. An address or a route's slot is HMACed.
    fn store_names(&self, store: &Store, keys: &[(usize, Material)]) -> Vec<String> {
        keys.iter()
            .map(|(i, m)| {
                let prefix = store.key("rl", &self.limits[*i].name);
                let mut name = String::with_capacity(prefix.len() + 33);
                name.push_str(&prefix);
                name.push(':');
                match m {
                    Material::Session(key) => push_hex(&mut name, &key.to_be_bytes()),
                    Material::Client(ip) => name.push_str(&store.hmac_hex(&[ip])),
                    Material::Route(slot) => name.push_str(&store.hmac_hex(&[&slot.to_le_bytes()])),
                }
                name
            })
            .collect()
    }

    /// Decides on the per-replica table, all or nothing. Pure but for the table.
    fn decide_local(&self, keys: &[(usize, Material)]) -> Few<Judged> {
        let now = self.now_us();
        let local: Few<u128> = keys.iter().map(|(i, m)| self.local_key(*i, m)).collect();
        let Ok(mut table) = self.table.lock() else {
            // A panic elsewhere poisoned the table: fail open, as during a store outage.
            return Few::new();
        };
        let judged: Few<Judged> = keys
            .iter()
            .zip(&local)
            .map(|((i, _), k)| Judged {
                limit: *i,
                decision: decide(self.limits[*i].rule, table.tats.get(k).copied(), now),
            })
            .collect();
        if judged.iter().all(|j| j.decision.allowed) {
            if table.tats.len() >= table.prune_at {
                // A key whose TAT has passed is as good as new: drop it.
                table.tats.retain(|_, tat| *tat > now);
                table.prune_at = (table.tats.len() * 2).max(1024);
            }
            for (k, j) in local.iter().zip(&judged) {
                if let Some(tat) = table.tats.get_mut(k) {
                    *tat = j.decision.new_tat;
                } else if table.tats.len() < MAX_LOCAL_KEYS {
                    table.tats.insert(*k, j.decision.new_tat);
                }
            }
        }
        judged
    }

    /// Decides on the store, on its clock, or `None` when the store did not answer. `names` are
    /// `store_names(keys)`.
    async fn decide_shared(
        &self,
        store: &Store,
        keys: &[(usize, Material)],
        names: &[String],
    ) -> Option<Few<Judged>> {
        let rules: Few<(u64, u64)> = keys
            .iter()
            .map(|(i, _)| {
                let rule = self.limits[*i].rule;
                (rule.interval_us, rule.tolerance_us)
            })
            .collect();
        let (now, tats) = store.rate(names, &rules).await.ok()?;
        Some(
            keys.iter()
                .zip(tats)
                .map(|((i, _), tat)| Judged {
                    limit: *i,
                    decision: decide(self.limits[*i].rule, Some(tat), now),
                })
                .collect(),
        )
    }

    /// The `RateLimit` of a request within its limits, or the 429, for its decisions.
    fn verdict(&self, judged: &[Judged], route: &str) -> Result<Option<HeaderValue>, GatewayError> {
        let Some(head) = headline(judged) else {
            return Ok(None);
        };
        let limit = &self.limits[head.limit];
        let d = head.decision;
        let ready = match (d.reset_secs, limit.full.0 == d.remaining) {
            (0, true) => Some(&limit.full.1),
            (0, false) => usize::try_from(d.remaining)
                .ok()
                .and_then(|r| limit.states.get(r)),
            _ => None,
        };
        let state = match ready {
            Some(state) => state.clone(),
            None => state_header(&limit.name, d.remaining, d.reset_secs),
        };
        if d.allowed {
            return Ok(Some(state));
        }
        self.metrics
            .rate_limited
            .with_label_values(&[route, &limit.name])
            .inc();
        Err(GatewayError::RateLimited {
            retry_after: head.decision.reset_secs,
            policy: limit.policy.clone(),
            state,
        })
    }
}

/// `"<name>";r=<remaining>;t=<reset>`, written without `fmt` (on every limited request).
fn state_header(name: &str, remaining: u64, reset: u64) -> HeaderValue {
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (r.format(remaining).as_bytes(), t.format(reset).as_bytes());
    let mut out = Vec::with_capacity(name.len() + r.len() + t.len() + 8);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\";r=");
    out.extend_from_slice(r);
    out.extend_from_slice(b";t=");
    out.extend_from_slice(t);
    // The name was checked at load (letters, digits, `_-.`), so this cannot fail.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).unwrap_or(HeaderValue::from_static(""))
}

/// Appends `bytes` in lower-case hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// What a limit keys a request by.
#[derive(Debug, Clone, Copy)]
enum Material {
    /// The session's key (a keyed hash of the bearer and the session token).
    Session(Key),
    /// The client's address, IPv4 mapped into IPv6.
    Client([u8; 16]),
    /// The route's slot.
    Route(u64),
}

/// A request's limits and what each keys it by.
type Keys = Few<(usize, Material)>;

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
}

impl RateLimitLayer {
    /// `None` when no `[[rate_limit]]` is configured: the layer passes everything on.
    pub(crate) fn new(limiter: Option<Arc<Limiter>>) -> Self {
        RateLimitLayer {
            limiter: limiter.filter(|l| !l.limits.is_empty()),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
}

type Deciding = Pin<Box<dyn Future<Output = Result<Option<HeaderValue>, GatewayError>> + Send>>;

pin_project! {
    #[project = ResponseProj]
    pub enum ResponseFuture<S: Service<Request<Body>>> {
        /// Decided (or nothing to decide): the inner call, and the headers to add.
        Passing { #[pin] fut: S::Future, headers: Option<HeaderValue> },
        Refused { err: Option<GatewayError> },
        /// Deciding on the store; then the request goes on to `inner`.
        Deciding { deciding: Deciding, req: Option<Request<Body>>, inner: Option<S> },
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                ResponseProj::Passing { fut, headers } => {
                    let res = std::task::ready!(fut.poll(cx));
                    return Poll::Ready(res.map(|r| with_headers(r, headers.take())));
                }
                ResponseProj::Refused { err } => {
                    return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                        GatewayError::Internal("rate limit future reused".into())
                    })))
                }
                ResponseProj::Deciding {
                    deciding,
                    req,
                    inner,
                } => {
                    let headers = std::task::ready!(deciding.as_mut().poll(cx))?;
                    let (Some(req), Some(mut inner)) = (req.take(), inner.take()) else {
                        return Poll::Ready(Err(GatewayError::Internal(
                            "rate limit future reused".into(),
                        )));
                    };
                    ResponseFuture::Passing {
                        fut: inner.call(req),
                        headers,
                    }
                }
            };
            self.set(next);
        }
    }
}

/// A response within its limits carries `RateLimit` (not `RateLimit-Policy`, which §8 leaves
/// optional there: one header fewer on every forwarded response; a 429 carries both).
fn with_headers(mut res: Response<Body>, state: Option<HeaderValue>) -> Response<Body> {
    if let Some(state) = state {
        res.headers_mut().insert(RATELIMIT, state);
    }
    res
}

impl<S> Service<Request<Body>> for RateLimitService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let pass = |inner: &mut S, req| ResponseFuture::Passing {
            fut: inner.call(req),
            headers: None,
        };
        let Some(limiter) = &self.limiter else {
            return pass(&mut self.inner, req);
        };
        let Some(ctx) = req.extensions().get::<RequestCtx>() else {
            return pass(&mut self.inner, req);
        };
        let applicable = limiter
            .by_slot
            .get(ctx.route_slot())
            .map_or(&[][..], Vec::as_slice);
        let keys = limiter.materials(applicable, &req, ctx);
        if keys.is_empty() {
            return pass(&mut self.inner, req);
        }
        let Some(store) = limiter.store.clone() else {
            return match limiter.verdict(&limiter.decide_local(&keys), ctx.label()) {
                Ok(headers) => ResponseFuture::Passing {
                    fut: self.inner.call(req),
                    headers,
                },
                Err(e) => ResponseFuture::Refused { err: Some(e) },
            };
        };
        let names = limiter.store_names(&store, &keys);
        let route = ctx.label().to_owned();
        let limiter = limiter.clone();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Deciding {
            deciding: Box::pin(async move {
                let judged = match limiter.decide_shared(&store, &keys, &names).await {
                    Some(judged) => judged,
                    // The store failed: this replica's own budget decides.
                    None => limiter.decide_local(&keys),
                };
                limiter.verdict(&judged, &route)
            }),
            req: Some(req),
            inner: Some(inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(limit: usize, allowed: bool, remaining: u64, reset_secs: u64) -> Judged {
        Judged {
            limit,
            decision: Decision {
                allowed,
                remaining,
                reset_secs,
                new_tat: 0,
            },
        }
    }

    #[test]
    fn the_state_header_is_written_as_the_draft_spells_it() {
        assert_eq!(
            state_header("per-session", 0, 12),
            "\"per-session\";r=0;t=12"
        );
        assert_eq!(
            state_header("a", u64::MAX, 10),
            format!("\"a\";r={};t=10", u64::MAX).as_str()
        );
    }

    #[test]
    fn hex_is_written_as_format_writes_it() {
        let key: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        let mut hex = String::new();
        push_hex(&mut hex, &key.to_be_bytes());
        assert_eq!(hex, format!("{key:032x}"));
        let mut short = String::new();
        push_hex(&mut short, &[0, 9, 0xa0, 0xff]);
        assert_eq!(short, "0009a0ff");
    }

    #[test]
    fn the_headers_name_the_refusing_limit_else_the_closest_to_exhaustion() {
        assert_eq!(headline(&[]), None);
        let a = judged(0, true, 5, 0);
        let b = judged(1, true, 1, 0);
        let c = judged(2, true, 1, 3);
        assert_eq!(headline(&[a, b]), Some(b));
        assert_eq!(headline(&[a, b, c]), Some(c));
        let x = judged(3, false, 0, 2);
        let y = judged(4, false, 0, 9);
        assert_eq!(headline(&[a, x, b, y]), Some(y));
    }

    #[test]
    fn a_full_bucket_above_the_ready_values_gets_the_value_made_at_load() {
        let l = limiter(&[config("big", "*", 1000, None)]).unwrap();
        assert_eq!(l.limits[0].states.len(), 256);
        assert_eq!(l.limits[0].full.0, 999);
        let key = |s: &[u8]| vec![(0, Material::Session(l.session_keys.key(b"b", s)))];
        // A new key meets a full bucket: the ready value, as written.
        let first = l.decide_local(&key(b"one"));
        let v = l.verdict(&first, "update_contact").unwrap().unwrap();
        assert_eq!(v, "\"big\";r=999;t=0");
        assert_eq!(v, state_header("big", 999, 0));
        // The same key again, with the bucket not yet refilled: written per request.
        let second = l.decide_local(&key(b"one"));
        let v = l.verdict(&second, "update_contact").unwrap().unwrap();
        assert_eq!(v, "\"big\";r=998;t=0");
    }

    fn limiter(configs: &[RateLimitConfig]) -> Result<Limiter, SetupError> {
        let metrics = Metrics::new(&[1.0]).unwrap();
        Limiter::new(
            configs,
            &["update_contact", "get_company"],
            KeyHasher::default(),
            None,
            &[],
            HeaderName::from_static("x-session-token"),
            &metrics,
        )
    }

    fn config(name: &str, route: &str, rate: u32, burst: Option<u32>) -> RateLimitConfig {
        RateLimitConfig {
            name: name.into(),
            key: RateKey::Session,
            route: route.into(),
            rate,
            per: crate::config::Dur::secs(60),
            burst,
        }
    }

    #[test]
    fn a_limit_on_a_route_the_document_lacks_is_refused_at_load() {
        let err = limiter(&[config("x", "nope", 1, None)])
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("rate_limit.route"), "{err}");
        let l = limiter(&[
            config("all", "*", 1, None),
            config("one", "get_company", 1, None),
        ])
        .unwrap();
        assert_eq!(l.by_slot, vec![vec![0], vec![0], vec![0, 1]]);
    }

    #[test]
    fn the_local_table_counts_all_limits_or_none() {
        // "wide" allows 3 at once, "narrow" 1: the second request is refused by "narrow" and
        // spends nothing of "wide".
        let l = limiter(&[config("wide", "*", 3, None), config("narrow", "*", 1, None)]).unwrap();
        let keys = || {
            vec![
                (0, Material::Session(l.session_keys.key(b"b", b"s"))),
                (1, Material::Session(l.session_keys.key(b"b", b"s"))),
            ]
        };
        let first = l.decide_local(&keys());
        assert!(first.iter().all(|j| j.decision.allowed));
        let ok = l.verdict(&first, "update_contact").unwrap().unwrap();
        assert_eq!(ok, "\"narrow\";r=0;t=60");
        // The ready-made values are the written ones.
        let wide = &l.limits[0];
        assert_eq!(wide.states.len(), 3);
        for (r, v) in wide.states.iter().enumerate() {
            assert_eq!(v, &state_header("wide", r as u64, 0));
        }
        for _ in 0..3 {
            let refused = l.decide_local(&keys());
            let Err(GatewayError::RateLimited {
                retry_after, state, ..
            }) = l.verdict(&refused, "update_contact")
            else {
                panic!("not refused");
            };
            assert_eq!(retry_after, 60);
            assert_eq!(state, "\"narrow\";r=0;t=60");
        }
        // "wide" alone still has 2 left: the refusals spent none of it.
        let wide_only = l.decide_local(&keys()[..1]);
        assert_eq!(wide_only[0].decision.remaining, 1);
        assert_eq!(
            l.metrics
                .rate_limited
                .with_label_values(&["update_contact", "narrow"])
                .get(),
            3
        );
        // Another session has its own budget.
        let other = l.decide_local(&[(1, Material::Session(l.session_keys.key(b"b", b"t")))]);
        assert!(other[0].decision.allowed);
    }
}
