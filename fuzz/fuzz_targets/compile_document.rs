//! `RUSTC_BOOTSTRAP=1 cargo fuzz run compile_document -- -max_len=4096 -max_total_time=120`
//!
//! The input, as text, is an OpenAPI document (YAML or JSON), or, when it starts with `#`, the
//! schema of one operation's JSON body wrapped in a 3.1 document. Loading must never panic and
//! ends in bounded time (no pattern costs more than linear time, cycles are refused); a document
//! that loads then checks bodies without panicking, and only ever answers with labels it declared.

#![no_main]

use companies_gateway::contract::{Api, CompileOptions, UnknownFields};
use libfuzzer_sys::fuzz_target;

const BODIES: &[&[u8]] = &[
    b"{}",
    b"[]",
    b"null",
    b"{\"a\":[1,2.5,\"x\",{\"b\":null}],\"c\":true}",
    b"{\"a\":1,\"a\":2}",
    b"\"text\"",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let document = match text.strip_prefix('#') {
        Some(schema) => format!(
            "{{\"openapi\":\"3.1.0\",\"info\":{{\"title\":\"f\",\"version\":\"1\"}},\"components\":{{\"schemas\":{{\"S\":{schema}}}}},\"paths\":{{\"/x\":{{\"post\":{{\"requestBody\":{{\"content\":{{\"application/json\":{{\"schema\":{{\"$ref\":\"#/components/schemas/S\"}}}}}}}},\"responses\":{{}}}}}}}}}}"
        ),
        None => text.into_owned(),
    };
    for unknown_fields in [UnknownFields::Reject, UnknownFields::Allow] {
        let opts = CompileOptions {
            unknown_fields,
            ..CompileOptions::default()
        };
        let Ok(api) = Api::from_text(&document, &opts) else {
            continue;
        };
        let labels = api.field_labels();
        for op in api.operations() {
            for body in BODIES.iter().copied().chain([data]) {
                if let Err(violations) = op.check_json_body(body) {
                    assert!(!violations.is_empty());
                    for v in violations.iter() {
                        assert!(labels.contains(&v.field.as_str()), "{v:?} not in {labels:?}");
                    }
                }
            }
        }
    }
});
