//! Every metric of gateway.md §3, registered in a `Registry` the gateway creates (never the global
//! one), so that tests and several gateways in one process never share state.

use std::ops::Deref;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::contract::{Code, Field};
use crate::outcome::{OutcomeKind, Reason, UpstreamErrorKind};
use crate::route::RouteLabel;

/// The `method` label's closed set.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `result` label of a session cache lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
}

/// `source` label of a session check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictSource {
    Jwt,
    Introspection,
    Upstream,
}

/// `verdict` label of a session check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictLabel {
    Valid,
    Invalid,
    Error,
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
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub rejections: IntCounterVec,
    pub contract_violations: IntCounterVec,
    pub report_only: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_connections_opened: IntCounter,
    pub contract_drift: IntCounterVec,
    pub inflight_requests: IntGauge,
    pub open_connections: IntGauge,
    pub session_cache_lookups: IntCounterVec,
    pub session_cache_entries: IntGauge,
    pub session_checks: IntCounterVec,
    pub session_introspection_duration: Histogram,
    pub session_coalesced: IntCounter,
    pub build_info: IntGaugeVec,
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
            session_cache_lookups: counter(
                "gateway_session_cache_lookups_total",
                "Session cache lookups by result.",
                &["result"],
            )?,
            session_cache_entries: gauge(
                "gateway_session_cache_entries",
                "Entries in the session cache.",
            )?,
            session_checks: counter(
                "gateway_session_checks_total",
                "Session verdicts by source and verdict.",
                &["source", "verdict"],
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
                    &["version"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            registry: registry.clone(),
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
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
        for route in RouteLabel::ALL {
            for reason in Reason::ALL {
                self.rejections
                    .with_label_values(&[route.as_str(), reason.as_str()]);
            }
            self.contract_drift.with_label_values(&[route.as_str()]);
            self.report_only.with_label_values(&[route.as_str()]);
        }
        for field in Field::ALL {
            for code in Code::ALL {
                self.contract_violations
                    .with_label_values(&[field.as_str(), code.as_str()]);
            }
        }
        for result in ["hit", "miss", "stale"] {
            self.session_cache_lookups.with_label_values(&[result]);
        }
        for source in ["jwt", "introspection", "upstream"] {
            for verdict in ["valid", "invalid", "error"] {
                self.session_checks.with_label_values(&[source, verdict]);
            }
        }
        let _ = OutcomeKind::ALL;
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }

    pub fn cache_lookup(&self, result: CacheResult) {
        let label = match result {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
        };
        self.session_cache_lookups.with_label_values(&[label]).inc();
    }

    pub fn session_check(&self, source: VerdictSource, verdict: VerdictLabel) {
        let source = match source {
            VerdictSource::Jwt => "jwt",
            VerdictSource::Introspection => "introspection",
            VerdictSource::Upstream => "upstream",
        };
        let verdict = match verdict {
            VerdictLabel::Valid => "valid",
            VerdictLabel::Invalid => "invalid",
            VerdictLabel::Error => "error",
        };
        self.session_checks
            .with_label_values(&[source, verdict])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }

    #[test]
    fn odd_methods_fold_into_other() {
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
        let odd = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
