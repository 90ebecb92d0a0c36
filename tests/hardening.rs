//! Issue 6: upstream faults, slow and hostile clients, limits, listener TLS and reloads.

mod support;

use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::Dur;
use companies_gateway::{Config, Options, Running};
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn healthy(gw: &Running) {
    let got = send(get(gw.admin_addr, "/healthz")).await;
    assert_eq!(got.status, 200);
}

// ---------------------------------------------------------------- upstream faults

#[tokio::test]
async fn upstream_faults_get_clear_502s_and_504s_and_the_gateway_recovers() {
    let pki = Pki::new();
    let server = FaultServer::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&server.url(), Some(pki.ca_file()));
    config.upstream.request_timeout = Dur(Duration::from_millis(300));
    let gw = start_gateway(config).await;
    let cases = [
        (Fault::ResetBeforeHead, 502, "reset"),
        (Fault::Malformed, 502, "protocol"),
        (Fault::Silent, 504, "timeout"),
    ];
    for (fault, status, kind) in cases {
        server.set(fault);
        let before = metric(
            &gw,
            &format!("gateway_upstream_errors_total{{kind=\"{kind}\"}}"),
        )
        .await;
        let got = send(get(gw.public_addr, "/x")).await;
        assert_eq!(got.status, status, "{fault:?}");
        assert_eq!(got.headers["content-type"], "application/problem+json");
        let after = metric(
            &gw,
            &format!("gateway_upstream_errors_total{{kind=\"{kind}\"}}"),
        )
        .await;
        assert_eq!(after, before + 1.0, "{fault:?} counted as {kind}");
        server.set(Fault::None);
        let got = send(get(gw.public_addr, "/x")).await;
        assert_eq!(got.status, 200, "recovers after {fault:?}");
        healthy(&gw).await;
    }
}

#[tokio::test]
async fn a_reset_after_the_head_aborts_the_clients_response() {
    let pki = Pki::new();
    let server = FaultServer::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&server.url(), Some(pki.ca_file()))).await;
    server.set(Fault::ResetAfterHead);
    // Over the raw socket: the head says 100 bytes; fewer arrive and the connection closes.
    let out = raw(
        gw.public_addr,
        b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        body.len() < 100,
        "the response must not look complete: {out}"
    );
    // Through a client: reading the body fails.
    let res = client().request(get(gw.public_addr, "/x")).await.unwrap();
    assert!(res.into_body().collect().await.is_err());
    server.set(Fault::None);
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
}

#[tokio::test]
async fn a_response_still_streaming_is_not_cut_by_the_idle_timeout() {
    let pki = Pki::new();
    let server = FaultServer::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&server.url(), Some(pki.ca_file()));
    config.limits.idle_timeout = Dur(Duration::from_millis(300));
    let gw = start_gateway(config).await;
    server.set(Fault::Trickle);
    // The body takes ~1.2 s to arrive, four idle timeouts: the request is in flight all along.
    let res = client().request(get(gw.public_addr, "/x")).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("the whole body");
    assert_eq!(body.to_bytes(), Bytes::from_static(b"01234567"));
    // Once the body has ended, the connection is idle and is closed.
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"01234567") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the body keeps coming")
            .unwrap();
        assert!(n > 0, "closed mid-body: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "an idle connection stayed open"
    );
}

#[tokio::test]
async fn a_tls_handshake_failure_is_a_502() {
    let (addr, _task) = raw_tcp_server(Some(b"this is not TLS\r\n")).await;
    let pki = Pki::new();
    let gw = start_gateway(test_config(
        &format!("https://localhost:{}", addr.port()),
        Some(pki.ca_file()),
    ))
    .await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(
        metric(&gw, "gateway_upstream_errors_total{kind=\"tls\"}").await,
        1.0
    );
    healthy(&gw).await;
}

#[tokio::test]
async fn an_expired_certificate_is_a_502() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.expired_leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(mock.count(), 0);
    assert_eq!(
        metric(&gw, "gateway_upstream_errors_total{kind=\"tls\"}").await,
        1.0
    );
}

