//! Issue 6: every row of gateway.md §4 over a raw TCP socket, proving what the upstream saw:
//! nothing, or one well-formed request. Rows hyper answers itself are pinned here so that an
//! upgrade that changes them is noticed.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const AUTH: &str =
    "Authorization: Bearer t\r\nX-Session-Token: s\r\nContent-Type: application/json\r\n";
const VALID: &str = r#"{"notify":true}"#;

async fn setup() -> (Pki, MockUpstream, companies_gateway::Running) {
    setup_with(|_| {}).await
}

async fn setup_with(
    tweak: impl FnOnce(&mut companies_gateway::Config),
) -> (Pki, MockUpstream, companies_gateway::Running) {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.max_body_bytes = 1024;
    config.limits.max_headers = 20;
    tweak(&mut config);
    let gw = start_gateway(config).await;
    (pki, mock, gw)
}

/// Sends `bytes`, then reads until the server closes (or 3 s pass). Returns what came back and
/// whether the server closed the connection.
async fn exchange(gw: &companies_gateway::Running, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect()
}

fn patch(headers: &str, body: &str) -> String {
    format!(
        "PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\n{AUTH}{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn two_different_content_lengths_are_400() {
    let (_pki, mock, gw) = setup().await;
    let req = format!(
        "PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\n{AUTH}Content-Length: 15\r\nContent-Length: 16\r\n\r\n{VALID}"
    );
    let (out, _) = exchange(&gw, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(mock.count(), 0);
    let series = "gateway_requests_total{method=\"other\",outcome=\"rejected\",route=\"other\",status=\"400\"}";
    assert_eq!(metric(&gw, series).await, 1.0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_as_chunked_once_then_closed() {
    let (_pki, mock, gw) = setup().await;
    let req = format!(
        "PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\n{AUTH}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{VALID}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    );
    let (out, closed) = exchange(&gw, req.as_bytes()).await;
    let lines = status_lines(&out);
    if lines.first().is_some_and(|l| l.starts_with("HTTP/1.1 400")) {
        assert_eq!(mock.count(), 0, "{out}");
    } else {
        assert_eq!(lines.len(), 1, "only one response: {out}");
        assert!(lines[0].starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            closed,
            "the client connection must be closed after the response"
        );
        let seen = mock.received();
        assert_eq!(seen.len(), 1);
        assert_eq!(&seen[0].body[..], VALID.as_bytes());
    }
    assert!(mock
        .received()
        .iter()
        .all(|r| !r.target.contains("smuggled")));
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked_is_400() {
    let (_pki, mock, gw) = setup().await;
    for te in ["gzip, chunked", "chunked, chunked", "identity"] {
        let req = format!(
            "PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\n{AUTH}Transfer-Encoding: {te}\r\n\r\nf\r\n{VALID}\r\n0\r\n\r\n"
        );
        let (out, _) = exchange(&gw, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{te}: {out}");
        let req = format!("POST /other HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: {te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        let (out, _) = exchange(&gw, req.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{te} on another route: {out}"
        );
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn obs_fold_bare_cr_and_nul_are_400() {
    let (_pki, mock, gw) = setup().await;
    for bad in [
        "X-Folded: a\r\n b\r\n",
        "X-Bare: a\rb\r\n",
        "X-Nul: a\0b\r\n",
        "X Space: a\r\n",
    ] {
        let req = patch(bad, VALID);
        let (out, _) = exchange(&gw, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{bad:?}: {out}");
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn bad_or_overflowing_chunk_sizes_forward_nothing() {
    let (_pki, mock, gw) = setup().await;
    for chunks in [
        "zz\r\nabc\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
    ] {
        for head in [
            format!("PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\n{AUTH}"),
            "POST /other HTTP/1.1\r\nHost: gw\r\n".to_string(),
        ] {
            let req = format!("{head}Transfer-Encoding: chunked\r\n\r\n{chunks}");
            let (out, closed) = exchange(&gw, req.as_bytes()).await;
            assert!(
                out.starts_with("HTTP/1.1 400") || (out.is_empty() && closed),
                "{chunks:?}: {out}"
            );
        }
    }
    // Give a streamed request that hyper-util may still be sending a moment to settle, then
    // check that no complete request reached the upstream.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn oversized_header_blocks_are_431() {
    let (_pki, mock, gw) = setup().await;
    let big = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let (out, _) = exchange(&gw, patch(&big, VALID).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (out, _) = exchange(&gw, patch(&many, VALID).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(mock.count(), 0);
    // hyper answers these below the stack; the metrics still count them.
    let series = "gateway_requests_total{method=\"other\",outcome=\"rejected\",route=\"other\",status=\"431\"}";
    assert_eq!(metric(&gw, series).await, 2.0);
    let framing = "gateway_rejections_total{reason=\"framing\",route=\"other\"}";
    assert_eq!(metric(&gw, framing).await, 2.0);
}

#[tokio::test]
async fn expect_other_than_100_continue_is_417() {
    let (_pki, mock, gw) = setup().await;
    let (out, _) = exchange(
        &gw,
        patch("Expect: 200-ok\r\nConnection: close\r\n", VALID).as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 417"), "{out}");
    assert_eq!(mock.count(), 0);
    let (out, _) = exchange(
        &gw,
        patch("Expect: 100-continue\r\nConnection: close\r\n", VALID).as_bytes(),
    )
    .await;
    assert!(
        status_lines(&out)
            .iter()
            .any(|l| l.starts_with("HTTP/1.1 200")),
        "{out}"
    );
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn upgrade_on_the_route_is_400() {
    let (_pki, mock, gw) = setup().await;
    for headers in [
        "Connection: Upgrade\r\nUpgrade: websocket\r\n",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    ] {
        let (out, _) = exchange(&gw, patch(headers, VALID).as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{headers}: {out}");
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn connection_naming_a_checked_header_is_400() {
    let (_pki, mock, gw) = setup().await;
    for name in [
        "Authorization",
        "X-Session-Token",
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Host",
    ] {
        let (out, _) = exchange(
            &gw,
            patch(&format!("Connection: keep-alive, {name}\r\n"), VALID).as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{name}: {out}");
        let req = format!("GET /other HTTP/1.1\r\nHost: gw\r\nConnection: {name}\r\n\r\n");
        let (out, _) = exchange(&gw, req.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{name} on another route: {out}"
        );
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn connect_asterisk_form_and_a_bad_host_are_400_problems() {
    let (_pki, mock, gw) = setup().await;
    for req in [
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n",
        "GET /other HTTP/1.1\r\n\r\n",
        "GET /other HTTP/1.1\r\nHost: gw\r\nHost: evil.example\r\n\r\n",
        "GET /other HTTP/1.1\r\nHost: a, for=6.6.6.6\r\n\r\n",
    ] {
        let (out, _) = exchange(&gw, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{req:?}: {out}");
        assert!(
            out.contains("urn:companies-gateway:problem:bad-request"),
            "{req:?}: {out}"
        );
    }
    // HTTP/1.0 may leave Host out.
    let (out, _) = exchange(&gw, b"GET /other HTTP/1.0\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn non_canonical_paths_over_the_wire_are_400() {
    let (_pki, mock, gw) = setup().await;
    for path in [
        "/companies/v2/rs/1/contacts/../contacts/2",
        "/companies/v2/rs//1/contacts/2",
        "/companies/v2/rs/1/contacts/%32",
    ] {
        let req = format!("PATCH {path} HTTP/1.1\r\nHost: gw\r\n{AUTH}Connection: close\r\nContent-Length: 15\r\n\r\n{VALID}");
        let (out, _) = exchange(&gw, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn requests_pipelined_behind_a_rejected_one_are_answered_in_order() {
    let (_pki, mock, gw) = setup().await;
    // Invalid body, then a valid request, in one write.
    let bytes = format!(
        "{}{}",
        patch("", r#"{"notify":"yes"}"#),
        patch("Connection: close\r\n", VALID)
    );
    let (out, _) = exchange(&gw, bytes.as_bytes()).await;
    let lines = status_lines(&out);
    assert!(lines[0].starts_with("HTTP/1.1 400"), "{out}");
    if lines.len() > 1 {
        assert!(lines[1].starts_with("HTTP/1.1 200"), "{out}");
    }
    let seen = mock.received();
    assert!(seen.len() <= 1);
    assert!(seen.iter().all(|r| &r.body[..] == VALID.as_bytes()));

    // A declared length over the limit is refused unread; what follows is its body, never a request.
    let smuggled = format!(
        "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n{}",
        " ".repeat(1900)
    );
    let bytes = format!(
        "PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\n{AUTH}Content-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let (out, _) = exchange(&gw, bytes.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(status_lines(&out).len(), 1, "{out}");

    // Framing abuse closes the connection: the pipelined request is never read.
    let bytes = "POST /other HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n".to_string();
    let (out, closed) = exchange(&gw, bytes.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(status_lines(&out).len(), 1, "{out}");
    assert!(closed);
    assert!(mock
        .received()
        .iter()
        .all(|r| !r.target.contains("smuggled")));
}

#[tokio::test]
async fn encoded_slashes_and_backslashes_in_a_path_are_400_on_every_route() {
    let (_pki, mock, gw) = setup().await;
    for path in [
        "/companies/v2/rs/1/contacts%2F1",
        "/companies%2fv2/rs/1/contacts/1",
        "/companies/v2/rs/1%5Ccontacts/2",
        "/companies/v2/rs/1/contacts/2%5c",
        "/other/a%2F..%2Fadmin",
        "/other/a%5cb",
    ] {
        for method in ["PATCH", "GET", "POST"] {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\n{AUTH}Connection: close\r\nContent-Length: 15\r\n\r\n{VALID}");
            let (out, _) = exchange(&gw, req.as_bytes()).await;
            assert!(out.starts_with("HTTP/1.1 400"), "{method} {path}: {out}");
            assert!(
                out.contains("urn:companies-gateway:problem:bad-request"),
                "{method} {path}: {out}"
            );
        }
    }
    assert_eq!(mock.count(), 0);
    // The query is not the path: it may carry them, and passes as sent.
    let (out, _) = exchange(
        &gw,
        b"GET /other?next=%2Fa%5Cb HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(mock.received()[0].target, "/other?next=%2Fa%5Cb");
}

#[tokio::test]
async fn a_method_equal_to_the_operations_only_case_insensitively_is_400() {
    let (_pki, mock, gw) = setup().await;
    // An empty object breaks the contract: forwarded unvalidated, it would have reached the mock.
    for method in ["patch", "Patch", "pATCH"] {
        for path in [
            "/companies/v2/rs/1/contacts/2",
            "/COMPANIES/v2/rs/1/contacts/2/",
        ] {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\n{AUTH}Connection: close\r\nContent-Length: 2\r\n\r\n{{}}");
            let (out, _) = exchange(&gw, req.as_bytes()).await;
            assert!(out.starts_with("HTTP/1.1 400"), "{method} {path}: {out}");
            assert!(
                out.contains("urn:companies-gateway:problem:bad-request"),
                "{method} {path}: {out}"
            );
        }
    }
    // Over h2 (h2c, prior knowledge): `:method patch`.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(Method::from_bytes(b"patch").unwrap())
        .uri(format!(
            "http://{}/companies/v2/rs/1/contacts/2",
            gw.public_addr
        ))
        .header("authorization", "Bearer t")
        .header("x-session-token", "s")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 400);
    assert_eq!(mock.count(), 0);
    // Where no operation has the path, the method is not the contract's: forwarded as spelled.
    let (out, _) = exchange(
        &gw,
        b"patch /other HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(mock.received()[0].method, "patch");
}

const OVERRIDES: [&str; 5] = [
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Original-URL",
    "X-Rewrite-URL",
];

#[tokio::test]
async fn method_and_url_override_headers_are_removed_before_forwarding() {
    let (_pki, mock, gw) = setup().await;
    let mut headers: String = OVERRIDES
        .iter()
        .map(|name| {
            let value = if name.ends_with("URL") {
                "/companies/v2/rs/1/contacts/2"
            } else {
                "PATCH"
            };
            format!("{name}: {value}\r\n")
        })
        .collect();
    headers.push_str("X-Kept: 1\r\nConnection: close\r\n");
    // The attack (a POST elsewhere that an upstream would run as the update), and the
    // validated route itself.
    let post =
        format!("POST /other HTTP/1.1\r\nHost: gw\r\n{headers}Content-Length: 2\r\n\r\n{{}}");
    let (out, _) = exchange(&gw, post.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (out, _) = exchange(&gw, patch(&headers, VALID).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = mock.received();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        for name in OVERRIDES {
            assert!(r.headers.get(name).is_none(), "{name} went on: {r:?}");
        }
        assert_eq!(r.values("x-kept"), vec!["1"]);
    }
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/other")
    );
    assert_eq!(&seen[1].body[..], VALID.as_bytes());
}

const CLIENT_ADDRESS: [&str; 4] = [
    "X-Real-IP",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
];

async fn send_client_address_headers(gw: &companies_gateway::Running) {
    let headers: String = CLIENT_ADDRESS
        .iter()
        .map(|name| format!("{name}: 6.6.6.6\r\n"))
        .collect();
    let req = format!("GET /other HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n");
    let (out, _) = exchange(gw, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn client_address_headers_from_an_untrusted_peer_are_removed() {
    let (_pki, mock, gw) = setup().await;
    send_client_address_headers(&gw).await;
    let seen = &mock.received()[0];
    for name in CLIENT_ADDRESS {
        assert!(seen.headers.get(name).is_none(), "{name} went on: {seen:?}");
    }
    assert_eq!(seen.values("x-forwarded-for"), vec!["127.0.0.1"]);

    // From a trusted proxy they describe the real client, and are kept.
    let (_pki, mock, gw) = setup_with(|c| {
        c.listener.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    send_client_address_headers(&gw).await;
    let seen = &mock.received()[0];
    for name in CLIENT_ADDRESS {
        assert_eq!(seen.values(name), vec!["6.6.6.6"], "{name}");
    }
}

/// A TLS upstream that answers every request with `101 Switching Protocols`, then sends bytes
/// of the "new protocol". Counts the requests it read.
async fn switching_upstream(
    leaf: Leaf,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let acceptor = tls_acceptor(leaf, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = tls
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nraw bytes of another protocol")
                    .await;
                let _ = tls.flush().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    (addr, count, task)
}

#[tokio::test]
async fn an_upstream_101_to_a_request_that_asked_for_no_upgrade_is_a_502() {
    let pki = Pki::new();
    let (addr, count, task) = switching_upstream(pki.leaf(&["localhost"])).await;
    let config = test_config(
        &format!("https://localhost:{}", addr.port()),
        Some(pki.ca_file()),
    );
    let gw = start_gateway(config).await;
    // A plain request, and one whose Upgrade the gateway strips as hop-by-hop (so the upstream
    // was asked for none either).
    for extra in ["", "Connection: Upgrade\r\nUpgrade: websocket\r\n"] {
        let req = format!("GET /other HTTP/1.1\r\nHost: gw\r\n{extra}\r\n");
        let (out, _) = exchange(&gw, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 502"), "{extra:?}: {out}");
        assert!(
            out.contains("urn:companies-gateway:problem:bad-gateway"),
            "{out}"
        );
        assert!(!out.contains("raw bytes"), "{out}");
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let series = "gateway_upstream_errors_total{kind=\"protocol\"}";
    assert_eq!(metric(&gw, series).await, 2.0);
    task.abort();
}

/// One h2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK block for `GET /` with `extra` fields (literals without indexing, no Huffman).
fn h2_get(extra: &[(&str, &str)]) -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table 2, 6, 4); :authority by name index 1.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 2];
    block.extend(b"gw");
    for (name, value) in extra {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    block
}

#[tokio::test]
async fn a_connection_specific_header_over_h2_is_a_stream_reset() {
    let (_pki, mock, gw) = setup().await;
    let bad = [
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
    ];
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[]));
    // HEADERS with END_STREAM | END_HEADERS on streams 1, 3, ...; the last one is well-formed.
    let last = 2 * bad.len() as u32 + 1;
    for (i, field) in bad.iter().enumerate() {
        bytes.extend(h2_frame(0x1, 0x5, 2 * i as u32 + 1, &h2_get(&[*field])));
    }
    bytes.extend(h2_frame(0x1, 0x5, last, &h2_get(&[("x-fine", "1")])));
    s.write_all(&bytes).await.unwrap();

    let mut reset = std::collections::BTreeMap::new();
    let mut answered = false;
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                break;
            }
            match kind {
                // SETTINGS from the server: acknowledge.
                0x4 if flags & 0x1 == 0 => {
                    s.write_all(&h2_frame(0x4, 0x1, 0, &[])).await.unwrap();
                }
                0x3 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    reset.insert(stream, code);
                }
                0x1 if stream == last => answered = true,
                0x7 => break,
                _ => {}
            }
            if answered && reset.len() == bad.len() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
    // PROTOCOL_ERROR (1) on each stream with a connection-specific header.
    let want: std::collections::BTreeMap<u32, u32> =
        (0..bad.len() as u32).map(|i| (2 * i + 1, 1)).collect();
    assert_eq!(reset, want);
    assert!(answered, "the well-formed stream was not answered");
    let seen = mock.received();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].values("x-fine"), vec!["1"]);
}

#[tokio::test]
async fn json_nesting_of_128_levels_is_forwarded_and_129_refused() {
    let (_pki, mock, gw) = setup_with(|c| {
        c.validation.unknown_fields = companies_gateway::contract::UnknownFields::Allow;
    })
    .await;
    // The body object is level 1; `x` holds the other levels.
    let nested = |levels: usize| {
        format!(
            r#"{{"notify":true,"x":{}{}}}"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    };
    let (out, _) = exchange(&gw, patch("Connection: close\r\n", &nested(128)).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(&mock.received()[0].body[..], nested(128).as_bytes());
    let (out, _) = exchange(&gw, patch("Connection: close\r\n", &nested(129)).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("\"code\":\"syntax\""), "{out}");
    assert_eq!(mock.count(), 1);
}
