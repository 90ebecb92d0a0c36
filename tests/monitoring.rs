//! Issue 16, "Monitoring that holds up": TLS handshake errors and certificate expiry on a real
//! TLS listener, and the reload series the dashboard's panel reads.

mod support;

use std::time::Duration;

use companies_gateway::config::Dur;
use support::*;
use tokio::io::AsyncWriteExt;

/// Polls the metric until it has `want` (the event is the gateway's, on its own task), for at
/// most 10 s.
async fn wait_for(gw: &companies_gateway::Running, series: &str, want: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(gw, series).await;
        if v == want || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const PUBLIC_ERRORS: &str = "gateway_tls_handshake_errors_total{listener=\"public\"}";
const ADMIN_ERRORS: &str = "gateway_tls_handshake_errors_total{listener=\"admin\"}";
const EXPIRY: &str = "gateway_certificate_expiry_timestamp_seconds{certificate=\"listener\"}";

#[tokio::test]
async fn handshake_errors_and_certificate_expiry_are_exported() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let leaf = pki.leaf_with(&["localhost"], |p| {
        p.not_after = rcgen::date_time_ymd(2031, 5, 17);
    });
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    let cert = pki.write("listener.crt", leaf.cert_pem.as_bytes());
    let key = pki.write("listener.key", leaf.key_pem.as_bytes());
    config.listener.tls_cert = Some(cert.clone());
    config.listener.tls_key = Some(key.clone());
    config.listener.tls_handshake_timeout = Dur(Duration::from_millis(200));
    let gw = start_gateway(config).await;

    // 2031-05-17T00:00:00Z, from the certificate itself.
    assert_eq!(metric(&gw, EXPIRY).await, 1_936_742_400.0);
    let scrape = scrape(&gw).await;
    assert!(scrape.contains(&format!("{ADMIN_ERRORS} 0")), "{scrape}");
    assert!(scrape.contains(&format!("{PUBLIC_ERRORS} 0")), "{scrape}");
    assert!(
        !scrape.contains("certificate=\"upstream_client\""),
        "no client certificate is configured: {scrape}"
    );

    // A good handshake is not an error.
    let ok = tls_client(&pki.ca_pem, false)
        .request(
            http::Request::get(format!("https://localhost:{}/x", gw.public_addr.port()))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(metric(&gw, PUBLIC_ERRORS).await, 0.0);

    // Plain HTTP to the TLS port: a failed handshake.
    let mut tcp = tokio::net::TcpStream::connect(gw.public_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(wait_for(&gw, PUBLIC_ERRORS, 1.0).await, 1.0);
    drop(tcp);
    // A client that never finishes: a timed-out handshake.
    let idle = tokio::net::TcpStream::connect(gw.public_addr)
        .await
        .unwrap();
    assert_eq!(wait_for(&gw, PUBLIC_ERRORS, 2.0).await, 2.0);
    drop(idle);

    // A reloaded certificate moves the gauge.
    let next = pki.leaf_with(&["localhost"], |p| {
        p.not_after = rcgen::date_time_ymd(2050, 1, 1);
    });
    std::fs::write(&cert, next.cert_pem.as_bytes()).unwrap();
    std::fs::write(&key, next.key_pem.as_bytes()).unwrap();
    gw.reload().unwrap();
    assert_eq!(metric(&gw, EXPIRY).await, 2_524_608_000.0);
}

#[tokio::test]
async fn the_reload_series_exist_from_start_up() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let before = unix_now() as f64;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let text = scrape(&gw).await;
    for series in [
        "gateway_config_reloads_total{result=\"success\"} 0",
        "gateway_config_reloads_total{result=\"failure\"} 0",
        "gateway_config_last_reload_successful 1",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    let at = metric(&gw, "gateway_config_last_reload_success_timestamp_seconds").await;
    // Fractional seconds: within the whole seconds around start-up.
    assert!(
        at >= before && at < unix_now() as f64 + 1.0,
        "{at} vs {before}"
    );
    // No TLS listener: no listener certificate to expire.
    assert!(
        !text.contains("gateway_certificate_expiry_timestamp_seconds{"),
        "{text}"
    );
}
