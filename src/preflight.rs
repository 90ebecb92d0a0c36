//! Load and validate everything, as `nginx -t` does: the config file and its environment
//! overrides, then every file the config names (listener certificate and key, upstream CA and
//! client certificate and key, the session's key files, the store's secret, the OpenAPI document),
//! read and parsed by the same functions that build the stack. `--check-config`, start-up and reload all call [`load`], so that a config the check
//! passes is one the gateway starts with, and a missing or malformed file fails the check, naming
//! its key (gateway.md §1).

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// A configuration that loaded, with what the check has to say about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub report: Report,
}

/// What `--check-config` prints besides the effective configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// For stdout, as TOML comments after the effective configuration.
    pub summary: String,
    /// For stderr (and the log at start-up): ignored `GATEWAY_` variables, unchecked formats.
    pub warnings: Vec<String>,
}

/// Why a configuration cannot be used. Each variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file itself, its syntax, a key or a value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file the config names is missing, unreadable or malformed.
    #[error("{key} {}: {message}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The OpenAPI document does not compile; `message` names the key and the place in it.
    #[error("{message}")]
    Document { key: &'static str, message: String },
    /// A part of the stack cannot be set up from the config (a `[[rate_limit]]` on a route the
    /// document lacks, the store's URL or secret); `message` names the key.
    #[error("{message}")]
    Setup { key: &'static str, message: String },
}

impl LoadError {
    /// The key at fault, when one is: `listener.tls_cert`, `validation.openapi`, ...
    pub fn key(&self) -> Option<&str> {
        match self {
            LoadError::Config(ConfigError::Invalid { key, .. }) => Some(key),
            LoadError::Config(_) => None,
            LoadError::File { key, .. }
            | LoadError::Document { key, .. }
            | LoadError::Setup { key, .. } => Some(key),
        }
    }
}

/// Reads `path` with the process environment's `GATEWAY_` overrides, validates it, and reads and
/// parses every file it names.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let config = Config::load(path)?;
    let mut report = check(&config)?;
    let mut warnings = Config::env_warnings(std::env::vars());
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    Ok(Loaded { config, report })
}

/// Reads and parses every file `config` names, with the loaders the stack uses.
pub fn check(config: &Config) -> Result<Report, LoadError> {
    let file = |key: &'static str, path: &Path, message: String| LoadError::File {
        key,
        path: path.to_path_buf(),
        message,
    };
    if let (Some(cert), Some(key)) = (&config.listener.tls_cert, &config.listener.tls_key) {
        crate::tls::load_certified_key(cert, key).map_err(|e| {
            let (k, p) = match e.key {
                "tls_key" => ("listener.tls_key", key),
                _ => ("listener.tls_cert", cert),
            };
            file(k, p, e.message)
        })?;
    }
    if let Some(ca) = &config.upstream.ca_file {
        crate::upstream::root_store(Some(ca)).map_err(|e| {
            let message = match e {
                crate::upstream::SetupError::CaFile { message, .. } => message,
                other => other.to_string(),
            };
            file("upstream.ca_file", ca, message)
        })?;
    }
    if let (Some(cert), Some(key)) = (&config.upstream.client_cert, &config.upstream.client_key) {
        crate::upstream::load_client_auth(cert, key).map_err(|e| match e {
            crate::upstream::SetupError::ClientCert {
                key: k, message, ..
            } => {
                let (k, p) = match k {
                    "client_key" => ("upstream.client_key", key),
                    _ => ("upstream.client_cert", cert),
                };
                file(k, p, message)
            }
            other => file("upstream.client_cert", cert, other.to_string()),
        })?;
    }
    let s = &config.session;
    crate::session::jwt::JwtKey::load(
        s.jwt_hs256_secret_file.as_deref(),
        s.jwt_public_key_file.as_deref(),
        s.jwks_file.as_deref(),
    )
    .map_err(|e| {
        let path = match e.key {
            "session.jwt_hs256_secret_file" => s.jwt_hs256_secret_file.as_ref(),
            "session.jwt_public_key_file" => s.jwt_public_key_file.as_ref(),
            _ => s.jwks_file.as_ref(),
        }
        .cloned()
        .unwrap_or_default();
        // The reader's message starts with the path, which the error prints already.
        let prefix = format!("{}: ", path.display());
        let message = e.message.strip_prefix(&prefix).unwrap_or(&e.message);
        file(e.key, &path, message.to_string())
    })?;
    let mut report = check_document(config)?;
    let tracing = crate::otel::summary(&config.tracing).map_err(|e| LoadError::Setup {
        key: e.key,
        message: e.message,
    })?;
    report.summary.push_str(&tracing);
    Ok(report)
}

