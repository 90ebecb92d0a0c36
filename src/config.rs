//! The typed configuration: read once at start-up, validated, and split so that each layer gets its
//! own section. Keys and defaults are those of `gateway.md` section 1.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::contract::UnknownFields;
pub use crate::contract::UnknownQuery;

/// The Companies API itself.
pub const DEFAULT_UPSTREAM: &str = "https://z52mnqg347.execute-api.eu-west-3.amazonaws.com/main";

/// Prefix of the environment variables that override the file.
const ENV_PREFIX: &str = "GATEWAY_";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listener: ListenerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub runtime: RuntimeConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    pub validation: ValidationConfig,
    pub session: SessionConfig,
    pub shared: SharedConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limit: Vec<RateLimitConfig>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    pub tls_handshake_timeout: Dur,
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: Dur::secs(10),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    /// The admin listener's own cap: beyond it a new admin connection is closed at once.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_connections: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    #[serde(serialize_with = "masked_url")]
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Dur,
    pub request_timeout: Dur,
    pub pool_idle_timeout: Dur,
    pub pool_max_idle_per_host: usize,
    pub http2: bool,
    // Resilience (gateway.md section 9).
    /// Addresses for the URL's host instead of DNS; TLS still checks the URL's host name.
    pub resolve: Vec<SocketAddr>,
    pub dns_refresh: Dur,
    /// Cap on open upstream connections; beyond it requests wait within `request_timeout`.
    pub max_connections: usize,
    pub retries: u32,
    /// In any 10-second window, retries <= this share of requests + 10.
    pub retry_budget: f64,
    pub outlier_failures: u32,
    pub outlier_ejection: Dur,
    /// `http://[user:password@]host:port`; its credentials are a secret.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "masked_opt_url"
    )]
    pub proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_UPSTREAM.to_string(),
            ca_file: None,
            connect_timeout: Dur::secs(3),
            request_timeout: Dur::secs(15),
            pool_idle_timeout: Dur::secs(50),
            pool_max_idle_per_host: 256,
            http2: false,
            resolve: Vec::new(),
            dns_refresh: Dur::secs(30),
            max_connections: 1024,
            retries: 2,
            retry_budget: 0.2,
            outlier_failures: 5,
            outlier_ejection: Dur::secs(30),
            proxy: None,
            client_cert: None,
            client_key: None,
        }
    }
}

