//! Issue 14, the upstream side: slow uploads on streamed routes, clients that go away mid-body,
//! what an upstream connect or TLS failure logs, and connections retired on a CA change.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use companies_gateway::config::Dur;
use companies_gateway::Running;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `head`, then `body` one byte every `gap`, and reads the answer (the head asks the
/// gateway to close after it). Stops writing once an answer has come.
async fn trickle(addr: SocketAddr, head: &str, body: &[u8], gap: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    for b in body {
        tokio::time::sleep(gap).await;
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            out.extend_from_slice(&buf[..n]);
            break;
        }
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_slow_upload_on_a_streamed_route_gets_body_read_timeout_not_request_timeout() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.upstream.request_timeout = Dur(Duration::from_millis(300));
    config.limits.body_read_timeout = Dur(Duration::from_secs(2));
    let gw = start_gateway(config).await;

    // 1.2 s of upload, within body_read_timeout, four times request_timeout: forwarded whole.
    let head = "POST /other HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 8\r\n\r\n";
    let got = trickle(
        gw.public_addr,
        head,
        b"01234567",
        Duration::from_millis(150),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(mock.count(), 1);
    assert_eq!(&mock.received()[0].body[..], b"01234567");

    // 3 s of upload, past body_read_timeout: 408, and the upstream never gets the whole request.
    let head =
        "POST /other HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 30\r\n\r\n";
    let got = trickle(
        gw.public_addr,
        head,
        &[b'x'; 30],
        Duration::from_millis(100),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.contains("urn:companies-gateway:problem:request-timeout"),
        "{got}"
    );
    // Still one: the truncated request was not completed upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mock.count(), 1);
    let timeout = "gateway_rejections_total{reason=\"timeout\",route=\"other\"}";
    assert_eq!(metric(&gw, timeout).await, 1.0);
    let upstream_timeout = "gateway_upstream_errors_total{kind=\"timeout\"}";
    assert_eq!(metric(&gw, upstream_timeout).await, 0.0);
}

/// Polls a metric until it reaches `want`, or 3 s pass.
async fn metric_reaches(gw: &Running, series: &str, want: f64) -> f64 {
    let mut last = 0.0;
    for _ in 0..60 {
        last = metric(gw, series).await;
        if last >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_is_aborted_not_a_framing_rejection() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let validated = "PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nX-Session-Token: s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"notify\":";
    let streamed = "POST /other HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789";
    for (request, route, method) in [
        (validated, "update_contact", "PATCH"),
        (streamed, "other", "POST"),
    ] {
        let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        // Let the gateway start on the body (and, streamed, send it upstream), then go away.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
        let aborted = format!(
            "gateway_requests_total{{method=\"{method}\",outcome=\"aborted\",route=\"{route}\",status=\"499\"}}"
        );
        assert_eq!(metric_reaches(&gw, &aborted, 1.0).await, 1.0, "{route}");
        let framing = format!("gateway_rejections_total{{reason=\"framing\",route=\"{route}\"}}");
        assert_eq!(metric(&gw, &framing).await, 0.0, "{route}");
        let rejected = format!(
            "gateway_requests_total{{method=\"{method}\",outcome=\"rejected\",route=\"{route}\",status=\"400\"}}"
        );
        assert_eq!(metric(&gw, &rejected).await, 0.0, "{route}");
    }
    assert_eq!(mock.count(), 0);
}

// ---------------------------------------------------------------- upstream failures in the log

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// The `upstream request failed` lines logged so far.
    fn failures(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains("upstream request failed"))
            .map(str::to_string)
            .collect()
    }
}

/// One request through a gateway in front of `url` trusting `ca`; the failure line it logged.
async fn failure_logged(capture: &Capture, url: &str, ca: std::path::PathBuf) -> String {
    let before = capture.failures().len();
    let gw = start_gateway(test_config(url, Some(ca))).await;
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 502);
    let lines = capture.failures();
    assert_eq!(lines.len(), before + 1, "{lines:#?}");
    lines[before].clone()
}

