//! The service stack, assembled in one place and read from outermost to innermost.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tower::{Service, ServiceBuilder};

use crate::access_log::AccessLog;
use crate::config::{Config, SessionConfig};
use crate::context::{ContextLayer, Routes};
use crate::contract::Code;
use crate::contract::{Api, CompileOptions};
use crate::edge::EdgeLayer;
use crate::forward::{Forward, ForwardConfig};
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::otel::Telemetry;
use crate::pool::build_pool;
use crate::problem::ProblemLayer;
use crate::rate_limit::{Limiter, RateLimitLayer};
use crate::request_id::RequestIdLayer;
use crate::session::cache::{Clock, SessionCache, SystemClock, Ttls};
use crate::session::introspect::Introspector;
use crate::session::jwt::JwtKey;
use crate::session::{Session, SessionLayer};
use crate::shared::Store;
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
    /// Where the access log goes; `None`: stderr.
    pub access_log: Option<MakeSink>,
}

/// Opens the access log's output (called once per built stack).
pub type MakeSink = Arc<dyn Fn() -> crate::access_log::Sink + Send + Sync>;

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            reload_poll: std::time::Duration::from_secs(2),
            access_log: None,
        }
    }
}

/// Every layer of the stack and the innermost service, built from the config but not yet
/// assembled, so that a test can assemble them in another order (and prove that the order cannot
/// turn a check off).
pub struct Parts {
    pub context: ContextLayer,
    pub observe: ObserveLayer,
    pub contract: ContractLayer,
    pub edge: EdgeLayer,
    pub session: SessionLayer,
    pub rate_limit: RateLimitLayer,
    pub shed: ShedLayer,
    pub shed_client: ShedClientLayer,
    pub forward: Forward,
    /// The compiled document.
    pub routes: Arc<Routes>,
    /// The handle that reloads the upstream's trust anchors.
    pub upstream_tls: UpstreamTls,
}

/// The compile options of the OpenAPI document, from `[validation]` and `[session]`.
pub(crate) fn compile_options(config: &Config) -> Result<CompileOptions, SetupError> {
    Ok(CompileOptions {
        token_header: config
            .token_header()
            .map_err(|e| SetupError::Config(e.to_string()))?,
        unknown_fields: config.validation.unknown_fields,
        unknown_query: config.validation.unknown_query,
    })
}

/// Loads and compiles `validation.openapi`, or the built-in document.
pub(crate) fn load_api(config: &Config) -> Result<Api, SetupError> {
    let opts = compile_options(config)?;
    match &config.validation.openapi {
        Some(path) => Api::load(path, &opts)
            .map_err(|e| SetupError::Config(format!("validation.openapi: {e}"))),
        None => Api::builtin(&opts)
            .map_err(|e| SetupError::Config(format!("the built-in OpenAPI document: {e}"))),
    }
}