impl UpstreamConfig {
    /// The section 9 keys: ranges, the client certificate pair and the proxy URL.
    fn validate(&self) -> Result<(), ConfigError> {
        let non_zero = [
            ("upstream.dns_refresh", self.dns_refresh.0.is_zero()),
            (
                "upstream.outlier_ejection",
                self.outlier_ejection.0.is_zero(),
            ),
            ("upstream.max_connections", self.max_connections == 0),
            ("upstream.outlier_failures", self.outlier_failures == 0),
        ];
        for (key, zero) in non_zero {
            if zero {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            return Err(invalid(
                "upstream.retry_budget",
                "must be a share between 0 and 1",
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(invalid(
                "upstream.client_cert",
                "client_cert and client_key must be set together",
            ));
        }
        if let Some(proxy) = &self.proxy {
            crate::proxy::ProxyUrl::parse(proxy).map_err(|m| invalid("upstream.proxy", m))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// 0 = one per core.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Dur,
    pub body_read_timeout: Dur,
    pub idle_timeout: Dur,
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
    /// Per client address; 0 = no cap. At accept only the peer is known (see `shed_client`).
    pub max_connections_per_client: usize,
    /// Per client after `trusted_proxies`; 0 = no cap.
    pub max_concurrent_requests_per_client: usize,
    pub h2_max_concurrent_streams: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 65_536,
            max_header_bytes: 16_384,
            max_headers: 64,
            header_read_timeout: Dur::secs(10),
            body_read_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            max_connections: 10_000,
            max_concurrent_requests: 4096,
            max_connections_per_client: 256,
            max_concurrent_requests_per_client: 128,
            h2_max_concurrent_streams: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub drain_delay: Dur,
    pub drain_timeout: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Dur::secs(0),
            drain_timeout: Dur::secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownRoutes {
    #[default]
    Forward,
    Reject,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    pub mode: Mode,
    pub unknown_fields: UnknownFields,
    pub unknown_routes: UnknownRoutes,
    /// The OpenAPI document whose operations are validated; unset: the built-in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openapi: Option<PathBuf>,
    pub unknown_query: UnknownQuery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnVerifierError {
    #[default]
    Reject,
    Allow,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub leeway: Dur,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "masked_opt_url"
    )]
    pub introspect_url: Option<String>,
    pub introspect_timeout: Dur,
    pub learn_from_upstream: bool,
    pub cache_capacity: u64,
    pub valid_ttl: Dur,
    pub invalid_ttl: Dur,
    pub stale_if_error: Dur,
    pub on_verifier_error: OnVerifierError,
    /// The header an operation requires (parameter or apiKey scheme) to get the session check.
    pub token_header: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            leeway: Dur::secs(30),
            jwt_hs256_secret_file: None,
            jwt_public_key_file: None,
            jwks_file: None,
            introspect_url: None,
            introspect_timeout: Dur::secs(2),
            learn_from_upstream: true,
            cache_capacity: 100_000,
            valid_ttl: Dur::secs(60),
            invalid_ttl: Dur::secs(10),
            stale_if_error: Dur::secs(0),
            on_verifier_error: OnVerifierError::Reject,
            token_header: "X-Session-Token".into(),
        }
    }
}

/// `[shared]`: the store the replicas share (gateway.md §8). Unset `redis_url`: local only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    /// `redis://` or `rediss://`; a password or ACL user in it is a secret (masked).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "masked_opt_url"
    )]
    pub redis_url: Option<String>,
    /// The secret that keys the HMAC of a session token in shared keys (required with the URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_secret_file: Option<PathBuf>,
    pub key_prefix: String,
    /// Bound on one store operation; past it the gateway goes on with local state.
    pub timeout: Dur,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_secret_file: None,
            key_prefix: "cgw:".into(),
            timeout: Dur(Duration::from_millis(25)),
        }
    }
}

impl SharedConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.redis_url else {
            return Ok(());
        };
        match url.split_once("://") {
            Some(("redis" | "rediss", rest)) if !rest.is_empty() => {}
            _ => {
                return Err(invalid(
                    "shared.redis_url",
                    format!("`{}` must be a redis:// or rediss:// URL", mask_url(url)),
                ))
            }
        }
        if self.key_secret_file.is_none() {
            return Err(invalid(
                "shared.key_secret_file",
                "is required with shared.redis_url",
            ));
        }
        if self.timeout.0.is_zero() {
            return Err(invalid("shared.timeout", "must be greater than 0"));
        }
        Ok(())
    }
}

/// What a `[[rate_limit]]` counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKey {
    /// The session (bearer and session token); a request without the token is not counted.
    Session,
    /// The client address, after `trusted_proxies`.
    Client,
    /// The route alone: one budget for all its callers.
    Route,
}