#[tokio::test]
async fn accepted_then_never_answered_is_a_504_within_connect_timeout() {
    let (addr, _task) = raw_tcp_server(None).await;
    let pki = Pki::new();
    let mut config = test_config(
        &format!("https://localhost:{}", addr.port()),
        Some(pki.ca_file()),
    );
    config.upstream.connect_timeout = Dur(Duration::from_millis(200));
    let gw = start_gateway(config).await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 504);
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:gateway-timeout"
    );
    assert_eq!(
        metric(&gw, "gateway_upstream_errors_total{kind=\"timeout\"}").await,
        1.0
    );
    healthy(&gw).await;
}

// ---------------------------------------------------------------- slow clients

async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slowloris_fails_on_http1_h2c_and_tls() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let leaf = pki.leaf(&["localhost"]);
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.header_read_timeout = Dur(Duration::from_millis(300));
    config.limits.idle_timeout = Dur(Duration::from_millis(300));
    config.listener.tls_handshake_timeout = Dur(Duration::from_millis(300));
    let plain = start_gateway(config.clone()).await;
    config.listener.tls_cert = Some(pki.write("gw.crt", leaf.cert_pem.as_bytes()));
    config.listener.tls_key = Some(pki.write("gw.key", leaf.key_pem.as_bytes()));
    let tls = start_gateway(config).await;

    // HTTP/1: a head that trickles in.
    let mut s = TcpStream::connect(plain.public_addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X-A: b\r\n").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "HTTP/1 slowloris kept alive"
    );

    // h2c: the preface and then nothing (or a trickle of nothing useful).
    let mut s = TcpStream::connect(plain.public_addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "h2c slowloris kept alive"
    );

    // TLS: connect and never finish the handshake.
    let mut s = TcpStream::connect(tls.public_addr).await.unwrap();
    s.write_all(b"\x16\x03\x01").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "TLS slowloris kept alive"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_header_read_timeout() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.header_read_timeout = Dur(Duration::from_millis(300));
    config.limits.idle_timeout = Dur(Duration::from_secs(60));
    let gw = start_gateway(config).await;
    let mut silent = TcpStream::connect(gw.public_addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent connection was held past header_read_timeout"
    );
    // A prompt client is served as before.
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
}

#[tokio::test]
async fn a_body_trickling_past_its_deadline_is_408() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.body_read_timeout = Dur(Duration::from_millis(500));
    let gw = start_gateway(config).await;
    let heads = [
        "PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nX-Session-Token: s\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n",
        "POST /streamed HTTP/1.1\r\nHost: gw\r\nContent-Length: 15\r\n\r\n",
    ];
    for head in heads {
        let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        // One byte every 200 ms would take 3 s; the deadline is 0.5 s for the whole body.
        for b in br#"{"notify":true}"# {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut buf = [0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                out.extend_from_slice(&buf[..n]);
                if n == 0 || !out.is_empty() {
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408"), "{head}: {text}");
    }
    assert_eq!(mock.count(), 0);
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn accept_pauses_at_max_connections_and_resumes_below() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.max_connections = 2;
    let gw = start_gateway(config).await;
    let request = b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(gw.public_addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served at the cap");
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once below the cap")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn requests_beyond_max_concurrent_requests_are_shed_at_once() {
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |_| {
        Reply::ok(b"{}").delayed(Duration::from_millis(700))
    })
    .await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.max_concurrent_requests = 2;
    let gw = start_gateway(config).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(send(get(gw.public_addr, "/slow"))));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        if got.status == 503 {
            assert_eq!(got.headers["retry-after"], "1");
            assert_eq!(
                got.json()["type"],
                "urn:companies-gateway:problem:overloaded"
            );
        }
        statuses.push(got.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503, 503]);
    assert_eq!(
        metric(&gw, "gateway_requests_total{method=\"GET\",outcome=\"shed\",route=\"other\",status=\"503\"}").await,
        4.0
    );
    // The slots come back.
    assert_eq!(send(get(gw.public_addr, "/after")).await.status, 200);
}

// ---------------------------------------------------------------- listener TLS and reloads

async fn tls_gateway(
    pki: &Pki,
    leaf: &Leaf,
    mock: &MockUpstream,
    poll: Duration,
) -> (Config, Running) {
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.listener.tls_cert = Some(pki.write("listener.crt", leaf.cert_pem.as_bytes()));
    config.listener.tls_key = Some(pki.write("listener.key", leaf.key_pem.as_bytes()));
    let options = Options {
        reload_poll: poll,
        ..Options::default()
    };
    let gw = companies_gateway::start_with(config.clone(), options)
        .await
        .unwrap();
    (config, gw)
}

