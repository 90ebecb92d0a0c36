//! Test support: a private CA minted at test time, a real HTTPS mock upstream on 127.0.0.1:0 that
//! records every request it receives, a gateway started on 127.0.0.1:0, and small HTTP clients.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use companies_gateway::{Config, Running};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const EXAMPLE_REQUEST: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/shared/contract/examples/update-contact.request.json"
));
pub const EXAMPLE_RESPONSE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/shared/contract/examples/update-contact.response.json"
));

pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS acceptor on ring serving `leaf`, offering `alpn` (none: no ALPN).
pub fn tls_acceptor(leaf: Leaf, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    init_crypto();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .expect("server cert");
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

/// A private CA, minted for one test.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    dir: tempdir::Dir,
}

pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "companies-gateway test CA");
        let cert = params.self_signed(&key).expect("ca cert");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            dir: tempdir::Dir::new(),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    /// A leaf whose validity ended yesterday.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    pub fn leaf_with(&self, names: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA to a file (for `ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.write("ca.pem", self.ca_pem.as_bytes())
    }

    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        self.dir.write(name, contents)
    }
}

/// A scratch directory removed on drop.
pub mod otlp;

pub mod tempdir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "companies-gateway-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }

        pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, contents).expect("write temp file");
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A request as the mock upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent on the wire.
    pub target: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub sni: Option<String>,
    pub connection: usize,
}

impl Recorded {
    /// Every value of `name`, in order, as text.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &'static [u8]) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(body),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: vec![],
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A real HTTPS server on 127.0.0.1:0 with a leaf from the test's CA.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<AtomicUsize>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Answers every request with the contract's example response.
    pub async fn start(leaf: Leaf) -> MockUpstream {
        Self::start_with(leaf, |_| Reply::ok(EXAMPLE_RESPONSE)).await
    }

    pub async fn start_with(
        leaf: Leaf,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        let acceptor = tls_acceptor(leaf, &[b"h2", b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let replies: Arc<Mutex<VecDeque<Reply>>> = Arc::new(Mutex::new(VecDeque::new()));
        let handler: Handler = Arc::new(handler);
        let task = {
            let requests = requests.clone();
            let connections = connections.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let n = connections.fetch_add(1, Ordering::SeqCst) + 1;
                    let acceptor = acceptor.clone();
                    let requests = requests.clone();
                    let replies = replies.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().map(str::to_string);
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let requests = requests.clone();
                            let replies = replies.clone();
                            let handler = handler.clone();
                            let sni = sni.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                // An incomplete body is not a request the upstream would act on.
                                let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                                    return Ok(Response::new(Full::new(Bytes::new())));
                                };
                                let rec = Recorded {
                                    method: parts.method.to_string(),
                                    target: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.as_str().to_string())
                                        .unwrap_or_default(),
                                    version: parts.version,
                                    headers: parts.headers,
                                    body,
                                    sni,
                                    connection: n,
                                };
                                let reply = replies
                                    .lock()
                                    .expect("replies")
                                    .pop_front()
                                    .unwrap_or_else(|| handler(&rec));
                                requests.lock().expect("requests").push(rec);
                                if !reply.delay.is_zero() {
                                    tokio::time::sleep(reply.delay).await;
                                }
                                let mut res = Response::new(Full::new(reply.body));
                                *res.status_mut() = reply.status;
                                for (k, v) in reply.headers {
                                    res.headers_mut().append(
                                        http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                                        http::HeaderValue::from_str(&v).expect("value"),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(res)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            })
        };
        MockUpstream {
            addr,
            requests,
            connections,
            replies,
            task,
        }
    }

