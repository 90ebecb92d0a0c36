//! No token value ever reaches a log line, at any level. Its own test binary, because it installs
//! a global subscriber at trace level that captures everything every crate logs.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

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

const BEARER: &str = "SECRETBEARERabc123";
const SESSION: &str = "SECRETSESSIONxyz789";
const COOKIE: &str = "SECRETCOOKIEqqq";

#[tokio::test]
async fn no_token_value_appears_in_any_log_line() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let intro = MockIntrospection::start(Verdict::status(200)).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.session.introspect_url = Some(intro.url());
    // The access log goes to the same capture (it has its own writer, not the subscriber's).
    let sink = capture.clone();
    let options = companies_gateway::Options {
        access_log: Some(Arc::new(move || Box::new(sink.clone()))),
        ..companies_gateway::Options::default()
    };
    let gw = companies_gateway::start_with(config, options.clone())
        .await
        .unwrap();

    let route = format!("http://{}/companies/v2/rs/1/contacts/2", gw.public_addr);
    let req = |auth: String, session: &str, body: &'static [u8]| {
        Request::builder()
            .method("PATCH")
            .uri(&route)
            .header("authorization", auth)
            .header("x-session-token", session)
            .header("cookie", format!("sid={COOKIE}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    // Forwarded (introspection, then cache), rejected by the contract, a malformed Authorization,
    // an invalid session, a verifier error, and an upstream 401 learned.
    assert_eq!(
        send(req(format!("Bearer {BEARER}"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        200
    );
    assert_eq!(
        send(req(format!("Bearer {BEARER}"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        200
    );
    assert_eq!(
        send(req(format!("Bearer {BEARER}"), SESSION, b"{}"))
            .await
            .status,
        400
    );
    assert_eq!(
        send(req(format!("Basic {BEARER}"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        401
    );
    assert_eq!(
        send(req(format!("Bearer {BEARER} x"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        401
    );
    intro.set(Verdict::status(401));
    assert_eq!(
        send(req(format!("Bearer {BEARER}2"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        401
    );
    intro.set(Verdict::status(500));
    assert_eq!(
        send(req(format!("Bearer {BEARER}3"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        503
    );
    intro.set(Verdict::status(200));
    mock.push_reply(Reply::status(401));
    assert_eq!(
        send(req(format!("Bearer {BEARER}4"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        401
    );
    assert_eq!(
        send(req(format!("Bearer {BEARER}4"), SESSION, EXAMPLE_REQUEST))
            .await
            .status,
        401
    );
    // Contract drift: the upstream refuses a request that passed; the runbook's warn line.
    mock.push_reply(Reply::status(422));
    let drift = req(format!("Bearer {BEARER}"), SESSION, EXAMPLE_REQUEST);
    assert_eq!(send(drift).await.status, 422);
    // Over h2c as well.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let res = h2
        .request(req(format!("Bearer {BEARER}"), SESSION, EXAMPLE_REQUEST))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A path with a quote cannot forge fields of the access line.
    let forged = format!("http://{}/o/x\"%20status=999", gw.public_addr);
    let got = send(Request::get(forged).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(got.status, 200);
    drop(gw);

    // An upstream that cannot be reached: the cause is logged for the operator.
    let down = companies_gateway::start_with(
        test_config(
            &format!("https://localhost:{}", closed_port().await),
            Some(pki.ca_file()),
        ),
        options,
    )
    .await
    .unwrap();
    let route = format!("http://{}/companies/v2/rs/1/contacts/2", down.public_addr);
    let failed = Request::builder()
        .method("PATCH")
        .uri(&route)
        .header("authorization", format!("Bearer {BEARER}5"))
        .header("x-session-token", SESSION)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
        .unwrap();
    assert_eq!(send(failed).await.status, 502);
    drop(down);

    // The access-log writer batches every few milliseconds: wait for the forged path's line.
    let written = async {
        while !String::from_utf8_lossy(&capture.0.lock().unwrap()).contains("/o/x") {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), written)
        .await
        .expect("the access line is written");
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    // The capture works: access-log events and trace-level events from hyper are there.
    assert!(logs.contains("access"), "no access log captured");
    assert!(logs.contains("TRACE"), "no trace-level events captured");
    assert!(
        logs.contains(r#"path="/o/x\"%20status=999""#),
        "the path is not quoted in the access line"
    );
    let upstream_failed = logs
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .expect("an upstream failure is logged");
    assert!(upstream_failed.contains("WARN"), "{upstream_failed}");
    assert!(
        upstream_failed.contains("kind=\"connect\""),
        "{upstream_failed}"
    );
    assert!(upstream_failed.contains("error="), "{upstream_failed}");
    let drift = logs
        .lines()
        .find(|l| l.contains("contract drift"))
        .expect("contract drift is logged");
    assert!(drift.contains("WARN"), "{drift}");
    for field in [
        "request_id=",
        "route=\"update_contact\"",
        "upstream_status=422",
    ] {
        assert!(drift.contains(field), "{field} missing: {drift}");
    }
    for secret in [BEARER, SESSION, COOKIE] {
        let leaked: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(secret))
            .take(3)
            .collect();
        assert!(leaked.is_empty(), "{secret} leaked into logs: {leaked:#?}");
    }
}