/// Builds every part of the stack from the config: the document is compiled here, once per load.
pub fn parts(config: &Config, metrics: &Metrics, options: &Options) -> Result<Parts, SetupError> {
    let api = load_api(config)?;
    let routes = Arc::new(
        Routes::new(Arc::new(api), metrics)
            .map_err(|e| SetupError::Config(format!("validation.openapi: {e}")))?,
    );
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    metrics.touch_violations(routes.api().field_labels().into_iter(), &codes);
    let forward = ForwardConfig {
        target: config
            .upstream_target()
            .map_err(|e| SetupError::Config(e.to_string()))?,
        request_timeout: config.upstream.request_timeout.0,
        body_read_timeout: config.limits.body_read_timeout.0,
    };
    let (pool, upstream_tls) = build_pool(&config.upstream, &forward.target, metrics)?;
    let contract = ContractConfig {
        mode: config.validation.mode,
        max_body_bytes: config.limits.max_body_bytes,
        body_read_timeout: config.limits.body_read_timeout.0,
    };
    // The store's client (and its revocations subscription) belongs to this build: a rebuild
    // makes its own, and dropping the old stack ends the old subscription.
    let store = Store::new(&config.shared, config.upstream.ca_file.as_deref(), metrics)?;
    let session = build_session(
        &config.session,
        config.upstream.ca_file.as_deref(),
        store.clone(),
        metrics,
        options,
    )?;
    let labels: Vec<&str> = routes
        .api()
        .operations()
        .iter()
        .map(|op| op.label())
        .collect();
    let limiter = Limiter::new(
        &config.rate_limit,
        &labels,
        store,
        &config.listener.trusted_proxies,
        compile_options(config)?.token_header,
        metrics,
    )?;
    let sink = match &options.access_log {
        Some(make) => make(),
        None => Box::new(std::io::stderr()),
    };
    let access_log = AccessLog::start(config.log.format, sink, metrics.access_log_dropped.clone())
        .map_err(|e| SetupError::Config(format!("log: cannot start the access-log writer: {e}")))?;
    let telemetry = Telemetry::build(&config.tracing, config.upstream.ca_file.as_deref(), metrics)?;
    Ok(Parts {
        context: ContextLayer::new(routes.clone()),
        observe: ObserveLayer::new(
            metrics.clone(),
            Some(access_log),
            telemetry,
            &config.listener.trusted_proxies,
        ),
        contract: ContractLayer::new(contract, metrics.clone()),
        edge: EdgeLayer::new(config.validation.unknown_routes),
        session: SessionLayer::new(session, compile_options(config)?.token_header),
        rate_limit: RateLimitLayer::new(Some(Arc::new(limiter))),
        shed: ShedLayer::new(config.limits.max_concurrent_requests),
        shed_client: ShedClientLayer::new(
            config.limits.max_concurrent_requests_per_client,
            &config.listener.trusted_proxies,
        ),
        forward: Forward::new(pool, forward),
        routes,
        upstream_tls,
    })
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
    let parts = parts(config, metrics, options)?;
    let service = ServiceBuilder::new()
        // Outermost: every response, the gateway's own included, carries the request id.
        .layer(RequestIdLayer)
        // The route is recognised once, here, into the request's context.
        .layer(parts.context)
        // Sees every request once, whoever answers it, for metrics, the access log and the
        // SERVER span (continuing the client's trace context).
        .layer(parts.observe)
        // The one place where errors and panics from below become problem responses.
        .layer(ProblemLayer)
        // Shed beyond max_concurrent_requests before spending anything on the request.
        .layer(parts.shed)
        // Then per client, so that one client cannot hold every slot above.
        .layer(parts.shed_client)
        // Framing and header abuse and non-canonical paths, on every route, before any work.
        .layer(parts.edge)
        // The operation's contract (stages 1-5); buffers only a declared request body.
        .layer(parts.contract)
        // Stage 6, for operations that require the session token, once the contract passed.
        .layer(parts.session)
        // [[rate_limit]]: only a request that passed every check spends budget.
        .layer(parts.rate_limit)
        // Innermost: refuses what was not decided, rewrites for the upstream and sends.
        .service(parts.forward);
    Ok((service, parts.upstream_tls))
}

/// The session layer's state; `ca_file` is the upstream's, which introspection trusts too.
fn build_session(
    cfg: &SessionConfig,
    ca_file: Option<&std::path::Path>,
    store: Option<Arc<Store>>,
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
    let mut cache = SessionCache::new(cfg.cache_capacity, ttls, options.clock.clone());
    if let Some(store) = store {
        cache = cache.with_store(cfg.cache_capacity, store);
    }
    Ok(Arc::new(Session {
        cache,
        jwt,
        introspector,
        leeway: cfg.leeway.0,
        learn_from_upstream: cfg.learn_from_upstream,
        on_verifier_error: cfg.on_verifier_error,
        metrics: metrics.clone(),
    }))
}
