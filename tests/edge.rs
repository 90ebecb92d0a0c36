//! Issue 6: every row of gateway.md §4 over a raw TCP socket, proving what the upstream saw:
//! nothing, or one well-formed request. Rows hyper answers itself are pinned here so that an
//! upgrade that changes them is noticed.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AUTH: &str =
    "Authorization: Bearer t\r\nX-Session-Token: s\r\nContent-Type: application/json\r\n";
const VALID: &str = r#"{"notify":true}"#;

async fn setup() -> (Pki, MockUpstream, companies_gateway::Running) {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.limits.max_body_bytes = 1024;
    config.limits.max_headers = 20;
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
