//! Issue 14: the admin port closes connections. It applies `header_read_timeout` (a silent
//! connection, a head that never completes) and `idle_timeout`, and caps its connections at
//! `admin.max_connections` without touching the public listener.

mod support;

use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::Dur;
use companies_gateway::{Config, Running};
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Whether the peer closes `stream` before `limit` (reading and discarding what comes).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A gateway whose upstream is a real TLS mock, tuned by `tweak`.
async fn gateway(tweak: impl FnOnce(&mut Config)) -> (Running, MockUpstream, Pki) {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    tweak(&mut config);
    config.validate().expect("valid config");
    (start_gateway(config).await, mock, pki)
}

/// A `GET /healthz` on a fresh admin connection: its status line, or `None` when the connection
/// was closed without an answer.
async fn admin_health(gw: &Running) -> Option<String> {
    let mut s = TcpStream::connect(gw.admin_addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    (!text.is_empty()).then(|| text.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn many_partial_admin_requests_are_closed_at_header_read_timeout() {
    let (gw, _mock, _pki) = gateway(|c| {
        c.limits.header_read_timeout = Dur(Duration::from_millis(400));
        c.limits.idle_timeout = Dur(Duration::from_secs(60));
    })
    .await;
    // The attack: a head with one header and never the blank line, on many connections
    // (fewer than the default cap of 64, so none of them is refused at accept).
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(gw.admin_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    let started = Instant::now();
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "partial admin request {i} still open after {:?}",
            started.elapsed()
        );
    }
    // The slots are free again: the admin port answers.
    assert_eq!(admin_health(&gw).await.as_deref(), Some("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn a_silent_admin_connection_is_closed_at_header_read_timeout() {
    let (gw, _mock, _pki) = gateway(|c| {
        c.limits.header_read_timeout = Dur(Duration::from_millis(300));
        c.limits.idle_timeout = Dur(Duration::from_secs(60));
    })
    .await;
    let mut silent = TcpStream::connect(gw.admin_addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent admin connection was held past header_read_timeout"
    );
    // A trickled head is cut as well, though bytes keep coming.
    let mut s = TcpStream::connect(gw.admin_addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X-A: b\r\n").await.is_err() {
            break;
        }
    }
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "a trickled admin head was held past header_read_timeout"
    );
}

#[tokio::test]
async fn the_admin_cap_closes_the_next_connection_while_the_public_listener_serves() {
    let (gw, mock, _pki) = gateway(|c| {
        c.admin.max_connections = 4;
        c.limits.header_read_timeout = Dur(Duration::from_secs(30));
        c.limits.idle_timeout = Dur(Duration::from_secs(30));
    })
    .await;
    // Four connections hold the four slots, each with a partial head.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.admin_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // Let the accept loop take all four before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = TcpStream::connect(gw.admin_addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
        .await
        .expect("the connection over the cap is closed at once, not left waiting");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection over the cap was served: {:?}",
        read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    // The public listener is not touched by the admin port being full.
    for _ in 0..20 {
        let got = send(
            update_contact(gw.public_addr)
                .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    assert_eq!(mock.count(), 20);
    // The held ones are still open (the cap closes new ones, not old ones)...
    for s in held.iter_mut() {
        assert!(!closed_within(s, Duration::from_millis(50)).await);
    }
    // ... and once one goes, the admin port answers again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match admin_health(&gw).await {
            Some(line) => {
                assert_eq!(line, "HTTP/1.1 200 OK");
                break;
            }
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("the admin port stayed full after a connection closed"),
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_admin_connection_is_closed_after_idle_timeout() {
    // header_read_timeout (which also ends idle HTTP/1 keep-alive) far above idle_timeout, so that
    // only the idle timeout can close these.
    let (gw, _mock, _pki) = gateway(|c| {
        c.limits.header_read_timeout = Dur(Duration::from_secs(30));
        c.limits.idle_timeout = Dur(Duration::from_millis(400));
    })
    .await;

    // HTTP/1.1 keep-alive: one request answered, then nothing.
    let mut s = TcpStream::connect(gw.admin_addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "an idle keep-alive admin connection stayed open"
    );
    assert!(answered.elapsed() >= Duration::from_millis(300));

    // h2c (prior knowledge): the preface and SETTINGS, then no stream at all.
    let mut s = TcpStream::connect(gw.admin_addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "an idle h2c admin connection stayed open"
    );

    // A client that keeps asking is served on one connection past several idle timeouts.
    let mut s = TcpStream::connect(gw.admin_addr).await.unwrap();
    for _ in 0..4 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"ok\n") {
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "a busy admin connection was closed");
            got.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
