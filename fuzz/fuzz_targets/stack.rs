//! `RUSTC_BOOTSTRAP=1 cargo fuzz run stack -- -max_total_time=60`
//!
//! The whole stack, as the listener serves it, through `Service::oneshot`. The input gives a
//! method, a target, headers and a body; the upstream is a closed local port, so what passes
//! validation fails fast with a 502. The gateway must answer every request, never with a 500
//! (a bug or a caught panic), and always with a request id.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use companies_gateway::headers::ConnInfo;
use companies_gateway::metrics::Metrics;
use companies_gateway::{full_body, stack, Body, Config, Options};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use libfuzzer_sys::fuzz_target;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, std::convert::Infallible>;

fn runtime() -> &'static (tokio::runtime::Runtime, Stack) {
    static RT: OnceLock<(tokio::runtime::Runtime, Stack)> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = Config::default();
        // Nothing listens on the discard port here: forwarded requests fail fast.
        config.upstream.url = "https://127.0.0.1:9".into();
        config.upstream.connect_timeout = companies_gateway::config::Dur::parse("200ms").expect("dur");
        config.limits.max_body_bytes = 4096;
        let metrics = Metrics::new(&[0.1, 1.0]).expect("metrics");
        let svc = rt.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let (svc, _) = stack::build(&config, &metrics, &Options::default()).expect("stack");
            BoxCloneSyncService::new(svc)
        });
        (rt, svc)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, svc) = runtime();
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let headers = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default().to_vec();
    let Ok(mut req) = Request::builder().method(method).uri(target).body(full_body(body)) else {
        return;
    };
    for line in headers.split(|b| *b == b'\r') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    // Half the inputs get a Host when they name none, so that most reach the layers past the edge.
    if data.len() % 2 == 0 && !req.headers().contains_key("host") {
        req.headers_mut().insert("host", HeaderValue::from_static("gw"));
    }
    req.extensions_mut().insert(ConnInfo::new(
        SocketAddr::from(([127, 0, 0, 1], 40000)),
        false,
        &[],
    ));
    let res = rt.block_on(svc.clone().oneshot(req)).expect("infallible");
    assert_ne!(res.status(), 500, "the gateway failed on this input");
    assert!(res.headers().contains_key("x-request-id"));
});
