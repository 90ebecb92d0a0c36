//! Distributed tracing against a real OTLP receiver: a small hyper server on 127.0.0.1 that
//! decodes `opentelemetry-proto` export requests (http/protobuf), as a collector would.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use support::otlp::{Got, Spans};
use support::*;
use tokio::net::TcpListener;

/// The in-process collector.
struct Receiver {
    addr: SocketAddr,
    spans: Spans,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Spans::default();
        let headers = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (spans, headers) = (spans.clone(), headers.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (spans, headers) = (spans.clone(), headers.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (spans, headers) = (spans.clone(), headers.clone());
                            async move {
                                assert_eq!(req.uri().path(), "/v1/traces");
                                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                                headers.lock().unwrap().push(req.headers().clone());
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                spans.record(export);
                                let body = ExportTraceServiceResponse::default().encode_to_vec();
                                let mut res = Response::new(Full::new(Bytes::from(body)));
                                res.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/x-protobuf"),
                                );
                                Ok::<_, std::convert::Infallible>(res)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            })
        };
        Receiver {
            addr,
            spans,
            headers,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Got> {
        self.spans.trace(trace_id, n).await
    }

    fn all(&self) -> Vec<Got> {
        self.spans.all()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const BEARER: &str = "SECRETBEARERabc123";
const SESSION: &str = "SECRETSESSIONxyz789";
const QUERY: &str = "SECRETQUERYqqq";

fn traced_config(
    upstream: &str,
    ca: std::path::PathBuf,
    endpoint: String,
    ratio: f64,
) -> companies_gateway::Config {
    let mut c = test_config(upstream, Some(ca));
    c.tracing.otlp_endpoint = Some(endpoint);
    c.tracing.sample_ratio = Some(ratio);
    c.tracing.service_name = Some("gw-under-test".into());
    c.tracing
        .headers
        .insert("x-collector-key".into(), "collector-secret".into());
    c.validate().unwrap();
    c
}

fn patch(addr: SocketAddr, traceparent: Option<&str>, body: &'static [u8]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method("PATCH")
        .uri(format!(
            "http://{addr}/companies/v2/rs/1/contacts/2?token={QUERY}"
        ))
        .header("authorization", format!("Bearer {BEARER}"))
        .header("x-session-token", SESSION)
        .header("content-type", "application/json")
        .header("user-agent", "trace-test/1.0");
    if let Some(tp) = traceparent {
        b = b
            .header("traceparent", tp)
            .header("tracestate", "vendor=abc");
    }
    b.body(Full::new(Bytes::from_static(body))).unwrap()
}

/// The parts of a `traceparent`: trace id, parent id, flags.
fn parse_tp(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn a_trace_crosses_client_gateway_upstream_with_its_parentage_and_attributes() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let intro = MockIntrospection::start(Verdict::status(200)).await;
    let otlp = Receiver::start().await;
    let mut config = traced_config(&mock.url(""), pki.ca_file(), otlp.url(), 1.0);
    config.session.introspect_url = Some(intro.url());
    let gw = start_gateway(config).await;

    // The client's own span, which the gateway continues.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let tp = format!("00-{trace_id}-{client_span}-01");
    let got = send(patch(gw.public_addr, Some(&tp), EXAMPLE_REQUEST)).await;
    assert_eq!(got.status, 200);

    // The upstream got the trace, with the gateway's upstream CLIENT span as parent.
    let seen = mock.received();
    let up_tp = seen[0].values("traceparent");
    assert_eq!(up_tp.len(), 1, "{up_tp:?}");
    let (up_trace, up_parent, up_flags) = parse_tp(&up_tp[0]);
    assert_eq!(up_trace, trace_id);
    assert_eq!(up_flags, "01");
    assert_ne!(up_parent, client_span);
    assert_eq!(seen[0].values("tracestate"), ["vendor=abc"]);

    let spans = otlp.trace(trace_id, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server: Vec<&Got> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Server)
        .collect();
    assert_eq!(server.len(), 1);
    let server = server[0];
    let clients: Vec<&Got> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), 2, "upstream and introspection");
    // client -> gateway SERVER span -> CLIENT spans.
    assert_eq!(server.parent_id(), client_span);
    for c in &clients {
        assert_eq!(c.parent_id(), server.span_id());
    }
    let upstream_span = clients
        .iter()
        .find(|c| c.span_id() == up_parent)
        .expect("the upstream's parent is a CLIENT span of the gateway");
    assert_eq!(
        upstream_span.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        upstream_span.attr("server.address").as_deref(),
        Some("localhost")
    );
    assert_eq!(
        upstream_span.attr("http.request.method").as_deref(),
        Some("PATCH")
    );
    // Introspection is the other CLIENT span, and its endpoint got the trace too.
    let intro_span = clients.iter().find(|c| c.span_id() != up_parent).unwrap();
    assert_eq!(
        intro_span.attr("http.request.method").as_deref(),
        Some("GET")
    );
    let intro_seen = intro.seen.lock().unwrap().clone();
    let (intro_trace, intro_parent, _) = parse_tp(intro_seen[0]["traceparent"].to_str().unwrap());
    assert_eq!(intro_trace, trace_id);
    assert_eq!(intro_parent, intro_span.span_id());

    // The SERVER span's semantic conventions (gateway.md §7).
    assert_eq!(
        server.span.name,
        "PATCH /companies/v2/rs/{companyId}/contacts/{contactId}"
    );
    let expect = [
        ("http.request.method", "PATCH"),
        (
            "http.route",
            "/companies/v2/rs/{companyId}/contacts/{contactId}",
        ),
        ("http.response.status_code", "200"),
        ("url.path", "/companies/v2/rs/1/contacts/2"),
        ("client.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("user_agent.original", "trace-test/1.0"),
        ("gateway.outcome", "forwarded"),
    ];
    for (k, v) in expect {
        assert_eq!(server.attr(k).as_deref(), Some(v), "{k}");
    }
    assert!(server.attr("error.type").is_none());
    assert!(!server.error());
    assert_eq!(server.service, "gw-under-test");
    // The configured headers went to the collector.
    assert_eq!(
        otlp.headers.lock().unwrap()[0]["x-collector-key"],
        "collector-secret"
    );
}

#[tokio::test]
async fn status_is_error_only_for_5xx_and_no_secret_reaches_an_attribute() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let otlp = Receiver::start().await;
    let gw = start_gateway(traced_config(&mock.url(""), pki.ca_file(), otlp.url(), 1.0)).await;

    // Rejected by the contract: a 400 problem, its slug as error.type, status not Error.
    let rejected = "11111111111111111111111111111111";
    let tp = format!("00-{rejected}-00f067aa0ba902b7-01");
    let got = send(patch(gw.public_addr, Some(&tp), b"{\"SECRETBODY\": 1}")).await;
    assert_eq!(got.status, 400);
    let slug = got.json()["type"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    // The upstream answers 503: SERVER and CLIENT spans are errors.
    let failed = "22222222222222222222222222222222";
    mock.push_reply(Reply::status(503));
    let tp = format!("00-{failed}-00f067aa0ba902b7-01");
    assert_eq!(
        send(patch(gw.public_addr, Some(&tp), EXAMPLE_REQUEST))
            .await
            .status,
        503
    );

    let spans = otlp.trace(rejected, 1).await;
    assert_eq!(
        spans.len(),
        1,
        "a rejected request never reaches the upstream"
    );
    let s = &spans[0];
    assert_eq!(s.attr("http.response.status_code").as_deref(), Some("400"));
    assert_eq!(s.attr("error.type"), Some(slug));
    assert_eq!(s.attr("gateway.outcome").as_deref(), Some("rejected"));
    assert_eq!(s.attr("gateway.reason").as_deref(), Some("body"));
    assert!(!s.error(), "a 4xx is not a server error");

    let spans = otlp.trace(failed, 2).await;
    for s in &spans {
        assert!(s.error(), "{:?} is not an error", s.kind());
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("503"));
    }

    // No token, query string or body in any attribute of any span.
    for s in otlp.all() {
        for kv in &s.span.attributes {
            let text = format!("{:?}", kv.value);
            for secret in [BEARER, SESSION, QUERY, "SECRETBODY", "token="] {
                assert!(!text.contains(secret), "{} = {text}", kv.key);
            }
        }
        assert!(!s.span.name.contains(QUERY));
    }
}

