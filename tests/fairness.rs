//! Issue 14: one client cannot starve everyone (`max_connections_per_client`,
//! `max_concurrent_requests_per_client`). Real sockets from distinct loopback addresses.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LOCAL_1: &str = "127.0.0.1";
const LOCAL_2: &str = "127.0.0.2";
const PROXY: &str = "127.0.0.3";

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends one request on `s` and reads its answer's first bytes.
async fn request_on(s: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whether the gateway closes `s` (EOF or reset) without answering a request sent on it.
async fn closed_unanswered(s: &mut TcpStream) -> bool {
    // The write may already fail on a reset connection; the read below decides.
    let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// One request through hyper's client from the loopback address `from`.
async fn send_from(from: &str, req: Request<Full<Bytes>>) -> Got {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from.parse::<IpAddr>().unwrap()));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let res = client.request(req).await.expect("request to gateway");
    let (parts, body) = res.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `/slow*` answers after `delay`; everything else at once.
async fn upstream(pki: &Pki, delay: Duration) -> MockUpstream {
    MockUpstream::start_with(pki.leaf(&["localhost"]), move |r| {
        if r.target.starts_with("/slow") {
            Reply::ok(b"{}").delayed(delay)
        } else {
            Reply::ok(b"{}")
        }
    })
    .await
}

fn assert_overloaded(got: &Got) {
    assert_eq!(got.status, 503, "{got:?}");
    assert_eq!(got.headers["retry-after"], "1");
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:overloaded"
    );
    // The detail says whose limit it was: this client's, not the gateway's.
    let detail = got.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.starts_with("this client has"), "{detail}");
}

#[tokio::test]
async fn a_connection_over_the_per_client_cap_is_closed_while_another_address_connects() {
    let pki = Pki::new();
    let mock = upstream(&pki, Duration::ZERO).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.max_connections_per_client = 2;
    let gw = start_gateway(config).await;

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(LOCAL_1, gw.public_addr).await;
        assert!(request_on(&mut s, "/x").await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = connect_from(LOCAL_1, gw.public_addr).await;
    assert!(
        closed_unanswered(&mut third).await,
        "the third connection from {LOCAL_1} was served"
    );
    // Another address is not held to 127.0.0.1's cap, and the held ones still work.
    let mut other = connect_from(LOCAL_2, gw.public_addr).await;
    assert!(request_on(&mut other, "/y")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(request_on(&mut held[0], "/z")
        .await
        .starts_with("HTTP/1.1 200"));

    // A slot comes back when a connection closes (once the gateway has seen it close).
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let mut s = connect_from(LOCAL_1, gw.public_addr).await;
        s.write_all(b"GET /again HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            if buf[..n].starts_with(b"HTTP/1.1 200") {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "no slot came back for {LOCAL_1}");
}

#[tokio::test]
async fn the_greedy_client_gets_503_overloaded_while_another_address_gets_200() {
    let pki = Pki::new();
    let mock = upstream(&pki, Duration::from_millis(1500)).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.max_concurrent_requests_per_client = 2;
    let gw = start_gateway(config).await;
    let addr = gw.public_addr;

    let slow: Vec<_> = (0..2)
        .map(|i| tokio::spawn(send_from(LOCAL_1, get(addr, &format!("/slow/{i}")))))
        .collect();
    // Both slow requests are in flight once the upstream has them.
    for _ in 0..100 {
        if mock.count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.count(), 2);

    let greedy = send_from(LOCAL_1, get(addr, "/fast")).await;
    assert_overloaded(&greedy);
    let other = send_from(LOCAL_2, get(addr, "/fast")).await;
    assert_eq!(other.status, 200);
    assert_eq!(
        mock.count(),
        3,
        "the shed request never reached the upstream"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_requests_total{method=\"GET\",outcome=\"shed\",route=\"other\",status=\"503\"}"
        )
        .await,
        1.0
    );
    for t in slow {
        assert_eq!(t.await.unwrap().status, 200);
    }
    // The slots come back.
    assert_eq!(send_from(LOCAL_1, get(addr, "/after")).await.status, 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_cap() {
    let pki = Pki::new();
    let mock = upstream(&pki, Duration::from_millis(1500)).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.listener.trusted_proxies = vec![format!("{PROXY}/32").parse().unwrap()];
    config.limits.max_concurrent_requests_per_client = 1;
    // The proxy opens more connections than one client may: it carries many clients.
    config.limits.max_connections_per_client = 1;
    let gw = start_gateway(config).await;
    let addr = gw.public_addr;
    let via_proxy = |path: &str, client: &str| {
        Request::get(format!("http://{addr}{path}"))
            .header("x-forwarded-for", client)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    let slow = tokio::spawn(send_from(PROXY, via_proxy("/slow", "198.51.100.1")));
    for _ in 0..100 {
        if mock.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.count(), 1);
    // Same forwarded client: shed. Left of the proxy's entry, a spoofed one changes nothing.
    assert_overloaded(&send_from(PROXY, via_proxy("/fast", "198.51.100.1")).await);
    assert_overloaded(&send_from(PROXY, via_proxy("/fast", "203.0.113.5, 198.51.100.1")).await);
    // Another client behind the same proxy, on another connection of the proxy: served.
    assert_eq!(
        send_from(PROXY, via_proxy("/fast", "198.51.100.2"))
            .await
            .status,
        200
    );
    assert_eq!(slow.await.unwrap().status, 200);
}
