//! Issue 8: every metric the dashboard and the Prometheus rules query is one the gateway really
//! exports, checked against a real scrape after a mix of requests.

mod support;

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

/// `gateway_*` and `process_*` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = rest.starts_with("gateway_") || rest.starts_with("process_");
        let boundary = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        if starts && boundary {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_rules_query_only_exported_metrics() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let intro = MockIntrospection::start(Verdict::status(200)).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.session.introspect_url = Some(intro.url());
    let gw = start_gateway(config).await;
    // A mix that touches every histogram and labelled family.
    let req = |auth: &str, body: &'static [u8]| {
        Request::builder()
            .method("PATCH")
            .uri(format!(
                "http://{}/companies/v2/rs/1/contacts/2",
                gw.public_addr
            ))
            .header("authorization", auth.to_string())
            .header("x-session-token", "s")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    send(req("Bearer a", EXAMPLE_REQUEST)).await;
    send(req("Bearer a", EXAMPLE_REQUEST)).await;
    send(req("Bearer a", b"{}")).await;
    let scrape = scrape(&gw).await;
    let mut have = exported(&scrape);
    // A gateway with a TLS listener exports its certificate's expiry too.
    let mut tls = test_config(&mock.url(""), Some(pki.ca_file()));
    let leaf = pki.leaf(&["localhost"]);
    tls.listener.tls_cert = Some(pki.write("listener.crt", leaf.cert_pem.as_bytes()));
    tls.listener.tls_key = Some(pki.write("listener.key", leaf.key_pem.as_bytes()));
    let tls = start_gateway(tls).await;
    have.extend(exported(&support::scrape(&tls).await));

    let root = env!("CARGO_MANIFEST_DIR");
    let mut queried = BTreeSet::new();
    let mut sources = Vec::new();
    for rel in [
        "deploy/grafana/companies-gateway.json",
        "deploy/prometheus/recording-rules.yml",
        "deploy/prometheus/alerting-rules.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{rel}")).unwrap();
        if rel.ends_with(".json") {
            // It parses, and its queries are the `expr` fields.
            let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
            fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
                match v {
                    serde_json::Value::Object(m) => {
                        for (k, v) in m {
                            match (k.as_str(), v) {
                                ("expr" | "query", serde_json::Value::String(s)) => {
                                    out.push(s.clone())
                                }
                                _ => exprs(v, out),
                            }
                        }
                    }
                    serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
                    _ => {}
                }
            }
            let mut found = Vec::new();
            exprs(&dash, &mut found);
            assert!(
                found.len() >= 10,
                "the dashboard has {} queries",
                found.len()
            );
            for e in found {
                queried.extend(metric_names(&e));
            }
        } else {
            queried.extend(metric_names(&text));
        }
        sources.push(rel);
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !have.contains(name.as_str())
                && !have.contains(&format!("{base}_bucket"))
                && !have.contains(base)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "queried by {sources:?} but not exported: {missing:?}"
    );
}
