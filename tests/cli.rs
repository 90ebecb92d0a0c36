//! The binary's command line: --check-config, --version, --help, and config errors.

use std::process::Command;

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_companies-gateway"));
    c.env_remove("GATEWAY_CONFIG");
    c
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let out = gateway()
        .args(["--check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("https://z52mnqg347.execute-api.eu-west-3.amazonaws.com/main"));
    assert!(printed.contains("[limits]"));
}

#[test]
fn check_config_names_the_bad_key_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("cg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"https://a.example\"\nretry = 1\n",
    )
    .unwrap();
    let out = gateway()
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retry") && err.contains("line 3"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn environment_overrides_reach_the_effective_config_with_secrets_masked() {
    let out = gateway()
        .arg("--check-config")
        .env(
            "GATEWAY_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        )
        .env("GATEWAY_LIMITS_MAX_BODY_BYTES", "1234")
        .env(
            "GATEWAY_SESSION_INTROSPECT_URL",
            "https://svc:hunter2@auth.example/introspect",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("max_body_bytes = 1234"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[test]
fn version_and_help() {
    let out = gateway().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = gateway().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("--check-config"));
}

#[test]
fn a_missing_config_file_is_an_error() {
    let out = gateway()
        .args(["--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.toml"));
}

#[test]
fn check_config_compiles_the_openapi_document() {
    let dir = std::env::temp_dir().join(format!("cg-cli-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    let doc = dir.join("openapi.yaml");
    std::fs::write(
        &config,
        format!("[validation]\nopenapi = {:?}\n", doc.display().to_string()),
    )
    .unwrap();
    let run = || {
        gateway()
            .arg("--check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    std::fs::write(
        &doc,
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /a/{id}:\n    parameters:\n      - {name: id, in: path, required: true, schema: {type: string, format: color}}\n    get:\n      responses: {}\n    put:\n      responses: {}\n",
    )
    .unwrap();
    let out = run();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(": 2 operations"), "{stdout}");
    assert!(stderr.contains("format `color`"), "{stderr}");
    // A keyword the gateway cannot check fails it, naming the key and the pointer.
    std::fs::write(
        &doc,
        "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get:\n      parameters:\n        - {name: q, in: query, schema: {type: string, contentEncoding: base64}}\n      responses: {}\n",
    )
    .unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("validation.openapi") && stderr.contains("/paths/~1a/get/parameters/0"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scratch directory for one test.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("cg-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to its end; a gateway that starts instead of failing is killed after 30 s, so that
/// the test fails rather than hangs.
fn exits(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn check_config_reads_every_file_the_config_names_and_start_up_agrees() {
    // Before: --check-config passed a missing ca_file, tls_cert or jwks_file; start-up then failed.
    let dir = Scratch::new("files");
    let missing = dir.0.join("nowhere.pem");
    let cases = [
        (
            format!(
                "[listener]\naddr = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
                missing.display().to_string(),
                missing.display().to_string()
            ),
            "listener.tls_cert",
        ),
        (
            format!(
                "[listener]\naddr = \"127.0.0.1:0\"\n[upstream]\nca_file = {:?}\n",
                missing.display().to_string()
            ),
            "upstream.ca_file",
        ),
        (
            format!(
                "[listener]\naddr = \"127.0.0.1:0\"\n[session]\njwks_file = {:?}\n",
                dir.write("jwks.json", "{not json").display().to_string()
            ),
            "session.jwks_file",
        ),
    ];
    for (text, key) in cases {
        // Ports 0: should start-up wrongly pass, it binds nothing in use (and the test fails).
        let config = dir.write(
            "gateway.toml",
            &format!("[admin]\naddr = \"127.0.0.1:0\"\n{text}"),
        );
        for check in [true, false] {
            let mut cmd = gateway();
            if check {
                cmd.arg("--check-config");
            }
            let out = exits(cmd.arg("--config").arg(&config));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "check={check} {key}: {stderr}");
            assert!(
                stderr.contains(&format!("config error: {key}")),
                "check={check} {key}: {stderr}"
            );
        }
    }
}

#[test]
fn a_malformed_log_level_fails_the_check() {
    // Before: `verbose` passed, and the running gateway logged nothing at all.
    let dir = Scratch::new("level");
    let config = dir.write("gateway.toml", "[log]\nlevel = \"verbose\"\n");
    let out = gateway()
        .arg("--check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("log.level") && stderr.contains("verbose"),
        "{stderr}"
    );
}

#[test]
fn a_variable_that_names_no_section_is_a_warning_not_an_error() {
    // Before: any stray GATEWAY_FOO=1 stopped start-up.
    let out = gateway()
        .args(["--check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .env("GATEWAY_FOO", "1")
        .env("GATEWAY_LIMITS_MAX_HEADERS", "70")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: environment variable GATEWAY_FOO names no config section"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_headers = 70"));
    // An unknown key in a known section stays an error.
    let out = gateway()
        .args(["--check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .env("GATEWAY_LIMITS_MAX_HEADRES", "70")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("GATEWAY_LIMITS_MAX_HEADRES"), "{stderr}");
}

#[test]
fn the_config_s_log_level_wins_over_rust_log_and_a_stray_variable_is_logged() {
    // Before: the Deployment's RUST_LOG overrode [log] level; here RUST_LOG=off would have
    // silenced the gateway entirely.
    let dir = Scratch::new("precedence");
    let config = dir.write(
        "gateway.toml",
        "[listener]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\n",
    );
    let mut child = gateway()
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "off")
        .env("GATEWAY_FOO", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) if line.contains("companies-gateway listening") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "no start-up line on stderr: {seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("GATEWAY_FOO names no config section")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("log_level_from=Config")),
        "{seen:#?}"
    );
}
