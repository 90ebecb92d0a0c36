//! Every metric of gateway.md §3, registered in a `Registry` the gateway creates (never the global
//! one), so that tests and several gateways in one process never share state.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use http::StatusCode;
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::outcome::{OutcomeKind, Reason, UpstreamErrorKind};

/// The `method` label at `index` in `METHOD_LABELS`; `other` past its end.
pub(crate) fn method_name(index: usize) -> &'static str {
    METHOD_LABELS.get(index).copied().unwrap_or("other")
}

/// `other`'s place in `METHOD_LABELS`: every method not named there.
pub(crate) const OTHER_METHOD: usize = METHOD_LABELS.len() - 1;

/// Every `method` label value.
pub(crate) const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

/// `listener` label values of `gateway_tls_handshake_errors_total`.
pub(crate) const TLS_LISTENERS: [&str; 2] = ["public", "admin"];

/// Statuses whose series are resolved once: the gateway's own answers and the upstream's usual
/// ones. Any other status is looked up by its labels each time.
pub(crate) const COMMON_STATUSES: [u16; 19] = [
    200, 201, 204, 400, 401, 403, 404, 405, 408, 413, 415, 422, 429, 431, 499, 500, 502, 503, 504,
];

/// A status's place in `COMMON_STATUSES`.
fn status_slot(status: StatusCode) -> Option<usize> {
    COMMON_STATUSES.binary_search(&status.as_u16()).ok()
}

/// Handles to resolve on first use.
fn unset<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// A method's place in `METHOD_LABELS`.
pub(crate) fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        _ => OTHER_METHOD,
    }
}

/// `result` label of a session cache lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheResult {
    Hit,
    Miss,
    Stale,
}

/// `source` label of a session check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerdictSource {
    Jwt,
    Introspection,
    Upstream,
}

/// `verdict` label of a session check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerdictLabel {
    Valid,
    Invalid,
    Error,
}

/// `op` label of a shared store operation (gateway.md §3, §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Get,
    Set,
    Publish,
    Rate,
}

impl StoreOp {
    pub(crate) const ALL: [StoreOp; 4] =
        [StoreOp::Get, StoreOp::Set, StoreOp::Publish, StoreOp::Rate];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Set => "set",
            StoreOp::Publish => "publish",
            StoreOp::Rate => "rate",
        }
    }
}

/// `result` label of a shared store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreResult {
    Ok,
    Miss,
    Error,
    Timeout,
}

impl StoreResult {
    pub(crate) const ALL: [StoreResult; 4] = [
        StoreResult::Ok,
        StoreResult::Miss,
        StoreResult::Error,
        StoreResult::Timeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            StoreResult::Ok => "ok",
            StoreResult::Miss => "miss",
            StoreResult::Error => "error",
            StoreResult::Timeout => "timeout",
        }
    }
}

/// A handle on the gateway's metrics: cloning it is one reference count, so requests share it.
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

pub struct MetricSet {
    registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) rejections: IntCounterVec,
    pub(crate) contract_violations: IntCounterVec,
    pub(crate) report_only: IntCounterVec,
    pub(crate) upstream_duration: HistogramVec,
    pub(crate) upstream_errors: IntCounterVec,
    pub(crate) upstream_connections_opened: IntCounter,
    pub(crate) contract_drift: IntCounterVec,
    pub(crate) inflight_requests: IntGauge,
    pub(crate) open_connections: IntGauge,
    pub(crate) session_cache_entries: IntGauge,
    pub(crate) session_introspection_duration: Histogram,
    pub(crate) session_coalesced: IntCounter,
    pub(crate) build_info: IntGaugeVec,
    // Operations (issue 16): handshakes and certificate expiry.
    /// `listener` (`public`, `admin`): handshakes that failed or timed out.
    pub(crate) tls_handshake_errors: IntCounterVec,
    /// `certificate` (`listener`, `upstream_client`): `notAfter`, set only for a loaded one.
    pub(crate) certificate_expiry: IntGaugeVec,
    // Shared store and rate limits (gateway.md §8).
    pub(crate) rate_limited: IntCounterVec,
    pub(crate) shared_store_operations: IntCounterVec,
    pub(crate) shared_store_duration: HistogramVec,
    pub(crate) session_revocations_received: IntCounter,
    // Upstream resilience (gateway.md §9): resolved handles, one per label value.
    /// `gateway_upstream_retries_total` by `retry::Reason` (`not_sent`, `idempotent`).
    pub(crate) upstream_retries: [IntCounter; 2],
    pub(crate) upstream_retry_budget_exhausted: IntCounter,
    /// `gateway_upstream_endpoints` by state: `healthy`, `ejected`.
    pub(crate) upstream_endpoints: [IntGauge; 2],
    pub(crate) upstream_ejections: IntCounter,
    /// Tracing and the access log (gateway.md §3, §7).
    pub(crate) trace_spans_dropped: IntCounter,
    pub(crate) trace_export_errors: IntCounter,
    pub(crate) access_log_dropped: IntCounter,
    /// Reloads (gateway.md §6): counted by result; the last one's verdict and the time of the last
    /// success (start-up counts as one).
    pub(crate) config_reloads: IntCounterVec,
    pub(crate) config_last_reload_successful: IntGauge,
    pub(crate) config_last_reload_success_timestamp: prometheus::Gauge,
    /// Handles of the per-request series with closed label sets, resolved once rather than by
    /// hashing the label values on every request.
    resolved: Resolved,
}

