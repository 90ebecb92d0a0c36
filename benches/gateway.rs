//! Criterion micro-benchmarks of the request path without a socket:
//! `cargo bench --bench gateway -- --warm-up-time 1 --measurement-time 3`
//!
//! - the session cache: a hit, and a miss (opaque token, local checks, insert);
//! - the header checks: edge checks and the contract's stages 1-3;
//! - building the forwarded request (hop-by-hop stripping, forwarded headers, URI).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use companies_gateway::config::{OnVerifierError, UpstreamTarget};
use companies_gateway::contract::{Api, CompileOptions};
use companies_gateway::edge::check_headers as edge_headers;
use companies_gateway::forward::{upstream_request, ForwardConfig};
use companies_gateway::headers::ConnInfo;
use companies_gateway::metrics::Metrics;
use companies_gateway::route::{Match, Router};
use companies_gateway::session::cache::{SessionCache, SystemClock, Ttls};
use companies_gateway::session::jwt::JwtKey;
use companies_gateway::session::Session;
use companies_gateway::{full_body, Body};
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderValue, Request};

const EXAMPLE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/shared/contract/examples/update-contact.request.json"
));
const SESSION: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOiIxMjM0NTY3ODkwIiwic2Vzc2lvbklkIjoiYWJjZGVmMTIzNDU2IiwiaWF0IjoxNjA1MDk3ODk5LCJleHAiOjQxMDUxODQyOTl9.sig";

fn session() -> Session {
    Session {
        cache: SessionCache::new(
            100_000,
            Ttls {
                valid: Duration::from_secs(3600),
                invalid: Duration::from_secs(10),
                stale_if_error: Duration::ZERO,
            },
            Arc::new(SystemClock),
        ),
        jwt: JwtKey::None,
        introspector: None,
        leeway: Duration::from_secs(30),
        learn_from_upstream: true,
        on_verifier_error: OnVerifierError::Reject,
        metrics: Metrics::new(&[0.001, 0.01, 0.1, 1.0]).expect("metrics"),
    }
}

fn request() -> Request<Body> {
    Request::builder()
        .method("PATCH")
        .uri("/companies/v2/rs/1/contacts/2?x=1")
        .header("host", "gateway.example")
        .header("authorization", "Bearer dGhpcy1pcy1hLWJlYXJlci10b2tlbg")
        .header("x-session-token", SESSION)
        .header("content-type", "application/json")
        .header("content-length", EXAMPLE.len())
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .header("connection", "keep-alive")
        .header("x-request-id", "0b9c2f6e-1a52-4c1f-9d6a-7f0f2e9b9b11")
        .body(full_body(EXAMPLE))
        .expect("request")
}

fn bench_session(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = session();
    let auth = HeaderValue::from_static("Bearer dGhpcy1pcy1hLWJlYXJlci10b2tlbg");
    let token = HeaderValue::from_static(SESSION);
    rt.block_on(s.decide(&auth, &token)).expect("valid");
    c.bench_function("session cache hit", |b| {
        b.iter(|| {
            let out = s.decide(black_box(&auth), black_box(&token)).now_or_never();
            assert!(matches!(out, Some(Ok(_))));
        })
    });
    let n = AtomicU64::new(0);
    c.bench_function("session cache miss (opaque token, insert)", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let token = HeaderValue::from_str(&format!("opaque-session-{i}")).expect("token");
            rt.block_on(s.decide(&auth, &token)).expect("valid");
        })
    });
}

fn bench_headers(c: &mut Criterion) {
    let req = request();
    c.bench_function("edge header checks", |b| {
        b.iter(|| edge_headers(black_box(req.headers())).expect("ok"))
    });
    let opts = CompileOptions {
        token_header: http::HeaderName::from_static("x-session-token"),
        unknown_fields: Default::default(),
        unknown_query: Default::default(),
    };
    let api = Api::builtin(&opts).expect("built-in document");
    let op = &api.operations()[0];
    c.bench_function("contract header checks (stages 1-3)", |b| {
        b.iter(|| op.check_head(black_box(req.headers())).expect("ok"))
    });
}

/// Route recognition (target: at most 50 ns): the built-in document, and a generated one of 500
/// operations whose paths share prefixes and overlap (concrete and templated).
fn bench_route(c: &mut Criterion) {
    let patch = http::Method::PATCH;
    let one = Router::new([(&patch, "/companies/v2/rs/{companyId}/contacts/{contactId}")])
        .expect("router");
    let path = "/companies/v2/rs/6218/contacts/3120";
    assert!(matches!(
        one.recognise(&patch, path),
        Match::Operation { .. }
    ));
    c.bench_function("route recognition (built-in document)", |b| {
        b.iter(|| one.recognise(black_box(&patch), black_box(path)))
    });
    let methods = [
        http::Method::GET,
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
    ];
    let mut templates = Vec::new();
    for i in 0..100 {
        templates.push(format!("/companies/v2/rs/{{companyId}}/resource{i}/{{id}}"));
    }
    let ops: Vec<(&http::Method, &str)> = templates
        .iter()
        .flat_map(|t| methods.iter().map(move |m| (m, t.as_str())))
        .collect();
    let many = Router::new(ops).expect("router");
    let path = "/companies/v2/rs/6218/resource99/3120";
    assert!(matches!(
        many.recognise(&patch, path),
        Match::Operation { .. }
    ));
    c.bench_function("route recognition (500 operations)", |b| {
        b.iter(|| many.recognise(black_box(&patch), black_box(path)))
    });
    c.bench_function("route recognition (500 operations, no match)", |b| {
        b.iter(|| many.recognise(black_box(&patch), black_box("/other/path/x")))
    });
}

fn bench_forward(c: &mut Criterion) {
    let cfg = ForwardConfig {
        target: UpstreamTarget::parse(
            "https://z52mnqg347.execute-api.eu-west-3.amazonaws.com/main",
        )
        .expect("target"),
        request_timeout: Duration::from_secs(15),
        body_read_timeout: Duration::from_secs(10),
    };
    let conn = ConnInfo::new(SocketAddr::from(([203, 0, 113, 7], 51000)), false, &[]);
    c.bench_function("build the forwarded request", |b| {
        b.iter_batched(
            request,
            |req| upstream_request(req, black_box(&cfg), conn).expect("ok"),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    bench_session,
    bench_headers,
    bench_forward,
    bench_route
);
criterion_main!(benches);
