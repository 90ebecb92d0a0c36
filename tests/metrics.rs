//! Issue 5: metrics by value after a known mix, promtool over a real scrape, bounded label sets,
//! and readiness during a drain.

mod support;

use std::time::Duration;

use bytes::Bytes;
use companies_gateway::config::Dur;
use http::Request;
use http_body_util::Full;
use support::*;

const ROUTE: &str = "/companies/v2/rs/1/contacts/2";

fn patch(
    addr: std::net::SocketAddr,
    auth: Option<&str>,
    body: &'static [u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method("PATCH")
        .uri(format!("http://{addr}{ROUTE}"))
        .header("x-session-token", "s")
        .header("content-type", "application/json");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Full::new(Bytes::from_static(body))).unwrap()
}

#[tokio::test]
async fn counters_match_a_known_mix_of_requests() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let addr = gw.public_addr;
    for _ in 0..3 {
        assert_eq!(
            send(patch(addr, Some("Bearer t"), EXAMPLE_REQUEST))
                .await
                .status,
            200
        );
    }
    assert_eq!(send(patch(addr, None, EXAMPLE_REQUEST)).await.status, 401);
    assert_eq!(
        send(patch(addr, Some("Bearer t"), br#"{"notify":1,"x":2}"#))
            .await
            .status,
        400
    );
    assert_eq!(send(get(addr, "/other")).await.status, 200);
    let brew = Request::builder()
        .method("BREW")
        .uri(format!("http://{addr}/pot"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(brew).await.status, 200);
    // The upstream refuses a request the gateway validated: contract drift.
    mock.push_reply(Reply::status(422));
    assert_eq!(
        send(patch(addr, Some("Bearer t"), EXAMPLE_REQUEST))
            .await
            .status,
        422
    );
    // An upstream 400 on a route without a contract is not drift.
    mock.push_reply(Reply::status(400));
    assert_eq!(send(get(addr, "/other")).await.status, 400);

    let expect = [
        ("gateway_requests_total{method=\"PATCH\",outcome=\"forwarded\",route=\"update_contact\",status=\"200\"}", 3.0),
        ("gateway_requests_total{method=\"PATCH\",outcome=\"rejected\",route=\"update_contact\",status=\"401\"}", 1.0),
        ("gateway_requests_total{method=\"PATCH\",outcome=\"rejected\",route=\"update_contact\",status=\"400\"}", 1.0),
        ("gateway_requests_total{method=\"PATCH\",outcome=\"forwarded\",route=\"update_contact\",status=\"422\"}", 1.0),
        ("gateway_requests_total{method=\"GET\",outcome=\"forwarded\",route=\"other\",status=\"200\"}", 1.0),
        ("gateway_requests_total{method=\"GET\",outcome=\"forwarded\",route=\"other\",status=\"400\"}", 1.0),
        ("gateway_requests_total{method=\"other\",outcome=\"forwarded\",route=\"other\",status=\"200\"}", 1.0),
        ("gateway_rejections_total{reason=\"authorization\",route=\"update_contact\"}", 1.0),
        ("gateway_rejections_total{reason=\"body\",route=\"update_contact\"}", 1.0),
        ("gateway_contract_violations_total{code=\"type\",field=\"notify\"}", 1.0),
        ("gateway_contract_violations_total{code=\"unknown_field\",field=\"unknown\"}", 1.0),
        ("gateway_contract_drift_total{route=\"update_contact\"}", 1.0),
        ("gateway_contract_drift_total{route=\"other\"}", 0.0),
        ("gateway_request_duration_seconds_count{outcome=\"forwarded\",route=\"update_contact\"}", 4.0),
        ("gateway_request_duration_seconds_count{outcome=\"rejected\",route=\"update_contact\"}", 2.0),
        ("gateway_upstream_request_duration_seconds_count{route=\"update_contact\",status=\"200\"}", 3.0),
        ("gateway_upstream_request_duration_seconds_count{route=\"other\",status=\"200\"}", 2.0),
        ("gateway_session_cache_lookups_total{result=\"miss\"}", 1.0),
        ("gateway_session_cache_lookups_total{result=\"hit\"}", 3.0),
        ("gateway_inflight_requests", 0.0),
        ("gateway_upstream_errors_total{kind=\"connect\"}", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(metric(&gw, series).await, value, "{series}");
    }
    // The revision is the checkout's HEAD (build.rs), `unknown` outside git; rustc is the version
    // that compiled it.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = std::env::var("GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string()
        })
        .unwrap();
    let build = format!(
        "gateway_build_info{{revision=\"{revision}\",rustc=\"{rustc}\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&gw, &build).await, 1.0, "{}", scrape(&gw).await);
    let opened = metric(&gw, "gateway_upstream_connections_opened_total").await;
    assert!((1.0..=2.0).contains(&opened), "{opened}");
    assert!(metric(&gw, "process_resident_memory_bytes").await > 0.0);
    let text = scrape(&gw).await;
    assert!(text.contains("gateway_request_duration_seconds_bucket{outcome=\"forwarded\",route=\"update_contact\",le=\"0.0001\"}"));
}

#[tokio::test]
async fn promtool_accepts_a_real_scrape() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    send(patch(gw.public_addr, Some("Bearer t"), EXAMPLE_REQUEST)).await;
    send(patch(gw.public_addr, None, EXAMPLE_REQUEST)).await;
    let text = scrape(&gw).await;
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed: install Debian's prometheus package (the README's test command does)");
    use std::io::Write;
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    // Lint findings print even on success; there must be none for our metrics.
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("gateway_")).collect();
    assert!(ours.is_empty(), "promtool lint: {ours:#?}");
}