struct Resolved {
    /// The `other` route alone, for requests counted without a loaded document's routes.
    other: RouteSeries,
    /// `session_cache_lookups` by hit, miss, stale.
    cache_lookups: [IntCounter; 3],
    /// `session_checks` by source x verdict.
    session_checks: [[IntCounter; 3]; 3],
}

impl Metrics {
    /// Builds and registers every metric in a new registry, with `buckets` for the histograms.
    pub fn new(buckets: &[f64]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let plain_counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };

        let session_cache_lookups = counter(
            "gateway_session_cache_lookups_total",
            "Session cache lookups by result.",
            &["result"],
        )?;
        let session_checks = counter(
            "gateway_session_checks_total",
            "Session verdicts by source and verdict.",
            &["source", "verdict"],
        )?;
        let upstream_retries = counter(
            "gateway_upstream_retries_total",
            "Upstream attempts made again, by reason.",
            &["reason"],
        )?;
        let upstream_endpoints = {
            let g = IntGaugeVec::new(
                Opts::new(
                    "gateway_upstream_endpoints",
                    "Upstream addresses by state (healthy, ejected).",
                ),
                &["state"],
            )?;
            registry.register(Box::new(g.clone()))?;
            g
        };
        let metrics = MetricSet {
            requests: counter(
                "gateway_requests_total",
                "Requests by route, method, status and outcome.",
                &["route", "method", "status", "outcome"],
            )?,
            request_duration: histogram(
                "gateway_request_duration_seconds",
                "Whole-request latency, from the request head to the response head.",
                &["route", "outcome"],
            )?,
            rejections: counter(
                "gateway_rejections_total",
                "Requests the gateway answered itself, by reason.",
                &["route", "reason"],
            )?,
            contract_violations: counter(
                "gateway_contract_violations_total",
                "Contract violations found, one per violation.",
                &["field", "code"],
            )?,
            report_only: counter(
                "gateway_report_only_total",
                "Requests that broke the contract and were forwarded by report mode.",
                &["route"],
            )?,
            upstream_duration: histogram(
                "gateway_upstream_request_duration_seconds",
                "Upstream latency, from sending the request to the response head.",
                &["route", "status"],
            )?,
            upstream_errors: counter(
                "gateway_upstream_errors_total",
                "Upstream failures by kind.",
                &["kind"],
            )?,
            upstream_connections_opened: plain_counter(
                "gateway_upstream_connections_opened_total",
                "Upstream connections opened (TCP + TLS), counted at the connector.",
            )?,
            contract_drift: counter(
                "gateway_contract_drift_total",
                "Upstream 400 or 422 answers to requests the gateway validated.",
                &["route"],
            )?,
            inflight_requests: gauge("gateway_inflight_requests", "Requests in flight.")?,
            open_connections: gauge("gateway_open_connections", "Open client connections.")?,
            session_cache_entries: gauge(
                "gateway_session_cache_entries",
                "Entries in the session cache.",
            )?,
            session_introspection_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "gateway_session_introspection_duration_seconds",
                        "Remote introspection latency.",
                    )
                    .buckets(buckets.to_vec()),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            session_coalesced: plain_counter(
                "gateway_session_coalesced_total",
                "Requests that waited on another request's session check.",
            )?,
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new("gateway_build_info", "Build information; always 1."),
                    &["version", "revision", "rustc"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            config_reloads: counter(
                "gateway_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            )?,
            config_last_reload_successful: gauge(
                "gateway_config_last_reload_successful",
                "1 when the last reload (or start-up) succeeded, 0 when it failed.",
            )?,
            config_last_reload_success_timestamp: {
                let g = prometheus::Gauge::new(
                    "gateway_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful reload, or of start-up.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            tls_handshake_errors: counter(
                "gateway_tls_handshake_errors_total",
                "TLS handshakes that failed or timed out, by listener.",
                &["listener"],
            )?,
            certificate_expiry: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "gateway_certificate_expiry_timestamp_seconds",
                        "notAfter of each certificate the gateway presents, in Unix seconds.",
                    ),
                    &["certificate"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            rate_limited: counter(
                "gateway_rate_limited_total",
                "Requests refused with 429 by a [[rate_limit]], by route and limit name.",
                &["route", "limit"],
            )?,
            shared_store_operations: counter(
                "gateway_shared_store_operations_total",
                "Operations on the shared store, by op and result.",
                &["op", "result"],
            )?,
            shared_store_duration: histogram(
                "gateway_shared_store_duration_seconds",
                "Shared store operation latency (bounded by shared.timeout).",
                &["op"],
            )?,
            session_revocations_received: plain_counter(
                "gateway_session_revocations_received_total",
                "Session revocations received from other replicas (and this one) over the store.",
            )?,
            upstream_retries: {
                let [a, b] = crate::retry::Reason::ALL
                    .map(|r| upstream_retries.get_metric_with_label_values(&[r.as_str()]));
                [a?, b?]
            },
            upstream_retry_budget_exhausted: plain_counter(
                "gateway_upstream_retry_budget_exhausted_total",
                "Retries refused because the retry budget was spent.",
            )?,
            upstream_endpoints: [
                upstream_endpoints.get_metric_with_label_values(&["healthy"])?,
                upstream_endpoints.get_metric_with_label_values(&["ejected"])?,
            ],
            upstream_ejections: plain_counter(
                "gateway_upstream_ejections_total",
                "Upstream addresses ejected as outliers.",
            )?,
            trace_spans_dropped: plain_counter(
                "gateway_trace_spans_dropped_total",
                "Finished spans dropped because the export queue was full.",
            )?,
            trace_export_errors: plain_counter(
                "gateway_trace_export_errors_total",
                "Span batches the collector did not accept (unreachable, refused, timed out).",
            )?,
            access_log_dropped: plain_counter(
                "gateway_access_log_dropped_total",
                "Access-log lines dropped because the writer's queue was full.",
            )?,
            registry: registry.clone(),
            resolved: Resolved {
                other: RouteSeries::new(std::iter::empty()),
                cache_lookups: [
                    session_cache_lookups.get_metric_with_label_values(&["hit"])?,
                    session_cache_lookups.get_metric_with_label_values(&["miss"])?,
                    session_cache_lookups.get_metric_with_label_values(&["stale"])?,
                ],
                session_checks: {
                    let check = |source: &str, verdict: &str| {
                        session_checks.get_metric_with_label_values(&[source, verdict])
                    };
                    [
                        [
                            check("jwt", "valid")?,
                            check("jwt", "invalid")?,
                            check("jwt", "error")?,
                        ],
                        [
                            check("introspection", "valid")?,
                            check("introspection", "invalid")?,
                            check("introspection", "error")?,
                        ],
                        [
                            check("upstream", "valid")?,
                            check("upstream", "invalid")?,
                            check("upstream", "error")?,
                        ],
                    ]
                },
            },
        };
        metrics
            .build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("CGW_BUILD_REVISION"),
                env!("CGW_BUILD_RUSTC"),
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(crate::process::ProcessMetrics::for_self()))?;
        metrics.touch_label_sets();
        Ok(Metrics(Arc::new(metrics)))
    }
}

