//! Issue 18: replicas sharing a real `redis-server` (started here on a free loopback port, no
//! persistence): one introspection across replicas, a revocation at one replica refused at
//! another within 1 s, one shared rate budget, and the store killed and restarted mid-test with
//! no 5xx and recovery afterwards.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use companies_gateway::config::{Dur, RateKey, RateLimitConfig};
use companies_gateway::{Config, Running};
use http::Request;
use http_body_util::Full;
use support::tempdir::Dir;
use support::*;

const ROUTE: &str = "/companies/v2/rs/1/contacts/2";

/// A `redis-server` child on 127.0.0.1:`port`, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        Redis::on(closed_port().await)
    }

    /// Starts on `port` and returns once the server says it accepts connections.
    fn on(port: u16) -> Redis {
        Redis::with(port, &["--port", &port.to_string()])
    }

    /// Speaks only TLS on `port`, with `leaf`'s certificate.
    fn tls(port: u16, pki: &Pki, leaf: &Leaf) -> Redis {
        let cert = pki.write("redis.pem", leaf.cert_pem.as_bytes());
        let key = pki.write("redis.key", leaf.key_pem.as_bytes());
        let ca = pki.ca_file();
        let (port_arg, cert, key, ca) = (
            port.to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            ca.display().to_string(),
        );
        Redis::with(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port_arg,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
        )
    }

    fn with(port: u16, args: &[&str]) -> Redis {
        let mut child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "notice"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/test installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("redis-server ready");
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Replicas {
    _pki: Pki,
    _dir: Dir,
    mock: MockUpstream,
    intro: Option<MockIntrospection>,
    gws: Vec<Running>,
}

async fn replicas(
    n: usize,
    redis: &Redis,
    intro: Option<Verdict>,
    tweak: impl Fn(&mut Config),
) -> Replicas {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let intro = match intro {
        Some(v) => Some(MockIntrospection::start(v).await),
        None => None,
    };
    let dir = Dir::new();
    let secret = dir.write("key-secret", b"a shared secret of the replicas\n");
    let mut gws = Vec::new();
    for _ in 0..n {
        let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
        config.shared.redis_url = Some(redis.url());
        config.shared.key_secret_file = Some(secret.clone());
        // Generous for a loaded 2-core CI machine; the default is 25 ms.
        config.shared.timeout = Dur(Duration::from_millis(250));
        if let Some(intro) = &intro {
            config.session.introspect_url = Some(intro.url());
            config.session.introspect_timeout = Dur(Duration::from_secs(2));
        }
        tweak(&mut config);
        config.validate().expect("valid config");
        gws.push(start_gateway(config).await);
    }
    Replicas {
        _pki: pki,
        _dir: dir,
        mock,
        intro,
        gws,
    }
}

fn request(gw: &Running, session: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("PATCH")
        .uri(format!("http://{}{ROUTE}", gw.public_addr))
        .header("authorization", "Bearer test-token")
        .header("x-session-token", session)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(EXAMPLE_REQUEST)))
        .expect("request")
}

fn problem_type(got: &Got) -> String {
    got.json()["type"].as_str().unwrap_or("").to_string()
}