/// One `[[rate_limit]]` table (gateway.md §8). GCRA: `burst` at once, `rate` per `per` sustained.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub name: String,
    pub key: RateKey,
    /// A route label of the loaded document, or `*` (checked when the document is loaded).
    pub route: String,
    pub rate: u32,
    pub per: Dur,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    /// `burst`, or `rate` when unset.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate)
    }

    fn validate(limits: &[RateLimitConfig]) -> Result<(), ConfigError> {
        for (i, l) in limits.iter().enumerate() {
            let name_ok = !l.name.is_empty()
                && l.name.len() <= 64
                && l.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !name_ok {
                return Err(invalid(
                    "rate_limit.name",
                    format!("`{}`: 1 to 64 letters, digits, `_`, `-` or `.`", l.name),
                ));
            }
            if limits[..i].iter().any(|o| o.name == l.name) {
                return Err(invalid(
                    "rate_limit.name",
                    format!("`{}` names two limits", l.name),
                ));
            }
            if l.rate == 0 {
                return Err(invalid(
                    "rate_limit.rate",
                    format!("`{}`: must be greater than 0", l.name),
                ));
            }
            if l.burst() == 0 {
                return Err(invalid(
                    "rate_limit.burst",
                    format!("`{}`: must be greater than 0", l.name),
                ));
            }
            // RateLimit-Policy's `w` is whole seconds.
            if l.per.0.is_zero() || l.per.0.subsec_nanos() != 0 {
                return Err(invalid(
                    "rate_limit.per",
                    format!(
                        "`{}`: must be a whole number of seconds, at least 1s",
                        l.name
                    ),
                ));
            }
            if l.route.is_empty() {
                return Err(invalid(
                    "rate_limit.route",
                    format!("`{}`: a route label or `*`", l.name),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Histogram buckets, in seconds.
    pub buckets: Vec<f64>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            buckets: vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// Whether the file or `GATEWAY_LOG_LEVEL` set `level` (§1: only then does it win over
    /// `RUST_LOG`). Set by `Config::from_toml`; not a key.
    #[serde(skip)]
    pub level_set: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
            level_set: false,
        }
    }
}

/// The levels a filter directive may end with.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A log filter (`log.level`, or `RUST_LOG`): `EnvFilter` syntax, but stricter. `EnvFilter` reads
/// a bare word that is not a level (`verbose`) as a target enabled at every level, which silences
/// everything else, even the start-up line; here every directive must be a level or end with
/// `=<level>`.
pub fn parse_log_filter(text: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err("is empty; use a level: trace, debug, info, warn, error or off".into());
    }
    for d in directives.iter().filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(*d, |(_, level)| level);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "`{d}` is not a level or `target=level` (levels: {})",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())
}

/// `tracing.protocol`: how spans are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// `[tracing]` (gateway.md §1, §7). A key left unset falls back to the standard `OTEL_*`
/// variable, then to the default; no endpoint anywhere: tracing is off.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's base URL (`http://collector:4318`); `/v1/traces` is appended for
    /// http/protobuf, as for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "masked_opt_url"
    )]
    pub otlp_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// For requests that arrive without a sampling decision; default 0.05.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Sent with each export; values are secrets (API keys), masked when printed.
    #[serde(serialize_with = "masked_values")]
    pub headers: std::collections::BTreeMap<String, String>,
}

impl TracingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.otlp_endpoint {
            let uri: Uri = url.parse().map_err(|e| {
                invalid(
                    "tracing.otlp_endpoint",
                    format!("`{}` is not a URL: {e}", mask_url(url)),
                )
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    "must be an http:// or https:// URL with a host",
                ));
            }
        }
        if let Some(r) = self.sample_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(invalid("tracing.sample_ratio", "must be between 0 and 1"));
            }
        }
        if self.service_name.as_deref() == Some("") {
            return Err(invalid("tracing.service_name", "must not be empty"));
        }
        for (k, v) in &self.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).is_ok();
            if !name || http::HeaderValue::from_str(v).is_err() {
                return Err(invalid(
                    "tracing.headers",
                    format!("`{k}` is not a header name with a valid value"),
                ));
            }
        }
        Ok(())
    }
}

fn masked_values<S: Serializer>(
    map: &std::collections::BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(map.len()))?;
    for k in map.keys() {
        m.serialize_entry(k, "***")?;
    }
    m.end()
}

