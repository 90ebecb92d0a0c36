//! Issue 19 (gateway.md §9): several upstream addresses (127.0.0.1, 127.0.0.2, …, each a real TLS
//! server whose certificate names `api.test` and the loopback addresses), outlier ejection,
//! retries exactly where §9 allows, the retry budget, the connection cap and mutual TLS.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::Dur;
use http_body_util::Full;
use rustls::pki_types::pem::PemObject;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The URL's host: never resolved, the addresses come from `upstream.resolve`.
const HOST: &str = "api.test";
const NAMES: &[&str] = &["api.test", "127.0.0.1", "127.0.0.2", "127.0.0.3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    /// Reads the request, then closes before any response byte.
    Reset,
    /// Answers with this status and an empty body.
    Status(u16),
    /// Answers 200 after this long.
    Slow(Duration),
}

/// A TLS HTTP/1.1 server on one loopback address that counts requests (attempts) and open
/// connections, and can be switched between modes or killed (listener and connections closed).
struct Mock {
    addr: SocketAddr,
    attempts: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
    sni: Arc<Mutex<Vec<String>>>,
    mode: Arc<Mutex<Mode>>,
    /// The next this many requests get `Reset`, whatever the mode.
    reset_next: Arc<AtomicUsize>,
    kill: watch::Sender<bool>,
}

impl Mock {
    async fn start(ip: [u8; 4], pki: &Pki, client_ca: Option<&str>) -> Mock {
        init_crypto();
        let leaf = pki.leaf(NAMES);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let tls = builder.with_single_cert(leaf.chain, leaf.key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        let (kill, _) = watch::channel(false);
        let mock = Mock {
            addr: listener.local_addr().unwrap(),
            attempts: Arc::default(),
            connections: Arc::default(),
            max_open: Arc::default(),
            sni: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            reset_next: Arc::default(),
            kill,
        };
        let open = Arc::new(AtomicUsize::new(0));
        let (attempts, connections, max_open, sni, mode, reset_next) = (
            mock.attempts.clone(),
            mock.connections.clone(),
            mock.max_open.clone(),
            mock.sni.clone(),
            mock.mode.clone(),
            mock.reset_next.clone(),
        );
        let mut killed = mock.kill.subscribe();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    // Killed: the listener closes (connects are refused from now on).
                    _ = killed.changed() => return,
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                max_open.fetch_max(now, Ordering::SeqCst);
                let (acceptor, attempts, sni, mode, reset_next, open) = (
                    acceptor.clone(),
                    attempts.clone(),
                    sni.clone(),
                    mode.clone(),
                    reset_next.clone(),
                    open.clone(),
                );
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(acceptor, tcp, attempts, sni, mode, reset_next) => {}
                        _ = killed.changed() => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        mock
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    fn kill(&self) {
        self.kill.send_replace(true);
    }
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    attempts: Arc<AtomicUsize>,
    sni: Arc<Mutex<Vec<String>>>,
    mode: Arc<Mutex<Mode>>,
    reset_next: Arc<AtomicUsize>,
) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    if let Some(name) = tls.get_ref().1.server_name() {
        sni.lock().unwrap().push(name.to_string());
    }
    loop {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
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
        attempts.fetch_add(1, Ordering::SeqCst);
        let reset = reset_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let mode = if reset {
            Mode::Reset
        } else {
            *mode.lock().unwrap()
        };
        let answer = match mode {
            Mode::Reset => return,
            Mode::Ok => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string(),
            Mode::Status(s) => format!("HTTP/1.1 {s} Unavailable\r\ncontent-length: 0\r\n\r\n"),
            Mode::Slow(d) => {
                tokio::time::sleep(d).await;
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
            }
        };
        if tls.write_all(answer.as_bytes()).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}

fn config(pki: &Pki, mocks: &[&Mock]) -> companies_gateway::Config {
    let mut c = test_config(&format!("https://{HOST}"), Some(pki.ca_file()));
    c.upstream.resolve = mocks.iter().map(|m| m.addr).collect();
    c
}

async fn get_status(gw: &companies_gateway::Running, path: &str) -> u16 {
    send(get(gw.public_addr, path)).await.status.as_u16()
}

#[tokio::test]
async fn requests_spread_over_every_address_and_tls_checks_the_url_host() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, None).await;
    let b = Mock::start([127, 0, 0, 2], &pki, None).await;
    let gw = start_gateway(config(&pki, &[&a, &b])).await;
    for _ in 0..40 {
        assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 200);
    }
    let (na, nb) = (a.attempts(), b.attempts());
    assert_eq!(na + nb, 40);
    assert!(na >= 5 && nb >= 5, "uneven spread: {na} and {nb}");
    // Whatever the address, the handshake named (and verified) the URL's host.
    for m in [&a, &b] {
        let sni = m.sni.lock().unwrap().clone();
        assert!(!sni.is_empty() && sni.iter().all(|s| s == HOST), "{sni:?}");
    }
    assert_eq!(
        metric(&gw, "gateway_upstream_endpoints{state=\"healthy\"}").await,
        2.0
    );
}

