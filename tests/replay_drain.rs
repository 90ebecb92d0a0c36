//! Issue 19's leftovers (gateway.md §9), end to end against real TLS servers on loopback
//! addresses whose certificate names `api.test` and the addresses:
//! - bodies kept for replay: a streamed body of at most 64 KiB sent with `Content-Length` is
//!   replayed byte for byte after a reset before the response head or a 503; a chunked or larger
//!   body is not, unless none of it was sent; the validated route's buffered body is replayed;
//! - addresses joining and draining while the gateway runs: through the resolver behind
//!   `Options::resolver` and the `dns_refresh` that feeds it, and through a reload of
//!   `upstream.resolve`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::Dur;
use companies_gateway::{Options, Resolve};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

const HOST: &str = "api.test";
const NAMES: &[&str] = &["api.test", "127.0.0.1", "127.0.0.2", "127.0.0.3"];
/// A route the built-in document does not have: forwarded unvalidated, its body streamed.
const STREAMED: &str = "/companies/v2/rs/1/attachments/7";

/// A request as the mock read it: its head and its whole body.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A TLS HTTP/1.1 server on one loopback address. It reads each request whole, records it, and
/// answers `"<ip> <n>"` (n counting the requests it received), unless told to misbehave.
/// Requests to `/hold` wait for a permit of `gate` before answering.
struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The next this many requests are read whole, then the connection closes without a byte
    /// of response.
    reset_next: Arc<AtomicUsize>,
    /// The next this many requests are answered 503.
    unavailable_next: Arc<AtomicUsize>,
    /// The next this many connections are closed before the TLS handshake.
    refuse_next: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    /// `/hold` requests waiting at the gate now.
    held: watch::Receiver<usize>,
    /// Connections open now (TLS accepted, not yet closed).
    open: watch::Receiver<usize>,
    /// Connections accepted (TLS done) since the start.
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    async fn start(ip: [u8; 4], pki: &Pki) -> Mock {
        let leaf = pki.leaf(NAMES);
        let acceptor = tls_acceptor(leaf, &[]);
        let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let reset_next: Arc<AtomicUsize> = Arc::default();
        let unavailable_next: Arc<AtomicUsize> = Arc::default();
        let refuse_next: Arc<AtomicUsize> = Arc::default();
        let gate = Arc::new(Semaphore::new(0));
        let (held_tx, held) = watch::channel(0usize);
        let (open_tx, open) = watch::channel(0usize);
        let accepted: Arc<AtomicUsize> = Arc::default();
        let held_tx = Arc::new(held_tx);
        let open_tx = Arc::new(open_tx);
        let name = addr.ip().to_string();
        let task = {
            let (seen, reset_next, unavailable_next, refuse_next, gate, accepted) = (
                seen.clone(),
                reset_next.clone(),
                unavailable_next.clone(),
                refuse_next.clone(),
                gate.clone(),
                accepted.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    if take_one(&refuse_next) {
                        drop(tcp);
                        continue;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    open_tx.send_modify(|n| *n += 1);
                    let (seen, reset_next, unavailable_next, gate, held_tx, open_tx, name) = (
                        seen.clone(),
                        reset_next.clone(),
                        unavailable_next.clone(),
                        gate.clone(),
                        held_tx.clone(),
                        open_tx.clone(),
                        name.clone(),
                    );
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (seen, reset_next, unavailable_next, gate, held_tx, name) = (
                                seen.clone(),
                                reset_next.clone(),
                                unavailable_next.clone(),
                                gate.clone(),
                                held_tx.clone(),
                                name.clone(),
                            );
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map_err(std::io::Error::other)?
                                    .to_bytes();
                                let path = parts.uri.path().to_string();
                                let n = {
                                    let mut seen = seen.lock().unwrap();
                                    seen.push(Seen {
                                        method: parts.method.to_string(),
                                        headers: parts.headers,
                                        body,
                                    });
                                    seen.len()
                                };
                                if take_one(&reset_next) {
                                    // hyper closes the connection without answering.
                                    return Err(std::io::Error::other("reset"));
                                }
                                let mut res =
                                    Response::new(Full::new(Bytes::from(format!("{name} {n}"))));
                                if take_one(&unavailable_next) {
                                    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                }
                                if path == "/hold" {
                                    held_tx.send_modify(|h| *h += 1);
                                    gate.acquire().await.unwrap().forget();
                                    held_tx.send_modify(|h| *h -= 1);
                                }
                                Ok::<_, std::io::Error>(res)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                        open_tx.send_modify(|n| *n -= 1);
                    });
                }
            })
        };
        Mock {
            addr,
            seen,
            reset_next,
            unavailable_next,
            refuse_next,
            gate,
            held,
            open,
            accepted,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Waits (at most 10 s) until `rx`'s value satisfies `ok`.
async fn until(rx: &watch::Receiver<usize>, what: &str, ok: impl FnMut(&usize) -> bool) {
    let mut rx = rx.clone();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(ok))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
}

