//! Issue 15: a document of several operations through the whole stack, against a TLS mock
//! upstream: each request is matched once to its operation (concrete before templated, §4's
//! spellings), checked in the stages of gateway.md §2, session-checked exactly where the operation
//! requires the token, and forwarded with its bytes unchanged.

mod support;

use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::{Config, Dur};
use http::Request;
use http_body_util::Full;
use support::*;

const DOCUMENT: &str = r##"
openapi: 3.1.0
info: {title: routing test, version: "1"}
servers:
  - url: https://api.example/main
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
    session: {type: apiKey, in: header, name: X-Session-Token}
  schemas:
    Note:
      type: object
      required: [text]
      properties:
        text: {type: string, maxLength: 10}
        tags:
          type: array
          items: {type: string, pattern: "^[a-z]+$"}
          maxItems: 2
security:
  - bearer: []
    session: []
paths:
  /status:
    get:
      operationId: getStatus
      security: []
      responses: {"200": {description: ok}}
  /teams/{teamId}/notes:
    post:
      operationId: createNote
      parameters:
        - {name: teamId, in: path, required: true, schema: {type: integer}}
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Note"}
      responses: {"201": {description: created}}
  /teams/{teamId}/notes/{noteId}:
    get:
      operationId: getNote
      parameters:
        - {name: teamId, in: path, required: true, schema: {type: integer}}
        - {name: noteId, in: path, required: true, schema: {type: integer}}
        - {name: fields, in: query, schema: {type: string, enum: [text, tags]}}
      responses: {"200": {description: ok}}
  /teams/me/notes/{noteId}:
    get:
      operationId: getMyNote
      security:
        - bearer: []
      parameters:
        - {name: noteId, in: path, required: true, schema: {type: string, maxLength: 3}}
        - {name: X-Tenant, in: header, required: true, schema: {type: string, pattern: "^[a-z]+$"}}
      responses: {"200": {description: ok}}
"##;

struct Setup {
    _pki: Pki,
    mock: MockUpstream,
    intro: MockIntrospection,
    gw: companies_gateway::Running,
    _dir: std::path::PathBuf,
}

async fn setup(tweak: impl FnOnce(&mut Config)) -> Setup {
    init_crypto();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let intro = MockIntrospection::start(Verdict::status(200)).await;
    let doc = pki.write("openapi.yaml", DOCUMENT.as_bytes());
    let mut config = test_config(&mock.url("/main"), Some(pki.ca_file()));
    config.validation.openapi = Some(doc.clone());
    config.session.introspect_url = Some(intro.url());
    config.session.introspect_timeout = Dur(Duration::from_millis(500));
    tweak(&mut config);
    config.validate().unwrap();
    let gw = start_gateway(config).await;
    Setup {
        _pki: pki,
        mock,
        intro,
        gw,
        _dir: doc,
    }
}

fn req(s: &Setup, method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", s.gw.public_addr))
}

fn signed(b: http::request::Builder) -> http::request::Builder {
    b.header("authorization", "Bearer test-token")
        .header("x-session-token", "opaque-session")
}

fn body(b: http::request::Builder, bytes: &'static [u8]) -> Request<Full<Bytes>> {
    b.body(Full::new(Bytes::from_static(bytes))).unwrap()
}

#[tokio::test]
async fn a_public_operation_needs_no_credentials_and_no_session_check() {
    let s = setup(|_| {}).await;
    let got = send(body(req(&s, "GET", "/status"), b"")).await;
    assert_eq!(got.status, 200);
    assert_eq!(s.mock.count(), 1);
    assert_eq!(s.intro.calls(), 0);
    let scraped = scrape(&s.gw).await;
    assert!(
        scraped.contains(
            r#"gateway_requests_total{method="GET",outcome="forwarded",route="get_status",status="200"} 1"#
        ),
        "{scraped}"
    );
}

