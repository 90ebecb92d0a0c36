//! OTLP/gRPC export (`tracing.protocol = "grpc"`): opentelemetry-otlp's own tonic exporter, with
//! its retries and timeout, on a tonic channel whose connector is the gateway's hyper-rustls
//! (ring) connector. The collector is therefore trusted exactly as for http/protobuf (the same
//! `rustls::ClientConfig`), TLS offers ALPN `h2`, `http://` speaks HTTP/2 with prior knowledge,
//! and no tonic TLS feature (a second TLS setup) is in the build.
//!
//! The channel's worker (connections, HTTP/2, timeouts) is a task on the gateway's runtime,
//! started when the exporter is built; the SDK's batch thread only waits for its answers.

use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use tonic::metadata::MetadataMap;

use super::{Settings, EXPORT_TIMEOUT};
use crate::upstream::SetupError;

/// The exporter for `settings` (its endpoint already resolved for grpc). Must run on the
/// gateway's runtime: the channel starts its worker there. Nothing connects until the first
/// export.
pub(super) fn exporter(
    settings: &Settings,
    tls: rustls::ClientConfig,
) -> Result<opentelemetry_otlp::SpanExporter, SetupError> {
    let endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
        .map_err(|e| SetupError::Config(format!("tracing.otlp_endpoint: {e}")))?
        // The exporter's own timeout bounds a call too; the channel's must match it.
        .timeout(EXPORT_TIMEOUT);
    let channel = endpoint.connect_with_connector_lazy(connector(tls));
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        // `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` are added by the exporter, as for http.
        .with_metadata(metadata(settings)?)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| SetupError::Config(format!("tracing.otlp_endpoint: {e}")))
}

/// TCP, then TLS for `https://` with the gateway's client config; ALPN `h2` only (gRPC is HTTP/2).
fn connector(tls: rustls::ClientConfig) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(EXPORT_TIMEOUT));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(http)
}

/// `[tracing] headers` as gRPC metadata (names and values were checked at load).
fn metadata(settings: &Settings) -> Result<MetadataMap, SetupError> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &settings.headers {
        let bad = || SetupError::Config(format!("tracing.headers: `{k}` is not a header"));
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(v).map_err(|_| bad())?;
        headers.insert(name, value);
    }
    Ok(MetadataMap::from_headers(headers))
}