/// A sign of life on every replica's revocations subscription: a message revoking nobody,
/// published on the channel, and awaited until each replica counted it. Verdicts cached before it
/// are older than any gap that follows.
async fn sign_of_life(redis: &Redis, gws: &[Running]) {
    let mut before = Vec::new();
    for gw in gws {
        before.push(metric(gw, "gateway_session_revocations_received_total").await);
    }
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("cgw:revoked")
        .arg(format!("{:032x}", 1))
        .query_async(&mut conn)
        .await
        .expect("publish");
    assert_eq!(receivers as usize, gws.len(), "every replica subscribed");
    let deadline = Instant::now() + Duration::from_secs(5);
    for (gw, before) in gws.iter().zip(before) {
        while metric(gw, "gateway_session_revocations_received_total").await <= before {
            assert!(Instant::now() < deadline, "a replica never got the message");
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn concurrent_first_requests_at_three_replicas_make_one_introspection_call() {
    let redis = Redis::start().await;
    let slow_valid = Verdict {
        delay: Duration::from_millis(300),
        ..Verdict::status(200)
    };
    let r = replicas(3, &redis, Some(slow_valid), |_| {}).await;
    let mut sends = Vec::new();
    for gw in &r.gws {
        for _ in 0..10 {
            sends.push(tokio::spawn(send(request(gw, "first-seen-session"))));
        }
    }
    for s in sends {
        let got = s.await.expect("task");
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    }
    let intro = r.intro.as_ref().expect("introspection");
    assert_eq!(intro.calls(), 1, "one call for 30 requests at 3 replicas");
    assert_eq!(r.mock.count(), 30);
    // Seen before on each replica: no store round trip, no call.
    let before: f64 = metric(
        &r.gws[1],
        "gateway_shared_store_operations_total{op=\"get\",result=\"ok\"}",
    )
    .await
        + metric(
            &r.gws[1],
            "gateway_shared_store_operations_total{op=\"get\",result=\"miss\"}",
        )
        .await;
    assert_eq!(
        send(request(&r.gws[1], "first-seen-session")).await.status,
        200
    );
    let after: f64 = metric(
        &r.gws[1],
        "gateway_shared_store_operations_total{op=\"get\",result=\"ok\"}",
    )
    .await
        + metric(
            &r.gws[1],
            "gateway_shared_store_operations_total{op=\"get\",result=\"miss\"}",
        )
        .await;
    assert_eq!(before, after);
    assert_eq!(intro.calls(), 1);
}

#[tokio::test]
async fn a_revocation_learned_at_one_replica_is_refused_at_another_within_a_second() {
    let redis = Redis::start().await;
    let r = replicas(2, &redis, Some(Verdict::status(200)), |_| {}).await;
    let (a, b) = (&r.gws[0], &r.gws[1]);
    assert_eq!(send(request(a, "soon-revoked")).await.status, 200);
    assert_eq!(send(request(b, "soon-revoked")).await.status, 200);
    // The upstream refuses the session at A: A learns it and tells B.
    r.mock.push_reply(Reply::status(401));
    assert_eq!(send(request(a, "soon-revoked")).await.status, 401);
    let learned = Instant::now();
    let got = loop {
        let got = send(request(b, "soon-revoked")).await;
        assert!(got.status == 200 || got.status == 401, "{}", got.status);
        if got.status == 401 || learned.elapsed() > Duration::from_secs(1) {
            break got;
        }
        tokio::task::yield_now().await;
    };
    assert!(
        learned.elapsed() <= Duration::from_secs(1),
        "B still forwarded the session {:?} after A learned it was revoked",
        learned.elapsed()
    );
    assert_eq!(got.status, 401);
    assert_eq!(
        problem_type(&got),
        "urn:companies-gateway:problem:invalid-session"
    );
    assert!(metric(b, "gateway_session_revocations_received_total").await >= 1.0);
    // B asked nobody: the verdict came over the store.
    assert_eq!(r.intro.as_ref().expect("intro").calls(), 1);
}

#[tokio::test]
async fn three_replicas_share_one_rate_budget_and_a_rejected_request_spends_none() {
    let redis = Redis::start().await;
    let r = replicas(3, &redis, None, |c| {
        c.rate_limit = vec![RateLimitConfig {
            name: "per-session".into(),
            key: RateKey::Session,
            route: "*".into(),
            rate: 5,
            per: Dur::secs(60),
            burst: None,
        }];
    })
    .await;
    // Two requests that break the contract: 400, and no budget spent.
    for gw in &r.gws[..2] {
        let bad = Request::builder()
            .method("PATCH")
            .uri(format!("http://{}{ROUTE}", gw.public_addr))
            .header("authorization", "Bearer test-token")
            .header("x-session-token", "limited")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"notify\": 3}")))
            .expect("request");
        assert_eq!(send(bad).await.status, 400);
    }
    let mut statuses = Vec::new();
    for i in 0..9 {
        let got = send(request(&r.gws[i % 3], "limited")).await;
        statuses.push(got.status.as_u16());
        if got.status == 200 {
            // Within the limit: RateLimit only (§8 leaves RateLimit-Policy optional there).
            assert!(got.headers.get("ratelimit-policy").is_none());
            let remaining = 4 - i;
            let t = if remaining == 0 { 12 } else { 0 };
            assert_eq!(
                got.headers["ratelimit"],
                format!("\"per-session\";r={remaining};t={t}").as_str()
            );
        } else {
            assert_eq!(got.status, 429);
            assert_eq!(
                problem_type(&got),
                "urn:companies-gateway:problem:rate-limited"
            );
            let retry: u64 = got.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=12).contains(&retry), "{retry}");
            assert_eq!(got.headers["ratelimit-policy"], "\"per-session\";q=5;w=60");
            assert_eq!(
                got.headers["ratelimit"],
                format!("\"per-session\";r=0;t={retry}").as_str()
            );
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429]);
    assert_eq!(r.mock.count(), 5);
    let mut limited = 0.0;
    for gw in &r.gws {
        limited += metric(
            gw,
            "gateway_rate_limited_total{limit=\"per-session\",route=\"update_contact\"}",
        )
        .await;
    }
    assert_eq!(limited, 4.0);
    // Round trips: one rate script per request that passed the contract, and one verdict lookup
    // per replica for a session it had not seen (a 400 costs none).
    let (mut rate, mut get) = (0.0, 0.0);
    for gw in &r.gws {
        for result in ["ok", "miss", "error", "timeout"] {
            rate += metric(
                gw,
                &format!(
                    "gateway_shared_store_operations_total{{op=\"rate\",result=\"{result}\"}}"
                ),
            )
            .await;
            get += metric(
                gw,
                &format!("gateway_shared_store_operations_total{{op=\"get\",result=\"{result}\"}}"),
            )
            .await;
        }
    }
    assert_eq!((rate, get), (9.0, 3.0));
    // Another session has its own budget.
    assert_eq!(send(request(&r.gws[0], "another")).await.status, 200);
}