async fn https_get(
    ca_pem: &str,
    h2: bool,
    port: u16,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    tls_client(ca_pem, h2)
        .request(
            Request::get(format!("https://localhost:{port}/tls"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn the_listener_terminates_tls_with_h2_and_http1() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let (_config, gw) = tls_gateway(
        &pki,
        &pki.leaf(&["localhost"]),
        &mock,
        Duration::from_secs(60),
    )
    .await;
    let port = gw.public_addr.port();
    let res = https_get(&pki.ca_pem, true, port).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let res = https_get(&pki.ca_pem, false, port).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_11);
    let seen = mock.received();
    assert_eq!(seen.len(), 2);
    for r in seen {
        assert_eq!(r.values("x-forwarded-proto"), vec!["https"]);
        assert!(r.values("forwarded")[0].ends_with("proto=https"));
    }
    // A client that does not trust the CA fails.
    let other = Pki::new();
    assert!(https_get(&other.ca_pem, false, port).await.is_err());
}

#[tokio::test]
async fn the_listener_certificate_reloads_without_dropping_connections() {
    let pki = Pki::new();
    let next = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let (config, gw) = tls_gateway(
        &pki,
        &pki.leaf(&["localhost"]),
        &mock,
        Duration::from_secs(60),
    )
    .await;
    let port = gw.public_addr.port();
    // An open keep-alive connection under the old certificate.
    let old_client = tls_client(&pki.ca_pem, false);
    let req = || {
        Request::get(format!("https://localhost:{port}/k"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let res = old_client.request(req()).await.unwrap();
    res.into_body().collect().await.unwrap();

    // A bad new file is refused and the old certificate stays.
    std::fs::write(
        config.listener.tls_cert.as_ref().unwrap(),
        b"not a certificate",
    )
    .unwrap();
    let err = gw.reload().unwrap_err().to_string();
    assert!(err.starts_with("listener.tls_cert"), "{err}");
    assert_eq!(
        https_get(&pki.ca_pem, false, port).await.unwrap().status(),
        200
    );

    // A good one is taken by new handshakes.
    let leaf = next.leaf(&["localhost"]);
    std::fs::write(
        config.listener.tls_cert.as_ref().unwrap(),
        leaf.cert_pem.as_bytes(),
    )
    .unwrap();
    std::fs::write(
        config.listener.tls_key.as_ref().unwrap(),
        leaf.key_pem.as_bytes(),
    )
    .unwrap();
    gw.reload().unwrap();
    assert_eq!(
        https_get(&next.ca_pem, false, port).await.unwrap().status(),
        200
    );
    assert!(https_get(&pki.ca_pem, false, port).await.is_err());
    // The old connection is still up.
    let res = old_client.request(req()).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn certificate_files_changed_on_disk_are_picked_up() {
    let pki = Pki::new();
    let next = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let (config, gw) = tls_gateway(
        &pki,
        &pki.leaf(&["localhost"]),
        &mock,
        Duration::from_millis(100),
    )
    .await;
    let port = gw.public_addr.port();
    let leaf = next.leaf(&["localhost"]);
    // As Kubernetes does: new files, no signal.
    std::fs::write(
        config.listener.tls_key.as_ref().unwrap(),
        leaf.key_pem.as_bytes(),
    )
    .unwrap();
    std::fs::write(
        config.listener.tls_cert.as_ref().unwrap(),
        leaf.cert_pem.as_bytes(),
    )
    .unwrap();
    let mut picked_up = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if https_get(&next.ca_pem, false, port).await.is_ok() {
            picked_up = true;
            break;
        }
    }
    assert!(picked_up, "the new certificate was not picked up from disk");
}

#[tokio::test]
async fn the_upstream_ca_file_reloads() {
    let first = Pki::new();
    let second = Pki::new();
    let mock = MockUpstream::start(second.leaf(&["localhost"])).await;
    let config = test_config(&mock.url(""), Some(first.ca_file()));
    let gw = start_gateway(config.clone()).await;
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 502);
    let ca = config.upstream.ca_file.as_ref().unwrap();
    std::fs::write(ca, b"garbage").unwrap();
    let err = gw.reload().unwrap_err().to_string();
    assert!(err.starts_with("upstream.ca_file"), "{err}");
    std::fs::write(ca, second.ca_pem.as_bytes()).unwrap();
    assert!(gw.reload().unwrap().upstream_trust_changed);
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
}
