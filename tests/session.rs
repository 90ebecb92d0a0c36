//! Issue 4: session validity against a real mock introspection server that counts its calls.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::{Dur, OnVerifierError};
use companies_gateway::session::cache::ManualClock;
use companies_gateway::{Config, Options, Running};
use http::Request;
use http_body_util::Full;
use support::*;

const ROUTE: &str = "/companies/v2/rs/1/contacts/2";

struct Setup {
    _pki: Pki,
    mock: MockUpstream,
    intro: MockIntrospection,
    gw: Running,
    clock: ManualClock,
}

async fn setup_with(answer: Verdict, tweak: impl FnOnce(&mut Config, &Pki)) -> Setup {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let intro = MockIntrospection::start(answer).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.session.introspect_url = Some(intro.url());
    config.session.introspect_timeout = Dur(Duration::from_millis(500));
    tweak(&mut config, &pki);
    config.validate().unwrap();
    let clock = ManualClock::new();
    let gw = companies_gateway::start_with(
        config,
        Options {
            clock: Arc::new(clock.clone()),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    Setup {
        _pki: pki,
        mock,
        intro,
        gw,
        clock,
    }
}

fn request(gw: &Running, bearer: &str, session: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("PATCH")
        .uri(format!("http://{}{ROUTE}", gw.public_addr))
        .header("authorization", format!("Bearer {bearer}"))
        .header("x-session-token", session)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
        .unwrap()
}

fn assert_invalid_session(got: &Got) {
    assert_eq!(got.status, 401, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(
        got.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:invalid-session"
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_jwts_are_rejected_with_no_call() {
    let s = setup_with(Verdict::status(200), |_, _| {}).await;
    let now = unix_now();
    for claims in [
        serde_json::json!({"exp": now - 3600}),
        serde_json::json!({"nbf": now + 3600, "exp": now + 7200}),
    ] {
        let got = send(request(&s.gw, "b", &jwt(claims, b"any"))).await;
        assert_invalid_session(&got);
    }
    assert_eq!(s.intro.calls(), 0);
    assert_eq!(s.mock.count(), 0);
    assert_eq!(
        metric(
            &s.gw,
            "gateway_session_checks_total{source=\"jwt\",verdict=\"invalid\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_bad_signature_is_rejected() {
    let s = setup_with(Verdict::status(200), |c, pki| {
        c.session.jwt_hs256_secret_file = Some(pki.write("secret", b"the-real-secret\n"));
    })
    .await;
    let exp = unix_now() + 600;
    let forged = jwt(serde_json::json!({"exp": exp}), b"not-the-secret");
    assert_invalid_session(&send(request(&s.gw, "b", &forged)).await);
    assert_invalid_session(&send(request(&s.gw, "b", "opaque-not-a-jwt")).await);
    let good = jwt(serde_json::json!({"exp": exp}), b"the-real-secret");
    let got = send(request(&s.gw, "b", &good)).await;
    assert_eq!(got.status, 200);
    assert_eq!(s.intro.calls(), 1);
    assert_eq!(s.mock.count(), 1);
}

#[tokio::test]
async fn a_valid_session_is_asked_once_then_cached() {
    let s = setup_with(Verdict::status(200), |_, _| {}).await;
    for _ in 0..3 {
        let got = send(request(&s.gw, "bearer-1", "session-1")).await;
        assert_eq!(got.status, 200);
    }
    assert_eq!(s.intro.calls(), 1);
    assert_eq!(s.mock.count(), 3);
    let seen = s.intro.seen.lock().unwrap()[0].clone();
    assert_eq!(seen["authorization"], "Bearer bearer-1");
    assert_eq!(seen["x-session-token"], "session-1");
    assert_eq!(
        metric(&s.gw, "gateway_session_cache_lookups_total{result=\"hit\"}").await,
        2.0
    );
    assert_eq!(
        metric(
            &s.gw,
            "gateway_session_cache_lookups_total{result=\"miss\"}"
        )
        .await,
        1.0
    );
    // After valid_ttl (60 s) it is asked again.
    s.clock.advance(Duration::from_secs(61));
    send(request(&s.gw, "bearer-1", "session-1")).await;
    assert_eq!(s.intro.calls(), 2);
    // Another bearer with the same session token is another session.
    send(request(&s.gw, "bearer-2", "session-1")).await;
    assert_eq!(s.intro.calls(), 3);
}

#[tokio::test]
async fn an_invalid_session_is_cached_for_invalid_ttl() {
    let s = setup_with(Verdict::status(401), |c, _| {
        c.session.invalid_ttl = Dur(Duration::from_secs(10))
    })
    .await;
    assert_invalid_session(&send(request(&s.gw, "b", "dead")).await);
    assert_invalid_session(&send(request(&s.gw, "b", "dead")).await);
    assert_eq!(s.intro.calls(), 1);
    s.clock.advance(Duration::from_secs(9));
    assert_invalid_session(&send(request(&s.gw, "b", "dead")).await);
    assert_eq!(s.intro.calls(), 1);
    s.clock.advance(Duration::from_secs(2));
    assert_invalid_session(&send(request(&s.gw, "b", "dead")).await);
    assert_eq!(s.intro.calls(), 2);
    assert_eq!(
        s.mock.count(),
        0,
        "an invalid session costs the upstream nothing"
    );
}

#[tokio::test]
async fn active_false_is_invalid() {
    let mut v = Verdict::status(200);
    v.body = r#"{"active": false}"#.into();
    let s = setup_with(v, |_, _| {}).await;
    assert_invalid_session(&send(request(&s.gw, "b", "s")).await);
    assert_invalid_session(&send(request(&s.gw, "b", "s")).await);
    assert_eq!(s.intro.calls(), 1);
}

#[tokio::test]
async fn max_age_shortens_the_entry() {
    let mut v = Verdict::status(200);
    v.headers = vec![("cache-control".into(), "max-age=5".into())];
    let s = setup_with(v, |_, _| {}).await;
    send(request(&s.gw, "b", "s")).await;
    s.clock.advance(Duration::from_secs(4));
    send(request(&s.gw, "b", "s")).await;
    assert_eq!(s.intro.calls(), 1);
    s.clock.advance(Duration::from_secs(2));
    send(request(&s.gw, "b", "s")).await;
    assert_eq!(s.intro.calls(), 2);
}

#[tokio::test]
async fn a_valid_entry_never_outlives_the_tokens_exp() {
    let s = setup_with(Verdict::status(200), |c, _| {
        c.session.leeway = Dur(Duration::ZERO)
    })
    .await;
    let token = jwt(serde_json::json!({"exp": unix_now() + 20}), b"k");
    assert_eq!(send(request(&s.gw, "b", &token)).await.status, 200);
    s.clock.advance(Duration::from_secs(25));
    assert_invalid_session(&send(request(&s.gw, "b", &token)).await);
    assert_eq!(s.intro.calls(), 1);
}

#[tokio::test]
async fn fifty_concurrent_requests_with_a_fresh_token_make_one_call() {
    let mut v = Verdict::status(200);
    v.delay = Duration::from_millis(200);
    let s = setup_with(v, |_, _| {}).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let req = request(&s.gw, "b", "fresh-session");
        tasks.push(tokio::spawn(send(req)));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(s.intro.calls(), 1);
    assert_eq!(s.mock.count(), 50);
    let coalesced = metric(&s.gw, "gateway_session_coalesced_total").await;
    assert!(coalesced >= 1.0, "coalesced {coalesced}");
}

#[tokio::test]
async fn verifier_errors_are_503_not_cached_and_recover() {
    let s = setup_with(Verdict::status(500), |_, _| {}).await;
    for _ in 0..2 {
        let got = send(request(&s.gw, "b", "s")).await;
        assert_eq!(got.status, 503);
        assert_eq!(got.headers["retry-after"], "1");
        assert_eq!(
            got.json()["type"],
            "urn:companies-gateway:problem:session-unavailable"
        );
    }
    assert_eq!(s.intro.calls(), 2, "errors are not cached");
    // A 404 (a wrong URL) is an error too, not a verdict.
    s.intro.set(Verdict::status(404));
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 503);
    // A slow verifier times out into the same path.
    let mut slow = Verdict::status(200);
    slow.delay = Duration::from_secs(3);
    s.intro.set(slow);
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 503);
    s.intro.set(Verdict::status(200));
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 200);
    assert_eq!(s.mock.count(), 1);
    assert_eq!(
        metric(
            &s.gw,
            "gateway_session_checks_total{source=\"introspection\",verdict=\"error\"}"
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn on_verifier_error_allow_forwards() {
    let s = setup_with(Verdict::status(500), |c, _| {
        c.session.on_verifier_error = OnVerifierError::Allow
    })
    .await;
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 200);
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 200);
    assert_eq!(s.intro.calls(), 2);
}

#[tokio::test]
async fn stale_if_error_serves_a_recently_expired_valid_entry() {
    let s = setup_with(Verdict::status(200), |c, _| {
        c.session.valid_ttl = Dur(Duration::from_secs(60));
        c.session.stale_if_error = Dur(Duration::from_secs(30));
    })
    .await;
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 200);
    s.intro.set(Verdict::status(503));
    s.clock.advance(Duration::from_secs(70));
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 200);
    assert_eq!(
        metric(
            &s.gw,
            "gateway_session_cache_lookups_total{result=\"stale\"}"
        )
        .await,
        1.0
    );
    s.clock.advance(Duration::from_secs(30));
    assert_eq!(send(request(&s.gw, "b", "s")).await.status, 503);
}

#[tokio::test]
async fn an_upstream_401_is_learned() {
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |_| Reply::status(401)).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let got = send(request(&gw, "b", "revoked")).await;
    assert_eq!(got.status, 401);
    assert!(
        got.headers.get("content-type").is_none(),
        "the upstream's own 401 passes through"
    );
    assert_eq!(mock.count(), 1);
    let got = send(request(&gw, "b", "revoked")).await;
    assert_invalid_session(&got);
    assert_eq!(mock.count(), 1, "the next request is rejected locally");
    assert_eq!(
        metric(
            &gw,
            "gateway_session_checks_total{source=\"upstream\",verdict=\"invalid\"}"
        )
        .await,
        1.0
    );
    // Another session still passes.
    mock.push_reply(Reply::ok(EXAMPLE_RESPONSE));
    assert_eq!(send(request(&gw, "b", "other")).await.status, 200);
}

/// Sends `req` on `conn` (one keep-alive HTTP/1.1 connection to the gateway).
async fn send_on(
    conn: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> u16 {
    use http_body_util::BodyExt;
    // Origin-form with a Host header, as a client on its own connection sends it.
    let (mut parts, body) = req.into_parts();
    let host = parts.uri.authority().expect("authority").to_string();
    parts.uri = parts
        .uri
        .path_and_query()
        .expect("path")
        .as_str()
        .parse()
        .unwrap();
    parts.headers.insert("host", host.parse().unwrap());
    let req = Request::from_parts(parts, body);
    conn.ready().await.expect("connection ready");
    let res = conn.send_request(req).await.expect("response");
    let status = res.status().as_u16();
    res.into_body().collect().await.expect("body");
    status
}

#[tokio::test]
async fn a_session_revoked_between_two_requests_on_one_connection_is_checked_again() {
    // The gateway runs on this test's one thread, so its requests share one thread's memo of the
    // last valid verdict: the revocation must end the memo, not only the cache entry.
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let tcp = tokio::net::TcpStream::connect(gw.public_addr)
        .await
        .unwrap();
    let (mut conn, driver) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(driver);
    // A miss, then a hit (remembered), then a remembered verdict the upstream refuses.
    assert_eq!(send_on(&mut conn, request(&gw, "b", "s")).await, 200);
    assert_eq!(send_on(&mut conn, request(&gw, "b", "s")).await, 200);
    mock.push_reply(Reply::status(401));
    assert_eq!(send_on(&mut conn, request(&gw, "b", "s")).await, 401);
    assert_eq!(mock.count(), 3);
    // Byte-identical tokens on the same connection: judged again, and refused locally.
    assert_eq!(send_on(&mut conn, request(&gw, "b", "s")).await, 401);
    assert_eq!(mock.count(), 3, "the revoked session was not forwarded");
    assert_eq!(
        metric(&gw, "gateway_session_cache_lookups_total{result=\"hit\"}").await,
        3.0,
        "a remembered verdict counts as a cache hit, as the lookup it saves would"
    );
}

#[tokio::test]
async fn learning_can_be_turned_off() {
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |_| Reply::status(401)).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.session.learn_from_upstream = false;
    let gw = start_gateway(config).await;
    send(request(&gw, "b", "revoked")).await;
    send(request(&gw, "b", "revoked")).await;
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn capacity_stays_bounded() {
    use companies_gateway::session::cache::{SessionCache, Ttls};
    use companies_gateway::session::jwt::JwtKey;
    use companies_gateway::session::Session;
    let metrics = companies_gateway::metrics::Metrics::new(&[1.0]).unwrap();
    let ttls = Ttls {
        valid: Duration::from_secs(60),
        invalid: Duration::from_secs(10),
        stale_if_error: Duration::ZERO,
    };
    let session = Session {
        cache: SessionCache::new(10, ttls, Arc::new(ManualClock::new())),
        jwt: JwtKey::None,
        introspector: None,
        leeway: Duration::from_secs(30),
        learn_from_upstream: true,
        on_verifier_error: OnVerifierError::Reject,
        metrics,
    };
    let auth = http::HeaderValue::from_static("Bearer b");
    for i in 0..500 {
        let token = http::HeaderValue::from_str(&format!("session-{i}")).unwrap();
        session.decide(&auth, &token).await.unwrap();
    }
    session.cache.cache.run_pending_tasks().await;
    let n = session.cache.cache.entry_count();
    assert!(n <= 10, "{n} entries");
}
