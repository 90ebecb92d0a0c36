//! The access log as the writer thread writes it (gateway.md §7): every field, in JSON and in
//! text, and a field with no value left out. Its own test binary: it installs the global
//! subscriber that turns the `access` target on.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::LogFormat;
use companies_gateway::{Config, Options, Running};
use http::Request;
use http_body_util::Full;
use support::*;

/// The log's output, as written.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Waits (at most 10 s) for `n` lines.
    async fn lines(&self, n: usize) -> Vec<String> {
        let wait = async {
            loop {
                let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
                let lines: Vec<String> = text.lines().map(str::to_string).collect();
                if lines.len() >= n {
                    return lines;
                }
                // The writer batches every few milliseconds; nothing to await in between.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("{n} access lines never came"))
    }
}

fn subscriber() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("access=info")
            .with_writer(std::io::sink)
            .init();
    });
}

async fn gateway(config: Config) -> (Running, Capture) {
    subscriber();
    let capture = Capture::default();
    let sink = capture.clone();
    let options = Options {
        access_log: Some(Arc::new(move || Box::new(sink.clone()))),
        ..Options::default()
    };
    let gw = companies_gateway::start_with(config, options)
        .await
        .unwrap();
    (gw, capture)
}

#[tokio::test]
async fn a_json_line_has_every_field_and_leaves_absent_ones_out() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.log.format = LogFormat::Json;
    let (gw, capture) = gateway(config).await;

    let forwarded = update_contact(gw.public_addr)
        .header("user-agent", "access-test/1.0 \"quoted\"")
        .header("x-request-id", "rid-forwarded")
        .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
        .unwrap();
    assert_eq!(send(forwarded).await.status, 200);
    // Rejected, without a user agent: no upstream fields, no user_agent.
    let rejected = update_contact(gw.public_addr)
        .header("x-request-id", "rid-rejected")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(send(rejected).await.status, 400);

    let lines = capture.lines(2).await;
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let line = |rid: &str| {
        parsed
            .iter()
            .find(|v| v["request_id"] == rid)
            .unwrap_or_else(|| panic!("no line for {rid}: {lines:#?}"))
            .clone()
    };
    let ok = line("rid-forwarded");
    assert_eq!(ok["target"], "access");
    assert_eq!(ok["method"], "PATCH");
    assert_eq!(ok["route"], "update_contact");
    assert_eq!(ok["path"], "/companies/v2/rs/1/contacts/2");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["authority"], gw.public_addr.to_string());
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["outcome"], "forwarded");
    assert_eq!(ok["upstream_status"], 200);
    // The address the pool's connection went to: the mock's own.
    assert_eq!(ok["upstream_addr"], mock.addr.to_string());
    assert!(ok["duration_us"].as_u64().is_some());
    assert!(ok["upstream_us"].as_u64().unwrap() <= ok["duration_us"].as_u64().unwrap());
    assert_eq!(ok["bytes_in"], EXAMPLE_REQUEST.len());
    assert!(ok["bytes_out"].as_u64().is_some(), "{ok}");
    assert_eq!(ok["client"], "127.0.0.1");
    assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(ok["user_agent"], "access-test/1.0 \"quoted\"");
    assert!(ok.get("reason").is_none());
    // Tracing is off: no ids.
    assert!(ok.get("trace_id").is_none());

    let bad = line("rid-rejected");
    assert_eq!(bad["status"], 400);
    assert_eq!(bad["outcome"], "rejected");
    assert_eq!(bad["reason"], "body");
    for absent in [
        "upstream_status",
        "upstream_us",
        "upstream_addr",
        "user_agent",
    ] {
        assert!(bad.get(absent).is_none(), "{absent} in {bad}");
    }
    // No key is ever an empty string.
    for v in &parsed {
        for (k, val) in v.as_object().unwrap() {
            assert_ne!(val, "", "{k} is empty");
        }
    }
}

#[tokio::test]
async fn a_text_line_carries_the_trace_ids_and_quotes_free_text() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    // Traced (to a collector that is not there): the line carries the trace's ids.
    config.tracing.otlp_endpoint = Some(format!("http://127.0.0.1:{}", closed_port().await));
    config.tracing.sample_ratio = Some(0.0);
    let (gw, capture) = gateway(config).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let path = format!(
        "http://{}/o/x\"%20status=999?secret=QUERYSECRET",
        gw.public_addr
    );
    let req = Request::get(path)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-00"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let lines = capture.lines(1).await;
    let l = &lines[0];
    assert!(l.contains(" INFO access: "), "{l}");
    assert!(l.contains(&format!(" trace_id={trace} ")), "{l}");
    assert!(l.contains(" span_id="), "{l}");
    assert!(l.contains(r#" path="/o/x\"%20status=999" "#), "{l}");
    assert!(l.contains(" route=other "), "{l}");
    assert!(l.contains(" status=200 outcome=forwarded "), "{l}");
    assert!(l.contains(&format!(" upstream_addr={} ", mock.addr)), "{l}");
    assert!(!l.contains("QUERYSECRET"), "{l}");
    assert!(!l.contains("status=999 "), "{l}");
    assert!(!l.contains("=\"\""), "{l}");
}
