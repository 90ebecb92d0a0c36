//! Issue 14, memory per idle connection: an idle plain HTTP/1.1 connection is parked (hyper's
//! connection and buffers freed, only the socket watched) and everything still holds: the next
//! request, bytes that arrived before parking, header_read_timeout, idle_timeout, shutdown.
//! Its own test binary, because it installs a global subscriber to see the parking happen.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use companies_gateway::config::Dur;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway parks an idle connection between PARK_AFTER (1 s) and twice that.
const PARKED: Duration = Duration::from_millis(2600);

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

/// The gateway's log lines, captured for the whole test binary.
fn logs() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter("companies_gateway=trace")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        capture
    })
}

/// Log lines saying that the connection from `client` was parked.
fn parked_lines(client: SocketAddr) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains("connection parked") && l.contains(&format!("peer={client}")))
        .map(str::to_owned)
        .collect()
}

/// Reads one response with a Content-Length body; returns its status line.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head.lines().next().unwrap_or("").to_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before a full response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// True when the peer closes the connection within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_its_next_request() {
    logs();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let config = test_config(&mock.url(""), Some(pki.ca_file()));
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    let me = s.local_addr().unwrap();

    s.write_all(&get("/a")).await.unwrap();
    assert_eq!(read_response(&mut s).await, "http/1.1 200 ok");
    assert!(
        parked_lines(me).is_empty(),
        "parked while the client may still be busy"
    );
    tokio::time::sleep(PARKED).await;
    assert_eq!(
        parked_lines(me).len(),
        1,
        "an idle connection was not parked"
    );

    // Parked, it serves the next request on the same socket, and is parked again afterwards.
    s.write_all(&get("/b")).await.unwrap();
    assert_eq!(read_response(&mut s).await, "http/1.1 200 ok");
    tokio::time::sleep(PARKED).await;
    assert_eq!(parked_lines(me).len(), 2);
    let targets: Vec<_> = mock.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/a", "/b"]);
}

#[tokio::test]
async fn bytes_that_arrived_before_parking_are_kept() {
    logs();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let config = test_config(&mock.url(""), Some(pki.ca_file()));
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    let me = s.local_addr().unwrap();

    // A request and the start of the next, pipelined; the rest comes after parking.
    let mut first = get("/a");
    first.extend_from_slice(b"GET /b HTTP/1.1\r\nHo");
    s.write_all(&first).await.unwrap();
    assert_eq!(read_response(&mut s).await, "http/1.1 200 ok");
    tokio::time::sleep(PARKED).await;
    let lines = parked_lines(me);
    assert_eq!(lines.len(), 1, "not parked");
    assert!(lines[0].contains("unread=19"), "{}", lines[0]);
    s.write_all(b"st: gw\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await, "http/1.1 200 ok");
    let targets: Vec<_> = mock.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/a", "/b"]);
}

#[tokio::test]
async fn a_parked_connection_closes_at_header_read_timeout_and_not_before() {
    logs();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.header_read_timeout = Dur(Duration::from_millis(4000));
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(&get("/a")).await.unwrap();
    assert_eq!(read_response(&mut s).await, "http/1.1 200 ok");
    assert!(
        !closed_within(&mut s, PARKED).await,
        "closed before header_read_timeout"
    );
    assert_eq!(parked_lines(s.local_addr().unwrap()).len(), 1);
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "a parked connection outlived header_read_timeout"
    );
}

#[tokio::test]
async fn a_parked_connection_closes_at_idle_timeout_when_it_is_shorter() {
    logs();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.header_read_timeout = Dur(Duration::from_secs(30));
    config.limits.idle_timeout = Dur(Duration::from_millis(4000));
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(&get("/a")).await.unwrap();
    assert_eq!(read_response(&mut s).await, "http/1.1 200 ok");
    assert!(!closed_within(&mut s, PARKED).await, "closed too early");
    assert_eq!(parked_lines(s.local_addr().unwrap()).len(), 1);
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "a parked connection outlived idle_timeout"
    );
}

#[tokio::test]
async fn a_parked_connection_does_not_hold_up_shutdown() {
    logs();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.shutdown.drain_timeout = Dur(Duration::from_secs(20));
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(&get("/a")).await.unwrap();
    assert_eq!(read_response(&mut s).await, "http/1.1 200 ok");
    tokio::time::sleep(PARKED).await;
    assert_eq!(parked_lines(s.local_addr().unwrap()).len(), 1);
    // The drain waits for every connection: a parked one must go at once, not at drain_timeout.
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown())
        .await
        .expect("shutdown waited on a parked connection");
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
}