#[tokio::test]
async fn sampling_follows_the_parent_and_the_ratio_for_roots() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let otlp = Receiver::start().await;
    // Ratio 0: no root is sampled.
    let gw = start_gateway(traced_config(&mock.url(""), pki.ca_file(), otlp.url(), 0.0)).await;

    // A root: not sampled, yet the upstream gets a valid traceparent (flags 00).
    assert_eq!(
        send(patch(gw.public_addr, None, EXAMPLE_REQUEST))
            .await
            .status,
        200
    );
    // An unsampled parent stays unsampled.
    let unsampled = "33333333333333333333333333333333";
    let tp = format!("00-{unsampled}-00f067aa0ba902b7-00");
    assert_eq!(
        send(patch(gw.public_addr, Some(&tp), EXAMPLE_REQUEST))
            .await
            .status,
        200
    );
    // An invalid traceparent is replaced by a new (unsampled) trace, never forwarded.
    let invalid = "00-not-a-trace-01";
    assert_eq!(
        send(patch(gw.public_addr, Some(invalid), EXAMPLE_REQUEST))
            .await
            .status,
        200
    );
    // A sampled parent is followed whatever the ratio.
    let sampled = "44444444444444444444444444444444";
    let tp = format!("00-{sampled}-00f067aa0ba902b7-01");
    assert_eq!(
        send(patch(gw.public_addr, Some(&tp), EXAMPLE_REQUEST))
            .await
            .status,
        200
    );

    let seen = mock.received();
    let tps: Vec<(String, String, String)> = seen
        .iter()
        .map(|r| parse_tp(&r.values("traceparent")[0]))
        .collect();
    assert_eq!(tps[0].2, "00");
    assert_eq!(tps[1].0, unsampled);
    assert_eq!(tps[1].2, "00");
    assert_ne!(seen[2].values("traceparent")[0], invalid);
    assert_eq!(tps[2].2, "00");
    assert_eq!(tps[3].0, sampled);
    assert_eq!(tps[3].2, "01");

    // Spans end and are exported in order: once the sampled trace is in, nothing else came.
    otlp.trace(sampled, 2).await;
    let traces: HashMap<String, usize> = otlp.all().iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.trace_id()).or_default() += 1;
        m
    });
    assert_eq!(traces.len(), 1, "{traces:?}");
}

