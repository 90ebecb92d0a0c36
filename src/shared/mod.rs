//! The store the replicas share (gateway.md §8): Redis or Valkey, through redis-rs's
//! `ConnectionManager` (one multiplexed connection that reconnects with backoff by itself).
//!
//! Every operation is bounded by `shared.timeout` and counted in
//! `gateway_shared_store_operations_total{op, result}`; a failed one leaves the caller to go on
//! with local state. After a failure the store is not asked again for a short, growing pause
//! (50 ms doubling to 2 s), so that an outage costs each request nothing rather than a timeout.
//!
//! Session keys are an HMAC-SHA-256 of the tokens under `shared.key_secret_file`, never a token.

pub(crate) mod revocations;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use ring::hmac;

use crate::config::SharedConfig;
use crate::metrics::{Metrics, StoreOp, StoreResult};
use crate::upstream::SetupError;

/// Why a store operation gave no answer; the caller goes on with local state either way.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("the store did not answer within shared.timeout")]
    Timeout,
    #[error("the store failed: {0}")]
    Failed(String),
    /// Not asked: a recent failure, and the pause after it has not run out.
    #[error("the store is paused after a failure")]
    Paused,
}

/// The verdict lookup: the verdict, or else (when asked to) the right to make it.
const LOOKUP: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if ARGV[1] == '1' then
  if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return {2} end
  return {3}
end
return {0}
";

/// GCRA for every limit a request meets, on the store's clock, all or nothing: the request is
/// counted by every limit or by none. Returns now and each key's TAT (at least now); the
/// arithmetic is `rate_limit::gcra::decide`'s. ARGV: per key, the interval and the tolerance (µs).
const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local ok = true
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  tats[i] = tat
  if tat + interval - now > tolerance then ok = false end
end
local out = {string.format('%d', now)}
for i = 1, #KEYS do
  if ok then
    local new = tats[i] + tonumber(ARGV[2 * i - 1])
    redis.call('SET', KEYS[i], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1)
  end
  out[i + 1] = string.format('%d', tats[i])
end
return out
";

/// What the store knows of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A verdict: valid or not, and its expiry (Unix ms).
    Found { valid: bool, expires_ms: u64 },
    /// None, and this replica now holds the lock to make it.
    Acquired,
    /// None, and another replica is making it.
    Locked,
    /// None (no lock was asked for).
    Absent,
}

/// A connection to the store, shared by the session layer and the rate limiter of one stack.
pub(crate) struct Store {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    secret: hmac::Key,
    /// The raw secret, to derive the local cache's key from (so that replicas agree on it).
    derive: Vec<u8>,
    metrics: Metrics,
    lookup: Script,
    rate: Script,
    /// Until when (ms since `epoch`) the store is not asked, and the current pause.
    paused_until: AtomicU64,
    pause_ms: AtomicU64,
    epoch: Instant,
}

/// Reads `shared.key_secret_file`: surrounding whitespace (a Secret's trailing newline) is not
/// part of the secret.
fn read_secret(path: &Path) -> Result<Vec<u8>, SetupError> {
    let bytes = std::fs::read(path).map_err(|e| {
        SetupError::Config(format!("shared.key_secret_file {}: {e}", path.display()))
    })?;
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < 16 {
        return Err(SetupError::Config(format!(
            "shared.key_secret_file {}: the secret must be at least 16 bytes",
            path.display()
        )));
    }
    Ok(trimmed.to_vec())
}

/// What `--check-config` checks of `[shared]` beyond the config's own validation: the secret file
/// and the URL parse, as start-up would (no connection is made).
/// The error is the key at fault and the reason.
pub(crate) fn check(
    cfg: &SharedConfig,
    ca_file: Option<&Path>,
) -> Result<(), (&'static str, String)> {
    let Some(url) = &cfg.redis_url else {
        return Ok(());
    };
    if let Some(path) = &cfg.key_secret_file {
        read_secret(path).map_err(|e| ("shared.key_secret_file", e.to_string()))?;
    }
    client(url, ca_file)
        .map(|_| ())
        .map_err(|e| ("shared.redis_url", e.to_string()))
}