#[tokio::test]
async fn a_valid_body_is_forwarded_byte_for_byte_after_the_session_check() {
    let s = setup(|_| {}).await;
    let sent: &[u8] = b"{ \"text\" : \"hi\",\n \"tags\": [\"a\", \"b\"] }";
    let got = send(body(
        signed(req(&s, "POST", "/Teams/7/NOTES/?x=1")).header("content-type", "application/json"),
        b"{ \"text\" : \"hi\",\n \"tags\": [\"a\", \"b\"] }",
    ))
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(s.intro.calls(), 1);
    let seen = &s.mock.received()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/main/Teams/7/NOTES/?x=1");
    assert_eq!(&seen.body[..], sent);
    let scraped = scrape(&s.gw).await;
    assert!(
        scraped.contains(
            r#"gateway_requests_total{method="POST",outcome="forwarded",route="create_note",status="200"} 1"#
        ),
        "{scraped}"
    );
}

#[tokio::test]
async fn the_stages_answer_in_order_with_every_problem_of_the_first() {
    let s = setup(|_| {}).await;
    // Stage 1 before stage 2 and 3: no Authorization, no token, a wrong Content-Type.
    let got = send(body(
        req(&s, "POST", "/teams/7/notes").header("content-type", "text/plain"),
        b"{}",
    ))
    .await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["errors"][0]["header"], "Authorization");
    // Stage 2.
    let got = send(body(
        req(&s, "POST", "/teams/7/notes")
            .header("authorization", "Bearer t")
            .header("content-type", "text/plain"),
        b"{}",
    ))
    .await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["errors"][0]["header"], "X-Session-Token");
    // Stage 3.
    let got = send(body(
        signed(req(&s, "POST", "/teams/7/notes")).header("content-type", "text/plain"),
        b"{}",
    ))
    .await;
    assert_eq!(got.status, 415);
    // Stage 5: the path parameter and every body violation, each where it is.
    let got = send(body(
        signed(req(&s, "POST", "/teams/x/notes")).header("content-type", "application/json"),
        br#"{"text": "far too long text", "tags": ["ok", "NO", "x"]}"#,
    ))
    .await;
    assert_eq!(got.status, 400);
    let problem = got.json();
    assert_eq!(
        problem["type"],
        "urn:companies-gateway:problem:invalid-request"
    );
    let errors = problem["errors"].as_array().unwrap();
    let places: Vec<String> = errors
        .iter()
        .map(|e| {
            e.get("pointer")
                .or_else(|| e.get("parameter"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(places.contains(&"teamId".to_string()), "{problem}");
    assert!(places.contains(&"/text".to_string()), "{problem}");
    assert!(places.contains(&"/tags".to_string()), "{problem}");
    assert!(places.contains(&"/tags/1".to_string()), "{problem}");
    // Nothing was forwarded and no session was checked for any of them (stage 6 comes last).
    assert_eq!(s.mock.count(), 0);
    assert_eq!(s.intro.calls(), 0);
}

#[tokio::test]
async fn concrete_paths_win_and_each_operation_gets_its_own_checks() {
    let s = setup(|_| {}).await;
    // `/teams/me/notes/{noteId}` (bearer only, a header parameter), not `/teams/{teamId}/...`.
    let got = send(body(
        req(&s, "GET", "/teams/me/notes/abc")
            .header("authorization", "Bearer t")
            .header("x-tenant", "acme"),
        b"",
    ))
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(s.intro.calls(), 0, "getMyNote does not require the token");
    let got = send(body(
        req(&s, "GET", "/teams/me/notes/abcd")
            .header("authorization", "Bearer t")
            .header("x-tenant", "ACME"),
        b"",
    ))
    .await;
    assert_eq!(got.status, 400);
    let problem = got.json();
    let errors = problem["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["parameter"] == "noteId"),
        "{problem}"
    );
    assert!(
        errors.iter().any(|e| e["header"] == "X-Tenant"),
        "{problem}"
    );
    // The templated operation: integer ids, a query enum, and the session check.
    let got = send(body(
        signed(req(&s, "GET", "/teams/1/notes/2?fields=tags")),
        b"",
    ))
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(s.intro.calls(), 1);
    let got = send(body(
        signed(req(&s, "GET", "/teams/1/notes/2?fields=nope")),
        b"",
    ))
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["errors"][0]["parameter"], "fields");
    assert_eq!(s.mock.count(), 2);
    let targets: Vec<String> = s.mock.received().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        [
            "/main/teams/me/notes/abc",
            "/main/teams/1/notes/2?fields=tags"
        ]
    );
}

#[tokio::test]
async fn each_rejection_is_counted_under_the_place_that_failed_first() {
    let s = setup(|_| {}).await;
    let bearer = |b: http::request::Builder| b.header("authorization", "Bearer t");
    // A header parameter alone: `header`.
    let got = send(body(
        bearer(req(&s, "GET", "/teams/me/notes/abc")).header("x-tenant", "ACME"),
        b"",
    ))
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["errors"][0]["header"], "X-Tenant");
    // A path parameter beside a failing header: `path`, counted once.
    let got = send(body(
        bearer(req(&s, "GET", "/teams/me/notes/abcd")).header("x-tenant", "ACME"),
        b"",
    ))
    .await;
    assert_eq!(got.status, 400);
    // A query parameter: `query`, rendered as a `parameter`.
    let got = send(body(
        signed(req(&s, "GET", "/teams/1/notes/2?fields=nope")),
        b"",
    ))
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["errors"][0]["parameter"], "fields");
    // A body: `body`.
    let got = send(body(
        signed(req(&s, "POST", "/teams/1/notes")).header("content-type", "application/json"),
        br#"{"text": 1}"#,
    ))
    .await;
    assert_eq!(got.status, 400);
    for (route, reason) in [
        ("get_my_note", "header"),
        ("get_my_note", "path"),
        ("get_note", "query"),
        ("create_note", "body"),
    ] {
        let series = format!("gateway_rejections_total{{reason=\"{reason}\",route=\"{route}\"}}");
        assert_eq!(metric(&s.gw, &series).await, 1.0, "{series}");
    }
    assert_eq!(s.mock.count(), 0);
}