#[tokio::test]
async fn the_store_killed_and_restarted_costs_no_5xx_and_sharing_recovers() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let r = replicas(2, &redis, Some(Verdict::status(200)), |c| {
        c.rate_limit = vec![RateLimitConfig {
            name: "per-session".into(),
            key: RateKey::Session,
            route: "*".into(),
            rate: 1000,
            per: Dur::secs(60),
            burst: None,
        }];
    })
    .await;
    let (a, b) = (&r.gws[0], &r.gws[1]);
    let intro = r.intro.as_ref().expect("intro");
    assert_eq!(send(request(a, "kept")).await.status, 200);
    assert_eq!(send(request(b, "kept")).await.status, 200);
    // The subscription was alive after those verdicts were made.
    sign_of_life(&redis, &r.gws).await;

    redis.kill();
    // Down: every replica goes on alone, and nothing is a 5xx.
    for i in 0..20 {
        let gw = &r.gws[i % 2];
        let got = send(request(gw, &format!("during-{i}"))).await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    }
    let failed = metric(
        a,
        "gateway_shared_store_operations_total{op=\"rate\",result=\"error\"}",
    )
    .await
        + metric(
            a,
            "gateway_shared_store_operations_total{op=\"rate\",result=\"timeout\"}",
        )
        .await;
    assert!(failed >= 1.0, "the outage is counted");
    // Meanwhile the session is revoked; A learns it from the upstream, and cannot tell B.
    intro.set(Verdict::status(401));
    r.mock.push_reply(Reply::status(401));
    assert_eq!(send(request(a, "kept")).await.status, 401);

    let _redis = Redis::on(port);
    // B re-subscribes and, having maybe missed messages, drops its valid verdicts made before the
    // gap (the sign of life above): it asks again and refuses the session. Until then it may
    // still forward it; never a 5xx.
    let restarted = Instant::now();
    loop {
        let got = send(request(b, "kept")).await;
        assert!(got.status == 200 || got.status == 401, "{}", got.status);
        if got.status == 401 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "B never caught up after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The store serves again: a rate decision there succeeds.
    let ok_before = metric(
        b,
        "gateway_shared_store_operations_total{op=\"rate\",result=\"ok\"}",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        intro.set(Verdict::status(200));
        assert_eq!(send(request(b, "after")).await.status, 200);
        let ok = metric(
            b,
            "gateway_shared_store_operations_total{op=\"rate\",result=\"ok\"}",
        )
        .await;
        if ok > ok_before {
            break;
        }
        assert!(Instant::now() < deadline, "the store never served B again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn after_a_gap_verdicts_made_before_it_are_asked_again_and_those_made_during_it_are_kept() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let r = replicas(1, &redis, Some(Verdict::status(200)), |_| {}).await;
    let gw = &r.gws[0];
    let intro = r.intro.as_ref().expect("intro");
    assert_eq!(send(request(gw, "before")).await.status, 200);
    assert_eq!(intro.calls(), 1);
    sign_of_life(&redis, &r.gws).await;

    // The gap begins at that sign at the latest. A verdict made after it (the store is down:
    // introspection decides) is newer than the gap. Stamps are in milliseconds, and the same
    // millisecond counts as before the gap: let one pass.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(send(request(gw, "during")).await.status, 200);
    assert_eq!(intro.calls(), 2);
    // Both are served from the local cache while the store is down.
    assert_eq!(send(request(gw, "before")).await.status, 200);
    assert_eq!(send(request(gw, "during")).await.status, 200);
    assert_eq!(intro.calls(), 2);

    let _redis = Redis::on(port);
    // Once re-subscribed, "before" is no longer in the local cache: it is asked again.
    let restarted = Instant::now();
    while intro.calls() < 3 {
        assert_eq!(send(request(gw, "before")).await.status, 200);
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "the replica never dropped the verdict made before the gap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(intro.calls(), 3);
    // "during" still is.
    assert_eq!(send(request(gw, "during")).await.status, 200);
    assert_eq!(send(request(gw, "before")).await.status, 200);
    assert_eq!(intro.calls(), 3);
}

#[tokio::test]
async fn without_a_store_limits_hold_per_replica_by_client() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.rate_limit = vec![RateLimitConfig {
        name: "per-client".into(),
        key: RateKey::Client,
        route: "update_contact".into(),
        rate: 2,
        per: Dur::secs(10),
        burst: None,
    }];
    config.validate().expect("valid");
    let gw = start_gateway(config).await;
    let a = send(request(&gw, "one")).await;
    assert_eq!(a.headers["ratelimit"], "\"per-client\";r=1;t=0");
    // Another session, the same client: the same budget.
    let b = send(request(&gw, "two")).await;
    assert_eq!(b.headers["ratelimit"], "\"per-client\";r=0;t=5");
    let c = send(request(&gw, "three")).await;
    assert_eq!(c.status, 429);
    assert_eq!(c.headers["retry-after"], "5");
    // A route the limit does not name is not limited, and carries no header.
    let other = send(get(gw.public_addr, "/companies/v2/rs/1")).await;
    assert_ne!(other.status, 429);
    assert!(other.headers.get("ratelimit").is_none());
    assert_eq!(mock.count(), 3);
    assert_eq!(
        metric(
            &gw,
            "gateway_rejections_total{reason=\"rate_limited\",route=\"update_contact\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_session_has_one_budget_on_routes_that_check_it_and_routes_that_do_not() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    config.rate_limit = vec![RateLimitConfig {
        name: "per-session".into(),
        key: RateKey::Session,
        route: "*".into(),
        rate: 3,
        per: Dur::secs(30),
        burst: None,
    }];
    config.validate().expect("valid");
    let gw = start_gateway(config).await;
    // The PATCH requires the session token (the session layer judges it and hands its key on);
    // the GET does not (the limiter keys the same tokens itself).
    let read = |session: &str| {
        Request::get(format!("http://{}{ROUTE}", gw.public_addr))
            .header("authorization", "Bearer test-token")
            .header("x-session-token", session)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let states = [
        send(request(&gw, "one")).await,
        send(read("one")).await,
        send(request(&gw, "one")).await,
    ];
    let states: Vec<_> = states
        .iter()
        .map(|got| {
            let state = got.headers["ratelimit"].to_str().expect("text");
            (got.status.as_u16(), state.to_string())
        })
        .collect();
    assert_eq!(
        states,
        [
            (200, "\"per-session\";r=2;t=0".to_string()),
            (200, "\"per-session\";r=1;t=0".to_string()),
            (200, "\"per-session\";r=0;t=10".to_string()),
        ]
    );
    assert_eq!(send(read("one")).await.status, 429);
    // Another session token has its own budget.
    let other = send(read("two")).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.headers["ratelimit"], "\"per-session\";r=2;t=0");
}

#[tokio::test]
async fn a_store_that_is_down_at_start_up_leaves_a_working_gateway() {
    let redis = Redis {
        child: Command::new("true").spawn().expect("true"),
        port: closed_port().await,
    };
    let r = replicas(1, &redis, Some(Verdict::status(200)), |c| {
        c.rate_limit = vec![RateLimitConfig {
            name: "per-session".into(),
            key: RateKey::Session,
            route: "*".into(),
            rate: 2,
            per: Dur::secs(60),
            burst: None,
        }];
    })
    .await;
    let gw = &r.gws[0];
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(send(request(gw, "alone")).await.status.as_u16());
        }
        v
    };
    // Per-replica limits and local verdicts stand in.
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(r.intro.as_ref().expect("intro").calls(), 1);
    let failed = metric(
        gw,
        "gateway_shared_store_operations_total{op=\"get\",result=\"error\"}",
    )
    .await
        + metric(
            gw,
            "gateway_shared_store_operations_total{op=\"get\",result=\"timeout\"}",
        )
        .await;
    assert!(failed >= 1.0);
}

