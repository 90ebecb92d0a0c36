//! Issue 15: the session check is fail-closed. The stack's parts are assembled in other orders
//! (session layer removed, placed before the contract, contract removed) and driven with real
//! requests against a TLS mock upstream: no request on an operation that requires the session
//! reaches the upstream without a verdict, while a request on no operation still does.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use companies_gateway::headers::ConnInfo;
use companies_gateway::metrics::Metrics;
use companies_gateway::problem::ProblemLayer;
use companies_gateway::request_id::RequestIdLayer;
use companies_gateway::stack::{self, Parts};
use companies_gateway::{full_body, Body, Options};
use http::{Request, Response};
use http_body_util::BodyExt;
use support::*;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Stack = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// The orders under test; `Canonical` is `stack::build`'s.
#[derive(Debug, Clone, Copy)]
enum Order {
    Canonical,
    WithoutSession,
    SessionBeforeContract,
    WithoutContract,
}

fn assemble(p: Parts, order: Order) -> Stack {
    let head = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(p.context)
        .layer(p.observe)
        .layer(ProblemLayer)
        .layer(p.edge);
    match order {
        Order::Canonical => {
            BoxCloneService::new(head.layer(p.contract).layer(p.session).service(p.forward))
        }
        Order::WithoutSession => BoxCloneService::new(head.layer(p.contract).service(p.forward)),
        Order::SessionBeforeContract => {
            BoxCloneService::new(head.layer(p.session).layer(p.contract).service(p.forward))
        }
        Order::WithoutContract => BoxCloneService::new(head.layer(p.session).service(p.forward)),
    }
}

/// A request as the listener hands it to the stack: with the connection's info.
fn request(method: &str, path: &str, body: &'static [u8], session: bool) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test")
        .header("authorization", "Bearer test-token")
        .header("content-type", "application/json");
    if session {
        b = b.header("x-session-token", "opaque-session");
    }
    let mut req = b.body(full_body(body)).unwrap();
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    req.extensions_mut().insert(ConnInfo::new(peer, false, &[]));
    req
}

async fn call(svc: &Stack, req: Request<Body>) -> (u16, serde_json::Value) {
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn no_order_of_the_layers_forwards_an_operation_without_its_verdict() {
    init_crypto();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let config = test_config(&mock.url("/main"), Some(pki.ca_file()));
    let update = "/companies/v2/rs/1/contacts/2";
    for order in [
        Order::WithoutSession,
        Order::SessionBeforeContract,
        Order::WithoutContract,
    ] {
        let metrics = Metrics::new(&[1.0]).unwrap();
        let parts = stack::parts(&config, &metrics, &Options::default()).unwrap();
        let svc = assemble(parts, order);
        let before = mock.count();
        let (status, problem) = call(&svc, request("PATCH", update, EXAMPLE_REQUEST, true)).await;
        assert_eq!(status, 500, "{order:?}: {problem}");
        assert_eq!(
            problem["type"], "urn:companies-gateway:problem:internal",
            "{order:?}"
        );
        assert_eq!(
            mock.count(),
            before,
            "{order:?}: forwarded without a verdict"
        );
        // The trailing-slash and letter-case spellings are the same operation.
        let (status, _) = call(
            &svc,
            request(
                "PATCH",
                "/COMPANIES/v2/rs/1/Contacts/2/",
                EXAMPLE_REQUEST,
                true,
            ),
        )
        .await;
        assert_eq!(status, 500, "{order:?}");
        assert_eq!(mock.count(), before, "{order:?}");
        // A request on no operation still goes through: the harness does forward.
        let (status, _) = call(&svc, request("GET", "/some/other/route", b"", false)).await;
        assert_eq!(status, 200, "{order:?}");
        assert_eq!(mock.count(), before + 1, "{order:?}");
    }
}

#[tokio::test]
async fn the_canonical_order_forwards_after_the_verdict() {
    init_crypto();
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let config = test_config(&mock.url("/main"), Some(pki.ca_file()));
    let metrics = Metrics::new(&[1.0]).unwrap();
    let parts = stack::parts(&config, &metrics, &Options::default()).unwrap();
    let svc = assemble(parts, Order::Canonical);
    let update = "/companies/v2/rs/1/contacts/2";
    let (status, problem) = call(&svc, request("PATCH", update, EXAMPLE_REQUEST, true)).await;
    assert_eq!(status, 200, "{problem}");
    assert_eq!(mock.count(), 1);
    assert_eq!(&mock.received()[0].body[..], EXAMPLE_REQUEST);
    // Stage 2 still answers first when the token is missing, in every order that has the contract.
    let (status, problem) = call(&svc, request("PATCH", update, EXAMPLE_REQUEST, false)).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(mock.count(), 1);
}