/// A duration written as `"250ms"`, `"3s"`, `"5m"`, `"1h"` (or `"0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m or h)"))?;
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a whole number followed by a unit"))?;
        let d = match unit {
            "us" | "µs" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 && !self.0.is_zero() {
            write!(f, "{}us", self.0.as_micros())
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    /// A string, or a bare `0` (an environment variable `=0` arrives as the integer).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Dur;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", \"3s\", \"5m\", \"1h\" or 0")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Dur, E> {
                Dur::parse(text).map_err(E::custom)
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Dur, E> {
                Dur::parse(&n.to_string()).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Dur, E> {
                Dur::parse(&n.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(Text)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The upstream URL split into the parts the forwarder uses.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Without a trailing slash; empty for the root.
    pub base_path: String,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => return Err("http:// is refused: the upstream must be https".into()),
            _ => return Err(format!("`{url}` must be an absolute https:// URL")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("the upstream URL must not carry credentials".into());
        }
        if uri.query().is_some() {
            return Err("the upstream URL must not have a query string".into());
        }
        Ok(Self {
            scheme: Scheme::HTTPS,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// A configuration error; it names the key (and the line, for a parse error).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Reads the file, applies `GATEWAY_<SECTION>_<KEY>` overrides from the process environment and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path, std::env::vars())
    }

    /// Parses `text`, applies the overrides found in `env`, and validates.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        // First pass from the text itself, so that an error carries its line and key.
        let config: Config = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let sections = known_sections();
        // A variable that names no section is not ours (e.g. GATEWAY_BIN in the bench scripts):
        // `env_warnings` reports it, and it changes nothing.
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != "GATEWAY_CONFIG")
            .filter(|(k, _)| env_section(k, &sections).is_some())
            .collect();
        let level_in_file = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("log")?.as_table()?.get("level").cloned())
            .is_some();
        let level_in_env = overrides.iter().any(|(k, _)| k == "GATEWAY_LOG_LEVEL");
        let mut config = if overrides.is_empty() {
            config
        } else {
            let mut table: toml::Table = text.parse().map_err(|e| parse_error(format!("{e}")))?;
            for (var, value) in &overrides {
                apply_override(&mut table, var, value, &sections)?;
            }
            let de = toml::Value::Table(table);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let var = format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase());
                ConfigError::Env {
                    var,
                    message: format!("{key}: {}", e.into_inner()),
                }
            })?
        };
        config.log.level_set = level_in_file || level_in_env;
        config.validate()?;
        Ok(config)
    }

    /// One warning per `GATEWAY_` variable in `env` that names no config section: it is ignored
    /// (§1), and said so once logging is up.
    pub fn env_warnings(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        let sections = known_sections();
        let mut out: Vec<String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != "GATEWAY_CONFIG")
            .filter(|(k, _)| env_section(k, &sections).is_none())
            .map(|(k, _)| format!("environment variable {k} names no config section; ignored"))
            .collect();
        out.sort();
        out
    }

    /// Checks what serde cannot: URLs, pairs of keys and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        UpstreamTarget::parse(&self.upstream.url).map_err(|m| invalid("upstream.url", m))?;
        if self.listener.tls_cert.is_some() != self.listener.tls_key.is_some() {
            return Err(invalid(
                "listener.tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        if self.listener.addr == self.admin.addr && self.admin.addr.port() != 0 {
            return Err(invalid(
                "admin.addr",
                "the admin listener needs its own port, not the public one",
            ));
        }
        self.upstream.validate()?;
        let non_zero: [(&'static str, Duration); 5] = [
            ("upstream.connect_timeout", self.upstream.connect_timeout.0),
            ("upstream.request_timeout", self.upstream.request_timeout.0),
            (
                "limits.header_read_timeout",
                self.limits.header_read_timeout.0,
            ),
            ("limits.body_read_timeout", self.limits.body_read_timeout.0),
            (
                "session.introspect_timeout",
                self.session.introspect_timeout.0,
            ),
        ];
        for (key, d) in non_zero {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        let positive: [(&'static str, u64); 6] = [
            ("admin.max_connections", self.admin.max_connections as u64),
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            ("limits.max_headers", self.limits.max_headers as u64),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_concurrent_requests",
                self.limits.max_concurrent_requests as u64,
            ),
            ("session.cache_capacity", self.session.cache_capacity),
        ];
        for (key, n) in positive {
            if n == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be at least 8192 (hyper's smallest read buffer)",
            ));
        }
        if self.limits.h2_max_concurrent_streams == 0 {
            return Err(invalid(
                "limits.h2_max_concurrent_streams",
                "must be greater than 0",
            ));
        }
        let keys = [
            &self.session.jwt_hs256_secret_file,
            &self.session.jwt_public_key_file,
            &self.session.jwks_file,
        ];
        if keys.iter().filter(|k| k.is_some()).count() > 1 {
            return Err(invalid(
                "session.jwt_hs256_secret_file",
                "set at most one of jwt_hs256_secret_file, jwt_public_key_file and jwks_file",
            ));
        }
        if let Some(url) = &self.session.introspect_url {
            check_introspect_url(url).map_err(|m| invalid("session.introspect_url", m))?;
        }
        self.token_header()?;
        self.shared.validate()?;
        RateLimitConfig::validate(&self.rate_limit)?;
        let b = &self.metrics.buckets;
        if b.is_empty()
            || b.iter().any(|v| !v.is_finite() || *v <= 0.0)
            || b.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(invalid(
                "metrics.buckets",
                "must be a non-empty, strictly increasing list of positive seconds",
            ));
        }
        parse_log_filter(&self.log.level).map_err(|m| invalid("log.level", m))?;
        self.tracing.validate()?;
        Ok(())
    }

    /// `session.token_header` as a header name (validated at load).
    pub fn token_header(&self) -> Result<http::HeaderName, ConfigError> {
        http::HeaderName::from_bytes(self.session.token_header.as_bytes())
            .map_err(|_| invalid("session.token_header", "must be a header name"))
    }

    /// The upstream URL, parsed (validated at load).
    pub fn upstream_target(&self) -> Result<UpstreamTarget, ConfigError> {
        UpstreamTarget::parse(&self.upstream.url).map_err(|m| invalid("upstream.url", m))
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// https, or http only to a loopback address (a sidecar).
fn check_introspect_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = uri.host().ok_or("has no host")?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare == "localhost"
                || bare
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if loopback {
                Ok(())
            } else {
                Err("http:// is allowed only to a loopback address".into())
            }
        }
        _ => Err("must be an https:// URL".into()),
    }
}