    /// `https://localhost:PORT` + `base`.
    pub fn url(&self, base: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), base)
    }

    /// Queues a reply for the next request, ahead of the handler.
    pub fn push_reply(&self, reply: Reply) {
        self.replies.lock().expect("replies").push_back(reply);
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("requests").len()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config for tests: both listeners on 127.0.0.1:0, the given upstream and CA, short timeouts.
pub fn test_config(upstream_url: &str, ca_file: Option<PathBuf>) -> Config {
    let mut c = Config::default();
    c.listener.addr = "127.0.0.1:0".parse().expect("addr");
    c.admin.addr = "127.0.0.1:0".parse().expect("addr");
    c.upstream.url = upstream_url.to_string();
    c.upstream.ca_file = ca_file;
    c.upstream.connect_timeout = companies_gateway::config::Dur(Duration::from_millis(500));
    c.upstream.request_timeout = companies_gateway::config::Dur(Duration::from_secs(2));
    c.shutdown.drain_timeout = companies_gateway::config::Dur(Duration::from_secs(2));
    c.validate().expect("test config is valid");
    c
}

pub async fn start_gateway(config: Config) -> Running {
    companies_gateway::start(config)
        .await
        .expect("gateway starts")
}

/// A response, fully read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A plain-HTTP client to the gateway (HTTP/1.1, pooled).
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(req: Request<Full<Bytes>>) -> Got {
    let res = client().request(req).await.expect("request to gateway");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET http://{addr}{path}` with an empty body.
pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// A valid update-contact request to the gateway at `addr`.
pub fn update_contact(addr: SocketAddr) -> http::request::Builder {
    Request::builder()
        .method("PATCH")
        .uri(format!("http://{addr}/companies/v2/rs/1/contacts/2"))
        .header("authorization", "Bearer test-token")
        .header("x-session-token", "opaque-session")
        .header("content-type", "application/json")
}

/// Sends raw bytes and reads until the server closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A port on which nothing listens.
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// Reads one metric sample's value from the admin listener, by exact series text (name and
/// labels as exposed), or 0 when absent.
pub async fn metric(running: &Running, series: &str) -> f64 {
    let text = scrape(running).await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

pub async fn scrape(running: &Running) -> String {
    let got = send(
        Request::get(format!("http://{}/metrics", running.admin_addr))
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    String::from_utf8(got.body.to_vec()).expect("utf-8 metrics")
}

/// What the mock introspection endpoint answers.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Verdict {
    pub fn status(status: u16) -> Verdict {
        Verdict {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

/// A plain-HTTP introspection server on 127.0.0.1:0 (http is allowed to loopback) that counts its
/// calls and records the tokens it was sent.
pub struct MockIntrospection {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    pub answer: Arc<Mutex<Verdict>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockIntrospection {
    pub async fn start(answer: Verdict) -> MockIntrospection {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let task = {
            let (calls, seen, answer) = (calls.clone(), seen.clone(), answer.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (calls, seen, answer) = (calls.clone(), seen.clone(), answer.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            seen.lock().expect("seen").push(req.headers().clone());
                            let v = answer.lock().expect("answer").clone();
                            async move {
                                tokio::time::sleep(v.delay).await;
                                let mut res = Response::new(Full::new(Bytes::from(v.body)));
                                *res.status_mut() = StatusCode::from_u16(v.status).expect("status");
                                for (k, val) in v.headers {
                                    res.headers_mut().append(
                                        http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                                        http::HeaderValue::from_str(&val).expect("value"),
                                    );
                                }
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
        MockIntrospection {
            addr,
            calls,
            seen,
            answer,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn set(&self, v: Verdict) {
        *self.answer.lock().expect("answer") = v;
    }
}

impl Drop for MockIntrospection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HS256 session token with the given claims.
pub fn jwt(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("jwt")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// How the fault server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers properly: `200` with a small body.
    None,
    /// Reads the request, then closes before any response byte.
    ResetBeforeHead,
    /// Answers with bytes that are not HTTP.
    Malformed,
    /// Sends a head promising 100 bytes, sends 10, then closes.
    ResetAfterHead,
    /// Completes TLS, then never answers.
    Silent,
    /// Sends a head promising 8 bytes, then one byte every 150 ms.
    Trickle,
}

/// A TLS server on 127.0.0.1:0 whose behaviour can be switched between requests.
pub struct FaultServer {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultServer {
    pub async fn start(leaf: Leaf) -> FaultServer {
        let acceptor = tls_acceptor(leaf, &[]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fault = Arc::new(Mutex::new(Fault::None));
        let task = {
            let fault = fault.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let fault = fault.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        loop {
                            // Read one request head (and a small body, if any).
                            let mut buf = Vec::new();
                            let mut chunk = [0u8; 4096];
                            loop {
                                match tls.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                    let head =
                                        String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                                    let len = head
                                        .lines()
                                        .find_map(|l| l.strip_prefix("content-length:"))
                                        .and_then(|v| v.trim().parse::<usize>().ok())
                                        .unwrap_or(0);
                                    if buf.len() >= end + 4 + len {
                                        break;
                                    }
                                }
                            }
                            let mode = *fault.lock().expect("fault");
                            match mode {
                                Fault::None => {
                                    let _ = tls
                                        .write_all(
                                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                                        )
                                        .await;
                                }
                                Fault::ResetBeforeHead => return,
                                Fault::Malformed => {
                                    let _ = tls.write_all(b"SMTP ready\r\n\r\ngarbage").await;
                                    let _ = tls.shutdown().await;
                                    return;
                                }
                                Fault::ResetAfterHead => {
                                    let _ = tls
                                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                                        .await;
                                    let _ = tls.flush().await;
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    return;
                                }
                                Fault::Silent => {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                    return;
                                }
                                Fault::Trickle => {
                                    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n";
                                    if tls.write_all(head).await.is_err() {
                                        return;
                                    }
                                    for b in b"01234567" {
                                        let _ = tls.flush().await;
                                        tokio::time::sleep(Duration::from_millis(150)).await;
                                        if tls.write_all(&[*b]).await.is_err() {
                                            return;
                                        }
                                    }
                                    let _ = tls.flush().await;
                                }
                            }
                        }
                    });
                }
            })
        };
        FaultServer { addr, fault, task }
    }

    pub fn set(&self, f: Fault) {
        *self.fault.lock().expect("fault") = f;
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server that accepts and then does `what`: never answer, or write garbage and close.
pub async fn raw_tcp_server(
    garbage: Option<&'static [u8]>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            match garbage {
                Some(bytes) => {
                    let _ = tcp.write_all(bytes).await;
                    drop(tcp);
                }
                None => held.push(tcp),
            }
        }
    });
    (addr, task)
}

/// An HTTPS client to a TLS listener that trusts only `ca_pem`, with ALPN for `h2` or http/1.1.
pub fn tls_client(
    ca_pem: &str,
    h2: bool,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    init_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    client.http2_only(h2);
    client.build(connector)
}
