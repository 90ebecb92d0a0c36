//! Issue 2: forwarding through a real HTTPS mock upstream with a CA minted at test time.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn setup() -> (Pki, MockUpstream, companies_gateway::Running) {
    setup_with("/main", |_| {}).await
}

/// A gateway in front of a fresh mock at `base`, its config adjusted by `tweak`.
async fn setup_with(
    base: &str,
    tweak: impl FnOnce(&mut companies_gateway::config::Config),
) -> (Pki, MockUpstream, companies_gateway::Running) {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(base), Some(pki.ca_file()));
    tweak(&mut config);
    let gw = start_gateway(config).await;
    (pki, mock, gw)
}

#[tokio::test]
async fn method_path_query_body_and_end_to_end_headers_pass_as_sent() {
    let (_pki, mock, gw) = setup().await;
    let got = send(
        Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/some/other/route?b=2&a=%2F%20x&a=1&&empty=",
                gw.public_addr
            ))
            .header("x-multi", "one")
            .header("x-other", "between")
            .header("x-multi", "two, three")
            .header("authorization", "Bearer abc")
            .header("cookie", "k=v")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"raw \x00 body bytes")))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], EXAMPLE_RESPONSE);
    let seen = &mock.received()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.target,
        "/main/some/other/route?b=2&a=%2F%20x&a=1&&empty="
    );
    assert_eq!(&seen.body[..], b"raw \x00 body bytes");
    assert_eq!(seen.values("x-multi"), vec!["one", "two, three"]);
    assert_eq!(seen.values("x-other"), vec!["between"]);
    assert_eq!(seen.values("authorization"), vec!["Bearer abc"]);
    assert_eq!(seen.values("cookie"), vec!["k=v"]);
    assert_eq!(seen.values("content-type"), vec!["text/plain"]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |_| {
        Reply::ok(b"{}")
            .header("connection", "x-up-hop")
            .header("x-up-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("upgrade", "h2c")
            .header("x-up-end", "kept")
    })
    .await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let got = send(
        Request::get(format!("http://{}/x", gw.public_addr))
            .header("connection", "x-down-hop, keep-alive")
            .header("x-down-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("trailer", "x-t")
            .header("upgrade", "websocket")
            .header("proxy-authorization", "Basic eA==")
            .header("x-down-end", "kept")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = &mock.received()[0];
    for name in [
        "connection",
        "x-down-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.values("x-down-end"), vec!["kept"]);
    for name in ["x-up-hop", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(got.headers.get(name).is_none(), "{name} reached the client");
    }
    assert_eq!(got.headers["x-up-end"], "kept");
}

#[tokio::test]
async fn host_sni_via_are_the_upstreams_and_forwarded_headers_are_replaced() {
    let (_pki, mock, gw) = setup().await;
    let got = send(
        Request::get(format!("http://{}/x", gw.public_addr))
            .header("host", "client-facing.example")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-port", "8443")
            .header("x-forwarded-prefix", "/admin")
            .header("forwarded", "for=6.6.6.6")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["via"], "1.1 companies-gateway");
    let seen = &mock.received()[0];
    assert_eq!(
        seen.values("host"),
        vec![format!("localhost:{}", mock.addr.port())]
    );
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(seen.values("via"), vec!["1.1 companies-gateway"]);
    assert_eq!(seen.values("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.values("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        seen.values("x-forwarded-host"),
        vec!["client-facing.example"]
    );
    assert_eq!(
        seen.values("forwarded"),
        vec!["for=127.0.0.1;host=\"client-facing.example\";proto=http"]
    );
    assert!(seen.values("x-forwarded-port").is_empty());
    assert!(seen.values("x-forwarded-prefix").is_empty());
}

#[tokio::test]
async fn a_trusted_proxy_has_the_peer_appended() {
    let (_pki, mock, gw) = setup_with("", |config| {
        config.listener.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    send(
        Request::get(format!("http://{}/x", gw.public_addr))
            .header("x-forwarded-for", "198.51.100.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-port", "8443")
            .header("forwarded", "for=198.51.100.9;proto=https")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let seen = &mock.received()[0];
    assert_eq!(
        seen.values("x-forwarded-for"),
        vec!["198.51.100.9, 127.0.0.1"]
    );
    assert_eq!(seen.values("x-forwarded-proto"), vec!["https"]);
    assert_eq!(seen.values("x-forwarded-port"), vec!["8443"]);
    let forwarded = seen.values("forwarded");
    assert!(
        forwarded[0].starts_with("for=198.51.100.9;proto=https, for=127.0.0.1;"),
        "{forwarded:?}"
    );
}

#[tokio::test]
async fn a_request_id_is_kept_generated_and_returned() {
    let (_pki, mock, gw) = setup().await;
    let got = send(
        Request::get(format!("http://{}/x", gw.public_addr))
            .header("x-request-id", "client-chosen-42")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.headers["x-request-id"], "client-chosen-42");
    assert_eq!(
        mock.received()[0].values("x-request-id"),
        vec!["client-chosen-42"]
    );

    let got = send(
        Request::get(format!("http://{}/x", gw.public_addr))
            .header("x-request-id", "has spaces in it")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let generated = got.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(generated, "has spaces in it");
    assert_eq!(generated.len(), 36);
    assert_eq!(mock.received()[1].values("x-request-id"), vec![generated]);
}

#[tokio::test]
async fn the_gateways_own_responses_carry_the_request_id() {
    let port = closed_port().await;
    let config = test_config(&format!("https://localhost:{port}"), None);
    let gw = start_gateway(config).await;
    let got = send(
        Request::get(format!("http://{}/x?q=1", gw.public_addr))
            .header("x-request-id", "rid-502")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 502);
    assert_eq!(got.headers["x-request-id"], "rid-502");
    assert_eq!(got.headers["content-type"], "application/problem+json");
    let p = got.json();
    assert_eq!(p["request_id"], "rid-502");
    assert_eq!(p["instance"], "/x");
    assert_eq!(p["type"], "urn:companies-gateway:problem:bad-gateway");
}

async fn upstream_error_kind(gw: &companies_gateway::Running, kind: &str) -> f64 {
    metric(
        gw,
        &format!("gateway_upstream_errors_total{{kind=\"{kind}\"}}"),
    )
    .await
}

#[tokio::test]
async fn a_refused_port_is_a_502() {
    let port = closed_port().await;
    let gw = start_gateway(test_config(&format!("https://localhost:{port}"), None)).await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(upstream_error_kind(&gw, "connect").await, 1.0);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502() {
    let pki = Pki::new();
    let other = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(other.ca_file()))).await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:bad-gateway"
    );
    assert_eq!(mock.count(), 0);
    assert_eq!(upstream_error_kind(&gw, "tls").await, 1.0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_502() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["other.example"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(mock.count(), 0);
    assert_eq!(upstream_error_kind(&gw, "tls").await, 1.0);
}

#[tokio::test]
async fn a_slow_upstream_is_a_504() {
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |_| {
        Reply::ok(b"{}").delayed(Duration::from_secs(5))
    })
    .await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.upstream.request_timeout = companies_gateway::config::Dur(Duration::from_millis(200));
    let gw = start_gateway(config).await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 504);
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:gateway-timeout"
    );
    assert_eq!(upstream_error_kind(&gw, "timeout").await, 1.0);
}

#[tokio::test]
async fn an_absolute_form_target_cannot_steer() {
    let (_pki, mock, gw) = setup().await;
    let out = raw(
        gw.public_addr,
        b"GET http://evil.example:9/steer?x=1 HTTP/1.1\r\nHost: evil.example:9\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = &mock.received()[0];
    assert_eq!(seen.target, "/main/steer?x=1");
    assert_eq!(
        seen.values("host"),
        vec![format!("localhost:{}", mock.addr.port())]
    );
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
}

#[tokio::test]
async fn sequential_requests_reuse_pooled_connections() {
    let (_pki, mock, gw) = setup().await;
    let client = client();
    for _ in 0..10 {
        let res = client.request(get(gw.public_addr, "/x")).await.unwrap();
        assert_eq!(res.status(), 200);
        // The connection goes back to the pool as the response body ends.
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap();
    }
    assert_eq!(mock.count(), 10);
    assert_eq!(opened(&gw, &mock).await, 1);
    // Every request went over that one connection.
    assert!(mock.received().iter().all(|r| r.connection == 1));
}

/// Connections the gateway opened, checked against the ones the mock accepted.
async fn opened(gw: &companies_gateway::Running, mock: &MockUpstream) -> usize {
    let opened = metric(gw, "gateway_upstream_connections_opened_total").await;
    assert_eq!(
        mock.connections.load(std::sync::atomic::Ordering::SeqCst) as f64,
        opened
    );
    opened as usize
}

/// `n` requests at once, each held `delay` by the upstream, so that each needs its own connection.
async fn concurrently(gw: &companies_gateway::Running, mock: &MockUpstream, n: usize) {
    for _ in 0..n {
        mock.push_reply(Reply::ok(b"{}").delayed(Duration::from_millis(300)));
    }
    let all = (0..n).map(|_| send(get(gw.public_addr, "/x")));
    for got in futures_util::future::join_all(all).await {
        assert_eq!(got.status, 200);
    }
}

#[tokio::test]
async fn a_connection_idle_past_pool_idle_timeout_is_not_reused() {
    let (_pki, mock, gw) = setup_with("", |config| {
        config.upstream.pool_idle_timeout =
            companies_gateway::config::Dur(Duration::from_millis(300));
    })
    .await;
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
    assert_eq!(opened(&gw, &mock).await, 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
    assert_eq!(opened(&gw, &mock).await, 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_replaced_without_an_error() {
    let (_pki, mock, gw) = setup().await;
    mock.push_reply(Reply::ok(b"{}").header("connection", "close"));
    assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
    // Whether or not the close has been seen yet, the next request must not fail.
    for _ in 0..3 {
        assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
    }
    assert_eq!(mock.count(), 4);
    assert_eq!(opened(&gw, &mock).await, 2);
}

#[tokio::test]
async fn waves_of_requests_above_pool_max_idle_per_host_reuse_their_connections() {
    // Issue 14: a connection returned above pool_max_idle_per_host was closed, so every wave of
    // concurrent requests opened its connections again.
    let (_pki, mock, gw) = setup_with("", |config| {
        config.upstream.pool_max_idle_per_host = 2;
        // Reaper period (and demand window) 500 ms: idle connections stay well past it.
        config.upstream.pool_idle_timeout = companies_gateway::config::Dur(Duration::from_secs(2));
    })
    .await;
    for _ in 0..3 {
        concurrently(&gw, &mock, 12).await;
    }
    assert_eq!(opened(&gw, &mock).await, 12);
    // Once demand has fallen for two demand windows, the idle ones are trimmed to max_idle:
    // the next wave reuses two and opens ten.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    concurrently(&gw, &mock, 12).await;
    assert_eq!(opened(&gw, &mock).await, 22);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_is_served() {
    let (_pki, mock, gw) = setup().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let res = client.request(get(gw.public_addr, "/h2c")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(mock.received()[0].target, "/main/h2c");
}

#[tokio::test]
async fn an_http2_upstream_is_used_when_enabled() {
    let (_pki, mock, gw) = setup_with("", |config| {
        config.upstream.http2 = true;
    })
    .await;
    let got = send(get(gw.public_addr, "/x")).await;
    assert_eq!(got.status, 200);
    let seen = &mock.received()[0];
    assert_eq!(seen.version, http::Version::HTTP_2);
    // :authority carries the host; a `host` header beside it makes nginx refuse the request.
    assert!(seen.headers.get("host").is_none(), "{:?}", seen.headers);
    // Requests at once share the one multiplexed connection.
    concurrently(&gw, &mock, 5).await;
    assert_eq!(opened(&gw, &mock).await, 1);
}