/// Sets `[section] key` from `GATEWAY_SECTION_KEY`. The value is read as a TOML value when it is one
/// (`100`, `true`, `["10.0.0.0/8"]`) and as a string otherwise.
fn apply_override(
    table: &mut toml::Table,
    var: &str,
    raw: &str,
    sections: &[String],
) -> Result<(), ConfigError> {
    let (section, key) = env_section(var, sections).ok_or_else(|| ConfigError::Env {
        var: var.to_string(),
        message: "names no config section".into(),
    })?;
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => {
            t.insert(key.to_string(), value);
            Ok(())
        }
        _ => Err(ConfigError::Env {
            var: var.to_string(),
            message: format!("[{section}] is not a table in the file"),
        }),
    }
}

/// The config's sections, from the serialized defaults, so that a section added to `Config` is
/// known here without a second list. Longest first: `GATEWAY_RATE_LIMIT_X` is `rate_limit`'s.
fn known_sections() -> Vec<String> {
    let mut sections: Vec<String> = match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    };
    sections.sort_by_key(|s| std::cmp::Reverse(s.len()));
    sections
}

/// `GATEWAY_SECTION_KEY` as (`section`, `key`), when `section` is one of `sections`.
fn env_section<'a>(var: &str, sections: &'a [String]) -> Option<(&'a str, String)> {
    let rest = var.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
    sections.iter().find_map(|s| {
        rest.strip_prefix(s.as_str())
            .and_then(|k| k.strip_prefix('_'))
            .map(|k| (s.as_str(), k.to_string()))
    })
}

pub(crate) fn mask_url(url: &str) -> String {
    // Mask userinfo and the query, where credentials hide.
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_string(),
    };
    format!("{scheme}://{authority}{path}")
}

fn masked_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