#[tokio::test]
async fn an_upstream_connect_or_tls_failure_is_logged_with_its_address_and_reason() {
    // This test's thread only (the runtime is current-thread): other tests log elsewhere.
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new();
    let ca = pki.ca_file();

    // A certificate for another name.
    let wrong_name = MockUpstream::start(pki.leaf(&["other.example"])).await;
    let port = wrong_name.addr.port();
    let line = failure_logged(&capture, &wrong_name.url(""), ca.clone()).await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("kind=\"tls\""), "{line}");
    assert!(
        line.contains(&format!(
            "TLS handshake with localhost:{port} at 127.0.0.1:{port}"
        )),
        "{line}"
    );
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert!(line.contains("other.example"), "{line}");

    // A certificate from an issuer the gateway does not trust.
    let stranger = Pki::new();
    let unknown = MockUpstream::start(stranger.leaf(&["localhost"])).await;
    let port = unknown.addr.port();
    let line = failure_logged(&capture, &unknown.url(""), ca.clone()).await;
    assert!(line.contains("kind=\"tls\""), "{line}");
    assert!(line.contains(&format!("at 127.0.0.1:{port}")), "{line}");
    // Both test CAs have the same subject, so webpki finds the trusted one and its signature
    // fails to verify: it says BadSignature, where a differently named CA gives UnknownIssuer.
    assert!(
        line.contains("invalid peer certificate: BadSignature"),
        "{line}"
    );

    // An expired certificate.
    let expired = MockUpstream::start(pki.expired_leaf(&["localhost"])).await;
    let port = expired.addr.port();
    let line = failure_logged(&capture, &expired.url(""), ca.clone()).await;
    assert!(line.contains("kind=\"tls\""), "{line}");
    assert!(line.contains(&format!("at 127.0.0.1:{port}")), "{line}");
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert!(line.contains("expired"), "{line}");

    // A closed port: the address and the OS error, not `tcp connect error`.
    let port = closed_port().await;
    let line = failure_logged(&capture, &format!("https://127.0.0.1:{port}"), ca).await;
    assert!(line.contains("kind=\"connect\""), "{line}");
    assert!(
        line.contains(&format!(
            "connect 127.0.0.1:{port}: Connection refused (os error 111)"
        )),
        "{line}"
    );
}

// ---------------------------------------------------------------- trust changes

/// A TCP relay to `to` that counts the connections open through it right now.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let count = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let count = count.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Relay { addr, open, task }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits up to 2 s for the open count to reach `want`.
    async fn settles_at(&self, want: usize) -> usize {
        for _ in 0..40 {
            if self.open() == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.open()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_ca_change_retires_idle_connections_at_once_and_busy_ones_after_their_response() {
    let first = Pki::new();
    let second = Pki::new();
    let mock = MockUpstream::start(first.leaf(&["localhost"])).await;
    let relay = Relay::start(mock.addr).await;
    let ca = first.ca_file();
    let url = format!("https://localhost:{}", relay.addr.port());
    let gw = start_gateway(test_config(&url, Some(ca.clone()))).await;

    // Two connections, both idle in the pool.
    for _ in 0..2 {
        mock.push_reply(Reply::ok(b"{}").delayed(Duration::from_millis(300)));
    }
    let both = futures_util::future::join(
        send(get(gw.public_addr, "/x")),
        send(get(gw.public_addr, "/x")),
    )
    .await;
    assert_eq!((both.0.status.as_u16(), both.1.status.as_u16()), (200, 200));
    assert_eq!(relay.open(), 2);

    // One of them busy with a slow response while the trust changes.
    mock.push_reply(Reply::ok(b"{}").delayed(Duration::from_millis(800)));
    let busy = tokio::spawn(send(get(gw.public_addr, "/busy")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bundle = format!("{}{}", first.ca_pem, second.ca_pem);
    std::fs::write(&ca, bundle).unwrap();
    assert!(gw.reload().unwrap().upstream_trust_changed);

    // The idle one closes at once; the busy one finishes its response, then closes.
    assert_eq!(
        relay.settles_at(1).await,
        1,
        "the idle connection stayed open"
    );
    assert_eq!(busy.await.unwrap().status, 200);
    assert_eq!(relay.settles_at(0).await, 0, "the busy connection was kept");

    // New requests go over a new connection, made under the new trust.
    for _ in 0..3 {
        assert_eq!(send(get(gw.public_addr, "/after")).await.status, 200);
    }
    assert_eq!(mock.connections.load(Ordering::SeqCst), 3);
    let after: Vec<usize> = mock
        .received()
        .iter()
        .filter(|r| r.target == "/after")
        .map(|r| r.connection)
        .collect();
    assert_eq!(after, vec![3, 3, 3]);

    // A reload that changes nothing retires nothing.
    assert!(!gw.reload().unwrap().upstream_trust_changed);
    assert_eq!(send(get(gw.public_addr, "/after")).await.status, 200);
    assert_eq!(mock.connections.load(Ordering::SeqCst), 3);
}
