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
use crate::pool::{build_pool, Pool};
use crate::problem::ProblemLayer;
use crate::rate_limit::{Limiter, RateLimitLayer};
use crate::reload::diff::{cache_kept, SessionVerdictKeys};
use crate::request_id::RequestIdLayer;
use crate::session::cache::{Clock, SessionCache, SystemClock, Ttls};
use crate::session::introspect::Introspector;
use crate::session::jwt::JwtKey;
use crate::session::{Session, SessionLayer};
use crate::shared::Store;
use crate::shed::ShedLayer;
use crate::shed_client::ShedClientLayer;
use crate::upstream::{root_store, tls_config, NewTrust, SetupError, UpstreamTls};
use crate::validate::{ContractConfig, ContractLayer};
use crate::Body;

/// What tests may swap out.
#[derive(Clone)]
pub struct Options {
    /// The clock that judges session-cache freshness and token times.
    pub clock: Arc<dyn Clock>,
    /// How often the config file and the files it names are checked for changes.
    pub reload_poll: std::time::Duration,
    /// Where the access log goes; `None`: stderr.
    pub access_log: Option<MakeSink>,
    /// The config file a reload reads again; `None`: a reload applies the same configuration
    /// again, re-reading the files it names.
    pub config_path: Option<std::path::PathBuf>,
    /// Changes the process's log level on a reload (`main` installs the subscriber).
    pub log_level: Option<crate::telemetry::LevelHandle>,
    /// Resolves the upstream's host name (not `upstream.resolve`, nor an IP literal): the
    /// system resolver, or a test's.
    pub resolver: Arc<dyn crate::Resolve>,
}

/// Opens the access log's output (called once per built stack).
pub type MakeSink = Arc<dyn Fn() -> crate::access_log::Sink + Send + Sync>;

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            reload_poll: std::time::Duration::from_secs(2),
            access_log: None,
            config_path: None,
            log_level: None,
            resolver: Arc::new(crate::endpoints::SystemResolver),
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
    parts_with(config, metrics, options, None).map(|(parts, _, _)| parts)
}

/// What one build hands to the next, so that a reload keeps what did not change: the upstream
/// pool and its connections while `[upstream]` is the same, and the session cache while no key
/// that changes verdicts did.
pub(crate) struct Carried {
    /// `[upstream]` but `resolve`, which a kept pool takes in place.
    upstream: String,
    resolve: Vec<std::net::SocketAddr>,
    pool: Pool,
    pub(crate) upstream_tls: UpstreamTls,
    verdict_keys: SessionVerdictKeys,
    capacity: u64,
    cache: SessionCache,
    shared: String,
    store: Option<Arc<Store>>,
}

/// What a build decided about the previous one's state, to put in force (and log) only once the
/// whole new stack is built.
#[derive(Default)]
pub(crate) struct Handover {
    /// The pool was kept and its CA file changed: the new anchors, not yet in force.
    pub(crate) new_trust: Option<NewTrust>,
    /// The pool was replaced: the old one's trust handle, to retire its connections.
    pub(crate) retired_pool: Option<UpstreamTls>,
    /// Why the session cache was cleared; `None`: it was kept (or there was none before).
    pub(crate) cache_cleared: Option<String>,
    /// The pool was kept and `upstream.resolve` changed: the new addresses.
    pub(crate) new_addresses: Option<Vec<std::net::SocketAddr>>,
}

impl Handover {
    /// Puts the decisions in force, once the new stack is swapped in.
    pub(crate) fn commit(self, carried: &Carried) -> bool {
        let trust_changed = self.new_trust.is_some() || self.retired_pool.is_some();
        if let Some(fresh) = self.new_trust {
            carried.upstream_tls.install(fresh);
        }
        if let Some(old) = self.retired_pool {
            old.retire();
        }
        if let Some(addrs) = self.new_addresses {
            carried.pool.set_addresses(&addrs);
        }
        trust_changed
    }
}