#[tokio::test]
async fn a_killed_address_is_ejected_and_no_client_sees_an_error() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, None).await;
    let b = Mock::start([127, 0, 0, 2], &pki, None).await;
    let mut c = config(&pki, &[&a, &b]);
    c.upstream.outlier_failures = 3;
    let gw = start_gateway(c).await;
    for _ in 0..10 {
        assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 200);
    }
    b.kill();
    let before = a.attempts();
    for i in 0..40 {
        assert_eq!(
            get_status(&gw, "/companies/v2/rs/1").await,
            200,
            "request {i}"
        );
    }
    // Every request got its answer from the address left.
    assert_eq!(a.attempts() - before, 40);
    assert_eq!(metric(&gw, "gateway_upstream_ejections_total").await, 1.0);
    assert_eq!(
        metric(&gw, "gateway_upstream_endpoints{state=\"ejected\"}").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "gateway_upstream_endpoints{state=\"healthy\"}").await,
        1.0
    );
    // At most outlier_failures refused connects to the dead address before its ejection (and a
    // pooled connection it reset), each retried elsewhere.
    let not_sent = metric(&gw, "gateway_upstream_retries_total{reason=\"not_sent\"}").await;
    let reset = metric(&gw, "gateway_upstream_retries_total{reason=\"idempotent\"}").await;
    assert!(
        (1.0..=3.0).contains(&not_sent),
        "{not_sent} not_sent retries"
    );
    assert!(reset <= 1.0, "{reset} idempotent retries");
}

#[tokio::test]
async fn a_reset_before_the_head_retries_a_get_but_never_a_patch() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, None).await;
    let gw = start_gateway(config(&pki, &[&a])).await;

    a.reset_next.store(1, Ordering::SeqCst);
    assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 200);
    assert_eq!(a.attempts(), 2, "the GET was sent twice");
    assert_eq!(
        metric(&gw, "gateway_upstream_retries_total{reason=\"idempotent\"}").await,
        1.0
    );

    a.reset_next.store(1, Ordering::SeqCst);
    let got = send(
        update_contact(gw.public_addr)
            .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 502);
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:bad-gateway"
    );
    assert_eq!(a.attempts(), 3, "the PATCH reached the upstream once");
    assert_eq!(
        metric(&gw, "gateway_upstream_retries_total{reason=\"idempotent\"}").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "gateway_upstream_errors_total{kind=\"reset\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_503_is_retried_for_a_get_on_another_address() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, None).await;
    let b = Mock::start([127, 0, 0, 2], &pki, None).await;
    a.set(Mode::Status(503));
    let gw = start_gateway(config(&pki, &[&a, &b])).await;
    for _ in 0..10 {
        assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 200);
    }
    // Every answer came from b; each 503 from a was followed by one retry on b.
    assert_eq!(b.attempts(), 10);
    let retried = metric(&gw, "gateway_upstream_retries_total{reason=\"idempotent\"}").await;
    assert_eq!(retried as usize, a.attempts());
}

#[tokio::test]
async fn the_budget_caps_retries_under_a_full_outage() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, None).await;
    let b = Mock::start([127, 0, 0, 2], &pki, None).await;
    a.set(Mode::Status(503));
    b.set(Mode::Status(503));
    let mut c = config(&pki, &[&a, &b]);
    c.upstream.retries = 2;
    c.upstream.retry_budget = 0.2;
    // No ejection in the way: every attempt reaches a mock.
    c.upstream.outlier_failures = 1_000;
    let gw = start_gateway(c).await;
    let requests = 100;
    for _ in 0..requests {
        // The upstream's own answer, passed on.
        assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 503);
    }
    let attempts = a.attempts() + b.attempts();
    // Unbudgeted, 300 attempts; the budget allows 0.2 × 100 + 10 retries in the window.
    assert_eq!(attempts, requests + 30, "attempts at the mocks");
    assert_eq!(
        metric(&gw, "gateway_upstream_retries_total{reason=\"idempotent\"}").await,
        30.0
    );
    assert!(metric(&gw, "gateway_upstream_retry_budget_exhausted_total").await >= 1.0);
}

