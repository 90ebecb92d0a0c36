//! Issue 3: the update-contact contract enforced by the real stack, in front of a real HTTPS mock
//! upstream. Every rejected request is proven never to reach it.

mod support;

use bytes::Bytes;
use companies_gateway::config::{Mode, UnknownFields, UnknownRoutes};
use companies_gateway::Config;
use http::Request;
use http_body_util::{Full, StreamBody};
use support::*;

const ROUTE: &str = "/companies/v2/rs/1/contacts/2";

async fn setup_with(
    tweak: impl FnOnce(&mut Config),
) -> (Pki, MockUpstream, companies_gateway::Running) {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url("/main"), Some(pki.ca_file()));
    tweak(&mut config);
    let gw = start_gateway(config).await;
    (pki, mock, gw)
}

async fn setup() -> (Pki, MockUpstream, companies_gateway::Running) {
    setup_with(|_| {}).await
}

fn patch(
    gw: &companies_gateway::Running,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method("PATCH")
        .uri(format!("http://{}{}", gw.public_addr, path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

const GOOD: [(&str, &str); 3] = [
    ("authorization", "Bearer abc.DEF-123_~+/=="),
    ("x-session-token", "opaque-session-token"),
    ("content-type", "application/json"),
];

fn with(overrides: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = GOOD
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (name, value) in overrides {
        h.retain(|(k, _)| k != name);
        if let Some(v) = value {
            h.push((name.to_string(), v.to_string()));
        }
    }
    h
}

fn refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn the_example_passes_and_is_forwarded_byte_for_byte() {
    let (_pki, mock, gw) = setup().await;
    // Odd whitespace and key order must survive: the body is never re-serialised.
    let body = b"{ \"phones\":[\"phone1\"] ,\n\t\"notify\" : true }  ";
    for (path, body) in [(ROUTE, EXAMPLE_REQUEST), (ROUTE, &body[..])] {
        let got = send(patch(&gw, path, &GOOD, body)).await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        assert_eq!(&got.body[..], EXAMPLE_RESPONSE);
    }
    let seen = mock.received();
    assert_eq!(seen.len(), 2);
    assert_eq!(&seen[0].body[..], EXAMPLE_REQUEST);
    assert_eq!(&seen[1].body[..], &body[..]);
    assert_eq!(seen[0].target, "/main/companies/v2/rs/1/contacts/2");
    assert_eq!(seen[0].values("authorization"), vec![GOOD[0].1]);
    assert_eq!(seen[0].values("x-session-token"), vec![GOOD[1].1]);
}

#[tokio::test]
async fn header_stages_answer_401_and_415_and_never_reach_the_upstream() {
    let (_pki, mock, gw) = setup().await;
    let long = format!("Bearer {}", "a".repeat(8000));
    let long_session = "s".repeat(4097);
    type Case<'a> = (Vec<(String, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (with(&[("authorization", None)]), 401, "Authorization"),
        (
            with(&[("authorization", Some("Basic dXNlcjpwYXNz"))]),
            401,
            "Authorization",
        ),
        (
            with(&[("authorization", Some("Bearer"))]),
            401,
            "Authorization",
        ),
        (
            with(&[("authorization", Some("Bearer a b"))]),
            401,
            "Authorization",
        ),
        (with(&[("x-session-token", None)]), 401, "X-Session-Token"),
        (
            with(&[("x-session-token", Some(""))]),
            401,
            "X-Session-Token",
        ),
        (
            with(&[("x-session-token", Some(&long_session))]),
            401,
            "X-Session-Token",
        ),
        (with(&[("content-type", None)]), 415, "Content-Type"),
        (
            with(&[("content-type", Some("text/plain"))]),
            415,
            "Content-Type",
        ),
        (
            with(&[("content-type", Some("application/json; charset=latin1"))]),
            415,
            "Content-Type",
        ),
    ];
    for (headers, status, header) in cases {
        let got = send(patch(&gw, ROUTE, &refs(&headers), EXAMPLE_REQUEST)).await;
        assert_eq!(got.status, status, "{headers:?}");
        let p = got.json();
        assert_eq!(p["errors"][0]["header"], header, "{headers:?}: {p}");
        if status == 401 {
            assert_eq!(got.headers["www-authenticate"], "Bearer");
            assert_eq!(p["type"], "urn:companies-gateway:problem:unauthorized");
        } else {
            assert_eq!(
                p["type"],
                "urn:companies-gateway:problem:unsupported-media-type"
            );
        }
        // No secret is echoed.
        let text = String::from_utf8_lossy(&got.body);
        assert!(!text.contains("dXNlcjpwYXNz") && !text.contains("opaque-session-token"));
    }
    // A repeated Authorization header.
    let mut req = patch(&gw, ROUTE, &GOOD, EXAMPLE_REQUEST);
    req.headers_mut()
        .append("authorization", "Bearer other".parse().unwrap());
    let got = send(req).await;
    assert_eq!(got.status, 401);
    // Accepted spellings of the headers; a bearer token has no length limit of its own.
    for headers in [
        with(&[("authorization", Some(&long))]),
        with(&[("authorization", Some("bearer   tok"))]),
        with(&[("authorization", Some("BEARER tok=="))]),
        with(&[("content-type", Some("Application/JSON; charset=UTF-8"))]),
    ] {
        let got = send(patch(&gw, ROUTE, &refs(&headers), EXAMPLE_REQUEST)).await;
        assert_eq!(
            got.status,
            200,
            "{headers:?}: {}",
            String::from_utf8_lossy(&got.body)
        );
    }
    assert_eq!(
        mock.count(),
        4,
        "only the accepted spellings reached the upstream"
    );
}

#[tokio::test]
async fn the_first_failing_stage_answers() {
    let (_pki, mock, gw) = setup().await;
    // Stages 1, 3 and 5 all fail: stage 1 answers.
    let headers = with(&[
        ("authorization", None),
        ("content-type", Some("text/plain")),
    ]);
    let got = send(patch(
        &gw,
        "/companies/v2/rs/x/contacts/2",
        &refs(&headers),
        b"[",
    ))
    .await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["errors"].as_array().unwrap().len(), 1);
    // Stages 3 and 5: stage 3 answers.
    let headers = with(&[("content-type", Some("text/plain"))]);
    let got = send(patch(
        &gw,
        "/companies/v2/rs/x/contacts/2",
        &refs(&headers),
        b"[",
    ))
    .await;
    assert_eq!(got.status, 415);
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn every_path_and_body_violation_is_reported_in_one_400() {
    let (_pki, mock, gw) = setup().await;
    let body = format!(
        r#"{{"name":"{}","email":"Joe <joe@example.com>","phones":["1","2","{}"],"comment":null,"companyId":2}}"#,
        "n".repeat(251),
        "p".repeat(51)
    );
    let got = send(patch(
        &gw,
        "/companies/v2/rs/1.5/contacts/+2",
        &GOOD,
        body.as_bytes(),
    ))
    .await;
    assert_eq!(got.status, 400);
    let p = got.json();
    assert_eq!(p["type"], "urn:companies-gateway:problem:invalid-request");
    let errors: Vec<(String, String)> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let at = e.get("pointer").or(e.get("parameter")).unwrap();
            (
                at.as_str().unwrap().to_string(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("companyId", "integer"),
        ("contactId", "integer"),
        ("/notify", "required"),
        ("/name", "max_length"),
        ("/email", "format"),
        ("/phones/2", "max_length"),
        ("/companyId", "unknown_field"),
    ] {
        assert!(
            errors.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing from {errors:?}"
        );
    }
    assert_eq!(errors.len(), 7, "{errors:?}");
    assert_eq!(mock.count(), 0);
    assert_eq!(
        metric(
            &gw,
            "gateway_contract_violations_total{code=\"unknown_field\",field=\"unknown\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_rejections_total{reason=\"path\",route=\"update_contact\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_malformed_document_names_line_and_column() {
    let (_pki, mock, gw) = setup().await;
    let got = send(patch(&gw, ROUTE, &GOOD, b"{\n  \"notify\": tru\n}")).await;
    assert_eq!(got.status, 400);
    let p = got.json();
    assert_eq!(p["errors"][0]["code"], "syntax");
    assert_eq!(p["errors"][0]["pointer"], "");
    let detail = p["errors"][0]["detail"].as_str().unwrap();
    // serde_json reports where it gave up: after `tru` and the newline.
    assert!(
        detail.contains("line 3") && detail.contains("column"),
        "{detail}"
    );
    for body in [
        &b"{\"notify\":true}{}"[..],
        b"{\"notify\":true,\"notify\":false}",
        b"[]",
        b"",
    ] {
        let got = send(patch(&gw, ROUTE, &GOOD, body)).await;
        assert_eq!(got.status, 400, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_chunked() {
    let (_pki, mock, gw) = setup_with(|c| c.limits.max_body_bytes = 1024).await;
    let big = format!("{{\"notify\":true,\"comment\":\"{}\"}}", "x".repeat(2000));
    let got = send(patch(&gw, ROUTE, &GOOD, big.as_bytes())).await;
    assert_eq!(got.status, 413);
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:payload-too-large"
    );

    // Chunked, with no Content-Length.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b' '; 400]))))
        .collect();
    let body = http_body_util::BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
    let mut b = Request::builder()
        .method("PATCH")
        .uri(format!("http://{}{ROUTE}", gw.public_addr));
    for (k, v) in GOOD {
        b = b.header(k, v);
    }
    let res = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http()
        .request(b.body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 413);

    // Exactly at the limit is fine.
    let at_limit = format!(
        "{{\"notify\":true,\"comment\":\"{}\"}}",
        "x".repeat(1024 - 28)
    );
    assert_eq!(at_limit.len(), 1024);
    let got = send(patch(&gw, ROUTE, &GOOD, at_limit.as_bytes())).await;
    assert_eq!(got.status, 200);
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn route_spellings_are_validated_and_forwarded_as_spelled() {
    let (_pki, mock, gw) = setup().await;
    for path in [
        "/companies/v2/rs/1/contacts/2/",
        "/COMPANIES/V2/rs/1/Contacts/2",
    ] {
        let got = send(patch(&gw, path, &GOOD, b"{}")).await;
        assert_eq!(got.status, 400, "{path} escaped validation");
        let got = send(patch(&gw, path, &GOOD, EXAMPLE_REQUEST)).await;
        assert_eq!(got.status, 200, "{path}");
    }
    let seen = mock.received();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/main/companies/v2/rs/1/contacts/2/");
    assert_eq!(seen[1].target, "/main/COMPANIES/V2/rs/1/Contacts/2");
}

#[tokio::test]
async fn non_canonical_paths_are_400_on_every_route() {
    let (_pki, mock, gw) = setup().await;
    for path in [
        "/companies/v2/rs/1/contacts//2",
        "/companies/v2/rs/1/x/../contacts/2",
        "/companies/v2/./rs/1/contacts/2",
        "/companies/v2/rs/%31/contacts/2",
        "/other//route",
    ] {
        let got = send(patch(&gw, path, &GOOD, EXAMPLE_REQUEST)).await;
        assert_eq!(got.status, 400, "{path}");
        assert_eq!(
            got.json()["type"],
            "urn:companies-gateway:problem:bad-request"
        );
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn other_methods_and_routes_pass_untouched() {
    let (_pki, mock, gw) = setup().await;
    let got = send(
        Request::builder()
            .method("PUT")
            .uri(format!("http://{}{ROUTE}", gw.public_addr))
            .body(Full::new(Bytes::from_static(b"not json at all")))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    let got = send(
        Request::get(format!(
            "http://{}/companies/v2/rs/1/contacts",
            gw.public_addr
        ))
        .body(Full::new(Bytes::new()))
        .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(&mock.received()[0].body[..], b"not json at all");
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn unknown_routes_can_be_rejected() {
    let (_pki, mock, gw) =
        setup_with(|c| c.validation.unknown_routes = UnknownRoutes::Reject).await;
    let got = send(get(gw.public_addr, "/elsewhere")).await;
    assert_eq!(got.status, 404);
    assert_eq!(
        got.json()["type"],
        "urn:companies-gateway:problem:unknown-route"
    );
    let got = send(patch(&gw, ROUTE, &GOOD, EXAMPLE_REQUEST)).await;
    assert_eq!(got.status, 200);
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn unknown_fields_can_be_allowed_and_pass_untouched() {
    let (_pki, mock, gw) = setup_with(|c| c.validation.unknown_fields = UnknownFields::Allow).await;
    let body = br#"{"notify":false,"companyId":2,"extra":{"a":[1,2]}}"#;
    let got = send(patch(&gw, ROUTE, &GOOD, body)).await;
    assert_eq!(got.status, 200);
    assert_eq!(&mock.received()[0].body[..], &body[..]);
}

#[tokio::test]
async fn report_mode_forwards_violations_but_counts_them() {
    let (_pki, mock, gw) = setup_with(|c| c.validation.mode = Mode::Report).await;
    let body = br#"{"name":42,"companyId":2}"#;
    let got = send(patch(&gw, ROUTE, &GOOD, body)).await;
    assert_eq!(got.status, 200);
    assert_eq!(&mock.received()[0].body[..], &body[..]);
    assert_eq!(
        metric(&gw, "gateway_report_only_total{route=\"update_contact\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_contract_violations_total{code=\"required\",field=\"notify\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_contract_violations_total{code=\"type\",field=\"name\"}"
        )
        .await,
        1.0
    );
    // Stages 1-4 are still enforced.
    let headers = with(&[("authorization", None)]);
    let got = send(patch(&gw, ROUTE, &refs(&headers), body)).await;
    assert_eq!(got.status, 401);
    assert_eq!(mock.count(), 1);
}

mod forwarded_byte_for_byte {
    use super::*;
    use proptest::prelude::*;

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..=max).prop_map(|c| c.into_iter().collect())
    }

    fn body() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            proptest::option::of(text(250)),
            proptest::option::of(proptest::option::of(
                "[a-z]{1,10}@[a-z]{1,10}\\.(com|org|fr)",
            )),
            proptest::option::of(proptest::collection::vec(text(50), 0..=5)),
            proptest::option::of(proptest::option::of(text(300))),
        )
            .prop_map(|(notify, name, email, phones, comment)| {
                let mut members = vec![format!("\"notify\": {notify}")];
                if let Some(n) = name {
                    members.push(format!("\"name\":{}", serde_json::to_string(&n).unwrap()));
                }
                if let Some(e) = email {
                    members.push(format!("\"email\" :{}", serde_json::to_string(&e).unwrap()));
                }
                if let Some(p) = phones {
                    members.push(format!("\"phones\":{}", serde_json::to_string(&p).unwrap()));
                }
                if let Some(c) = comment {
                    members.push(format!(
                        "\"comment\":\n{}",
                        serde_json::to_string(&c).unwrap()
                    ));
                }
                format!("{{ {} }}", members.join(" ,\t"))
            })
    }

    #[test]
    fn any_valid_body_passes_and_arrives_unchanged() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_pki, mock, gw) = rt.block_on(setup());
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 48,
            ..ProptestConfig::default()
        });
        runner
            .run(&body(), |body| {
                let before = mock.count();
                let got = rt.block_on(send(patch(&gw, ROUTE, &GOOD, body.as_bytes())));
                prop_assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
                let seen = mock.received();
                prop_assert_eq!(seen.len(), before + 1);
                prop_assert_eq!(&seen[before].body[..], body.as_bytes());
                Ok(())
            })
            .unwrap();
    }
}

#[tokio::test]
async fn a_body_with_thousands_of_violations_gets_a_bounded_answer_and_full_counts() {
    let (_pki, mock, gw) = setup().await;
    // 32,000 wrong phone items in under 64 KiB.
    let phones = vec!["0"; 32_000].join(",");
    let body = format!(r#"{{"notify":true,"phones":[{phones}]}}"#);
    let got = send(patch(&gw, ROUTE, &GOOD, body.as_bytes())).await;
    assert_eq!(got.status, 400);
    assert!(got.body.len() < 32 * 1024, "{} bytes", got.body.len());
    let p = got.json();
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(100));
    assert_eq!(
        p["detail"],
        "32001 violation(s) of the contract; the first 100 are listed"
    );
    assert_eq!(p["errors"][0]["code"], "max_items");
    assert_eq!(
        metric(
            &gw,
            "gateway_contract_violations_total{code=\"type\",field=\"phones\"}"
        )
        .await,
        32_000.0
    );
    assert_eq!(mock.count(), 0);
}