impl MetricSet {
    /// Creates the series of the small closed label sets at zero, so that dashboards and `rate()`
    /// see them before the first event.
    fn touch_label_sets(&self) {
        for kind in UpstreamErrorKind::ALL {
            self.upstream_errors.with_label_values(&[kind.as_str()]);
        }
        self.touch_route(OTHER_ROUTE);
        for listener in TLS_LISTENERS {
            self.tls_handshake_errors.with_label_values(&[listener]);
        }
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
        // Session cache lookups and session checks exist at zero already: their handles are
        // resolved when the set is built.
    }

    /// Creates a route's series of `rejections`, `contract_drift` and `report_only` at zero.
    fn touch_route(&self, route: &str) {
        for reason in Reason::ALL {
            self.rejections.with_label_values(&[route, reason.as_str()]);
        }
        self.contract_drift.with_label_values(&[route]);
        self.report_only.with_label_values(&[route]);
    }

    /// The per-route series of a loaded document whose operations have these `route` labels and
    /// methods, in order: slot 0 is `other`, operation `i` is slot `i + 1`. Their small closed
    /// label sets are created at zero.
    pub(crate) fn route_series<'a>(
        &self,
        routes: impl Iterator<Item = (&'a str, &'a http::Method)>,
    ) -> RouteSeries {
        let series = RouteSeries::new(routes);
        for label in series.labels.iter().skip(1) {
            self.touch_route(label);
        }
        series
    }

    /// Creates `gateway_contract_violations_total{field, code}` at zero for a document's fields.
    pub(crate) fn touch_violations<'a>(
        &self,
        fields: impl Iterator<Item = &'a str>,
        codes: &[&str],
    ) {
        for field in fields {
            for code in codes {
                self.contract_violations.with_label_values(&[field, code]);
            }
        }
    }

    /// Creates the store's series at zero, once a store is configured.
    pub(crate) fn touch_store(&self) {
        for op in StoreOp::ALL {
            for result in StoreResult::ALL {
                self.shared_store_operations
                    .with_label_values(&[op.as_str(), result.as_str()]);
            }
            self.shared_store_duration.with_label_values(&[op.as_str()]);
        }
    }

    pub(crate) fn store_op(&self, op: StoreOp, result: StoreResult) {
        self.shared_store_operations
            .with_label_values(&[op.as_str(), result.as_str()])
            .inc();
    }

    pub(crate) fn store_duration(&self, op: StoreOp, secs: f64) {
        self.shared_store_duration
            .with_label_values(&[op.as_str()])
            .observe(secs);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }

    pub(crate) fn cache_lookup(&self, result: CacheResult) {
        self.resolved.cache_lookups[result as usize].inc();
    }

    pub(crate) fn session_check(&self, source: VerdictSource, verdict: VerdictLabel) {
        self.resolved.session_checks[source as usize][verdict as usize].inc();
    }

    /// Counts `gateway_requests_total{route, method, status, outcome}`, for the route at `slot`
    /// of `routes`.
    pub(crate) fn count_request(
        &self,
        routes: &RouteSeries,
        route: usize,
        method: usize,
        status: StatusCode,
        outcome: OutcomeKind,
    ) {
        let route = routes.clamp(route);
        let slot = status_slot(status).and_then(|s| {
            let per_method = OutcomeKind::ALL.len() * COMMON_STATUSES.len();
            let within = outcome as usize * COMMON_STATUSES.len() + s;
            if route == 0 {
                Some(method * per_method + within)
            } else if routes.methods[route] == method {
                // An operation's requests all have its one method.
                Some((METHOD_LABELS.len() + route - 1) * per_method + within)
            } else {
                None
            }
        });
        let labels = [
            routes.label(route),
            method_name(method),
            status.as_str(),
            outcome.as_str(),
        ];
        with_handle(&routes.requests, slot, &self.requests, &labels, |c| c.inc());
    }

    /// Counts a request that hyper refused below the stack (a framing error: 400, or a head too
    /// large: 431), which the stack never saw: its method and route are unknown.
    pub(crate) fn count_refused_below_the_stack(&self, status: StatusCode) {
        self.count_request(
            &self.resolved.other,
            0,
            OTHER_METHOD,
            status,
            OutcomeKind::Rejected,
        );
        self.rejections
            .with_label_values(&[OTHER_ROUTE, Reason::Framing.as_str()])
            .inc();
    }

    /// Observes `gateway_upstream_duration_seconds{route, status}`.
    pub(crate) fn observe_upstream_duration(
        &self,
        routes: &RouteSeries,
        route: usize,
        status: StatusCode,
        secs: f64,
    ) {
        let route = routes.clamp(route);
        let slot = status_slot(status).map(|s| route * COMMON_STATUSES.len() + s);
        let labels = [routes.label(route), status.as_str()];
        with_handle(
            &routes.upstream_duration,
            slot,
            &self.upstream_duration,
            &labels,
            |h| h.observe(secs),
        );
    }

    /// Observes `gateway_request_duration_seconds{route, outcome}`.
    pub(crate) fn observe_request_duration(
        &self,
        routes: &RouteSeries,
        route: usize,
        outcome: OutcomeKind,
        secs: f64,
    ) {
        let route = routes.clamp(route);
        let slot = route * OutcomeKind::ALL.len() + outcome as usize;
        let labels = [routes.label(route), outcome.as_str()];
        with_handle(
            &routes.request_duration,
            Some(slot),
            &self.request_duration,
            &labels,
            |h| h.observe(secs),
        );
    }

    /// The `other` route's series, for a request counted without a document's routes.
    pub(crate) fn other_route(&self) -> &RouteSeries {
        &self.resolved.other
    }
}