#[test]
fn check_config_reads_the_secret_checks_limit_routes_and_masks_the_password() {
    let dir = Dir::new();
    let secret = dir.write("key-secret", b"0123456789abcdef0123456789abcdef\n");
    let run = |text: String| {
        let path = dir.write("gateway.toml", text.as_bytes());
        Command::new(env!("CARGO_BIN_EXE_companies-gateway"))
            .env_remove("GATEWAY_CONFIG")
            .arg("--check-config")
            .arg("--config")
            .arg(path)
            .output()
            .expect("run")
    };
    let shared = |file: &str| {
        format!("[shared]\nredis_url = \"redis://gw:hunter2@127.0.0.1:1/\"\nkey_secret_file = \"{file}\"\n")
    };
    let limit = |route: &str| {
        format!("[[rate_limit]]\nname = \"l\"\nkey = \"client\"\nroute = \"{route}\"\nrate = 1\nper = \"1s\"\n")
    };
    let out = run(shared(&secret.display().to_string()) + &limit("update_contact"));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("redis://***@127.0.0.1:1/"), "{printed}");
    assert!(!printed.contains("hunter2"));

    let out = run(shared("/nonexistent/key-secret"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("shared.key_secret_file"), "{err}");
    assert!(!err.contains("hunter2"));

    let out = run(limit("no_such_route"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("rate_limit.route"), "{err}");
}

#[tokio::test]
async fn rediss_trusts_what_the_upstream_trusts_and_nothing_else() {
    let pki = Pki::new();
    let redis = Redis::tls(closed_port().await, &pki, &pki.leaf(&["localhost"]));
    let dir = Dir::new();
    let secret = dir.write("key-secret", b"0123456789abcdef0123456789abcdef");
    let limited = |c: &mut Config| {
        c.shared.redis_url = Some(format!("rediss://localhost:{}/", redis.port));
        c.shared.key_secret_file = Some(secret.clone());
        c.shared.timeout = Dur(Duration::from_millis(500));
        c.rate_limit = vec![RateLimitConfig {
            name: "l".into(),
            key: RateKey::Session,
            route: "*".into(),
            rate: 100,
            per: Dur::secs(60),
            burst: None,
        }];
        c.validate().expect("valid");
    };
    // Trusting the store's CA (as upstream.ca_file): the store serves.
    let mock = MockUpstream::start(pki.leaf(&["localhost"])).await;
    let mut config = test_config(&mock.url(""), Some(pki.ca_file()));
    limited(&mut config);
    let gw = start_gateway(config).await;
    assert_eq!(send(request(&gw, "tls")).await.status, 200);
    let ok = "gateway_shared_store_operations_total{op=\"rate\",result=\"ok\"}";
    assert_eq!(metric(&gw, ok).await, 1.0);

    // Another CA: the handshake fails, the store is never used, and requests still pass.
    let other = Pki::new();
    let mock2 = MockUpstream::start(other.leaf(&["localhost"])).await;
    let mut config = test_config(&mock2.url(""), Some(other.ca_file()));
    limited(&mut config);
    let gw2 = start_gateway(config).await;
    assert_eq!(send(request(&gw2, "tls")).await.status, 200);
    assert_eq!(metric(&gw2, ok).await, 0.0);
    let failed = metric(
        &gw2,
        "gateway_shared_store_operations_total{op=\"rate\",result=\"error\"}",
    )
    .await
        + metric(
            &gw2,
            "gateway_shared_store_operations_total{op=\"rate\",result=\"timeout\"}",
        )
        .await;
    assert_eq!(failed, 1.0);
}