fn config(pki: &Pki, mocks: &[&Mock]) -> companies_gateway::Config {
    let mut c = test_config(&format!("https://{HOST}"), Some(pki.ca_file()));
    c.upstream.resolve = mocks.iter().map(|m| m.addr).collect();
    c
}

fn put(gw: &companies_gateway::Running, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::put(format!("http://{}{path}", gw.public_addr))
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .unwrap()
}

/// Bytes no JSON or text filter would leave alone: every byte value, over and over.
fn odd_bytes(len: usize) -> Bytes {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

/// Every attempt carried the client's bytes under the client's framing.
fn assert_sent_as_is(seen: &[Seen], sent: &Bytes) {
    for s in seen {
        assert_eq!(s.method, "PUT");
        assert!(s.body == *sent, "a body of {} bytes arrived", s.body.len());
        assert_eq!(s.headers["content-length"], sent.len().to_string().as_str());
        assert!(s.headers.get("transfer-encoding").is_none());
    }
}

async fn retries(gw: &companies_gateway::Running, reason: &str) -> f64 {
    metric(
        gw,
        &format!("gateway_upstream_retries_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// A chunked request on a connection the gateway closes after answering; the raw response.
async fn chunked_put(gw: &companies_gateway::Running, chunks: &[&[u8]]) -> String {
    let mut wire = format!(
        "PUT {STREAMED} HTTP/1.1\r\nhost: gw\r\ncontent-type: text/plain\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    raw(gw.public_addr, &wire, Duration::from_secs(10)).await
}

#[tokio::test]
async fn a_small_streamed_body_is_replayed_byte_for_byte_after_a_reset_or_a_503() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki).await;
    let gw = start_gateway(config(&pki, &[&a])).await;

    let sent = odd_bytes(1000);
    a.reset_next.store(1, Ordering::SeqCst);
    let got = send(put(&gw, STREAMED, sent.clone())).await;
    assert_eq!(got.status, 200);
    // The second attempt's answer.
    assert_eq!(&got.body[..], b"127.0.0.1 2");
    let seen = a.seen();
    assert_eq!(seen.len(), 2);
    assert_sent_as_is(&seen, &sent);
    assert_eq!(retries(&gw, "idempotent").await, 1.0);

    // 64 KiB exactly is still kept; a 503 is retried like a reset.
    let sent = odd_bytes(65_536);
    a.unavailable_next.store(1, Ordering::SeqCst);
    let got = send(put(&gw, STREAMED, sent.clone())).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"127.0.0.1 4");
    let seen = a.seen();
    assert_eq!(seen.len(), 4);
    assert_sent_as_is(&seen[2..], &sent);
    assert_eq!(retries(&gw, "idempotent").await, 2.0);
}

#[tokio::test]
async fn a_chunked_or_larger_body_is_not_replayed_once_sent() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki).await;
    let gw = start_gateway(config(&pki, &[&a])).await;

    a.reset_next.store(1, Ordering::SeqCst);
    let answer = chunked_put(&gw, &[b"hello", b" world"]).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("urn:companies-gateway:problem:bad-gateway"));
    let seen = a.seen();
    assert_eq!(seen.len(), 1, "the chunked PUT reached the upstream once");
    assert_eq!(&seen[0].body[..], b"hello world");
    assert!(seen[0].headers.get("content-length").is_none());

    a.reset_next.store(1, Ordering::SeqCst);
    let sent = odd_bytes(65_537);
    let got = send(put(&gw, STREAMED, sent.clone())).await;
    assert_eq!(got.status, 502);
    let seen = a.seen();
    assert_eq!(seen.len(), 2, "the larger PUT reached the upstream once");
    assert_sent_as_is(&seen[1..], &sent);

    assert_eq!(retries(&gw, "idempotent").await, 0.0);
    assert_eq!(
        metric(&gw, "gateway_upstream_errors_total{kind=\"reset\"}").await,
        2.0
    );
}

