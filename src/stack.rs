//! The service stack, assembled in one place and read from outermost to innermost.

use std::convert::Infallible;

use http::{Request, Response};
use tower::{Service, ServiceBuilder};

use crate::config::Config;
use crate::forward::{Forward, ForwardConfig};
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::problem::ProblemLayer;
use crate::request_id::RequestIdLayer;
use crate::upstream::{build_client, SetupError};
use crate::Body;

/// Builds the gateway's request stack from the config. Tests, benches and fuzz targets call this
/// to get exactly what the listener serves.
pub fn build(
    config: &Config,
    metrics: &Metrics,
) -> Result<
    impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static,
    SetupError,
> {
    let client = build_client(&config.upstream, metrics.upstream_connections_opened.clone())?;
    let forward = ForwardConfig {
        target: config
            .upstream_target()
            .map_err(|e| SetupError::Config(e.to_string()))?,
        trusted_proxies: config.listener.trusted_proxies.clone(),
        request_timeout: config.upstream.request_timeout.0,
    };
    Ok(ServiceBuilder::new()
        // Outermost: every response, the gateway's own included, carries the request id.
        .layer(RequestIdLayer)
        // Sees every request once, whoever answers it, for metrics and the access log.
        .layer(ObserveLayer::new(metrics.clone()))
        // The one place where errors and panics from below become problem responses.
        .layer(ProblemLayer)
        // Innermost: rewrite for the upstream and send through the pooled TLS client.
        .service(Forward::new(client, forward)))
}
