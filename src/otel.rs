//! Distributed tracing (gateway.md §7) with the official OpenTelemetry crates: W3C trace context
//! in and out, a SERVER span per request, CLIENT spans for the upstream call and introspection,
//! exported as OTLP (http/protobuf here, grpc in [`grpc`]) by the SDK's batch processor on its
//! own thread.
//!
//! No global provider is installed: the [`Telemetry`] handle lives in the built stack (its
//! `Parts`), so that a reload builds a new one and the old one flushes and ends when the old stack
//! is dropped. The export goes through hyper and hyper-rustls (ring), the HTTP stack the gateway
//! already has, on the gateway's tokio runtime, whichever the protocol.
//!
//! The bound on the export queue is the gateway's own: spans ended but not yet handed to the
//! exporter. Past it a span is dropped and counted (`gateway_trace_spans_dropped_total`); a batch
//! the collector does not take is counted (`gateway_trace_export_errors_total`). Neither ever
//! waits on the request path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer,
    SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use crate::config::{OtlpProtocol, TracingConfig};
use crate::metrics::Metrics;
use crate::upstream::{root_store, tls_config, SetupError};

mod grpc;

/// Spans ended but not yet exported, beyond which new ones are dropped and counted.
pub(crate) const MAX_QUEUED_SPANS: usize = 2048;
/// Spans per export request (the SDK's default).
const MAX_BATCH: usize = 512;
/// The whole export request, connect to response body.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ended spans wait to fill a batch, unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_SERVICE: &str = "companies-gateway";
const DEFAULT_RATIO: f64 = 0.05;
/// `user_agent.original` is cut to this many bytes.
const MAX_USER_AGENT: usize = 256;

/// `[tracing]` after the `OTEL_*` fallbacks; `None` from [`Settings::resolve`]: tracing is off.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// The traces URL itself (`…/v1/traces`); for grpc, the collector's URL (the service's path
    /// is gRPC's own).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// `None`: `OTEL_TRACES_SAMPLER` is set and the SDK reads it.
    pub sample_ratio: Option<f64>,
    /// `None`: `OTEL_SERVICE_NAME` is set and the SDK reads it.
    pub service_name: Option<String>,
    /// Config headers; the exporter adds `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` itself.
    pub headers: HashMap<String, String>,
}

/// A `[tracing]` key, or the `OTEL_*` variable standing in for it, that cannot be used; `key` is
/// the config key, the message names the variable when the value came from one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Invalid {
    pub key: &'static str,
    pub message: String,
}

impl From<Invalid> for SetupError {
    fn from(e: Invalid) -> SetupError {
        SetupError::Config(e.message)
    }
}