#[tokio::test]
async fn a_dead_collector_leaves_requests_alone_and_counts_export_errors() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let dead = format!("http://127.0.0.1:{}", closed_port().await);
    let gw = start_gateway(traced_config(&mock.url(""), pki.ca_file(), dead, 1.0)).await;
    for _ in 0..5 {
        let got = send(patch(gw.public_addr, None, EXAMPLE_REQUEST)).await;
        assert_eq!(got.status, 200);
        assert!(got.headers.get("traceparent").is_none());
    }
    let errors = async {
        loop {
            if metric(&gw, "gateway_trace_export_errors_total").await >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), errors)
        .await
        .expect("the failed export is counted");
    assert_eq!(metric(&gw, "gateway_trace_spans_dropped_total").await, 0.0);
    // Requests still go through while exports fail.
    assert_eq!(
        send(patch(gw.public_addr, None, EXAMPLE_REQUEST))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn tracing_off_forwards_the_clients_trace_context_untouched() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let tp = "00-55555555555555555555555555555555-00f067aa0ba902b7-01";
    assert_eq!(
        send(patch(gw.public_addr, Some(tp), EXAMPLE_REQUEST))
            .await
            .status,
        200
    );
    assert_eq!(mock.received()[0].values("traceparent"), [tp]);
    let _ = StatusCode::OK;
}

/// A TLS upstream on 127.0.0.1 that records each request's `traceparent` and closes the
/// connection before any response byte to the first request, answering the others 200.
async fn reset_first(leaf: Leaf) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = tls_acceptor(leaf, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                loop {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let tp = text
                        .lines()
                        .find_map(|l| l.strip_prefix("traceparent:"))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default();
                    let first = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(tp);
                        seen.len() == 1
                    };
                    if first {
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tls.write_all(ok).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, recorded)
}

#[tokio::test]
async fn each_upstream_attempt_is_its_own_client_span_and_traceparent() {
    let pki = Pki::new();
    let (up, seen) = reset_first(pki.leaf(&["localhost"])).await;
    let otlp = Receiver::start().await;
    let url = format!("https://localhost:{}", up.port());
    let gw = start_gateway(traced_config(&url, pki.ca_file(), otlp.url(), 1.0)).await;

    let trace_id = "66666666666666666666666666666666";
    let mut req = get(gw.public_addr, "/companies/v2/rs/1");
    req.headers_mut().insert(
        "traceparent",
        http::HeaderValue::from_str(&format!("00-{trace_id}-00f067aa0ba902b7-01")).unwrap(),
    );
    // The first attempt is reset before the head; the GET is retried and answered.
    assert_eq!(send(req).await.status, 200);
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (first, second) = (parse_tp(&sent[0]), parse_tp(&sent[1]));
    assert_eq!(first.0, trace_id);
    assert_eq!(second.0, trace_id);
    assert_ne!(first.1, second.1, "each attempt names its own span");

    let spans = otlp.trace(trace_id, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = spans.iter().find(|s| s.kind() == SpanKind::Server).unwrap();
    let attempt = |id: &str| {
        spans
            .iter()
            .find(|s| s.kind() == SpanKind::Client && s.span_id() == id)
            .unwrap_or_else(|| panic!("no CLIENT span {id}: {spans:#?}"))
    };
    let (reset, answered) = (attempt(&first.1), attempt(&second.1));
    for c in [reset, answered] {
        assert_eq!(c.parent_id(), server.span_id());
        assert_eq!(c.attr("http.request.method").as_deref(), Some("GET"));
    }
    assert!(reset.error());
    assert_eq!(reset.attr("error.type").as_deref(), Some("reset"));
    assert!(reset.attr("http.response.status_code").is_none());
    assert!(!answered.error());
    assert_eq!(
        answered.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(!server.error());
}
