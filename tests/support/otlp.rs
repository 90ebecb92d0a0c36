//! Spans as an in-process OTLP receiver sees them: shared by the http/protobuf receiver
//! (`tests/tracing.rs`) and the gRPC one (`tests/tracing_grpc.rs`), which differ only in transport.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// A span as received, with its resource's service name.
#[derive(Debug, Clone)]
pub struct Got {
    pub span: Span,
    pub service: String,
}

impl Got {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }
    pub fn error(&self) -> bool {
        self.span.status.as_ref().map(|s| s.code) == Some(OtlpStatus::Error as i32)
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span received so far, and a signal for each export that arrives.
#[derive(Clone, Default)]
pub struct Spans {
    spans: Arc<Mutex<Vec<Got>>>,
    arrived: Arc<Notify>,
}

impl Spans {
    /// Records an export's spans, each with its resource's `service.name`, and signals.
    pub fn record(&self, export: ExportTraceServiceRequest) {
        let mut got = self.spans.lock().unwrap();
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push(Got {
                        span,
                        service: service.clone(),
                    });
                }
            }
        }
        drop(got);
        self.signal();
    }

    /// Signals an arrival that carried no spans (a call the receiver could not decode).
    pub fn signal(&self) {
        self.arrived.notify_waiters();
    }

    /// The next signal; take it before checking, then await it, so that none is missed.
    pub fn arrived(&self) -> Notified<'_> {
        self.arrived.notified()
    }

    /// Waits (at most 20 s) until the spans of `trace_id` include `n` spans, and returns them.
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<Got> {
        let wait = async {
            loop {
                let arrived = self.arrived();
                let got: Vec<Got> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.trace_id() == trace_id)
                    .cloned()
                    .collect();
                if got.len() >= n {
                    return got;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("{n} spans of trace {trace_id} never arrived"))
    }

    pub fn all(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }
}