fn masked_opt_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&mask_url(u)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml(text, Path::new("test.toml"), env)
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.upstream.url, DEFAULT_UPSTREAM);
        assert_eq!(c.listener.addr.port(), 8080);
        assert_eq!(c.admin.addr.to_string(), "127.0.0.1:9090");
        assert_eq!(c.admin.max_connections, 64);
        assert_eq!(c.upstream.request_timeout.0, Duration::from_secs(15));
        assert_eq!(c.limits.max_body_bytes, 65_536);
        assert_eq!(c.session.cache_capacity, 100_000);
        assert_eq!(c.metrics.buckets.first(), Some(&0.0001));
        assert_eq!(c.metrics.buckets.last(), Some(&10.0));
    }

    #[test]
    fn the_shipped_config_is_valid_and_is_the_default() {
        let text = include_str!("../config.toml");
        let c = load(text, &[]).unwrap();
        assert_eq!(c.upstream.url, DEFAULT_UPSTREAM);
        assert_eq!(c.to_masked_toml(), Config::default().to_masked_toml());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name_and_line() {
        let err = load("[upstream]\nurl = \"https://a.example\"\nretrys = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("retrys"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = load("[upstrem]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("upstrem"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load("[limits]\nmax_body_bytes = \"big\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_body_bytes") && err.contains("line 2"),
            "{err}"
        );
        let err = load("[upstream]\nrequest_timeout = \"15 parsecs\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("request_timeout"), "{err}");
        let err = load("[upstream]\nurl = \"http://a.example\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("upstream.url:"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load(
            "[limits]\nmax_body_bytes = 10\n",
            &[
                ("GATEWAY_LIMITS_MAX_BODY_BYTES", "2048"),
                ("GATEWAY_UPSTREAM_URL", "https://up.example/base/"),
                ("GATEWAY_LISTENER_TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
                ("GATEWAY_VALIDATION_MODE", "report"),
                ("GATEWAY_UPSTREAM_HTTP2", "true"),
                ("GATEWAY_CONFIG", "ignored.toml"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert_eq!(c.upstream.url, "https://up.example/base/");
        assert_eq!(c.listener.trusted_proxies.len(), 1);
        assert_eq!(c.validation.mode, Mode::Report);
        assert!(c.upstream.http2);
        let t = c.upstream_target().unwrap();
        assert_eq!(t.base_path, "/base");
        assert_eq!(t.authority.as_str(), "up.example");
    }

    #[test]
    fn a_zero_duration_can_be_a_bare_0_in_the_file_or_the_environment() {
        let c = load(
            "[shutdown]\ndrain_timeout = 0\n",
            &[("GATEWAY_SHUTDOWN_DRAIN_DELAY", "0")],
        )
        .unwrap();
        assert_eq!(c.shutdown.drain_delay.0, Duration::ZERO);
        assert_eq!(c.shutdown.drain_timeout.0, Duration::ZERO);
        let err = load("", &[("GATEWAY_SHUTDOWN_DRAIN_DELAY", "5")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEWAY_SHUTDOWN_DRAIN_DELAY"), "{err}");
        assert!(err.contains("no unit"), "{err}");
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let err = load("", &[("GATEWAY_LIMITS_MAX_BODY_BYTES", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEWAY_LIMITS_MAX_BODY_BYTES"), "{err}");
        let err = load("", &[("GATEWAY_LIMITS_NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("3s").unwrap().0, Duration::from_secs(3));
        assert_eq!(Dur::parse("5m").unwrap().0, Duration::from_secs(300));
        assert_eq!(Dur::parse("0").unwrap().0, Duration::ZERO);
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("s").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert_eq!(Dur::parse("1500ms").unwrap().to_string(), "1500ms");
    }

    #[test]
    fn semantic_checks_name_the_key() {
        let cases = [
            ("[listener]\ntls_cert = \"a.pem\"\n", "listener.tls_cert"),
            ("[admin]\naddr = \"0.0.0.0:8080\"\n", "admin.addr"),
            (
                "[upstream]\nrequest_timeout = \"0s\"\n",
                "upstream.request_timeout",
            ),
            ("[metrics]\nbuckets = [1.0, 0.5]\n", "metrics.buckets"),
            (
                "[session]\nintrospect_url = \"http://auth.example/x\"\n",
                "session.introspect_url",
            ),
            ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
            ("[admin]\nmax_connections = 0\n", "admin.max_connections"),
        ];
        for (text, key) in cases {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
        load(
            "[session]\nintrospect_url = \"http://127.0.0.1:9/x\"\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn per_client_caps_default_to_the_contract_and_zero_turns_them_off() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.limits.max_connections_per_client, 256);
        assert_eq!(c.limits.max_concurrent_requests_per_client, 128);
        let c = load(
            "[limits]\nmax_connections_per_client = 0\nmax_concurrent_requests_per_client = 0\n",
            &[("GATEWAY_LIMITS_MAX_CONCURRENT_REQUESTS_PER_CLIENT", "7")],
        )
        .unwrap();
        assert_eq!(c.limits.max_connections_per_client, 0);
        assert_eq!(c.limits.max_concurrent_requests_per_client, 7);
        for key in [
            "max_connections_per_client",
            "max_concurrent_requests_per_client",
        ] {
            for bad in ["-1", "\"8\"", "1.5"] {
                let err = load(&format!("[limits]\n{key} = {bad}\n"), &[])
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{key} = {bad}: {err}");
            }
        }
    }

    #[test]
    fn shared_and_rate_limits_are_checked_naming_the_key() {
        let c = load("", &[]).unwrap();
        assert!(c.shared.redis_url.is_none());
        assert_eq!(c.shared.key_prefix, "cgw:");
        assert_eq!(c.shared.timeout.0, Duration::from_millis(25));
        assert!(c.rate_limit.is_empty());
        let cases = [
            ("[shared]\nredis_url = \"http://r:6379\"\nkey_secret_file = \"k\"\n", "shared.redis_url"),
            ("[shared]\nredis_url = \"redis://r:6379\"\n", "shared.key_secret_file"),
            (
                "[shared]\nredis_url = \"redis://r\"\nkey_secret_file = \"k\"\ntimeout = \"0s\"\n",
                "shared.timeout",
            ),
            ("[[rate_limit]]\nname = \"a b\"\nkey = \"client\"\nroute = \"*\"\nrate = 1\nper = \"1s\"\n", "rate_limit.name"),
            ("[[rate_limit]]\nname = \"a\"\nkey = \"client\"\nroute = \"*\"\nrate = 0\nper = \"1s\"\n", "rate_limit.rate"),
            ("[[rate_limit]]\nname = \"a\"\nkey = \"client\"\nroute = \"*\"\nrate = 1\nper = \"1500ms\"\n", "rate_limit.per"),
            ("[[rate_limit]]\nname = \"a\"\nkey = \"client\"\nroute = \"*\"\nrate = 1\nper = \"1s\"\nburst = 0\n", "rate_limit.burst"),
            (
                "[[rate_limit]]\nname = \"a\"\nkey = \"client\"\nroute = \"*\"\nrate = 1\nper = \"1s\"\n[[rate_limit]]\nname = \"a\"\nkey = \"route\"\nroute = \"*\"\nrate = 1\nper = \"1s\"\n",
                "rate_limit.name",
            ),
        ];
        for (text, key) in cases {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
        let err = load(
            "[[rate_limit]]\nname = \"a\"\nkey = \"ip\"\nroute = \"*\"\nrate = 1\nper = \"1s\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("key"), "{err}");
        let c = load(
            "[[rate_limit]]\nname = \"per-session\"\nkey = \"session\"\nroute = \"update_contact\"\nrate = 10\nper = \"1m\"\n",
            &[("GATEWAY_SHARED_TIMEOUT", "40ms")],
        )
        .unwrap();
        assert_eq!(c.rate_limit[0].burst(), 10);
        assert_eq!(c.shared.timeout.0, Duration::from_millis(40));
        // Printed back, it reads as the same config.
        let again = load(&c.to_masked_toml(), &[]).unwrap();
        assert_eq!(again.rate_limit[0].name, "per-session");
    }

    #[test]
    fn the_store_password_is_masked_when_printed() {
        let c = load(
            "[shared]\nredis_url = \"rediss://gateway:hunter2@redis.example:6380/0\"\nkey_secret_file = \"k\"\n",
            &[],
        )
        .unwrap();
        let out = c.to_masked_toml();
        assert!(
            !out.contains("hunter2") && !out.contains("gateway:"),
            "{out}"
        );
        assert!(out.contains("rediss://***@redis.example:6380/0"), "{out}");
        let err = load(
            "[shared]\nredis_url = \"http://u:hunter2@r\"\nkey_secret_file = \"k\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let c = load(
            "[session]\nintrospect_url = \"https://user:hunter2@auth.example/i?key=hunter2\"\n",
            &[],
        )
        .unwrap();
        let out = c.to_masked_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("https://***@auth.example/i?***"), "{out}");
    }

    #[test]
    fn a_variable_naming_no_section_is_a_warning_and_an_unknown_key_an_error() {
        // Before: GATEWAY_FOO=1 (or the bench scripts' GATEWAY_BIN) stopped start-up.
        let env = [
            ("GATEWAY_FOO", "1"),
            ("GATEWAY_BIN", "/usr/bin/x"),
            ("GATEWAY_LIMITS_MAX_BODY_BYTES", "2048"),
        ];
        let c = load("", &env).unwrap();
        assert_eq!(c.limits.max_body_bytes, 2048);
        let owned = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let warnings = Config::env_warnings(owned);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("GATEWAY_BIN"), "{warnings:?}");
        assert!(warnings[1].contains("GATEWAY_FOO"), "{warnings:?}");
        let err = load("", &[("GATEWAY_LOG_VERBOSITY", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GATEWAY_LOG_VERBOSITY") && err.contains("verbosity"),
            "{err}"
        );
        // Every section is known, the ones with an underscore in their name too.
        assert!(
            Config::env_warnings([("GATEWAY_RUNTIME_WORKER_THREADS".into(), "1".into())])
                .is_empty()
        );
    }

    #[test]
    fn a_malformed_log_level_is_a_config_error() {
        // Before: `verbose` passed (EnvFilter reads it as a target) and the gateway logged nothing.
        for bad in [
            "verbose",
            "infoo",
            "",
            " , ",
            "companies_gateway=loud",
            "info,hyper",
        ] {
            let text = format!("[log]\nlevel = {bad:?}\n");
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(err.starts_with("log.level:"), "{bad:?}: {err}");
        }
        let err = load("", &[("GATEWAY_LOG_LEVEL", "verbose")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("log.level:"), "{err}");
        for good in [
            "info",
            "WARN",
            "off",
            "info,hyper=warn",
            "companies_gateway::access=debug",
        ] {
            let text = format!("[log]\nlevel = {good:?}\n");
            load(&text, &[]).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn the_log_level_is_marked_set_only_by_the_file_or_its_variable() {
        assert!(!load("", &[]).unwrap().log.level_set);
        assert!(
            !load("[log]\nformat = \"json\"\n", &[])
                .unwrap()
                .log
                .level_set
        );
        assert!(
            load("[log]\nlevel = \"info\"\n", &[])
                .unwrap()
                .log
                .level_set
        );
        let c = load("", &[("GATEWAY_LOG_LEVEL", "debug")]).unwrap();
        assert!(c.log.level_set);
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn tracing_keys_parse_are_checked_and_headers_are_masked() {
        let c = load("", &[]).unwrap();
        assert!(
            c.tracing.otlp_endpoint.is_none(),
            "tracing is off by default"
        );
        let c = load(
            "[tracing]\notlp_endpoint = \"http://collector:4318\"\nprotocol = \"http/protobuf\"\n\
             sample_ratio = 0.25\nservice_name = \"gw\"\nheaders = { x-api-key = \"hunter2\" }\n",
            &[("GATEWAY_TRACING_SAMPLE_RATIO", "1.0")],
        )
        .unwrap();
        assert_eq!(c.tracing.protocol, Some(OtlpProtocol::HttpProtobuf));
        assert_eq!(c.tracing.sample_ratio, Some(1.0));
        assert_eq!(c.tracing.headers["x-api-key"], "hunter2");
        let out = c.to_masked_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("x-api-key = \"***\""), "{out}");
        for (text, key) in [
            ("[tracing]\nsample_ratio = 1.5\n", "tracing.sample_ratio"),
            (
                "[tracing]\notlp_endpoint = \"ftp://c\"\n",
                "tracing.otlp_endpoint",
            ),
            (
                "[tracing]\nheaders = { \"a b\" = \"c\" }\n",
                "tracing.headers",
            ),
            ("[tracing]\nservice_name = \"\"\n", "tracing.service_name"),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = load("[tracing]\nprotocol = \"http/json\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("protocol"), "{err}");
    }
}