#[tokio::test]
async fn the_connection_cap_holds_under_200_concurrent_slow_requests() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, None).await;
    let b = Mock::start([127, 0, 0, 2], &pki, None).await;
    for m in [&a, &b] {
        m.set(Mode::Slow(Duration::from_millis(100)));
    }
    let mut c = config(&pki, &[&a, &b]);
    c.upstream.max_connections = 8;
    c.upstream.request_timeout = Dur(Duration::from_secs(20));
    c.limits.max_concurrent_requests_per_client = 0;
    let gw = start_gateway(c).await;
    let addr = gw.public_addr;
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { send(get(addr, "/companies/v2/rs/1")).await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let opened = a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst);
    assert!(opened <= 8, "{opened} upstream connections opened");
    let peak = a.max_open.load(Ordering::SeqCst) + b.max_open.load(Ordering::SeqCst);
    assert!(peak <= 8, "{peak} open at once");
    assert_eq!(a.attempts() + b.attempts(), 200);
}

#[tokio::test]
async fn a_request_waiting_at_the_cap_past_request_timeout_gets_504() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, None).await;
    a.set(Mode::Slow(Duration::from_millis(700)));
    let mut c = config(&pki, &[&a]);
    c.upstream.max_connections = 1;
    c.upstream.request_timeout = Dur(Duration::from_secs(1));
    let gw = start_gateway(c).await;
    let addr = gw.public_addr;
    let first = tokio::spawn(async move { send(get(addr, "/companies/v2/rs/1")).await });
    // The first has the one connection before the second asks.
    while a.connections.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = send(get(addr, "/companies/v2/rs/1")).await;
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.status, 504);
    assert_eq!(
        second.json()["type"],
        "urn:companies-gateway:problem:gateway-timeout"
    );
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn mutual_tls_is_accepted_with_the_client_certificate_and_refused_without() {
    let pki = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, Some(&pki.ca_pem)).await;
    let client = pki.leaf(&["gateway-client"]);
    let mut c = config(&pki, &[&a]);
    c.upstream.client_cert = Some(pki.write("client.pem", client.cert_pem.as_bytes()));
    c.upstream.client_key = Some(pki.write("client-key.pem", client.key_pem.as_bytes()));
    let gw = start_gateway(c).await;
    assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 200);
    assert_eq!(a.attempts(), 1);

    // Without it, the upstream refuses the handshake: 502, counted as kind="tls".
    let mut c = config(&pki, &[&a]);
    c.upstream.retries = 0;
    let gw = start_gateway(c).await;
    let got = send(get(gw.public_addr, "/companies/v2/rs/1")).await;
    assert_eq!(got.status, 502);
    assert_eq!(
        metric(&gw, "gateway_upstream_errors_total{kind=\"tls\"}").await,
        1.0
    );
    assert_eq!(
        a.attempts(),
        1,
        "no request was served without the certificate"
    );
}

#[tokio::test]
async fn a_mismatched_client_key_is_refused_at_start_naming_the_key() {
    let pki = Pki::new();
    let one = pki.leaf(&["gateway-client"]);
    let other = pki.leaf(&["gateway-client"]);
    let mut c = test_config("https://api.test", Some(pki.ca_file()));
    c.upstream.client_cert = Some(pki.write("client.pem", one.cert_pem.as_bytes()));
    c.upstream.client_key = Some(pki.write("other-key.pem", other.key_pem.as_bytes()));
    let err = companies_gateway::start(c).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("upstream.client_key"), "{text}");
}

#[tokio::test]
async fn a_new_client_certificate_is_picked_up_by_a_reload() {
    let pki = Pki::new();
    let clients = Pki::new();
    let stranger = Pki::new();
    let a = Mock::start([127, 0, 0, 1], &pki, Some(&clients.ca_pem)).await;
    // First a certificate the upstream does not trust.
    let wrong = stranger.leaf(&["gateway-client"]);
    let cert = pki.write("client.pem", wrong.cert_pem.as_bytes());
    let key = pki.write("client-key.pem", wrong.key_pem.as_bytes());
    let mut c = config(&pki, &[&a]);
    c.upstream.retries = 0;
    c.upstream.client_cert = Some(cert.clone());
    c.upstream.client_key = Some(key.clone());
    let gw = start_gateway(c).await;
    assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 502);
    assert_eq!(a.attempts(), 0);

    // The renewed pair, as a Secret rotation writes it.
    let right = clients.leaf_with(&["gateway-client"], |p| {
        p.not_after = rcgen::date_time_ymd(2050, 1, 1);
    });
    std::fs::write(&cert, right.cert_pem.as_bytes()).unwrap();
    std::fs::write(&key, right.key_pem.as_bytes()).unwrap();
    assert!(gw.reload().unwrap().upstream_trust_changed);
    assert_eq!(get_status(&gw, "/companies/v2/rs/1").await, 200);
    assert_eq!(a.attempts(), 1);
    // The client certificate's expiry is exported, and follows the reload.
    let expiry = "gateway_certificate_expiry_timestamp_seconds{certificate=\"upstream_client\"}";
    assert_eq!(metric(&gw, expiry).await, 2_524_608_000.0);
}
