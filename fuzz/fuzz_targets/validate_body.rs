//! `RUSTC_BOOTSTRAP=1 cargo fuzz run validate_body -- -max_total_time=120`
//!
//! The whole input is a body; split on NUL bytes it also gives header values and path parameters.
//! Nothing may panic, and the outcomes must agree with simple reference checks.

#![no_main]

use companies_gateway::contract::{
    check_authorization, check_body, check_content_type, check_path_params, check_session_token,
    Code, UnknownFields,
};
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;

const SESSION_TOKEN: HeaderName = HeaderName::from_static("x-session-token");

fn body(data: &[u8]) {
    // serde_json's own parser is the reference for what is well-formed JSON.
    let reference = serde_json::from_slice::<serde_json::Value>(data);
    for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
        match check_body(data, unknown) {
            Ok(()) => {
                let value = reference
                    .as_ref()
                    .expect("accepted a body serde_json refuses");
                let object = value
                    .as_object()
                    .expect("accepted a body that is not an object");
                assert!(object.get("notify").is_some_and(|n| n.is_boolean()));
            }
            Err(violations) => {
                assert!(!violations.is_empty());
                let syntax = violations.iter().any(|v| v.code == Code::Syntax);
                assert_eq!(syntax, reference.is_err(), "{violations:?}");
                if syntax {
                    assert_eq!(violations.len(), 1);
                }
            }
        }
    }
}

fn headers(parts: &[&[u8]]) {
    let names = [AUTHORIZATION, SESSION_TOKEN, CONTENT_TYPE];
    let mut map = HeaderMap::new();
    let mut prefixed = HeaderMap::new();
    for (i, part) in parts.iter().enumerate() {
        let name = names[i % names.len()].clone();
        if let Ok(value) = HeaderValue::from_bytes(part) {
            map.append(name.clone(), value);
        }
        // The same bytes behind a plausible start, to get past the first checks more often.
        let prefix: &[u8] = match i % names.len() {
            0 => b"Bearer ",
            1 => b"",
            _ => b"application/json;",
        };
        if let Ok(value) = HeaderValue::from_bytes(&[prefix, part].concat()) {
            prefixed.append(name, value);
        }
    }
    for map in [&map, &prefixed] {
        for result in [
            check_authorization(map),
            check_session_token(map),
            check_content_type(map),
        ] {
            if let Err(problems) = result {
                assert!(!problems.is_empty());
                for p in &problems {
                    assert!([
                        "missing",
                        "repeated",
                        "malformed",
                        "too_long",
                        "unsupported"
                    ]
                    .contains(&p.code));
                    assert!(p.detail.len() <= 400, "{p:?}");
                }
            }
        }
    }
}

fn path(company: &str, contact: &str) {
    let result = check_path_params(company, contact);
    // Reference: Rust's integer parser, which also takes a leading `+`.
    let valid = |s: &str| s.parse::<i64>().is_ok() && !s.starts_with('+');
    let bad = usize::from(!valid(company)) + usize::from(!valid(contact));
    match result {
        Ok(()) => assert_eq!(bad, 0),
        Err(violations) => assert_eq!(violations.len(), bad),
    }
}

fuzz_target!(|data: &[u8]| {
    body(data);
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).take(8).collect();
    headers(&parts);
    let text = |i: usize| String::from_utf8_lossy(parts.get(i).copied().unwrap_or_default());
    path(&text(0), &text(1));
});