#[tokio::test]
async fn a_chunked_body_none_of_which_was_sent_is_retried() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki).await;
    let gw = start_gateway(config(&pki, &[&a])).await;
    // The first connection fails before TLS: nothing of the request was written.
    a.refuse_next.store(1, Ordering::SeqCst);
    let answer = chunked_put(&gw, &[b"hello", b" world"]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = a.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], b"hello world");
    assert_eq!(retries(&gw, "not_sent").await, 1.0);
}

#[tokio::test]
async fn a_small_body_still_arriving_past_body_read_timeout_is_a_408() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki).await;
    let mut c = config(&pki, &[&a]);
    c.limits.body_read_timeout = Dur(Duration::from_millis(300));
    let gw = start_gateway(c).await;
    // Ten bytes declared, three sent, then nothing: the 408 comes from the gateway's deadline,
    // and nothing reached the upstream.
    let head = format!("PUT {STREAMED} HTTP/1.1\r\nhost: gw\r\ncontent-length: 10\r\n\r\nabc");
    let answer = raw(gw.public_addr, head.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(a.count(), 0);
}

const DOCUMENT: &str = r##"
openapi: 3.1.0
info: {title: replay test, version: "1"}
paths:
  /notes/{noteId}:
    put:
      operationId: putNote
      security: []
      parameters:
        - {name: noteId, in: path, required: true, schema: {type: integer}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [text]
              properties:
                text: {type: string}
      responses: {"200": {description: ok}}
"##;

#[tokio::test]
async fn a_validated_body_is_replayed_for_an_idempotent_method() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki).await;
    let mut c = config(&pki, &[&a]);
    c.validation.openapi = Some(pki.write("openapi.yaml", DOCUMENT.as_bytes()));
    let gw = start_gateway(c).await;
    let sent = Bytes::from_static(b"{ \"text\" :\t\"caf\xc3\xa9\" }\n");
    a.reset_next.store(1, Ordering::SeqCst);
    let req = Request::put(format!("http://{}/notes/5", gw.public_addr))
        .header("content-type", "application/json")
        .body(Full::new(sent.clone()))
        .unwrap();
    let got = send(req).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"127.0.0.1 2");
    let seen = a.seen();
    assert_eq!(seen.len(), 2);
    assert_sent_as_is(&seen, &sent);
    assert_eq!(retries(&gw, "idempotent").await, 1.0);
    assert_eq!(
        metric(
            &gw,
            "gateway_requests_total{method=\"PUT\",outcome=\"forwarded\",route=\"put_note\",status=\"200\"}"
        )
        .await,
        1.0
    );
}

/// The upstream's host name resolves to whatever the test says now.
struct Table(Mutex<Vec<SocketAddr>>);

impl Table {
    fn set(&self, addrs: &[&Mock]) {
        *self.0.lock().unwrap() = addrs.iter().map(|m| m.addr).collect();
    }
}

impl Resolve for Table {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    > {
        let addrs = self.0.lock().unwrap().clone();
        let host = host.to_string();
        Box::pin(async move {
            // The URL's host, never anything else.
            assert_eq!(host, HOST);
            Ok(addrs)
        })
    }
}

async fn get_body(gw: &companies_gateway::Running, path: &str) -> (u16, Bytes) {
    let got = send(get(gw.public_addr, path)).await;
    (got.status.as_u16(), got.body)
}