impl Settings {
    /// A key the config leaves unset falls back to its `OTEL_*` variable, read through `env`.
    pub(crate) fn resolve(
        cfg: &TracingConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, Invalid> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        // (the URL, whether the signal's path is still to be added, where it came from)
        let (url, base, from) = match &cfg.otlp_endpoint {
            Some(base) => (base.clone(), true, "tracing.otlp_endpoint"),
            None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(full) => (full, false, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(base) => (base, true, "OTEL_EXPORTER_OTLP_ENDPOINT"),
                    None => return Ok(None),
                },
            },
        };
        let protocol = match cfg.protocol {
            Some(p) => p,
            None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .as_deref()
            {
                None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
                Some("grpc") => OtlpProtocol::Grpc,
                Some(other) => {
                    return Err(Invalid {
                        key: "tracing.protocol",
                        message: format!(
                            "OTEL_EXPORTER_OTLP_PROTOCOL: `{other}` is not http/protobuf or grpc"
                        ),
                    })
                }
            },
        };
        // The config's URL is checked at load; a variable's is checked here, so that a URL the
        // exporter cannot use is refused at start-up rather than failing every export.
        let uri: Option<http::Uri> = url.parse().ok();
        if !uri
            .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
        {
            return Err(Invalid {
                key: "tracing.otlp_endpoint",
                message: format!("{from}: must be an http:// or https:// URL with a host"),
            });
        }
        // gRPC's path is the service's (`/opentelemetry.proto…/Export`): the URL is the
        // collector's, whichever variable named it (the OTLP exporter specification).
        let endpoint = match protocol {
            OtlpProtocol::HttpProtobuf if base => traces_url(&url),
            _ => url,
        };
        let sample_ratio = match cfg.sample_ratio {
            Some(r) => Some(r),
            None if env("OTEL_TRACES_SAMPLER").is_some() => None,
            None => Some(DEFAULT_RATIO),
        };
        let service_name = match &cfg.service_name {
            Some(s) => Some(s.clone()),
            None if env("OTEL_SERVICE_NAME").is_some() => None,
            None => Some(DEFAULT_SERVICE.to_string()),
        };
        Ok(Some(Settings {
            endpoint,
            protocol,
            sample_ratio,
            service_name,
            headers: cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }))
    }
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT`'s rule: the signal's path is appended to the base URL.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// `--check-config`'s line on tracing, from the resolution start-up makes (the config, then this
/// process's `OTEL_*` variables), so that a protocol or endpoint set by a variable shows too.
pub(crate) fn summary(cfg: &TracingConfig) -> Result<String, Invalid> {
    Ok(match Settings::resolve(cfg, |k| std::env::var(k).ok())? {
        None => "# tracing: off (no tracing.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)\n".into(),
        Some(s) => format!(
            "# tracing: OTLP {} to {}\n",
            match s.protocol {
                OtlpProtocol::HttpProtobuf => "http/protobuf",
                OtlpProtocol::Grpc => "grpc",
            },
            crate::config::mask_url(&s.endpoint)
        ),
    })
}

/// The tracer and its provider; cloning shares them. The last clone dropped (the stack's, at
/// shutdown or after a reload) shuts the provider down, which exports what is queued.
#[derive(Clone, Debug)]
pub(crate) struct Telemetry {
    tracer: SdkTracer,
    /// The root sampling ratio when the gateway's own sampler applies (parent-based): requests it
    /// does not sample never reach the SDK. `None`: `OTEL_TRACES_SAMPLER` chose, the SDK decides.
    ratio: Option<f64>,
    _provider: Arc<ShutDown>,
}

/// Shuts the provider down off the runtime: the shutdown waits for the last export, which runs on
/// the runtime, so waiting on a worker thread (the only one, with `worker_threads = 1`) would hold
/// both up until the SDK's timeout.
#[derive(Debug)]
struct ShutDown(SdkTracerProvider);

impl Drop for ShutDown {
    fn drop(&mut self) {
        let provider = self.0.clone();
        let _ = std::thread::Builder::new()
            .name("otel-shutdown".into())
            .spawn(move || {
                let _ = provider.shutdown();
            });
    }
}

/// A request's SDK span (the SERVER span) in its context, with the tracer its CLIENT spans start
/// from; shared (`Arc`) by the observer, the request context and the forwarder.
#[derive(Debug)]
pub(crate) struct SdkTrace {
    cx: Context,
    tracer: SdkTracer,
    /// The SERVER span records: its children get their attributes at start.
    records: bool,
}

/// The SERVER span's attributes at start, and room for those [`end_server`] adds.
const SERVER_ATTRS: usize = 11;
/// A CLIENT span's attributes at start, and room for those it ends with.
const CLIENT_ATTRS: usize = 5;

impl Telemetry {
    /// Builds the exporter and provider from `[tracing]`; `Ok(None)` when tracing is off. Must run
    /// on the gateway's runtime: exports are sent from it.
    pub(crate) fn build(
        cfg: &TracingConfig,
        ca_file: Option<&std::path::Path>,
        metrics: &Metrics,
    ) -> Result<Option<Telemetry>, SetupError> {
        let Some(settings) = Settings::resolve(cfg, |k| std::env::var(k).ok())? else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SetupError::Config("tracing: the exporter needs the gateway's runtime".into())
        })?;
        // The collector is trusted with the upstream's anchors, as introspection is.
        let tls = tls_config(root_store(ca_file)?)?;
        let (dropped, errors) = (
            metrics.trace_spans_dropped.clone(),
            metrics.trace_export_errors.clone(),
        );
        if settings.protocol == OtlpProtocol::Grpc {
            let exporter = grpc::exporter(&settings, tls)?;
            return Ok(Some(Telemetry::with_exporter(
                exporter, &settings, dropped, errors,
            )));
        }
        let client = OtlpClient::new(tls, runtime);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_headers(settings.headers.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| SetupError::Config(format!("tracing.otlp_endpoint: {e}")))?;
        Ok(Some(Telemetry::with_exporter(
            exporter, &settings, dropped, errors,
        )))
    }

    /// The provider around any exporter (tests use the SDK's in-memory one too).
    pub(crate) fn with_exporter<E: SpanExporter + 'static>(
        exporter: E,
        settings: &Settings,
        dropped: IntCounter,
        errors: IntCounter,
    ) -> Telemetry {
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            queued: queued.clone(),
            errors,
        };
        let mut batch = BatchConfigBuilder::default()
            // The SDK's own queue never fills first: the bound that counts is ours.
            .with_max_queue_size(MAX_QUEUED_SPANS + MAX_BATCH)
            .with_max_export_batch_size(MAX_BATCH);
        if std::env::var_os(opentelemetry_sdk::trace::OTEL_BSP_SCHEDULE_DELAY).is_none() {
            batch = batch.with_scheduled_delay(SCHEDULE_DELAY);
        }
        let processor = Bounded {
            inner: BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch.build())
                .build(),
            queued,
            dropped,
        };
        let mut resource = Resource::builder();
        if let Some(name) = &settings.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let mut provider = SdkTracerProvider::builder()
            .with_id_generator(Ids)
            .with_span_processor(processor)
            .with_resource(resource.build());
        if let Some(ratio) = settings.sample_ratio {
            // A parent's decision is kept; only roots are sampled at the ratio.
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let provider = provider.build();
        Telemetry {
            tracer: provider.tracer("companies-gateway"),
            ratio: settings.sample_ratio,
            _provider: Arc::new(ShutDown(provider)),
        }
    }

    /// Exports what is queued now (tests; shutdown does it on drop).
    #[cfg(test)]
    pub(crate) fn flush(&self) {
        let _ = self._provider.0.force_flush();
    }

    /// Starts the SERVER span of a request: a valid incoming `traceparent` (and `tracestate`) is
    /// continued, anything else starts a new trace. A request the gateway's sampler drops (an
    /// unsampled parent, or a root past the ratio) gets only ids, no SDK object; a sampled one the
    /// SDK's span, its attributes set now.
    pub(crate) fn start_server(&self, req: &ServerRequest<'_>) -> Trace {
        // One pass over the names for both (no hashing): most requests carry neither.
        let (mut has_parent, mut has_state) = (false, false);
        for name in req.headers.keys() {
            if *name == TRACEPARENT {
                has_parent = true;
            } else if *name == TRACESTATE {
                has_state = true;
            }
        }
        let mut parent = None;
        if has_parent {
            let cx = TraceContextPropagator::new()
                .extract_with_context(&Context::new(), &HeaderExtractor(req.headers));
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                if self.ratio.is_some() && !sc.is_sampled() {
                    // Parent-based: an unsampled parent's decision is kept.
                    return Trace::Unsampled(Unsampled {
                        trace_id: sc.trace_id().to_bytes(),
                        span_id: new_span_id(),
                        state: state_header(sc.trace_state()),
                        strip_state: has_state,
                    });
                }
                parent = Some(cx);
            }
        }
        if let (None, Some(ratio)) = (&parent, self.ratio) {
            let trace_id = new_trace_id();
            if !sampled(ratio, trace_id) {
                return Trace::Unsampled(Unsampled {
                    trace_id: trace_id.to_bytes(),
                    span_id: new_span_id(),
                    state: None,
                    // A new trace: the client's `tracestate` is not passed on.
                    strip_state: has_state,
                });
            }
            // The SDK samples it again, on this trace id: the same decision.
            NEXT_TRACE_ID.set(Some(trace_id));
        }
        let parent = parent.unwrap_or_default();
        // `{method} {template}`, in one allocation.
        let name: Cow<'static, str> = match req.template {
            Some(template) => {
                let mut name = String::with_capacity(req.method.len() + 1 + template.len());
                name.push_str(req.method);
                name.push(' ');
                name.push_str(template);
                name.into()
            }
            None => req.method.into(),
        };
        let builder = self.tracer.span_builder(name).with_kind(SpanKind::Server);
        // The gateway's sampler chose this span (or its parent's did): its attributes go in with
        // the builder, into the span's own vector, sized for those `end_server` adds. When the
        // SDK decides (`OTEL_TRACES_SAMPLER`), only a recording span gets them.
        let span = if self.ratio.is_some() {
            builder
                .with_attributes(server_attributes(req))
                .start_with_context(&self.tracer, &parent)
        } else {
            let mut span = builder.start_with_context(&self.tracer, &parent);
            if span.is_recording() {
                span.set_attributes(server_attributes(req));
            }
            span
        };
        NEXT_TRACE_ID.set(None);
        let records = span.is_recording();
        Trace::Sdk(Arc::new(SdkTrace {
            cx: parent.with_span(span),
            tracer: self.tracer.clone(),
            records,
        }))
    }
}

/// The SERVER span's attributes at start: never the query, a token or a body.
fn server_attributes(req: &ServerRequest<'_>) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(SERVER_ATTRS);
    if let Some(template) = req.template {
        attrs.push(KeyValue::new("http.route", template.to_string()));
    }
    attrs.push(KeyValue::new("http.request.method", req.method));
    attrs.push(KeyValue::new("url.path", req.path.to_string()));
    attrs.push(KeyValue::new(
        "url.scheme",
        if req.tls { "https" } else { "http" },
    ));
    attrs.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(req.version),
    ));
    if let Some(ip) = req.client {
        // Formatted from a table of octets, as in the access line (`Display` costs ~4x).
        let mut buf = Vec::with_capacity(16);
        crate::access_log::ip(&mut buf, ip);
        attrs.push(KeyValue::new(
            "client.address",
            String::from_utf8(buf).unwrap_or_default(),
        ));
    }
    if let Some(ua) = req
        .user_agent
        .or_else(|| req.headers.get(http::header::USER_AGENT))
    {
        let ua = &ua.as_bytes()[..ua.len().min(MAX_USER_AGENT)];
        attrs.push(KeyValue::new(
            "user_agent.original",
            String::from_utf8_lossy(ua).into_owned(),
        ));
    }
    attrs
}

/// A request's trace, as the observer, the forwarder and introspection see it.
#[derive(Clone, Debug)]
pub(crate) enum Trace {
    /// The SDK's SERVER span (sampled, or the SDK's own sampler decided).
    Sdk(Arc<SdkTrace>),
    /// Not sampled by the gateway's sampler: only what propagation needs.
    Unsampled(Unsampled),
}

/// The ids of an unsampled request, and the caller's `tracestate` to pass on.
#[derive(Clone, Debug)]
pub(crate) struct Unsampled {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// Boxed: rare, and the request context that carries a trace stays small.
    state: Option<Box<HeaderValue>>,
    /// The client sent a `tracestate` that must not go on (no `state` replaces it).
    strip_state: bool,
}

thread_local! {
    /// The trace id the gateway's sampler already drew for a root it samples, for [`Ids`] to hand
    /// the SDK (whose span builder ignores a root's trace id): set and cleared around one start.
    static NEXT_TRACE_ID: std::cell::Cell<Option<TraceId>> = const { std::cell::Cell::new(None) };
    /// The trace of the request being polled on this thread (see [`within`]).
    static CURRENT: std::cell::Cell<Option<Trace>> = const { std::cell::Cell::new(None) };
    /// The trace id of the unsampled request without a `tracestate` being polled on this thread:
    /// plain bytes, so that setting it around every poll costs next to nothing.
    static CURRENT_UNSAMPLED: std::cell::Cell<Option<[u8; 16]>> = const { std::cell::Cell::new(None) };
    /// The state of [`next_id`]'s generator; 0 until seeded.
    static ID_STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The SDK's ids (a per-thread `SmallRng`), except a root's trace id already drawn and sampled.
#[derive(Debug)]
struct Ids;

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .take()
            .unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        RandomIdGenerator::default().new_span_id()
    }
}

fn new_span_id() -> [u8; 8] {
    next_id().to_be_bytes()
}

/// A new trace id for a root: the gateway's sampler decides on it, and a sampled one is handed to
/// the SDK as is.
fn new_trace_id() -> TraceId {
    let id = (u128::from(next_id()) << 64) | u128::from(next_id());
    TraceId::from(id)
}

/// The ids' generator: wyrand on a per-thread state seeded once from the SDK's `SmallRng`
/// (itself seeded by the OS). Not cryptographic, as the SDK's is not: ids need to be unique, not
/// secret. Never 0, which W3C reads as invalid.
fn next_id() -> u64 {
    let mut state = ID_STATE.get();
    if state == 0 {
        state = u64::from_be_bytes(RandomIdGenerator::default().new_span_id().to_bytes()) | 1;
    }
    state = state.wrapping_add(0xa076_1d64_78bd_642f);
    ID_STATE.set(state);
    let t = u128::from(state) * u128::from(state ^ 0xe703_7ed1_a0b4_28db);
    let id = ((t >> 64) as u64) ^ (t as u64);
    if id == 0 {
        1
    } else {
        id
    }
}

/// `TraceIdRatioBased`'s rule, as the SDK applies it (`sample_based_on_probability`): the low 63
/// bits of the trace id below `ratio` of their range.
fn sampled(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

fn state_header(state: &opentelemetry::trace::TraceState) -> Option<Box<HeaderValue>> {
    let header = state.header();
    (!header.is_empty())
        .then(|| HeaderValue::from_str(&header).ok().map(Box::new))
        .flatten()
}

/// Runs `f` (a poll of the layers below the observer) with `trace` as the thread's current
/// trace, for introspection's CLIENT span: moved in and back, never cloned. An unsampled trace
/// is a few plain words, so this costs next to nothing.
pub(crate) fn within<R>(trace: &mut Option<Trace>, f: impl FnOnce() -> R) -> R {
    match trace {
        None => return f(),
        // The common case: only the trace id is lent.
        Some(Trace::Unsampled(Unsampled {
            trace_id,
            state: None,
            ..
        })) => {
            let outer = CURRENT_UNSAMPLED.replace(Some(*trace_id));
            let r = f();
            CURRENT_UNSAMPLED.set(outer);
            return r;
        }
        Some(_) => {}
    }
    let outer = CURRENT.replace(trace.take());
    let r = f();
    *trace = CURRENT.replace(outer);
    r
}

/// What the SERVER span is started from.
pub(crate) struct ServerRequest<'a> {
    /// `GET`…`OPTIONS`, or `_OTHER`.
    pub method: &'static str,
    pub template: Option<&'a str>,
    /// Without the query, which may carry secrets.
    pub path: &'a str,
    pub version: Version,
    pub tls: bool,
    pub client: Option<std::net::IpAddr>,
    /// `None`: looked up in `headers`, only when the span records.
    pub user_agent: Option<&'a HeaderValue>,
    pub headers: &'a HeaderMap,
}

/// What the SERVER span ends with.
pub(crate) struct ServerEnd<'a> {
    pub status: StatusCode,
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    /// The problem slug of a response the gateway wrote.
    pub problem: Option<&'a str>,
}

/// Ends the SERVER span of `trace`. Status is Error only for 5xx.
pub(crate) fn end_server(trace: &Trace, end: &ServerEnd<'_>) {
    let Trace::Sdk(t) = trace else {
        return;
    };
    let span = t.cx.span();
    if t.records {
        let error_type = match end.problem {
            Some(slug) => Some(KeyValue::new("error.type", slug.to_string())),
            None if end.status.is_server_error() => {
                Some(KeyValue::new("error.type", end.status.as_u16().to_string()))
            }
            None => None,
        };
        // Into the room `start_server` left: no vector of their own.
        span.set_attributes(
            [
                Some(KeyValue::new(
                    "http.response.status_code",
                    i64::from(end.status.as_u16()),
                )),
                Some(KeyValue::new("gateway.outcome", end.outcome)),
                end.reason.map(|r| KeyValue::new("gateway.reason", r)),
                error_type,
            ]
            .into_iter()
            .flatten(),
        );
        if end.status.is_server_error() {
            span.set_status(Status::error(""));
        }
    }
    span.end();
}

/// `network.protocol.version`.
fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The trace and span ids of the SERVER span, for the access log.
pub(crate) fn ids(trace: &Trace) -> ([u8; 16], [u8; 8]) {
    match trace {
        Trace::Sdk(t) => {
            let span = t.cx.span();
            let sc = span.span_context();
            (sc.trace_id().to_bytes(), sc.span_id().to_bytes())
        }
        Trace::Unsampled(u) => (u.trace_id, u.span_id),
    }
}

/// A CLIENT span: one per upstream attempt, one per introspection call. A recorded one ends when
/// finished or, if the call is abandoned, when dropped; an unsampled one is only its ids.
pub(crate) enum ClientSpan {
    /// Held as is, not in a context (nothing runs within it); boxed, as the SDK's span is
    /// ~290 bytes and an unsampled request's CLIENT span is only ids.
    Sdk(Box<opentelemetry_sdk::trace::Span>),
    Unsampled(Unsampled),
}

impl ClientSpan {
    /// A child of `parent`'s span (the tracer travels in an SDK context).
    pub(crate) fn start(
        parent: &Trace,
        method: &Method,
        host: &str,
        port: u16,
    ) -> Option<ClientSpan> {
        let parent = match parent {
            Trace::Sdk(t) => t,
            Trace::Unsampled(u) => {
                return Some(ClientSpan::Unsampled(Unsampled {
                    span_id: new_span_id(),
                    ..u.clone()
                }))
            }
        };
        let method = semconv_method(method);
        let attrs = || {
            let mut attrs = Vec::with_capacity(CLIENT_ATTRS);
            attrs.push(KeyValue::new("http.request.method", method));
            attrs.push(KeyValue::new("server.address", host.to_string()));
            attrs.push(KeyValue::new("server.port", i64::from(port)));
            attrs
        };
        let builder = parent
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Client);
        let span = if parent.records {
            // A recording parent's child records (the samplers are parent-based or decide on
            // the trace id): its attributes go in with the builder, with room for the end's.
            builder
                .with_attributes(attrs())
                .start_with_context(&parent.tracer, &parent.cx)
        } else {
            // The SDK's own sampler (`OTEL_TRACES_SAMPLER`) may still record the child.
            let mut span = builder.start_with_context(&parent.tracer, &parent.cx);
            if span.is_recording() {
                span.set_attributes(attrs());
            }
            span
        };
        Some(ClientSpan::Sdk(Box::new(span)))
    }

    /// A child of the trace being polled on this thread, if any (introspection runs within the
    /// request's, see [`within`]).
    /// An unsampled request's introspection carries a fresh span id, flags 00 and the caller's
    /// `tracestate`, as its upstream call does.
    pub(crate) fn start_in_current(method: &Method, host: &str, port: u16) -> Option<ClientSpan> {
        if let Some(trace_id) = CURRENT_UNSAMPLED.get() {
            return Some(ClientSpan::Unsampled(Unsampled {
                trace_id,
                span_id: new_span_id(),
                state: None,
                strip_state: false,
            }));
        }
        let trace = CURRENT.take();
        let span = trace
            .as_ref()
            .and_then(|t| ClientSpan::start(t, method, host, port));
        CURRENT.set(trace);
        span
    }

    /// Whether the span records: only then is there anything to end.
    #[cfg(test)]
    pub(crate) fn is_recording(&self) -> bool {
        match self {
            ClientSpan::Sdk(span) => span.is_recording(),
            ClientSpan::Unsampled(_) => false,
        }
    }

    /// Sets `traceparent` (and `tracestate`) to this span, replacing what the client sent.
    /// Written by hand: the propagator's `format!`s cost more than the rest of an unsampled span.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        let (trace_id, span_id, flags, state, strip) = match self {
            ClientSpan::Sdk(span) => {
                let sc = span.span_context();
                (
                    sc.trace_id().to_bytes(),
                    sc.span_id().to_bytes(),
                    sc.trace_flags().to_u8(),
                    state_header(sc.trace_state()),
                    true,
                )
            }
            ClientSpan::Unsampled(u) => (u.trace_id, u.span_id, 0, u.state.clone(), u.strip_state),
        };
        let mut tp = [0u8; 55];
        tp[..3].copy_from_slice(b"00-");
        hex_into(&mut tp[3..35], &trace_id);
        tp[35] = b'-';
        hex_into(&mut tp[36..52], &span_id);
        tp[52] = b'-';
        hex_into(&mut tp[53..55], &[flags]);
        if let Ok(v) = HeaderValue::from_bytes(&tp) {
            headers.insert(TRACEPARENT.clone(), v);
        }
        // `insert` replaces every value the client sent; a removal only when nothing replaces
        // them (looked up only when the client sent one, for an unsampled request).
        match state {
            Some(v) => {
                headers.insert(TRACESTATE.clone(), *v);
            }
            None if strip => {
                headers.remove(&TRACESTATE);
            }
            None => {}
        }
    }

    /// The peer answered with `status`.
    pub(crate) fn answered(self, status: StatusCode) {
        let ClientSpan::Sdk(mut span) = self else {
            return;
        };
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() {
                span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }

    /// The call failed without an answer; `kind` is a closed label (`connect`, `timeout`, …).
    pub(crate) fn failed(self, kind: &'static str) {
        let ClientSpan::Sdk(mut span) = self else {
            return;
        };
        if span.is_recording() {
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// How an upstream attempt ended, for its CLIENT span.
pub(crate) enum AttemptEnd {
    Answered(StatusCode),
    /// A closed label (`connect`, `reset`, …).
    Failed(&'static str),
}

/// The upstream call's CLIENT spans, one per attempt: the pool starts one as each attempt
/// starts (its id the `traceparent` that attempt carries) and ends it when it retries; the
/// forwarder ends the last one, with the call's outcome as the client sees it.
pub(crate) struct UpstreamSpans {
    parent: Trace,
    /// The attempt's recorded span, shared with the forwarder, and the upstream's authority for
    /// its attributes; `None` when nothing records.
    open: Option<(
        Arc<std::sync::Mutex<Option<ClientSpan>>>,
        http::uri::Authority,
    )>,
}

impl UpstreamSpans {
    /// Recorded spans get a slot the forwarder ends the last one through.
    pub(crate) fn new(parent: Trace, authority: &http::uri::Authority) -> UpstreamSpans {
        let records = match &parent {
            Trace::Sdk(t) => t.records,
            Trace::Unsampled(_) => false,
        };
        UpstreamSpans {
            parent,
            open: records.then(|| (Arc::default(), authority.clone())),
        }
    }

    /// The slot of the open attempt's span, for the forwarder to end the last one.
    pub(crate) fn last(&self) -> Option<Arc<std::sync::Mutex<Option<ClientSpan>>>> {
        self.open.as_ref().map(|(open, _)| open.clone())
    }

    /// An attempt starts: its own CLIENT span, set as the request's `traceparent`.
    pub(crate) fn attempt<B>(&self, req: &mut Request<B>) {
        let Some((open, authority)) = &self.open else {
            // Nothing records: only a fresh span id to propagate.
            if let Some(span) = ClientSpan::start(&self.parent, req.method(), "", 0) {
                span.inject(req.headers_mut());
            }
            return;
        };
        let port = authority.port_u16().unwrap_or(443);
        let Some(span) = ClientSpan::start(&self.parent, req.method(), authority.host(), port)
        else {
            return;
        };
        span.inject(req.headers_mut());
        if let Ok(mut open) = open.lock() {
            *open = Some(span);
        }
    }

    /// The attempt ended and another follows: its span ends with its own outcome.
    pub(crate) fn retrying(&self, end: AttemptEnd) {
        let span = self
            .open
            .as_ref()
            .and_then(|(open, _)| open.lock().ok()?.take());
        match (span, end) {
            (Some(span), AttemptEnd::Answered(status)) => span.answered(status),
            (Some(span), AttemptEnd::Failed(kind)) => span.failed(kind),
            (None, _) => {}
        }
    }
}

/// Ends the last attempt's span left in `open`, if any.
pub(crate) fn take_open(open: &std::sync::Mutex<Option<ClientSpan>>) -> Option<ClientSpan> {
    open.lock().ok()?.take()
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Lower-case hex of `bytes` into `out` (twice as long), a byte's two digits at a time.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    static PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        t
    };
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

/// `http.request.method`: the known methods, else `_OTHER`.
pub(crate) fn semconv_method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// Bounds the spans waiting for export, counting what it drops.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    /// Ended and not yet handed to the exporter; decremented by [`Counted`].
    queued: Arc<AtomicUsize>,
    dropped: IntCounter,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_SPANS {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts the batches the collector did not take.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    errors: IntCounter,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.errors.inc();
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: hyper-util's client over hyper-rustls, driven on the gateway's
/// runtime (the SDK's batch thread has none).
#[derive(Debug, Clone)]
struct OtlpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

/// A collector's answer is small; this bounds a broken one.
const MAX_RESPONSE: usize = 1 << 20;

impl OtlpClient {
    fn new(tls: rustls::ClientConfig, runtime: tokio::runtime::Handle) -> OtlpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        OtlpClient { client, runtime }
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, req: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let res = client.request(req.map(Full::new)).await?;
            let (parts, body) = res.into_parts();
            let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let timed = async move {
            tokio::time::timeout(EXPORT_TIMEOUT, exchange)
                .await
                .map_err(|_| HttpError::from("OTLP export timed out"))?
        };
        self.runtime.spawn(timed).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::SpanContext;

    /// Keeps what it is given (the SDK's own needs its `testing` feature).
    #[derive(Debug, Clone, Default)]
    struct Memory(Arc<std::sync::Mutex<Vec<SpanData>>>);

    impl SpanExporter for Memory {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn no_endpoint_anywhere_is_off() {
        let cfg = TracingConfig::default();
        assert_eq!(Settings::resolve(&cfg, env(&[])).unwrap(), None);
        assert_eq!(
            Settings::resolve(&cfg, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap(),
            None
        );
    }

    #[test]
    fn the_config_wins_and_otel_variables_fill_what_it_leaves_unset() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ];
        let s = Settings::resolve(&TracingConfig::default(), env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://env:4318/v1/traces");
        // Left to the SDK, which reads the variables.
        assert_eq!(s.service_name, None);
        assert_eq!(s.sample_ratio, None);
        let cfg = TracingConfig {
            otlp_endpoint: Some("http://cfg:4318".into()),
            sample_ratio: Some(0.5),
            service_name: Some("gw".into()),
            ..TracingConfig::default()
        };
        let s = Settings::resolve(&cfg, env(&vars)).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://cfg:4318/v1/traces");
        assert_eq!(s.sample_ratio, Some(0.5));
        assert_eq!(s.service_name.as_deref(), Some("gw"));
        let s = Settings::resolve(
            &TracingConfig::default(),
            env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x")]),
        )
        .unwrap()
        .unwrap();
        // The signal's own variable is the whole URL.
        assert_eq!(s.endpoint, "http://t:1/x");
        assert_eq!(s.sample_ratio, Some(DEFAULT_RATIO));
        assert_eq!(s.service_name.as_deref(), Some(DEFAULT_SERVICE));
    }

    #[test]
    fn grpc_from_the_config_or_either_variable_keeps_the_collectors_url_as_given() {
        let grpc = |cfg: &TracingConfig, vars: &[(&str, &str)]| {
            let s = Settings::resolve(cfg, env(vars)).unwrap().unwrap();
            (s.protocol, s.endpoint)
        };
        let cfg = TracingConfig {
            otlp_endpoint: Some("http://c:4317/".into()),
            protocol: Some(OtlpProtocol::Grpc),
            ..TracingConfig::default()
        };
        // No `/v1/traces`: the path is gRPC's. The config's protocol wins over the variables.
        let vars = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert_eq!(
            grpc(&cfg, &vars),
            (OtlpProtocol::Grpc, "http://c:4317/".into())
        );
        let base = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://env:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert_eq!(
            grpc(&TracingConfig::default(), &base),
            (OtlpProtocol::Grpc, "https://env:4317".into())
        );
        // The signal's own variables win over the general ones.
        let signal = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ];
        assert_eq!(
            grpc(&TracingConfig::default(), &signal),
            (OtlpProtocol::Grpc, "http://env:4318".into())
        );
        let http = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")];
        assert_eq!(
            grpc(&TracingConfig::default(), &http),
            (
                OtlpProtocol::HttpProtobuf,
                "http://env:4318/v1/traces".into()
            )
        );
    }

    #[test]
    fn an_unknown_protocol_or_unusable_url_from_a_variable_is_refused_naming_it() {
        let cfg = TracingConfig {
            otlp_endpoint: Some("http://c:4318".into()),
            ..TracingConfig::default()
        };
        let err = Settings::resolve(&cfg, env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .unwrap_err();
        assert_eq!(err.key, "tracing.protocol");
        assert!(err.message.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
        for (var, url) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/x"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
        ] {
            let err = Settings::resolve(&TracingConfig::default(), env(&[(var, url)])).unwrap_err();
            assert_eq!(err.key, "tracing.otlp_endpoint");
            assert!(err.message.starts_with(var), "{err}");
        }
        // With tracing off, the protocol variable is not read.
        assert!(Settings::resolve(
            &TracingConfig::default(),
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
        )
        .unwrap()
        .is_none());
    }

    fn settings(ratio: f64) -> Settings {
        Settings {
            endpoint: String::new(),
            protocol: OtlpProtocol::HttpProtobuf,
            sample_ratio: Some(ratio),
            service_name: Some("t".into()),
            headers: HashMap::new(),
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("c", "c").unwrap()
    }

    fn request<'a>(headers: &'a HeaderMap) -> ServerRequest<'a> {
        ServerRequest {
            method: "PATCH",
            template: Some("/companies/v2/{companyId}"),
            path: "/companies/v2/1",
            version: Version::HTTP_11,
            tls: false,
            client: None,
            user_agent: None,
            headers,
        }
    }

    #[test]
    fn a_parents_sampling_decision_is_kept_and_roots_follow_the_ratio() {
        let exporter = Memory::default();
        let t = Telemetry::with_exporter(exporter.clone(), &settings(0.0), counter(), counter());
        let mut h = HeaderMap::new();
        // Ratio 0: a root is not sampled, but still has ids to propagate.
        let cx = t.start_server(&request(&h));
        assert!(matches!(cx, Trace::Unsampled(_)), "no SDK span: {cx:?}");
        assert_ne!(ids(&cx).0, [0; 16]);
        assert_ne!(ids(&cx).1, [0; 8]);
        end_server(
            &cx,
            &ServerEnd {
                status: StatusCode::OK,
                outcome: "forwarded",
                reason: None,
                problem: None,
            },
        );
        // A sampled parent is followed, whatever the ratio; its trace id is kept.
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let cx = t.start_server(&request(&h));
        let sc: SpanContext = span_context(&cx);
        assert!(sc.is_sampled());
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        // The upstream gets the CLIENT span as parent, with the caller's tracestate.
        let client = ClientSpan::start(&cx, &Method::PATCH, "up", 443).unwrap();
        let mut out = HeaderMap::new();
        out.insert("traceparent", HeaderValue::from_static("garbage"));
        client.inject(&mut out);
        let tp = out["traceparent"].to_str().unwrap().to_string();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"), "{tp}");
        assert_eq!(out["tracestate"], "vendor=x");
        client.answered(StatusCode::BAD_GATEWAY);
        end_server(
            &cx,
            &ServerEnd {
                status: StatusCode::BAD_GATEWAY,
                outcome: "forwarded",
                reason: None,
                problem: None,
            },
        );
        // An invalid traceparent starts a new trace.
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-zz-b7ad6b7169203331-01"),
        );
        let cx = t.start_server(&request(&h));
        assert_ne!(
            format!("{:032x}", TraceId::from_bytes(ids(&cx).0)),
            "0af7651916cd43dd8448eb211c80319c"
        );
        drop(cx);
        t.flush();
        let spans = exporter.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2, "only the sampled trace is exported");
        let server = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .unwrap();
        let client = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Client)
            .unwrap();
        assert_eq!(client.parent_span_id, server.span_context.span_id());
        assert_eq!(server.name, "PATCH /companies/v2/{companyId}");
        assert!(matches!(server.status, Status::Error { .. }));
        assert!(matches!(client.status, Status::Error { .. }));
    }

    fn span_context(t: &Trace) -> SpanContext {
        match t {
            Trace::Sdk(t) => t.cx.span().span_context().clone(),
            Trace::Unsampled(u) => panic!("unsampled: {u:?}"),
        }
    }

    #[test]
    fn the_gateways_root_decision_is_the_sdks_ratio_sampler() {
        use opentelemetry_sdk::trace::ShouldSample;
        let gen = RandomIdGenerator::default();
        for ratio in [0.0, 0.01, 0.05, 0.5, 0.999, 1.0] {
            let sdk = Sampler::TraceIdRatioBased(ratio);
            let mut yes = 0;
            for _ in 0..20_000 {
                let id = gen.new_trace_id();
                let decision = sdk
                    .should_sample(None, id, "x", &SpanKind::Server, &[], &[])
                    .decision;
                let want = decision == opentelemetry_sdk::trace::SamplingDecision::RecordAndSample;
                assert_eq!(sampled(ratio, id), want, "{ratio} {id:?}");
                yes += usize::from(want);
            }
            // The ids are random enough for the ratio to show.
            let share = yes as f64 / 20_000.0;
            assert!((share - ratio).abs() < 0.02, "{ratio}: {share}");
        }
    }

    #[test]
    fn the_gateways_own_ids_are_distinct_nonzero_and_follow_the_ratio() {
        let mut seen = std::collections::HashSet::new();
        let mut yes = 0;
        for _ in 0..20_000 {
            let id = new_trace_id();
            assert_ne!(id, TraceId::INVALID);
            assert!(seen.insert(id), "repeated {id:?}");
            yes += usize::from(sampled(0.05, id));
            assert_ne!(new_span_id(), [0; 8]);
        }
        let share = yes as f64 / 20_000.0;
        assert!((share - 0.05).abs() < 0.01, "{share}");
        // Another thread starts from its own seed.
        let other = std::thread::spawn(new_trace_id).join().unwrap();
        assert!(!seen.contains(&other));
    }

    #[test]
    fn an_unsampled_request_propagates_fresh_span_ids_with_flags_00_and_its_tracestate() {
        let exporter = Memory::default();
        let t = Telemetry::with_exporter(exporter.clone(), &settings(1.0), counter(), counter());
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        // Ratio 1, but the parent's "not sampled" is kept: ids only.
        let cx = t.start_server(&request(&h));
        assert!(matches!(cx, Trace::Unsampled(_)));
        let mut seen = Vec::new();
        for _ in 0..2 {
            let span = ClientSpan::start(&cx, &Method::GET, "up", 443).unwrap();
            assert!(!span.is_recording());
            let mut out = HeaderMap::new();
            span.inject(&mut out);
            let (trace, parent, flags) = {
                let tp = out["traceparent"].to_str().unwrap().to_string();
                let p: Vec<String> = tp.split('-').map(str::to_string).collect();
                (p[1].clone(), p[2].clone(), p[3].clone())
            };
            assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
            assert_ne!(parent, "b7ad6b7169203331");
            assert_eq!(flags, "00");
            assert_eq!(out["tracestate"], "vendor=x");
            seen.push(parent);
        }
        assert_ne!(seen[0], seen[1], "each attempt has its own span id");
        // A root at ratio 1 is sampled through the SDK, on the trace id the gateway drew.
        let root = t.start_server(&request(&HeaderMap::new()));
        assert!(span_context(&root).is_sampled());
        drop(root);
        t.flush();
        assert_eq!(exporter.0.lock().unwrap().len(), 1, "only the sampled root");
    }

    #[test]
    fn introspection_within_an_unsampled_request_carries_its_tracestate() {
        let t = Telemetry::with_exporter(Memory::default(), &settings(1.0), counter(), counter());
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let mut trace = Some(t.start_server(&request(&h)));
        let out = within(&mut trace, || {
            let span = ClientSpan::start_in_current(&Method::POST, "idp", 443).unwrap();
            let mut out = HeaderMap::new();
            span.inject(&mut out);
            out
        });
        assert!(trace.is_some(), "the trace is moved back after the poll");
        let tp = out["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(!tp.contains("b7ad6b7169203331"), "a fresh span id: {tp}");
        assert!(tp.ends_with("-00"), "{tp}");
        assert_eq!(out["tracestate"], "vendor=x");
        // Outside the poll there is no current trace.
        assert!(ClientSpan::start_in_current(&Method::POST, "idp", 443).is_none());
    }

    #[test]
    fn a_new_trace_does_not_pass_the_clients_tracestate_on() {
        let t = Telemetry::with_exporter(Memory::default(), &settings(0.0), counter(), counter());
        let mut h = HeaderMap::new();
        // No traceparent, or an invalid one: a new trace, and its tracestate is dropped.
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        for tp in [None, Some("00-zz-b7ad6b7169203331-01")] {
            if let Some(tp) = tp {
                h.insert("traceparent", HeaderValue::from_static(tp));
            }
            let cx = t.start_server(&request(&h));
            let span = ClientSpan::start(&cx, &Method::GET, "up", 443).unwrap();
            let mut out = h.clone();
            span.inject(&mut out);
            assert!(out.get("tracestate").is_none(), "{out:?}");
            assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
        }
        // Without one there is nothing to remove, and nothing is added.
        let cx = t.start_server(&request(&HeaderMap::new()));
        let mut out = HeaderMap::new();
        ClientSpan::start(&cx, &Method::GET, "up", 443)
            .unwrap()
            .inject(&mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // An exporter that never returns holds the batch thread; spans then pile up.
        #[derive(Debug)]
        struct Stuck;
        impl SpanExporter for Stuck {
            async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
        let dropped = counter();
        let t = Telemetry::with_exporter(Stuck, &settings(1.0), dropped.clone(), counter());
        let h = HeaderMap::new();
        let n = MAX_QUEUED_SPANS + MAX_BATCH + 100;
        for _ in 0..n {
            let cx = t.start_server(&request(&h));
            end_server(
                &cx,
                &ServerEnd {
                    status: StatusCode::OK,
                    outcome: "forwarded",
                    reason: None,
                    problem: None,
                },
            );
        }
        // At most one batch left the queue for the stuck exporter; the rest is held or counted.
        assert!(
            dropped.get() >= (n - MAX_QUEUED_SPANS - MAX_BATCH) as u64,
            "{}",
            dropped.get()
        );
        assert!(
            dropped.get() <= (n - MAX_QUEUED_SPANS) as u64,
            "{}",
            dropped.get()
        );
        std::mem::forget(t);
    }
}