/// Compiles the document `validation.openapi` names (or the built-in one) and its router, and
/// checks what depends on it (each `[[rate_limit]]` route) and `[shared]` (its secret file read,
/// its URL parsed, no connection made), as start-up does.
fn check_document(config: &Config) -> Result<Report, LoadError> {
    let doc_error = |message: String| LoadError::Document {
        key: "validation.openapi",
        message,
    };
    let api = crate::stack::load_api(config).map_err(|e| doc_error(e.to_string()))?;
    crate::route::Router::new(
        api.operations()
            .iter()
            .map(|op| (op.method(), op.template())),
    )
    .map_err(|e| doc_error(format!("validation.openapi: {e}")))?;
    let labels: Vec<&str> = api.operations().iter().map(|op| op.label()).collect();
    crate::rate_limit::check_routes(&config.rate_limit, &labels).map_err(|message| {
        LoadError::Setup {
            key: "rate_limit.route",
            message,
        }
    })?;
    crate::shared::check(&config.shared, config.upstream.ca_file.as_deref())
        .map_err(|(key, message)| LoadError::Setup { key, message })?;
    let source = match &config.validation.openapi {
        Some(path) => path.display().to_string(),
        None => "the built-in document".to_string(),
    };
    let n = api.operations().len();
    let summary = format!(
        "# validation.openapi: {source}: {n} operation{}\n",
        if n == 1 { "" } else { "s" }
    );
    let warnings = api
        .annotation_formats()
        .into_iter()
        .map(|f| format!("validation.openapi: format `{f}` is not checked (an annotation)"))
        .collect();
    Ok(Report { summary, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("cg-preflight-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, contents).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cert_pem() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    /// The error's key and its text.
    fn fails(config: &Config) -> (String, String) {
        let e = check(config).unwrap_err();
        (e.key().unwrap_or("").to_string(), e.to_string())
    }

    #[test]
    fn every_named_file_is_read_and_parsed_and_a_bad_one_names_its_key_and_path() {
        // Before: --check-config passed all of these, and start-up failed.
        let dir = Dir::new("files");
        let (cert, key) = cert_pem();
        let cert_path = dir.write("cert.pem", cert.as_bytes());
        let key_path = dir.write("key.pem", key.as_bytes());
        let garbage = dir.write("garbage", b"not a pem file\n");
        let missing = dir.0.join("missing.pem");

        let mut c = Config::default();
        c.listener.tls_cert = Some(missing.clone());
        c.listener.tls_key = Some(key_path.clone());
        let (k, text) = fails(&c);
        assert_eq!(k, "listener.tls_cert", "{text}");
        assert!(text.contains("missing.pem"), "{text}");
        c.listener.tls_cert = Some(cert_path.clone());
        c.listener.tls_key = Some(garbage.clone());
        let (k, text) = fails(&c);
        assert_eq!(k, "listener.tls_key", "{text}");
        assert!(text.contains("garbage"), "{text}");
        c.listener.tls_key = Some(key_path.clone());
        check(&c).unwrap();

        let mut c = Config::default();
        c.upstream.ca_file = Some(missing.clone());
        assert_eq!(fails(&c).0, "upstream.ca_file");
        c.upstream.ca_file = Some(garbage.clone());
        let (k, text) = fails(&c);
        assert_eq!(k, "upstream.ca_file");
        assert!(text.contains("no PEM certificate"), "{text}");
        c.upstream.ca_file = Some(cert_path.clone());
        check(&c).unwrap();

        let mut c = Config::default();
        c.upstream.client_cert = Some(missing.clone());
        c.upstream.client_key = Some(key_path.clone());
        assert_eq!(fails(&c).0, "upstream.client_cert");
        c.upstream.client_cert = Some(cert_path.clone());
        c.upstream.client_key = Some(garbage.clone());
        assert_eq!(fails(&c).0, "upstream.client_key");
        c.upstream.client_key = Some(key_path.clone());
        check(&c).unwrap();

        let mut c = Config::default();
        c.session.jwks_file = Some(missing.clone());
        let (k, text) = fails(&c);
        assert_eq!(k, "session.jwks_file");
        assert_eq!(text.matches("missing.pem").count(), 1, "{text}");
        c.session.jwks_file = Some(garbage.clone());
        assert_eq!(fails(&c).0, "session.jwks_file");
        c.session.jwks_file = Some(dir.write("jwks.json", br#"{"keys":[]}"#));
        assert_eq!(fails(&c).0, "session.jwks_file");

        let mut c = Config::default();
        c.session.jwt_public_key_file = Some(garbage.clone());
        assert_eq!(fails(&c).0, "session.jwt_public_key_file");
        let mut c = Config::default();
        c.session.jwt_hs256_secret_file = Some(dir.write("empty-secret", b"\n"));
        assert_eq!(fails(&c).0, "session.jwt_hs256_secret_file");
        c.session.jwt_hs256_secret_file = Some(dir.write("secret", b"s3cret\n"));
        check(&c).unwrap();

        let mut c = Config::default();
        c.validation.openapi = Some(missing);
        assert_eq!(fails(&c).0, "validation.openapi");
        c.validation.openapi = Some(garbage);
        assert_eq!(fails(&c).0, "validation.openapi");
    }

    #[test]
    fn the_default_config_checks_with_the_built_in_document() {
        let r = check(&Config::default()).unwrap();
        assert!(
            r.summary.contains("the built-in document: 1 operation\n"),
            "{r:?}"
        );
    }

    #[test]
    fn grpc_tracing_is_accepted_and_shown_with_its_url_masked() {
        let mut c = Config::default();
        c.tracing.otlp_endpoint = Some("https://user:hunter2@collector:4317".into());
        c.tracing.protocol = Some(crate::config::OtlpProtocol::Grpc);
        let r = check(&c).unwrap();
        assert!(
            r.summary
                .contains("# tracing: OTLP grpc to https://***@collector:4317\n"),
            "{r:?}"
        );
        assert!(!r.summary.contains("hunter2"), "{r:?}");
    }
}