/// The `route` label of everything the document does not name.
pub(crate) const OTHER_ROUTE: &str = "other";

/// The per-request series of one loaded document's routes, resolved on first use rather than by
/// hashing the label values on every request: the label set is closed by the document, so it is
/// data, built once per load.
pub(crate) struct RouteSeries {
    /// Slot 0 is `other`; slot `i + 1` is operation `i`'s label.
    labels: Box<[Box<str>]>,
    /// Each slot's method index (`other`'s is unused: it has every method).
    methods: Box<[usize]>,
    /// `request_duration` by route x outcome.
    request_duration: Box<[OnceLock<Histogram>]>,
    /// `requests` by route x method x outcome x one of `COMMON_STATUSES` (`other` with every
    /// method, an operation with its own), and `upstream_duration` by route x one of them: the
    /// series nearly every request lands in.
    requests: Box<[OnceLock<IntCounter>]>,
    upstream_duration: Box<[OnceLock<Histogram>]>,
}

impl RouteSeries {
    fn new<'a>(routes: impl Iterator<Item = (&'a str, &'a http::Method)>) -> RouteSeries {
        let (labels, methods): (Vec<Box<str>>, Vec<usize>) =
            std::iter::once((Box::from(OTHER_ROUTE), OTHER_METHOD))
                .chain(routes.map(|(label, method)| (Box::from(label), method_index(method))))
                .unzip();
        let n = labels.len();
        RouteSeries {
            request_duration: unset(n * OutcomeKind::ALL.len()),
            requests: unset(
                (METHOD_LABELS.len() + n - 1) * OutcomeKind::ALL.len() * COMMON_STATUSES.len(),
            ),
            upstream_duration: unset(n * COMMON_STATUSES.len()),
            labels: labels.into(),
            methods: methods.into(),
        }
    }

    /// A slot past the end counts as `other`.
    fn clamp(&self, route: usize) -> usize {
        if route < self.labels.len() {
            route
        } else {
            0
        }
    }

    /// The `route` label of `slot`.
    pub(crate) fn label(&self, slot: usize) -> &str {
        self.labels.get(slot).map_or(OTHER_ROUTE, |l| l)
    }
}

