//! OTLP/gRPC export against a real gRPC receiver: a small hyper HTTP/2 server on 127.0.0.1
//! (plaintext, or TLS with a certificate from the test's CA) that decodes the gRPC frame and the
//! `ExportTraceServiceRequest` with prost and answers as a collector would: `grpc-status: 0` in
//! trailers, or a refusal, or nothing at all.

mod support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use support::otlp::{Got, Spans};
use support::*;
use tokio::net::TcpListener;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How the receiver answers an export.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// The response message, then `grpc-status: 0` in trailers.
    Ok,
    /// A trailers-only response with this non-zero `grpc-status`.
    Refuse(u32),
    /// Never answers.
    Stall,
}

/// One export call as the receiver saw it.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    version: http::Version,
    headers: HeaderMap,
    /// The gRPC frame's compressed flag and whether its length matched the body.
    flag: u8,
    length_ok: bool,
    /// The protocol TLS agreed by ALPN (`None` on plaintext).
    alpn: Option<Vec<u8>>,
}

/// What the receiver saw, shared with its connections.
#[derive(Clone, Default)]
struct Seen {
    spans: Spans,
    calls: Arc<Mutex<Vec<Call>>>,
}

/// The in-process gRPC collector.
struct Receiver {
    addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: Answer, tls: Option<Leaf>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let acceptor = tls.map(|leaf| tls_acceptor(leaf, &[b"h2"]));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, acceptor) = (seen.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let svc = move |alpn: Option<Vec<u8>>| {
                            hyper::service::service_fn(move |req: Request<Incoming>| {
                                export(req, answer, alpn.clone(), seen.clone())
                            })
                        };
                        let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        match acceptor {
                            Some(acceptor) => {
                                // A handshake the client refuses (an untrusted certificate) ends here.
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                                    let io = TokioIo::new(tls);
                                    let _ = h2.serve_connection(io, svc(alpn)).await;
                                }
                            }
                            None => {
                                let _ = h2.serve_connection(TokioIo::new(tcp), svc(None)).await;
                            }
                        }
                    });
                }
            })
        };
        Receiver { addr, seen, task }
    }

    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Got> {
        self.seen.spans.trace(trace_id, n).await
    }

    /// Waits (at most 20 s) for the first export call.
    async fn first_call(&self) -> Call {
        let wait = async {
            loop {
                let arrived = self.seen.spans.arrived();
                if let Some(c) = self.seen.calls.lock().unwrap().first() {
                    return c.clone();
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("no export call arrived")
    }

    fn calls(&self) -> Vec<Call> {
        self.seen.calls.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One export: record it, decode it, answer as told.
async fn export(
    req: Request<Incoming>,
    answer: Answer,
    alpn: Option<Vec<u8>>,
    seen: Seen,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (flag, message) = match body.len() {
        0..5 => (u8::MAX, Bytes::new()),
        _ => (body[0], body.slice(5..)),
    };
    let length_ok = body.len() >= 5
        && u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize == message.len();
    seen.calls.lock().unwrap().push(Call {
        path: parts.uri.path().to_string(),
        version: parts.version,
        headers: parts.headers,
        flag,
        length_ok,
        alpn,
    });
    match ExportTraceServiceRequest::decode(message) {
        Ok(export) => seen.spans.record(export),
        Err(_) => seen.spans.signal(),
    }
    let grpc = |res: http::response::Builder| {
        res.status(200)
            .header("content-type", "application/grpc+proto")
    };
    Ok(match answer {
        Answer::Ok => {
            let msg = ExportTraceServiceResponse::default().encode_to_vec();
            let mut frame = BytesMut::with_capacity(5 + msg.len());
            frame.put_u8(0);
            frame.put_u32(msg.len() as u32);
            frame.put_slice(&msg);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = Full::new(frame.freeze())
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            grpc(Response::builder()).body(body).unwrap()
        }
        Answer::Refuse(code) => grpc(Response::builder())
            .header("grpc-status", code.to_string())
            .header("grpc-message", "refused by the test")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        Answer::Stall => std::future::pending().await,
    })
}

fn grpc_config(
    upstream: &str,
    ca: std::path::PathBuf,
    endpoint: String,
) -> companies_gateway::Config {
    let mut c = test_config(upstream, Some(ca));
    c.tracing.otlp_endpoint = Some(endpoint);
    c.tracing.protocol = Some(companies_gateway::config::OtlpProtocol::Grpc);
    c.tracing.sample_ratio = Some(1.0);
    c.tracing.service_name = Some("gw-grpc".into());
    c.tracing
        .headers
        .insert("x-collector-key".into(), "collector-secret".into());
    c.validate().unwrap();
    c
}

fn patch(addr: SocketAddr, traceparent: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = update_contact(addr);
    if let Some(tp) = traceparent {
        b = b.header("traceparent", tp);
    }
    b.body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
        .unwrap()
}

/// The parent id in the `traceparent` the upstream received.
fn upstream_parent(mock: &MockUpstream) -> String {
    let tp = mock.received()[0].values("traceparent");
    assert_eq!(tp.len(), 1, "{tp:?}");
    tp[0].split('-').nth(2).unwrap().to_string()
}

/// Sends a traced request through the gateway and checks its SERVER and CLIENT spans at the
/// receiver: parentage client -> SERVER -> CLIENT -> upstream, and the resource.
async fn trace_crosses(gw: &companies_gateway::Running, mock: &MockUpstream, otlp: &Receiver) {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let tp = format!("00-{trace_id}-{client_span}-01");
    assert_eq!(send(patch(gw.public_addr, Some(&tp))).await.status, 200);
    let spans = otlp.trace(trace_id, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = spans.iter().find(|s| s.kind() == SpanKind::Server).unwrap();
    let client = spans.iter().find(|s| s.kind() == SpanKind::Client).unwrap();
    assert_eq!(server.parent_id(), client_span);
    assert_eq!(client.parent_id(), server.span_id());
    assert_eq!(upstream_parent(mock), client.span_id());
    assert_eq!(server.service, "gw-grpc");
    assert!(
        server.span.name.starts_with("PATCH /companies/v2/"),
        "{}",
        server.span.name
    );
}

#[tokio::test]
async fn spans_reach_a_grpc_collector_in_a_unary_call_with_their_parentage_and_metadata() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let otlp = Receiver::start(Answer::Ok, None).await;
    let endpoint = format!("http://{}", otlp.addr);
    let gw = start_gateway(grpc_config(&mock.url(""), pki.ca_file(), endpoint)).await;
    trace_crosses(&gw, &mock, &otlp).await;

    // The OTLP/gRPC unary call: HTTP/2 (prior knowledge on http://), the service's path, an
    // uncompressed length-prefixed message, and the configured header as metadata.
    let call = otlp.first_call().await;
    assert_eq!(call.version, http::Version::HTTP_2);
    assert_eq!(call.path, EXPORT_PATH);
    assert_eq!(call.headers["content-type"], "application/grpc");
    assert_eq!(call.headers["te"], "trailers");
    assert_eq!(call.headers["x-collector-key"], "collector-secret");
    assert_eq!((call.flag, call.length_ok, call.alpn), (0, true, None));
    assert_eq!(metric(&gw, "gateway_trace_export_errors_total").await, 0.0);
}

#[tokio::test]
async fn over_tls_the_collector_is_trusted_as_the_upstream_is() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    // Trusted: a certificate from upstream.ca_file's CA, offered with ALPN h2.
    let otlp = Receiver::start(Answer::Ok, Some(pki.leaf(&["localhost"]))).await;
    let endpoint = format!("https://localhost:{}", otlp.addr.port());
    let gw = start_gateway(grpc_config(&mock.url(""), pki.ca_file(), endpoint)).await;
    trace_crosses(&gw, &mock, &otlp).await;
    let call = otlp.first_call().await;
    assert_eq!(call.version, http::Version::HTTP_2);
    assert_eq!(call.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(call.headers["x-collector-key"], "collector-secret");

    // Untrusted: a certificate from another CA fails every export, which is counted; nothing
    // reaches the receiver and requests go through.
    let stranger = Pki::new();
    let otlp = Receiver::start(Answer::Ok, Some(stranger.leaf(&["localhost"]))).await;
    let endpoint = format!("https://localhost:{}", otlp.addr.port());
    let gw = start_gateway(grpc_config(&mock.url(""), pki.ca_file(), endpoint)).await;
    assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);
    errors_counted(&gw).await;
    assert!(otlp.calls().is_empty());
}

/// Waits (at most 30 s) until `gateway_trace_export_errors_total` is at least 1.
async fn errors_counted(gw: &companies_gateway::Running) {
    let errors = async {
        loop {
            if metric(gw, "gateway_trace_export_errors_total").await >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), errors)
        .await
        .expect("the failed export is counted");
}

#[tokio::test]
async fn a_refusing_collector_is_counted_and_requests_go_through() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    // UNAVAILABLE: retried by the exporter, as the http/protobuf exporter retries a 503.
    let otlp = Receiver::start(Answer::Refuse(14), None).await;
    let endpoint = format!("http://{}", otlp.addr);
    let gw = start_gateway(grpc_config(&mock.url(""), pki.ca_file(), endpoint)).await;
    for _ in 0..3 {
        assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);
    }
    errors_counted(&gw).await;
    assert!(otlp.calls().len() >= 2, "retried: {:?}", otlp.calls().len());
    assert_eq!(metric(&gw, "gateway_trace_spans_dropped_total").await, 0.0);
    assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);

    // PERMISSION_DENIED: not retried; still counted.
    let otlp = Receiver::start(Answer::Refuse(7), None).await;
    let endpoint = format!("http://{}", otlp.addr);
    let gw = start_gateway(grpc_config(&mock.url(""), pki.ca_file(), endpoint)).await;
    assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);
    errors_counted(&gw).await;
    assert_eq!(otlp.calls().len(), 1);
}

