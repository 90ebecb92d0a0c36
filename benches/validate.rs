//! `cargo bench --bench validate -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use companies_gateway::contract::{
    check_authorization, check_body, check_content_type, check_path_params, check_session_token,
    UnknownFields,
};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};

const EXAMPLE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/contract/examples/update-contact.request.json"
));

fn valid_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static(
            "Bearer dGhpcy1pcy1hLWJlYXJlci10b2tlbi1mb3ItdGhlLWJlbmNo.c2lnbmF0dXJl",
        ),
    );
    headers.insert(
        "x-session-token",
        HeaderValue::from_static(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOiIxMjM0NTY3ODkwIiwic2Vzc2lvbklkIjoiYWJjZGVmMTIzNDU2IiwiaWF0IjoxNjA1MDk3ODk5LCJleHAiOjE2MDUxODQyOTl9.4XRQ1iXDyvEj5LgPZHbmTmzOZs98M3YPOzgf3MhxjaI",
        ),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers
}

fn bench(c: &mut Criterion) {
    assert_eq!(check_body(EXAMPLE, UnknownFields::Reject), Ok(()));
    let headers = valid_headers();
    assert!(check_authorization(&headers).is_ok());
    assert!(check_session_token(&headers).is_ok());
    assert!(check_content_type(&headers).is_ok());

    c.bench_function("check_body/example", |b| {
        b.iter(|| check_body(black_box(EXAMPLE), black_box(UnknownFields::Reject)))
    });
    c.bench_function("check_authorization", |b| {
        b.iter(|| check_authorization(black_box(&headers)))
    });
    c.bench_function("check_session_token", |b| {
        b.iter(|| check_session_token(black_box(&headers)))
    });
    c.bench_function("check_content_type", |b| {
        b.iter(|| check_content_type(black_box(&headers)))
    });
    c.bench_function("check_path_params", |b| {
        b.iter(|| check_path_params(black_box("1234567"), black_box("-9223372036854775808")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
