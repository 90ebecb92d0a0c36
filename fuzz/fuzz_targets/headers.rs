//! `RUSTC_BOOTSTRAP=1 cargo fuzz run headers -- -max_total_time=60`
//!
//! Header hygiene and the edge checks on arbitrary header values: split on NUL bytes, the input
//! gives values for the headers the gateway inspects, and a path. Nothing may panic, and hop-by-hop
//! stripping must leave no hop-by-hop header behind.

#![no_main]

use std::net::SocketAddr;

use companies_gateway::config::UnknownRoutes;
use companies_gateway::edge::check_edge;
use companies_gateway::headers::{connection_tokens, set_forwarded, strip_hop_by_hop, ConnInfo};
use companies_gateway::request_id::{accept, X_REQUEST_ID};
use companies_gateway::route::{check_canonical, Router};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 10] = [
    "connection",
    "expect",
    "transfer-encoding",
    "upgrade",
    "x-request-id",
    "x-forwarded-for",
    "forwarded",
    "host",
    "te",
    "keep-alive",
];

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let path = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (i, value) in parts.enumerate() {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            let name = HeaderName::from_static(NAMES[i % NAMES.len()]);
            headers.append(name, v);
        }
    }
    let _ = accept(headers.get_all(&X_REQUEST_ID));
    let named: Vec<HeaderName> = connection_tokens(&headers).collect();

    if let Ok(path) = std::str::from_utf8(path) {
        let _ = check_canonical(path);
        let router = Router::new([(
            &Method::PATCH,
            "/companies/v2/rs/{companyId}/contacts/{contactId}",
        )])
        .expect("router");
        let route = router.recognise(&Method::PATCH, path);
        if let Ok(req) = Request::builder().method("PATCH").uri(path).body(()) {
            let mut req = req;
            *req.headers_mut() = headers.clone();
            let _ = check_edge(&req, route, UnknownRoutes::Forward);
            let _ = check_edge(&req, route, UnknownRoutes::Reject);
        }
    }

    let host = headers.get("host").cloned();
    let trusted = ["192.0.2.0/24".parse().expect("cidr")];
    let trusted: &[ipnet::IpNet] = if data.len() % 3 == 0 { &trusted } else { &[] };
    let conn = ConnInfo::new(SocketAddr::from(([192, 0, 2, 1], 1234)), data.len() % 2 == 0, trusted);
    set_forwarded(&mut headers, conn, host.as_ref());
    strip_hop_by_hop(&mut headers);
    for name in named {
        assert!(!headers.contains_key(&name), "{name} survived stripping");
    }
    for hop in ["connection", "te", "transfer-encoding", "upgrade", "keep-alive"] {
        assert!(!headers.contains_key(hop));
    }
});