/// The redis-rs client for `url`; `rediss://` trusts what the upstream trusts: `ca_file` when
/// set, else the built-in Mozilla roots. Errors never repeat the URL (it may hold a password).
fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, SetupError> {
    let bad = |e: redis::RedisError| {
        SetupError::Config(format!(
            "shared.redis_url `{}`: {:?}",
            crate::config::mask_url(url),
            e.kind()
        ))
    };
    match ca_file {
        Some(ca) if url.starts_with("rediss://") => {
            let pem = std::fs::read(ca).map_err(|e| SetupError::CaFile {
                path: ca.display().to_string(),
                message: e.to_string(),
            })?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(bad)
        }
        _ => redis::Client::open(url).map_err(bad),
    }
}

impl Store {
    /// The store of `[shared]`, or `None` without `redis_url`. Connects lazily: a store that is
    /// down at start-up does not stop the gateway.
    pub(crate) fn new(
        cfg: &SharedConfig,
        ca_file: Option<&Path>,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Store>>, SetupError> {
        let Some(url) = &cfg.redis_url else {
            return Ok(None);
        };
        // The connection manager and the subscription run on the gateway's runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SetupError::Config(
                "shared.redis_url: the store needs the gateway's tokio runtime".into(),
            ));
        }
        let path = cfg
            .key_secret_file
            .as_deref()
            .ok_or_else(|| SetupError::Config("shared.key_secret_file: required".into()))?;
        let secret = read_secret(path)?;
        let client = client(url, ca_file)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|e| SetupError::Config(format!("shared.redis_url: {:?}", e.kind())))?;
        metrics.touch_store();
        Ok(Some(Arc::new(Store {
            conn,
            client,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout.0,
            secret: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            derive: secret,
            metrics: metrics.clone(),
            lookup: Script::new(LOOKUP),
            rate: Script::new(RATE),
            paused_until: AtomicU64::new(0),
            pause_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })))
    }

    /// The hex HMAC-SHA-256 of `parts` (each length-prefixed, so the split matters), truncated
    /// to 128 bits: what shared keys hold instead of a token.
    pub(crate) fn hmac_hex(&self, parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&self.secret);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut hex = String::with_capacity(32);
        crate::rate_limit::push_hex(&mut hex, &tag.as_ref()[..16]);
        hex
    }

    /// Two 64-bit keys derived from the secret for `purpose`: every replica derives the same.
    pub(crate) fn derived_keys(&self, purpose: &str) -> (u64, u64) {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.derive);
        let tag = hmac::sign(&key, purpose.as_bytes());
        let b = tag.as_ref();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        (word(0), word(8))
    }

    pub(crate) fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// The revocations channel.
    pub(crate) fn channel(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs one operation within `shared.timeout`, unless paused; times it and counts a failure
    /// (the caller labels a success `ok` or `miss`).
    async fn run<T, F>(&self, op: StoreOp, fut: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.now_ms() < self.paused_until.load(Ordering::Relaxed) {
            self.metrics.store_op(op, StoreResult::Error);
            return Err(StoreError::Paused);
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Failed(format!("{:?}", e.kind()))),
            Err(_) => Err(StoreError::Timeout),
        };
        self.metrics
            .store_duration(op, started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.pause_ms.store(0, Ordering::Relaxed),
            Err(e) => {
                let label = match e {
                    StoreError::Timeout => StoreResult::Timeout,
                    _ => StoreResult::Error,
                };
                self.metrics.store_op(op, label);
                let pause = (self.pause_ms.load(Ordering::Relaxed) * 2).clamp(50, 2000);
                self.pause_ms.store(pause, Ordering::Relaxed);
                self.paused_until
                    .store(self.now_ms() + pause, Ordering::Relaxed);
                tracing::debug!(op = op.as_str(), error = %e, pause_ms = pause, "shared store operation failed; going on locally");
            }
        }
        result
    }

    /// A session's verdict in the store; with `lock_ms`, the lock to make it when there is none.
    /// One round trip.
    pub(crate) async fn lookup(
        &self,
        id: &str,
        lock_ms: Option<u64>,
    ) -> Result<Lookup, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = self.lookup.prepare_invoke();
        call.key(self.key("s", id))
            .key(self.key("lock", id))
            .arg(if lock_ms.is_some() { "1" } else { "0" })
            .arg(lock_ms.unwrap_or(0));
        let value: Value = self
            .run(StoreOp::Get, async { call.invoke_async(&mut conn).await })
            .await?;
        let lookup = parse_lookup(&value).ok_or_else(|| {
            self.metrics.store_op(StoreOp::Get, StoreResult::Error);
            StoreError::Failed("unexpected answer to the lookup".into())
        })?;
        let result = match lookup {
            Lookup::Found { .. } => StoreResult::Ok,
            _ => StoreResult::Miss,
        };
        self.metrics.store_op(StoreOp::Get, result);
        Ok(lookup)
    }

    /// A session's verdict, plainly (a replica waiting on another's lock).
    pub(crate) async fn get(&self, id: &str) -> Result<Option<(bool, u64)>, StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("GET").arg(self.key("s", id)).clone();
        let value: Option<Vec<u8>> = self
            .run(StoreOp::Get, async { cmd.query_async(&mut conn).await })
            .await?;
        let parsed = value.as_deref().and_then(parse_verdict);
        let result = if parsed.is_some() {
            StoreResult::Ok
        } else {
            StoreResult::Miss
        };
        self.metrics.store_op(StoreOp::Get, result);
        Ok(parsed)
    }

    /// Writes a verdict with the store's own expiry, releases the lock when held and, for an
    /// invalid verdict, publishes `revoked` (the local key, hex) on the revocations channel. One
    /// round trip (pipelined).
    pub(crate) async fn put(
        &self,
        id: &str,
        valid: bool,
        expires_ms: u64,
        ttl: Duration,
        release_lock: bool,
        revoked: Option<u128>,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        pipe.cmd("SET")
            .arg(self.key("s", id))
            .arg(format!("{}:{expires_ms}", if valid { 'v' } else { 'i' }))
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        if release_lock {
            pipe.cmd("DEL").arg(self.key("lock", id)).ignore();
        }
        if let Some(key) = revoked {
            pipe.cmd("PUBLISH")
                .arg(self.channel())
                .arg(format!("{key:032x}"))
                .ignore();
        }
        let mut conn = self.conn.clone();
        let result: Result<(), StoreError> = self
            .run(StoreOp::Set, async { pipe.query_async(&mut conn).await })
            .await;
        // Publish rides in the same round trip, and shares its fate.
        let label = if result.is_ok() {
            self.metrics.store_op(StoreOp::Set, StoreResult::Ok);
            StoreResult::Ok
        } else {
            StoreResult::Error
        };
        if revoked.is_some() {
            self.metrics.store_op(StoreOp::Publish, label);
        }
        result
    }

    /// GCRA over `keys` with their (interval, tolerance) in µs, on the store's clock: now and
    /// each key's TAT before this request. One round trip.
    pub(crate) async fn rate(
        &self,
        keys: &[String],
        rules: &[(u64, u64)],
    ) -> Result<(u64, Vec<u64>), StoreError> {
        let mut call = self.rate.prepare_invoke();
        for (k, (interval, tolerance)) in keys.iter().zip(rules) {
            call.key(k).arg(*interval).arg(*tolerance);
        }
        let mut conn = self.conn.clone();
        let value: Vec<String> = self
            .run(StoreOp::Rate, async { call.invoke_async(&mut conn).await })
            .await?;
        let numbers: Option<Vec<u64>> = value.iter().map(|s| s.parse().ok()).collect();
        match numbers {
            Some(n) if n.len() == keys.len() + 1 => {
                self.metrics.store_op(StoreOp::Rate, StoreResult::Ok);
                Ok((n[0], n[1..].to_vec()))
            }
            _ => {
                self.metrics.store_op(StoreOp::Rate, StoreResult::Error);
                Err(StoreError::Failed(
                    "unexpected answer to the rate script".into(),
                ))
            }
        }
    }
}

