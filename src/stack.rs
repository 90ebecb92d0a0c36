//! The service stack, assembled in one place and read from outermost to innermost.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tower::{Service, ServiceBuilder};

use crate::config::{Config, SessionConfig};
use crate::edge::EdgeLayer;
use crate::forward::{Forward, ForwardConfig};
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::pool::build_pool;
use crate::problem::ProblemLayer;
use crate::request_id::RequestIdLayer;
use crate::session::cache::{Clock, SessionCache, SystemClock, Ttls};
use crate::session::introspect::Introspector;
use crate::session::jwt::JwtKey;
use crate::session::{Session, SessionLayer};
use crate::shed::ShedLayer;
use crate::shed_client::ShedClientLayer;
use crate::upstream::{root_store, tls_config, SetupError, UpstreamTls};
use crate::validate::{ContractConfig, ContractLayer};
use crate::Body;

/// What tests may swap out.
#[derive(Clone)]
pub struct Options {
    /// The clock that judges session-cache freshness and token times.
    pub clock: Arc<dyn Clock>,
    /// How often the certificate files are checked for changes.
    pub reload_poll: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            reload_poll: std::time::Duration::from_secs(2),
        }
    }
}

/// Builds the gateway's request stack from the config, with the handle that reloads the upstream's
/// trust anchors. Tests, benches and fuzz targets call this to get exactly what the listener serves.
pub fn build(
    config: &Config,
    metrics: &Metrics,
    options: &Options,
) -> Result<
    (
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
            + Clone
            + Send
            + 'static,
        UpstreamTls,
    ),
    SetupError,
> {
    let forward = ForwardConfig {
        target: config
            .upstream_target()
            .map_err(|e| SetupError::Config(e.to_string()))?,
        request_timeout: config.upstream.request_timeout.0,
        body_read_timeout: config.limits.body_read_timeout.0,
    };
    let (pool, upstream_tls) = build_pool(
        &config.upstream,
        &forward.target,
        metrics.upstream_connections_opened.clone(),
    )?;
    let contract = ContractConfig {
        mode: config.validation.mode,
        unknown_fields: config.validation.unknown_fields,
        max_body_bytes: config.limits.max_body_bytes,
        body_read_timeout: config.limits.body_read_timeout.0,
    };
    let session = build_session(
        &config.session,
        config.upstream.ca_file.as_deref(),
        metrics,
        options,
    )?;
    let service = ServiceBuilder::new()
        // Outermost: every response, the gateway's own included, carries the request id.
        .layer(RequestIdLayer)
        // Sees every request once, whoever answers it, for metrics and the access log.
        .layer(ObserveLayer::new(metrics.clone()))
        // The one place where errors and panics from below become problem responses.
        .layer(ProblemLayer)
        // Shed beyond max_concurrent_requests before spending anything on the request.
        .layer(ShedLayer::new(config.limits.max_concurrent_requests))
        // Then per client, so that one client cannot hold every slot above.
        .layer(ShedClientLayer::new(
            config.limits.max_concurrent_requests_per_client,
            &config.listener.trusted_proxies,
        ))
        // Framing and header abuse and non-canonical paths, on every route, before any work.
        .layer(EdgeLayer::new(config.validation.unknown_routes))
        // The update-contact contract (stages 1-5); buffers only that route's body.
        .layer(ContractLayer::new(contract, metrics.clone()))
        // Stage 6, only for requests that passed the contract: the cheapest checks are done.
        .layer(SessionLayer::new(session))
        // Innermost: rewrite for the upstream and send through the TLS connection pool.
        .service(Forward::new(pool, forward));
    Ok((service, upstream_tls))
}

/// The session layer's state; `ca_file` is the upstream's, which introspection trusts too.
fn build_session(
    cfg: &SessionConfig,
    ca_file: Option<&std::path::Path>,
    metrics: &Metrics,
    options: &Options,
) -> Result<Arc<Session>, SetupError> {
    let jwt = JwtKey::load(
        cfg.jwt_hs256_secret_file.as_deref(),
        cfg.jwt_public_key_file.as_deref(),
        cfg.jwks_file.as_deref(),
    )
    .map_err(|e| SetupError::Config(e.to_string()))?;
    let introspector = match &cfg.introspect_url {
        None => None,
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| SetupError::Config(format!("session.introspect_url: {e}")))?;
            // The introspection endpoint is trusted with the upstream's anchors.
            let tls = tls_config(root_store(ca_file)?)?;
            Some(Introspector::new(uri, cfg.introspect_timeout.0, tls))
        }
    };
    let ttls = Ttls {
        valid: cfg.valid_ttl.0,
        invalid: cfg.invalid_ttl.0,
        stale_if_error: cfg.stale_if_error.0,
    };
    Ok(Arc::new(Session {
        cache: SessionCache::new(cfg.cache_capacity, ttls, options.clock.clone()),
        jwt,
        introspector,
        leeway: cfg.leeway.0,
        learn_from_upstream: cfg.learn_from_upstream,
        on_verifier_error: cfg.on_verifier_error,
        metrics: metrics.clone(),
    }))
}