/// Applies `apply` to the series of `labels`: the handle in `slot`, resolved on its first use, or
/// a lookup by the label values when the label set has no slot.
fn with_handle<P: MetricVecBuilder>(
    slots: &[OnceLock<P::M>],
    slot: Option<usize>,
    vec: &MetricVec<P>,
    labels: &[&str],
    apply: impl FnOnce(&P::M),
) {
    match slot.and_then(|slot| slots.get(slot)) {
        Some(handle) => apply(handle.get_or_init(|| vec.with_label_values(labels))),
        None => apply(&vec.with_label_values(labels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_series_count_under_their_own_labels() {
        let m = Metrics::new(&[0.1, 1.0]).unwrap();
        let patch = method_index(&http::Method::PATCH);
        let forwarded = OutcomeKind::Forwarded;
        let routes = m.route_series(
            [
                ("update_contact", &http::Method::PATCH),
                ("get_contact", &http::Method::GET),
            ]
            .into_iter(),
        );
        let r = &routes;
        let route = 1;
        m.count_request(r, route, patch, StatusCode::OK, forwarded);
        m.count_request(r, route, patch, StatusCode::OK, forwarded);
        m.count_request(r, route, patch, StatusCode::CREATED, forwarded);
        m.count_request(r, route, patch, StatusCode::IM_A_TEAPOT, forwarded);
        m.count_request(
            r,
            route,
            patch,
            StatusCode::BAD_REQUEST,
            OutcomeKind::Rejected,
        );
        // A method other than the operation's still counts, by lookup.
        m.count_request(r, route, OTHER_METHOD, StatusCode::OK, forwarded);
        m.count_request(
            r,
            2,
            method_index(&http::Method::GET),
            StatusCode::OK,
            forwarded,
        );
        // A slot past the document's routes counts as `other`.
        m.count_request(r, 9, patch, StatusCode::OK, forwarded);
        let get = method_index(&http::Method::GET);
        m.count_request(r, 0, get, StatusCode::OK, forwarded);
        let count = |labels: &[&str]| m.requests.with_label_values(labels).get();
        assert_eq!(count(&["update_contact", "PATCH", "200", "forwarded"]), 2);
        assert_eq!(count(&["update_contact", "PATCH", "201", "forwarded"]), 1);
        assert_eq!(count(&["update_contact", "PATCH", "418", "forwarded"]), 1);
        assert_eq!(count(&["update_contact", "PATCH", "400", "rejected"]), 1);
        assert_eq!(count(&["update_contact", "PATCH", "400", "forwarded"]), 0);
        assert_eq!(count(&["other", "GET", "200", "forwarded"]), 1);
        assert_eq!(count(&["other", "PATCH", "200", "forwarded"]), 1);
        assert_eq!(count(&["update_contact", "other", "200", "forwarded"]), 1);
        assert_eq!(count(&["get_contact", "GET", "200", "forwarded"]), 1);
        m.observe_upstream_duration(r, route, StatusCode::OK, 0.05);
        m.observe_upstream_duration(r, route, StatusCode::BAD_REQUEST, 0.05);
        m.observe_upstream_duration(r, route, StatusCode::BAD_REQUEST, 0.05);
        let samples = |status: &str| {
            m.upstream_duration
                .with_label_values(&["update_contact", status])
                .get_sample_count()
        };
        assert_eq!((samples("200"), samples("400")), (1, 2));
        // `status_slot` searches the list by bisection.
        assert!(COMMON_STATUSES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn two_instances_do_not_share_state() {
        let a = Metrics::new(&[0.1, 1.0]).unwrap();
        let b = Metrics::new(&[0.1, 1.0]).unwrap();
        a.upstream_connections_opened.inc();
        assert_eq!(a.upstream_connections_opened.get(), 1);
        assert_eq!(b.upstream_connections_opened.get(), 0);
    }

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::new(&[0.1, 1.0]).unwrap();
        m.requests
            .with_label_values(&["other", "GET", "200", "forwarded"])
            .inc();
        m.request_duration
            .with_label_values(&["other", "forwarded"])
            .observe(0.01);
        m.upstream_duration
            .with_label_values(&["other", "200"])
            .observe(0.01);
        m.session_introspection_duration.observe(0.01);
        // The `field` x `code` series come from the loaded document.
        m.touch_violations(["notify"].into_iter(), &["required"]);
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        for name in [
            "gateway_requests_total",
            "gateway_request_duration_seconds_bucket",
            "gateway_rejections_total",
            "gateway_contract_violations_total",
            "gateway_report_only_total",
            "gateway_upstream_request_duration_seconds_bucket",
            "gateway_upstream_errors_total",
            "gateway_upstream_connections_opened_total",
            "gateway_contract_drift_total",
            "gateway_inflight_requests",
            "gateway_open_connections",
            "gateway_session_cache_lookups_total",
            "gateway_session_cache_entries",
            "gateway_session_checks_total",
            "gateway_session_introspection_duration_seconds_bucket",
            "gateway_session_coalesced_total",
            "gateway_build_info",
            "gateway_trace_spans_dropped_total",
            "gateway_trace_export_errors_total",
            "gateway_access_log_dropped_total",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }

    #[test]
    fn resolved_handles_count_in_their_own_series() {
        let m = Metrics::new(&[0.1, 1.0]).unwrap();
        m.cache_lookup(CacheResult::Stale);
        m.session_check(VerdictSource::Introspection, VerdictLabel::Error);
        m.observe_request_duration(m.other_route(), 0, OutcomeKind::Shed, 0.5);
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has(
            r#"gateway_session_cache_lookups_total{result="stale"} 1"#
        ));
        assert!(has(
            r#"gateway_session_cache_lookups_total{result="hit"} 0"#
        ));
        assert!(has(
            r#"gateway_session_checks_total{source="introspection",verdict="error"} 1"#
        ));
        assert!(has(
            r#"gateway_session_checks_total{source="introspection",verdict="valid"} 0"#
        ));
        assert!(has(
            r#"gateway_request_duration_seconds_count{outcome="shed",route="other"} 1"#
        ));
        // Only the series that saw an event exists.
        assert_eq!(
            text.matches("gateway_request_duration_seconds_count")
                .count(),
            1
        );
    }

    #[test]
    fn odd_methods_fold_into_other() {
        assert_eq!(method_name(method_index(&http::Method::PATCH)), "PATCH");
        let odd = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_name(method_index(&odd)), "other");
    }
}