/// `parts`, keeping what `previous` holds where the config allows it.
pub(crate) fn parts_with(
    config: &Config,
    metrics: &Metrics,
    options: &Options,
    previous: Option<&Carried>,
) -> Result<(Parts, Carried, Handover), SetupError> {
    let mut handover = Handover::default();
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
    // Compared by their Debug text, which (unlike the masked serialization) holds every value: a
    // changed proxy password rebuilds the pool too. `resolve` apart: a pool built from it takes
    // a new list in place, keeping the connections to the addresses that stay.
    let resolve = config.upstream.resolve.clone();
    let upstream = {
        let mut key = config.upstream.clone();
        key.resolve.clear();
        format!("{key:?}")
    };
    let (pool, upstream_tls) = match previous {
        Some(prev)
            if prev.upstream == upstream
                && (prev.resolve == resolve || prev.pool.takes_addresses(&resolve)) =>
        {
            if prev.resolve != resolve {
                handover.new_addresses = Some(resolve.clone());
            }
            handover.new_trust = prev.upstream_tls.prepare()?;
            (prev.pool.clone(), prev.upstream_tls.clone())
        }
        _ => {
            handover.retired_pool = previous.map(|p| p.upstream_tls.clone());
            build_pool(
                &config.upstream,
                &forward.target,
                metrics,
                options.resolver.clone(),
            )?
        }
    };
    let contract = ContractConfig {
        mode: config.validation.mode,
        max_body_bytes: config.limits.max_body_bytes,
        body_read_timeout: config.limits.body_read_timeout.0,
    };
    // The store's client (and its revocations subscription) is kept while `[shared]` is the same;
    // otherwise a new one is made, and dropping the old stack ends the old subscription.
    // The secret file's content counts too: it keys the shared entries and the local cache.
    let secret = config
        .shared
        .key_secret_file
        .as_ref()
        .and_then(|p| std::fs::read(p).ok());
    let shared = format!("{:?}{:?}", config.shared, secret);
    let store = match previous {
        Some(prev) if prev.shared == shared => prev.store.clone(),
        _ => Store::new(&config.shared, config.upstream.ca_file.as_deref(), metrics)?,
    };
    let verdict_keys = SessionVerdictKeys::of(&config.session);
    let ttls = Ttls {
        valid: config.session.valid_ttl.0,
        invalid: config.session.invalid_ttl.0,
        stale_if_error: config.session.stale_if_error.0,
    };
    let capacity = config.session.cache_capacity;
    let fresh_cache = || {
        let cache = SessionCache::new(capacity, ttls, options.clock.clone());
        match &store {
            Some(store) => cache.with_store(capacity, store.clone()),
            None => cache,
        }
    };
    let cache = match previous {
        Some(prev) => {
            // A changed `[shared]` changes the cache's keys (derived from the store's secret).
            let kept = cache_kept(&prev.verdict_keys, prev.capacity, &verdict_keys, capacity)
                .and_then(|()| {
                    if prev.shared == shared {
                        Ok(())
                    } else {
                        Err("shared changed".to_string())
                    }
                });
            match kept {
                Ok(()) => SessionCache {
                    ttls,
                    clock: options.clock.clone(),
                    ..prev.cache.clone()
                },
                Err(why) => {
                    handover.cache_cleared = Some(why);
                    fresh_cache()
                }
            }
        }
        None => fresh_cache(),
    };
    let session = build_session(
        &config.session,
        config.upstream.ca_file.as_deref(),
        cache.clone(),
        metrics,
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
        cache.hasher.clone(),
        store.clone(),
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
    let carried = Carried {
        upstream,
        resolve,
        pool: pool.clone(),
        upstream_tls: upstream_tls.clone(),
        verdict_keys,
        capacity,
        cache,
        shared,
        store,
    };
    let parts = Parts {
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
    };
    Ok((parts, carried, handover))
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
            + Sync
            + 'static,
        UpstreamTls,
    ),
    SetupError,
> {
    build_with(config, metrics, options, None).map(|b| (b.service, b.carried.upstream_tls))
}

/// A stack built by `build_with`, with what the next build keeps and what this one decided.
pub(crate) struct Built<S> {
    pub(crate) service: S,
    pub(crate) carried: Carried,
    pub(crate) handover: Handover,
}

/// `build`, keeping what `previous` holds where the config allows it (see `Carried`).
pub(crate) fn build_with(
    config: &Config,
    metrics: &Metrics,
    options: &Options,
    previous: Option<&Carried>,
) -> Result<
    Built<
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
            + Clone
            + Send
            + Sync
            + 'static,
    >,
    SetupError,
> {
    let (parts, carried, handover) = parts_with(config, metrics, options, previous)?;
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
    Ok(Built {
        service,
        carried,
        handover,
    })
}

/// The session layer's state; `ca_file` is the upstream's, which introspection trusts too.
fn build_session(
    cfg: &SessionConfig,
    ca_file: Option<&std::path::Path>,
    cache: SessionCache,
    metrics: &Metrics,
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