#[tokio::test]
async fn a_collector_holding_an_export_never_delays_a_request() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let otlp = Receiver::start(Answer::Stall, None).await;
    let endpoint = format!("http://{}", otlp.addr);
    let gw = start_gateway(grpc_config(&mock.url(""), pki.ca_file(), endpoint)).await;
    assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);
    // The export is now held open by the collector; requests keep being answered meanwhile.
    otlp.first_call().await;
    for _ in 0..5 {
        assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);
    }
    assert_eq!(otlp.calls().len(), 1, "the first export is still held");
}

#[tokio::test]
async fn a_dead_collector_leaves_requests_alone_and_counts_export_errors() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let dead = format!("http://127.0.0.1:{}", closed_port().await);
    let gw = start_gateway(grpc_config(&mock.url(""), pki.ca_file(), dead)).await;
    for _ in 0..3 {
        assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);
    }
    errors_counted(&gw).await;
    assert_eq!(metric(&gw, "gateway_trace_spans_dropped_total").await, 0.0);
    assert_eq!(send(patch(gw.public_addr, None)).await.status, 200);
}

/// The binary, configured by the standard variables alone: `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`,
/// the endpoint, and `OTEL_EXPORTER_OTLP_HEADERS` sent as metadata and never logged.
#[tokio::test]
async fn the_otel_variables_select_grpc_and_their_headers_are_sent_never_logged() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let otlp = Receiver::start(Answer::Ok, None).await;
    let config = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\n\
         url = \"{}\"\nca_file = \"{}\"\n[log]\nlevel = \"debug\"\n",
        mock.url(""),
        pki.ca_file().display()
    );
    let path = pki.write("gateway.toml", config.as_bytes());
    let gateway = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_companies-gateway"));
        c.arg("--config")
            .arg(&path)
            .env_remove("GATEWAY_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", otlp.addr),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_EXPORTER_OTLP_HEADERS", "x-env-key=env-secret")
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env("OTEL_SERVICE_NAME", "gw-from-env");
        c
    };

    // --check-config shows what the variables chose.
    let out = gateway().arg("--check-config").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let line = format!("# tracing: OTLP grpc to http://{}\n", otlp.addr);
    assert!(printed.contains(&line), "{printed}");

    // Started, it logs its addresses; a traced request's spans reach the receiver.
    let mut child = gateway()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let (pipe, logs) = (child.stderr.take().unwrap(), logs.clone());
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("companies-gateway listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let listening = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the gateway starts")
        .expect("the gateway starts");
    let public: SocketAddr = listening
        .split("public_addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no public_addr in {listening}"));

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{trace_id}-b7ad6b7169203331-01");
    assert_eq!(send(patch(public, Some(&tp))).await.status, 200);
    let spans = otlp.trace(trace_id, 2).await;
    assert!(
        spans.iter().all(|s| s.service == "gw-from-env"),
        "{spans:#?}"
    );
    let call = otlp.first_call().await;
    assert_eq!(call.headers["x-env-key"], "env-secret");
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.lock().unwrap().clone();
    assert!(logs.contains("companies-gateway starting"), "{logs}");
    assert!(!logs.contains("env-secret"), "{logs}");
}