#[tokio::test]
async fn an_invalid_session_is_refused_only_where_the_operation_requires_it() {
    let s = setup(|_| {}).await;
    s.intro.set(Verdict::status(401));
    let got = send(body(signed(req(&s, "GET", "/teams/1/notes/2")), b"")).await;
    assert_eq!(got.status, 401);
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:invalid-session"
    );
    // The same credentials on an operation without the token requirement pass.
    let got = send(body(
        signed(req(&s, "GET", "/teams/me/notes/1")).header("x-tenant", "acme"),
        b"",
    ))
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(s.mock.count(), 1);
    assert_eq!(s.mock.received()[0].target, "/main/teams/me/notes/1");
}

#[tokio::test]
async fn a_request_on_no_operation_streams_through_or_is_refused() {
    let s = setup(|_| {}).await;
    let got = send(body(req(&s, "DELETE", "/teams/1/notes/2"), b"raw")).await;
    assert_eq!(got.status, 200);
    assert_eq!(&s.mock.received()[0].body[..], b"raw");
    let s =
        setup(|c| c.validation.unknown_routes = companies_gateway::config::UnknownRoutes::Reject)
            .await;
    let got = send(body(req(&s, "DELETE", "/teams/1/notes/2"), b"")).await;
    assert_eq!(got.status, 404);
    let got = send(body(req(&s, "GET", "/status/"), b"")).await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn a_document_that_cannot_be_loaded_fails_start_up_naming_the_key_and_pointer() {
    init_crypto();
    let pki = Pki::new();
    let doc = pki.write(
        "bad.yaml",
        b"openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /x:\n    get:\n      parameters:\n        - {name: a, in: query, schema: {type: string, bogus: 1}}\n",
    );
    let mut config = test_config("https://localhost:1/main", Some(pki.ca_file()));
    config.validation.openapi = Some(doc);
    let err = match companies_gateway::start(config).await {
        Ok(_) => panic!("a bad document must fail start-up"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("validation.openapi"), "{err}");
    assert!(err.contains("/paths/~1x/get/parameters/0"), "{err}");
}