#[tokio::test]
async fn an_address_that_joins_gets_traffic_and_one_that_vanishes_drains() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki).await;
    let b = Mock::start([127, 0, 0, 2], &pki).await;
    let table = Arc::new(Table(Mutex::new(Vec::new())));
    table.set(&[&a]);
    let mut c = test_config(&format!("https://{HOST}"), Some(pki.ca_file()));
    c.upstream.dns_refresh = Dur(Duration::from_millis(200));
    c.upstream.request_timeout = Dur(Duration::from_secs(20));
    let options = Options {
        resolver: table.clone(),
        ..Options::default()
    };
    let gw = companies_gateway::start_with(c, options).await.unwrap();
    let healthy = "gateway_upstream_endpoints{state=\"healthy\"}";

    for _ in 0..10 {
        assert_eq!(get_body(&gw, "/x").await.0, 200);
    }
    assert_eq!((a.count(), b.count()), (10, 0));
    assert_eq!(metric(&gw, healthy).await, 1.0);

    // b joins: after the next refresh, requests reach it.
    table.set(&[&a, &b]);
    let mut sent = 0;
    while b.count() == 0 {
        assert!(sent < 2_000, "b never got a request");
        assert_eq!(get_body(&gw, "/x").await.0, 200);
        sent += 1;
    }
    assert_eq!(metric(&gw, healthy).await, 2.0);

    // Two requests held at b, each on its own connection (requests held at a do not matter).
    // P2C sends each new one to the address with fewer in flight.
    let mut clients = Vec::new();
    while *b.held.borrow() < 2 {
        assert!(clients.len() < 20, "b never held two requests");
        let held_before = *a.held.borrow() + *b.held.borrow();
        let addr = gw.public_addr;
        clients.push(tokio::spawn(async move { send(get(addr, "/hold")).await }));
        let mut a_held = a.held.clone();
        let mut b_held = b.held.clone();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if *a_held.borrow() + *b_held.borrow() > held_before {
                    return;
                }
                tokio::select! {
                    _ = a_held.changed() => {}
                    _ = b_held.changed() => {}
                }
            }
        })
        .await
        .expect("the request was held");
    }
    until(&b.open, "b's two connections", |n| *n == 2).await;
    // One of b's answers goes out: its connection goes back to the pool, idle.
    b.gate.add_permits(1);
    until(&b.held, "one of b's requests answered", |n| *n == 1).await;
    let b_requests = b.count();

    // b vanishes: its idle connection closes at the next refresh; the busy one stays open.
    table.set(&[&a]);
    until(&b.open, "b's idle connection closed", |n| *n == 1).await;
    assert_eq!(metric(&gw, healthy).await, 1.0);
    for _ in 0..20 {
        let (status, body) = get_body(&gw, "/x").await;
        assert_eq!(status, 200);
        assert!(body.starts_with(b"127.0.0.1 "), "{body:?}");
    }
    assert_eq!(b.count(), b_requests, "no new request reached b");

    // The request in flight at b finishes, and then its connection closes too.
    b.gate.add_permits(1);
    a.gate.add_permits(100);
    let mut from_b = 0;
    for client in clients {
        let got = client.await.unwrap();
        assert_eq!(got.status, 200);
        from_b += usize::from(got.body.starts_with(b"127.0.0.2 "));
    }
    assert_eq!(from_b, 2);
    until(&b.open, "b's last connection closed", |n| *n == 0).await;
}

#[tokio::test]
async fn a_reloaded_upstream_resolve_joins_and_drains_in_the_running_pool() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki).await;
    let b = Mock::start([127, 0, 0, 2], &pki).await;
    let gw = start_gateway(config(&pki, &[&a])).await;
    let healthy = "gateway_upstream_endpoints{state=\"healthy\"}";
    for _ in 0..5 {
        assert_eq!(get_body(&gw, "/x").await.0, 200);
    }
    assert_eq!(a.accepted.load(Ordering::SeqCst), 1);

    // b joins at once; the pool is the same, and so is its connection to a.
    let reloaded = gw.reload_with(config(&pki, &[&a, &b])).unwrap();
    assert!(!reloaded.upstream_trust_changed);
    assert_eq!(metric(&gw, healthy).await, 2.0);
    let mut sent = 0;
    while b.count() == 0 {
        assert!(sent < 200, "b never got a request");
        assert_eq!(get_body(&gw, "/x").await.0, 200);
        sent += 1;
    }
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        1,
        "a's connection was kept"
    );

    // a vanishes: its idle connection closes, and nothing reaches it any more.
    let a_requests = a.count();
    gw.reload_with(config(&pki, &[&b])).unwrap();
    until(&a.open, "a's idle connection closed", |n| *n == 0).await;
    assert_eq!(metric(&gw, healthy).await, 1.0);
    for _ in 0..10 {
        let (status, body) = get_body(&gw, "/x").await;
        assert_eq!(status, 200);
        assert!(body.starts_with(b"127.0.0.2 "), "{body:?}");
    }
    assert_eq!(a.count(), a_requests);
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        1,
        "b's connection was kept"
    );
}
