//! Issue 16, reload: a new configuration (or a changed file it names) applies to new requests
//! while connections and requests in flight carry on; a bad one changes nothing and says why;
//! restart-only keys keep their value; the session cache survives unless its keys change;
//! `GET /config` shows what is in force. The last test drives the real binary with SIGHUP under
//! steady HTTP/1.1 and h2 traffic.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use companies_gateway::config::{Dur, Mode};
use companies_gateway::{Config, Options, Running};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// Two operations; B adds `GET /extra`. With `unknown_routes = "reject"`, `GET /extra` tells the
/// documents apart.
const DOC_A: &str = r#"
openapi: 3.1.0
info: {title: reload, version: "1"}
paths:
  /notes:
    post:
      operationId: createNote
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [text]
              properties:
                text: {type: string, maxLength: 500}
      responses: {"200": {description: ok}}
"#;

fn doc_b() -> String {
    format!(
        "{DOC_A}  /extra:\n    get:\n      operationId: getExtra\n      responses: {{\"200\": {{description: ok}}}}\n"
    )
}

/// The three probes: each tells one dimension of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Breaks the contract: 400 in enforce mode, forwarded (200) in report mode.
    Mode,
    /// A valid body of 150 bytes: 413 under `max_body_bytes = 100`, 200 under the default.
    Limit,
    /// `GET /extra`: 404 under document A, 200 under B.
    Document,
}

const PROBES: [Probe; 3] = [Probe::Mode, Probe::Limit, Probe::Document];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Variant {
    report: bool,
    small_limit: bool,
    doc_b: bool,
}

impl Variant {
    fn expect(&self, probe: Probe) -> u16 {
        match probe {
            Probe::Mode if self.report => 200,
            Probe::Mode => 400,
            Probe::Limit if self.small_limit => 413,
            Probe::Limit => 200,
            Probe::Document if self.doc_b => 200,
            Probe::Document => 404,
        }
    }

    /// The i-th of a sequence that flips mode, limit and document in turn.
    fn nth(i: usize) -> Variant {
        let flips = |k: usize| (1..=i).filter(|j| j % 3 == k).count() % 2 == 1;
        Variant {
            report: flips(1),
            small_limit: flips(2),
            doc_b: flips(0),
        }
    }
}

