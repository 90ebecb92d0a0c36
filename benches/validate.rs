//! `cargo bench --bench validate -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use companies_gateway::contract::{
    check_authorization, check_body, check_content_type, check_path_params, check_session_token,
    Api, CompileOptions, UnknownFields,
};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};

const EXAMPLE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/shared/contract/examples/update-contact.request.json"
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

/// An OpenAPI 3.1 document of `ops` operations, each with path, query and header parameters and
/// a body of 24 typed members (some through shared `$ref`s), padded to about 2 KB per operation.
pub fn generated_document(ops: usize) -> String {
    let mut paths = serde_json::Map::new();
    for i in 0..ops {
        let mut props = serde_json::Map::new();
        for j in 0..24 {
            let schema = match j % 8 {
                0 => {
                    serde_json::json!({"type": "string", "maxLength": 64 + j, "description": format!("member {j} of operation {i}")})
                }
                1 => serde_json::json!({"type": "integer", "minimum": 0, "maximum": 1000 * j}),
                2 => serde_json::json!({"type": ["string", "null"], "format": "email"}),
                3 => {
                    serde_json::json!({"type": "array", "maxItems": 10, "items": {"type": "string", "pattern": "^[a-z0-9-]+$"}})
                }
                4 => serde_json::json!({"$ref": "#/components/schemas/Address"}),
                5 => serde_json::json!({"type": "string", "enum": ["a", "b", "c"]}),
                6 => {
                    serde_json::json!({"type": "number", "multipleOf": 0.5, "exclusiveMinimum": 0})
                }
                _ => serde_json::json!({"type": "boolean"}),
            };
            props.insert(format!("field{j}"), schema);
        }
        let op = serde_json::json!({
            "post": {
                "operationId": format!("createItem{i}"),
                "summary": "Create an item in one of the generated collections of the benchmark",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "format": "int64"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "X-Session-Token", "in": "header", "required": true, "schema": {"type": "string"}}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["field0", "field1"], "properties": props
                }}}},
                "responses": {"200": {"description": "ok"}}
            }
        });
        paths.insert(format!("/collections{i}/items/{{id}}"), op);
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {"title": "generated", "version": "1"},
        "servers": [{"url": "https://api.example.com/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Address": {"type": "object", "required": ["city"], "properties": {
                "street": {"type": "string", "maxLength": 200},
                "city": {"type": "string", "minLength": 1, "maxLength": 100},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
            }}}
        },
        "paths": paths
    })
    .to_string()
}

/// Resident memory of this process, in bytes (Linux), for the compiled form's footprint.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn bench(c: &mut Criterion) {
    assert_eq!(check_body(EXAMPLE, UnknownFields::Reject), Ok(()));
    let headers = valid_headers();
    assert!(check_authorization(&headers).is_ok());
    assert!(check_session_token(&headers).is_ok());
    assert!(check_content_type(&headers).is_ok());

    let api = Api::builtin(&CompileOptions::default()).expect("the built-in document");
    let op = &api.operations()[0];
    assert_eq!(op.check_json_body(EXAMPLE), Ok(()));
    c.bench_function("update_contact/body/compiled", |b| {
        b.iter(|| op.check_json_body(black_box(EXAMPLE)))
    });
    c.bench_function("update_contact/head/compiled", |b| {
        b.iter(|| op.check_head(black_box(&headers)))
    });

    let doc = generated_document(500);
    let opts = CompileOptions::default();
    let before = resident_bytes();
    let compiled = Api::from_text(&doc, &opts).expect("the generated document compiles");
    let after = resident_bytes();
    println!(
        "generated document: {} bytes, {} operations; resident memory grew by {} KiB while compiling and holding it",
        doc.len(),
        compiled.operations().len(),
        after.zip(before).map_or(0, |(a, b)| a.saturating_sub(b) / 1024)
    );
    drop(compiled);
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("generated_1mb_500_operations", |b| {
        b.iter(|| Api::from_text(black_box(&doc), &opts))
    });
    group.finish();

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