/// `v:<ms>` or `i:<ms>`.
pub(crate) fn parse_verdict(bytes: &[u8]) -> Option<(bool, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (kind, ms) = text.split_once(':')?;
    let ms = ms.parse().ok()?;
    match kind {
        "v" => Some((true, ms)),
        "i" => Some((false, ms)),
        _ => None,
    }
}

fn parse_lookup(value: &Value) -> Option<Lookup> {
    let Value::Array(items) = value else {
        return None;
    };
    match items.first()? {
        Value::Int(1) => {
            let Value::BulkString(v) = items.get(1)? else {
                return None;
            };
            let (valid, expires_ms) = parse_verdict(v)?;
            Some(Lookup::Found { valid, expires_ms })
        }
        Value::Int(2) => Some(Lookup::Acquired),
        Value::Int(3) => Some(Lookup::Locked),
        Value::Int(0) => Some(Lookup::Absent),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_lookups_parse_and_nothing_else_does() {
        assert_eq!(parse_verdict(b"v:123"), Some((true, 123)));
        assert_eq!(parse_verdict(b"i:9"), Some((false, 9)));
        for bad in [&b"x:1"[..], b"v:", b"v", b"v:-1", b"\xff:1"] {
            assert_eq!(parse_verdict(bad), None, "{bad:?}");
        }
        let found = Value::Array(vec![Value::Int(1), Value::BulkString(b"v:5".to_vec())]);
        assert_eq!(
            parse_lookup(&found),
            Some(Lookup::Found {
                valid: true,
                expires_ms: 5
            })
        );
        assert_eq!(
            parse_lookup(&Value::Array(vec![Value::Int(2)])),
            Some(Lookup::Acquired)
        );
        assert_eq!(
            parse_lookup(&Value::Array(vec![Value::Int(3)])),
            Some(Lookup::Locked)
        );
        assert_eq!(
            parse_lookup(&Value::Array(vec![Value::Int(0)])),
            Some(Lookup::Absent)
        );
        assert_eq!(parse_lookup(&Value::Nil), None);
        assert_eq!(parse_lookup(&Value::Array(vec![Value::Int(1)])), None);
    }

    fn store(secret: &str) -> Arc<Store> {
        let dir = std::env::temp_dir().join(format!("cgw-store-{}-{secret}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, secret).unwrap();
        let cfg = SharedConfig {
            // Nothing listens there; the client connects lazily, so nothing is tried.
            redis_url: Some("redis://127.0.0.1:1/".into()),
            key_secret_file: Some(file),
            ..SharedConfig::default()
        };
        let metrics = Metrics::new(&[1.0]).unwrap();
        let store = Store::new(&cfg, None, &metrics).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        store
    }

    #[tokio::test]
    async fn replicas_with_one_secret_agree_on_keys_and_no_token_shows() {
        let (a, b) = (store("0123456789abcdef-one"), store("0123456789abcdef-one"));
        let other = store("0123456789abcdef-two");
        let id = a.hmac_hex(&[b"Bearer t", b"session-token"]);
        assert_eq!(id.len(), 32);
        assert_eq!(id, b.hmac_hex(&[b"Bearer t", b"session-token"]));
        assert_ne!(id, other.hmac_hex(&[b"Bearer t", b"session-token"]));
        assert_ne!(id, a.hmac_hex(&[b"Bearer ts", b"ession-token"]));
        assert!(!id.contains("session"));
        assert_eq!(a.derived_keys("x"), b.derived_keys("x"));
        assert_ne!(a.derived_keys("x"), a.derived_keys("y"));
        assert_ne!(a.derived_keys("x"), other.derived_keys("x"));
        assert_eq!(a.key("s", &id), format!("cgw:s:{id}"));
        assert_eq!(a.channel(), "cgw:revoked");
    }

    #[test]
    fn without_a_runtime_the_store_is_refused_not_a_panic() {
        let cfg = SharedConfig {
            redis_url: Some("redis://127.0.0.1:1/".into()),
            key_secret_file: Some("/nonexistent".into()),
            ..SharedConfig::default()
        };
        let metrics = Metrics::new(&[1.0]).unwrap();
        let err = Store::new(&cfg, None, &metrics).err().unwrap().to_string();
        assert!(err.starts_with("shared.redis_url"), "{err}");
    }

    #[test]
    fn a_short_or_missing_secret_is_refused_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("cgw-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let err = read_secret(&short).unwrap_err().to_string();
        assert!(err.starts_with("shared.key_secret_file"), "{err}");
        let err = read_secret(&dir.join("absent")).unwrap_err().to_string();
        assert!(err.starts_with("shared.key_secret_file"), "{err}");
        let ok = dir.join("ok");
        std::fs::write(&ok, "  0123456789abcdef0123\n").unwrap();
        assert_eq!(read_secret(&ok).unwrap(), b"0123456789abcdef0123");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