fn probe_request(probe: Probe, uri: &str) -> Request<Full<Bytes>> {
    let post = |body: String| {
        Request::post(format!("{uri}/notes"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    match probe {
        Probe::Mode => post(r#"{"text": 5}"#.into()),
        Probe::Limit => post(format!(r#"{{"text": "{}"}}"#, "x".repeat(138))),
        Probe::Document => Request::get(format!("{uri}/extra"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    }
}

/// `req` as an HTTP/1.1 client sends it: the path in the request line, the authority in `Host`
/// (hyper's connection-level client writes the URI as it is given).
fn origin_form(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let host = req.uri().authority().unwrap().to_string();
    *req.uri_mut() = req
        .uri()
        .path_and_query()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    req
}

/// Writes `text` to `path` whole (a rename), as an operator's tooling would.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Lib {
    _pki: Pki,
    _mock: MockUpstream,
    dir: support::tempdir::Dir,
    gw: Running,
}

/// A gateway started from a config file (so that `reload` reads it again), with document A.
async fn lib_gateway(variant: Variant, poll: Duration) -> Lib {
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |r| {
        if r.body.windows(4).any(|w| w == b"slow") {
            Reply::ok(b"{}").delayed(Duration::from_millis(600))
        } else {
            Reply::ok(b"{}")
        }
    })
    .await;
    let dir = support::tempdir::Dir::new();
    let path = dir.0.join("gateway.toml");
    write_atomic(&dir.0.join("api.yaml"), DOC_A);
    let text = config_text(&variant, &dir.0, &mock.url(""), &pki.ca_file(), None);
    write_atomic(&path, &text);
    let config = Config::load(&path).unwrap();
    let options = Options {
        config_path: Some(path),
        reload_poll: poll,
        ..Options::default()
    };
    let gw = companies_gateway::start_with(config, options)
        .await
        .unwrap();
    Lib {
        _pki: pki,
        _mock: mock,
        dir,
        gw,
    }
}

/// The config file of `variant`; the listeners on 127.0.0.1:0 unless `addrs` names them.
fn config_text(
    variant: &Variant,
    dir: &Path,
    upstream: &str,
    ca: &Path,
    addrs: Option<(SocketAddr, SocketAddr)>,
) -> String {
    let (public, admin) = addrs.unwrap_or((
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    ));
    format!(
        r#"[listener]
addr = "{public}"
[admin]
addr = "{admin}"
[upstream]
url = "{upstream}"
ca_file = "{ca}"
request_timeout = "5s"
[limits]
max_body_bytes = {limit}
[validation]
mode = "{mode}"
unknown_routes = "reject"
openapi = "{doc}"
[shutdown]
drain_timeout = "2s"
[log]
level = "info"
"#,
        ca = ca.display(),
        limit = if variant.small_limit { 100 } else { 65536 },
        mode = if variant.report { "report" } else { "enforce" },
        doc = dir.join("api.yaml").display(),
    )
}

async fn status_of(gw: &Running, probe: Probe) -> u16 {
    let uri = format!("http://{}", gw.public_addr);
    send(probe_request(probe, &uri)).await.status.as_u16()
}

async fn statuses(gw: &Running) -> Vec<u16> {
    let mut out = Vec::new();
    for p in PROBES {
        out.push(status_of(gw, p).await);
    }
    out
}

fn expected(v: Variant) -> Vec<u16> {
    PROBES.iter().map(|p| v.expect(*p)).collect()
}

/// One HTTP/1.1 keep-alive connection and one h2 connection to `addr`, as raw hyper handles, so
/// that a connection the gateway closed shows as an error instead of being silently replaced.
async fn connections(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("the HTTP/1.1 connection ended: {e:?}");
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    (h1, h2)
}

async fn counted(gw: &Running, result: &str) -> f64 {
    metric(
        gw,
        &format!("gateway_config_reloads_total{{result=\"{result}\"}}"),
    )
    .await
}

#[tokio::test]
async fn a_reload_applies_to_new_requests_while_connections_and_requests_in_flight_carry_on() {
    let lib = lib_gateway(Variant::nth(0), Duration::from_secs(60)).await;
    let gw = &lib.gw;
    assert_eq!(statuses(gw).await, expected(Variant::nth(0)));
    let (mut h1, mut h2) = connections(gw.public_addr).await;
    let uri = format!("http://{}", gw.public_addr);
    let res = h1
        .send_request(origin_form(probe_request(Probe::Mode, &uri)))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    res.into_body().collect().await.unwrap();

    // A slow request on the h2 connection, in flight across the reload.
    let slow = {
        let req = Request::post(format!("{uri}/notes"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"text": "slow"}"#)))
            .unwrap();
        tokio::spawn(h2.send_request(req))
    };
    tokio::time::sleep(Duration::from_millis(150)).await;

    let mut config = Config::clone(&gw.config());
    config.validation.mode = Mode::Report;
    config.limits.max_body_bytes = 100;
    config.validation.unknown_routes = companies_gateway::config::UnknownRoutes::Forward;
    let done = gw.reload_with(config).unwrap();
    assert!(done.restart_only.is_empty(), "{done:?}");
    assert!(!done.upstream_trust_changed, "{done:?}");

    // The request in flight finishes.
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    // The same connections carry on, under the new configuration.
    for _ in 0..3 {
        h1.ready().await.unwrap();
        let res = h1
            .send_request(origin_form(probe_request(Probe::Mode, &uri)))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
        let res = h2
            .send_request(probe_request(Probe::Limit, &uri))
            .await
            .unwrap();
        assert_eq!(res.status(), 413);
    }
    let res = h2
        .send_request(
            Request::get(format!("{uri}/slow"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "unknown routes are forwarded now");
    assert_eq!(counted(gw, "success").await, 1.0);
    assert_eq!(
        metric(gw, "gateway_config_last_reload_successful").await,
        1.0
    );
    assert_eq!(gw.config().validation.mode, Mode::Report);
}

#[tokio::test]
async fn a_failed_reload_keeps_the_whole_old_configuration_and_names_the_key() {
    let lib = lib_gateway(Variant::nth(0), Duration::from_secs(60)).await;
    let gw = &lib.gw;
    let path = lib.dir.0.join("gateway.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let started = metric(gw, "gateway_config_last_reload_success_timestamp_seconds").await;
    assert!(started > 1.7e9, "start-up counts as a success: {started}");

    // Each bad edit, together with a good one (report mode): nothing of it applies.
    let report = good.replace("mode = \"enforce\"", "mode = \"report\"");
    let cases: [(String, Option<&str>, &str); 4] = [
        (
            report.replace("max_body_bytes = 65536", "max_body_bytes = \"lots\""),
            None,
            "max_body_bytes",
        ),
        (format!("{report}[limits]\nmax_headers = 0\n"), None, "line 19"),
        (
            report.replace("unknown_routes = \"reject\"", "unknown_routes = \"reject\"\nunknown_query = \"maybe\""),
            None,
            "unknown_query",
        ),
        (
            report.clone(),
            Some("openapi: 3.1.0\ninfo: {title: t, version: \"1\"}\npaths:\n  /notes:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: \"#/components/schemas/Nope\"}\n      responses: {\"200\": {description: ok}}\n"),
            "validation.openapi",
        ),
    ];
    for (i, (text, doc, names)) in cases.iter().enumerate() {
        write_atomic(&path, text);
        if let Some(doc) = doc {
            write_atomic(&lib.dir.0.join("api.yaml"), doc);
        }
        let err = gw.reload().unwrap_err().to_string();
        assert!(err.contains(names), "case {i}: {err}");
        assert_eq!(counted(gw, "failure").await, (i + 1) as f64);
        assert_eq!(
            metric(gw, "gateway_config_last_reload_successful").await,
            0.0
        );
        // The old configuration, whole: enforce mode and document A.
        assert_eq!(
            statuses(gw).await,
            expected(Variant::nth(0)),
            "case {i}: {err}"
        );
        assert_eq!(gw.config().validation.mode, Mode::Enforce);
    }
    // The document's error names where in it.
    let err = gw.reload().unwrap_err().to_string();
    assert!(err.contains("#/components/schemas/Nope"), "{err}");

    write_atomic(&lib.dir.0.join("api.yaml"), &doc_b());
    gw.reload().unwrap();
    let report_b = Variant {
        report: true,
        small_limit: false,
        doc_b: true,
    };
    assert_eq!(statuses(gw).await, expected(report_b));
    assert_eq!(
        metric(gw, "gateway_config_last_reload_successful").await,
        1.0
    );
    assert_eq!(counted(gw, "success").await, 1.0);
    assert!(metric(gw, "gateway_config_last_reload_success_timestamp_seconds").await >= started);
}

#[tokio::test]
async fn restart_only_keys_keep_their_running_value_and_are_named() {
    let lib = lib_gateway(Variant::nth(0), Duration::from_secs(60)).await;
    let gw = &lib.gw;
    let before = gw.config();
    let mut config = Config::clone(&before);
    config.listener.addr = "127.0.0.1:1".parse().unwrap();
    config.admin.addr = "127.0.0.1:2".parse().unwrap();
    config.runtime.worker_threads = 7;
    config.validation.mode = Mode::Report;
    let done = gw.reload_with(config).unwrap();
    assert_eq!(
        done.restart_only,
        ["listener.addr", "admin.addr", "runtime.worker_threads"]
    );
    let now = gw.config();
    assert_eq!(now.listener.addr, before.listener.addr);
    assert_eq!(now.admin.addr, before.admin.addr);
    assert_eq!(now.runtime.worker_threads, before.runtime.worker_threads);
    // The rest applied, on the same listeners.
    assert_eq!(status_of(gw, Probe::Mode).await, 200);
}

#[tokio::test]
async fn the_session_cache_survives_a_reload_unless_a_key_that_changes_verdicts_changed() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let intro = MockIntrospection::start(Verdict::status(200)).await;
    let other = MockIntrospection::start(Verdict::status(200)).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.session.introspect_url = Some(intro.url());
    let gw = start_gateway(config.clone()).await;
    let patch = || {
        update_contact(gw.public_addr)
            .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
            .unwrap()
    };
    assert_eq!(send(patch()).await.status, 200);
    assert_eq!(send(patch()).await.status, 200);
    assert_eq!(intro.calls(), 1, "the second verdict came from the cache");

    // TTLs and the validation mode do not change a verdict: the cache is kept.
    config.session.invalid_ttl = Dur(Duration::from_secs(3));
    config.validation.mode = Mode::Report;
    let done = gw.reload_with(config.clone()).unwrap();
    assert_eq!(done.session_cache_cleared, None);
    assert_eq!(send(patch()).await.status, 200);
    assert_eq!(intro.calls(), 1);

    // Another introspection endpoint does: cleared, and said why.
    config.session.introspect_url = Some(other.url());
    let done = gw.reload_with(config).unwrap();
    assert_eq!(
        done.session_cache_cleared.as_deref(),
        Some("session.introspect_url changed")
    );
    assert_eq!(send(patch()).await.status, 200);
    assert_eq!((intro.calls(), other.calls()), (1, 1));
}

#[tokio::test]
async fn admin_config_shows_the_configuration_in_force_masked_with_file_hashes() {
    let lib = lib_gateway(Variant::nth(0), Duration::from_secs(60)).await;
    let gw = &lib.gw;
    let get_config = || async {
        let got = send(get(gw.admin_addr, "/config")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["content-type"], "application/json");
        got.json()
    };
    let sha = |path: &Path| {
        let out = Command::new("sha256sum").arg(path).output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    let doc = lib.dir.0.join("api.yaml");
    let json = get_config().await;
    assert_eq!(json["config"]["validation"]["mode"], "enforce");
    assert_eq!(
        json["files"]["validation.openapi"]["path"],
        doc.display().to_string()
    );
    assert_eq!(json["files"]["validation.openapi"]["sha256"], sha(&doc));
    let ca = json["files"]["upstream.ca_file"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        json["files"]["upstream.ca_file"]["sha256"],
        sha(Path::new(&ca))
    );
    let path = lib.dir.0.join("gateway.toml");
    assert_eq!(json["config_file"]["sha256"], sha(&path));

    // After a reload: the new values and the new document's hash; a secret in a URL is masked.
    write_atomic(&doc, &doc_b());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("mode = \"enforce\"", "mode = \"report\"")
        + "[session]\nintrospect_url = \"https://user:hunter2@auth.example/i?key=hunter2\"\n";
    write_atomic(&path, &text);
    gw.reload().unwrap();
    let json = get_config().await;
    assert_eq!(json["config"]["validation"]["mode"], "report");
    assert_eq!(json["files"]["validation.openapi"]["sha256"], sha(&doc));
    assert_eq!(json["config_file"]["sha256"], sha(&path));
    let body = json.to_string();
    assert!(!body.contains("hunter2"), "{body}");
    assert!(body.contains("https://***@auth.example/i?***"), "{body}");
}

#[tokio::test]
async fn a_configmap_swap_and_a_changed_document_reload_without_a_signal() {
    // Kubernetes mounts a ConfigMap as `config.toml -> ..data/config.toml`, `..data -> ..<ts>`, and
    // updates it by pointing `..data` at a new directory in one rename.
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let dir = support::tempdir::Dir::new();
    write_atomic(&dir.0.join("api.yaml"), DOC_A);
    let mount = dir.0.join("mount");
    let publish = |generation: &str, variant: Variant| {
        let data = mount.join(format!("..{generation}"));
        std::fs::create_dir_all(&data).unwrap();
        let text = config_text(&variant, &dir.0, &mock.url(""), &pki.ca_file(), None);
        std::fs::write(data.join("config.toml"), text).unwrap();
        let link = mount.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{generation}"), &link).unwrap();
        std::fs::rename(&link, mount.join("..data")).unwrap();
    };
    publish("2026_01", Variant::nth(0));
    std::os::unix::fs::symlink("..data/config.toml", mount.join("config.toml")).unwrap();
    let path = mount.join("config.toml");
    let options = Options {
        config_path: Some(path.clone()),
        reload_poll: Duration::from_millis(50),
        ..Options::default()
    };
    let gw = companies_gateway::start_with(Config::load(&path).unwrap(), options)
        .await
        .unwrap();
    assert_eq!(status_of(&gw, Probe::Mode).await, 400);

    let until_reloaded = |n: f64| {
        let gw = &gw;
        async move {
            let start = Instant::now();
            while counted(gw, "success").await < n {
                assert!(start.elapsed() < Duration::from_secs(10), "no reload {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    publish("2026_02", Variant::nth(1));
    until_reloaded(1.0).await;
    assert_eq!(status_of(&gw, Probe::Mode).await, 200);

    // The document it names, rewritten in place.
    std::fs::write(dir.0.join("api.yaml"), doc_b()).unwrap();
    until_reloaded(2.0).await;
    assert_eq!(status_of(&gw, Probe::Document).await, 200);
    assert_eq!(counted(&gw, "failure").await, 0.0);
}

// ------------------------------------------------------------ the binary, SIGHUP under load

struct Binary {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Binary {
    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn free_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The binary under test; the load harness (`benches/load/reload.sh`) runs this scenario against a
/// release build through `RELOAD_BENCH_BIN`.
fn spawn_binary(path: &Path) -> Binary {
    let bin = std::env::var("RELOAD_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_companies-gateway").to_string());
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    Binary { child, stderr }
}

async fn scrape_addr(admin: SocketAddr, series: &str) -> f64 {
    let got = send(get(admin, "/metrics")).await;
    let text = String::from_utf8_lossy(&got.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One request of the loop.
struct Done {
    probe: Probe,
    h2: bool,
    start: Instant,
    end: Instant,
    status: Result<u16, String>,
}

/// One connection's request handle.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<u16, String> {
        let res = match self {
            Conn::H1(h1) => {
                h1.ready().await.map_err(|e| e.to_string())?;
                h1.send_request(origin_form(req)).await
            }
            Conn::H2(h2) => h2.send_request(req).await,
        }
        .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        res.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(status)
    }
}

/// Sends the probes in turn on one connection until `stop`, recording each.
async fn drive(mut conn: Conn, uri: String, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Done> {
    let h2 = matches!(conn, Conn::H2(_));
    let mut done = Vec::new();
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let probe = PROBES[i % 3];
        i += 1;
        let start = Instant::now();
        let status = conn.send(probe_request(probe, &uri)).await;
        done.push(Done {
            probe,
            h2,
            start,
            end: Instant::now(),
            status,
        });
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_twenty_times_under_steady_http1_and_h2_traffic_loses_no_request() {
    // The load harness sets more reloads or a longer hold between them.
    let knob = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let reloads = knob("RELOAD_BENCH_RELOADS", 20) as usize;
    let hold = Duration::from_millis(knob("RELOAD_BENCH_HOLD_MS", 150));
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |_| Reply::ok(b"{}")).await;
    let dir = support::tempdir::Dir::new();
    let (public, admin) = (free_addr().await, free_addr().await);
    let path = dir.0.join("gateway.toml");
    let publish = |v: Variant| {
        let doc = if v.doc_b { doc_b() } else { DOC_A.to_string() };
        write_atomic(&dir.0.join("api.yaml"), &doc);
        let text = config_text(
            &v,
            &dir.0,
            &mock.url(""),
            &pki.ca_file(),
            Some((public, admin)),
        );
        write_atomic(&path, &text);
    };
    publish(Variant::nth(0));
    let gw = spawn_binary(&path);
    let start = Instant::now();
    while send_ready(admin).await != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "did not start: {}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (h1, h2) = connections(public).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uri = format!("http://{public}");
    let h1_loop = tokio::spawn(drive(Conn::H1(h1), uri.clone(), stop.clone()));
    let h2_loop = tokio::spawn(drive(Conn::H2(h2), uri, stop.clone()));

    // Config i may be in force from just before its files were written until its successor's
    // reload was seen done.
    let mut written = vec![Instant::now() - Duration::from_secs(3600)];
    let mut seen = vec![Instant::now()];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut reload_ms = Vec::new();
    for i in 1..=reloads {
        written.push(Instant::now());
        publish(Variant::nth(i));
        let ok = Command::new("kill")
            .args(["-HUP", &gw.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let series = "gateway_config_reloads_total{result=\"success\"}";
        while scrape_addr(admin, series).await < i as f64 {
            assert!(
                written[i].elapsed() < Duration::from_secs(10),
                "reload {i} not done: {}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.push(Instant::now());
        reload_ms.push(seen[i].duration_since(written[i]).as_millis());
        // Steady traffic under config i alone.
        tokio::time::sleep(hold).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut done = h1_loop.await.unwrap();
    done.extend(h2_loop.await.unwrap());

    assert_eq!(
        scrape_addr(admin, "gateway_config_reloads_total{result=\"failure\"}").await,
        0.0,
        "{}",
        gw.logs()
    );
    let in_force = |i: usize| {
        let from = written[i];
        let to = seen.get(i + 1).copied();
        (from, to)
    };
    let mut pinned = vec![[0usize; 3]; reloads + 1];
    for d in &done {
        let status = match &d.status {
            Ok(s) => *s,
            Err(e) => panic!(
                "a request failed ({}): {e}\n{}",
                if d.h2 { "h2" } else { "h1" },
                gw.logs()
            ),
        };
        // The configurations in force at some point while the request ran.
        let candidates: Vec<usize> = (0..=reloads)
            .filter(|&i| {
                let (from, to) = in_force(i);
                from <= d.end && to.is_none_or(|to| d.start <= to)
            })
            .collect();
        assert!(
            candidates
                .iter()
                .any(|&i| Variant::nth(i).expect(d.probe) == status),
            "{:?} got {status}; configs in force meanwhile: {candidates:?}",
            d.probe
        );
        if let [only] = candidates[..] {
            pinned[only][d.probe as usize] += 1;
        }
    }
    // Every configuration was seen answering every probe on its own.
    for (i, counts) in pinned.iter().enumerate() {
        assert!(counts.iter().all(|&n| n > 0), "config {i}: {counts:?}");
    }
    let (h1n, h2n) = (
        done.iter().filter(|d| !d.h2).count(),
        done.iter().filter(|d| d.h2).count(),
    );
    assert!(h1n > 100 && h2n > 100, "h1 {h1n}, h2 {h2n}");
    // Figures for the load harness: latency of the requests that started while a reload was
    // under way (files written .. reload seen done) against the others.
    let during = |d: &Done| (1..=reloads).any(|i| written[i] <= d.start && d.start <= seen[i]);
    let p99 = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let lat = |f: &dyn Fn(&Done) -> bool| -> Vec<Duration> {
        done.iter()
            .filter(|d| f(d))
            .map(|d| d.end - d.start)
            .collect()
    };
    let in_reload = lat(&|d| during(d));
    let steady = lat(&|d| !during(d));
    reload_ms.sort_unstable();
    eprintln!(
        "reload-figures: requests={} http1={h1n} h2={h2n} failed=0 reloads={reloads} \
         during_reload={} p99_during_reload_ms={:.2} p99_steady_ms={:.2} \
         reload_done_ms_median={} reload_done_ms_max={}",
        done.len(),
        in_reload.len(),
        p99(in_reload.clone()),
        p99(steady),
        reload_ms[reloads / 2],
        reload_ms[reloads - 1]
    );
    let logs = gw.logs();
    assert_eq!(
        logs.matches("configuration reloaded").count(),
        reloads,
        "{logs}"
    );
    assert!(logs.contains("session_cache=kept"), "{logs}");
}

async fn send_ready(admin: SocketAddr) -> Option<u16> {
    let res = client().request(get(admin, "/readyz")).await.ok()?;
    Some(res.status().as_u16())
}

#[tokio::test]
async fn log_level_changes_on_reload_without_a_restart() {
    let pki = Pki::new();
    let mock = MockUpstream::start_with(pki.leaf(&["localhost"]), |_| Reply::ok(b"{}")).await;
    let dir = support::tempdir::Dir::new();
    let (public, admin) = (free_addr().await, free_addr().await);
    let path = dir.0.join("gateway.toml");
    write_atomic(&dir.0.join("api.yaml"), DOC_A);
    let publish = |level: &str| {
        let text = config_text(
            &Variant::nth(0),
            &dir.0,
            &mock.url(""),
            &pki.ca_file(),
            Some((public, admin)),
        )
        .replace("level = \"info\"", &format!("level = \"{level}\""));
        write_atomic(&path, &text);
    };
    let hup = |gw: &Binary| {
        let ok = Command::new("kill")
            .args(["-HUP", &gw.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let reloads = |n: f64| async move {
        let start = Instant::now();
        while scrape_addr(admin, "gateway_config_reloads_total{result=\"success\"}").await < n {
            assert!(start.elapsed() < Duration::from_secs(10), "no reload {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    publish("warn");
    let gw = spawn_binary(&path);
    let start = Instant::now();
    while send_ready(admin).await != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // At warn, the info lines (listening, a reload done) are not written.
    hup(&gw);
    reloads(1.0).await;
    assert!(
        !gw.logs().contains("configuration reloaded"),
        "{}",
        gw.logs()
    );
    // At info they are, from the reload that set it on, with no restart-only warning for it.
    publish("info");
    hup(&gw);
    reloads(2.0).await;
    let start = Instant::now();
    while !gw.logs().contains("configuration reloaded") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!gw.logs().contains("need a restart"), "{}", gw.logs());
    // And back to warn: the next reload is silent again.
    publish("warn");
    hup(&gw);
    reloads(3.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gw.logs().matches("configuration reloaded").count(),
        1,
        "{}",
        gw.logs()
    );
}