#[tokio::test]
async fn label_sets_stay_bounded() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let gw = start_gateway(test_config(&mock.url(""), Some(pki.ca_file()))).await;
    let series = |text: &str| text.lines().filter(|l| l.starts_with("gateway_")).count();
    send(patch(gw.public_addr, Some("Bearer warm"), EXAMPLE_REQUEST)).await;
    let client = client();
    for i in 0..1000 {
        let method = if i % 3 == 0 {
            format!("M{i}")
        } else {
            "PATCH".to_string()
        };
        let path = if i % 2 == 0 {
            ROUTE.to_string()
        } else {
            format!("/p/{i}")
        };
        let req = Request::builder()
            .method(method.as_str())
            .uri(format!("http://{}{path}", gw.public_addr))
            .header("x-request-id", format!("rid-{i}"))
            .header("authorization", format!("Bearer tok{i}"))
            .header("x-session-token", format!("sess{i}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
            .unwrap();
        let res = client.request(req).await.unwrap();
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap();
    }
    let text = scrape(&gw).await;
    let n = series(&text);
    // Closed label sets: the count is independent of how many distinct ids, tokens, paths and
    // methods were seen (16 buckets per histogram series dominate).
    assert!(n < 400, "{n} series");
    for needle in ["rid-", "tok1", "sess1", "/p/", "M3"] {
        assert!(!text.contains(needle), "{needle} reached a label");
    }
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gateway_requests_total{"))
        .collect();
    assert!(requests.len() <= 6, "{requests:#?}");
}

#[tokio::test]
async fn readiness_flips_to_503_during_a_drain() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.shutdown.drain_delay = Dur(Duration::from_millis(800));
    let gw = start_gateway(config).await;
    let admin = gw.admin_addr;
    let public = gw.public_addr;
    let ready = |addr| async move { send(get(addr, "/readyz")).await.status };
    assert_eq!(ready(admin).await, 200);
    let health = send(get(admin, "/healthz")).await;
    assert_eq!(health.status, 200);
    let drain = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ready(admin).await, 503);
    // Still serving traffic during drain_delay, so the load balancer can move away first.
    let got = send(get(public, "/x")).await;
    assert_eq!(got.status, 200);
    drain.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "listener closed after the drain"
    );
}
