//! Remote session introspection: `GET introspect_url` with the client's `Authorization` and
//! `X-Session-Token`, judged by a pure function of the answer.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::cache::Verdict;
use crate::otel::ClientSpan;

/// Introspection answers are small; a larger body is treated as an error.
const MAX_BODY: usize = 64 * 1024;

pub(crate) static X_SESSION_TOKEN: http::HeaderName =
    http::HeaderName::from_static("x-session-token");

/// The verifier could not decide.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IntrospectError {
    #[error("introspection timed out")]
    Timeout,
    #[error("introspection failed: {0}")]
    Transport(String),
    #[error("introspection answered {0}")]
    Status(StatusCode),
}

/// A remote verdict, with the `max-age` of a valid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remote {
    pub verdict: Verdict,
    pub max_age: Option<Duration>,
}

/// 2xx: valid unless the body is JSON with `"active": false`. 401/403: invalid. Else: an error.
pub(crate) fn judge(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Remote, IntrospectError> {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Ok(Remote {
            verdict: Verdict::Invalid,
            max_age: None,
        });
    }
    if !status.is_success() {
        return Err(IntrospectError::Status(status));
    }
    #[derive(serde::Deserialize)]
    struct Active {
        active: Option<bool>,
    }
    let inactive = serde_json::from_slice::<Active>(body)
        .ok()
        .and_then(|a| a.active)
        == Some(false);
    if inactive {
        return Ok(Remote {
            verdict: Verdict::Invalid,
            max_age: None,
        });
    }
    Ok(Remote {
        verdict: Verdict::Valid,
        max_age: max_age(headers),
    })
}

/// `Cache-Control: max-age=N` (the smallest, if several).
pub(crate) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let (name, value) = d.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("max-age") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .min()
        .map(Duration::from_secs)
}

/// The introspection client.
#[derive(Clone)]
pub struct Introspector {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: Uri,
    timeout: Duration,
}

impl Introspector {
    /// `tls` carries the upstream's trust anchors.
    pub(crate) fn new(url: Uri, timeout: Duration, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Introspector {
            client,
            url,
            timeout,
        }
    }

    /// `introspect_timeout`: also how long another replica's lock on the same session is awaited.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks about the session, within `introspect_timeout` for the whole exchange.
    pub(crate) async fn check(
        &self,
        authorization: HeaderValue,
        session: HeaderValue,
    ) -> Result<Remote, IntrospectError> {
        let mut req = Request::get(self.url.clone())
            .body(Empty::new())
            .map_err(|e| IntrospectError::Transport(e.to_string()))?;
        req.headers_mut().insert(AUTHORIZATION, authorization);
        req.headers_mut().insert(X_SESSION_TOKEN.clone(), session);
        // A CLIENT span under the request's SERVER span, when tracing is on.
        let host = self.url.host().unwrap_or("");
        let port = self.url.port_u16().unwrap_or(match self.url.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let mut span = ClientSpan::start_in_current(req.method(), host, port);
        if let Some(span) = &span {
            span.inject(req.headers_mut());
        }
        let exchange = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| IntrospectError::Transport(e.to_string()))?;
            let (parts, body) = res.into_parts();
            if let Some(span) = span.take() {
                span.answered(parts.status);
            }
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| IntrospectError::Transport(e.to_string()))?
                .to_bytes();
            judge(parts.status, &parts.headers, &body)
        };
        let result = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| IntrospectError::Timeout);
        if let Some(span) = span {
            span.failed(match result {
                Err(_) => "timeout",
                Ok(_) => "transport",
            });
        }
        result?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn answers_are_judged() {
        let none = HeaderMap::new();
        let valid = |max_age| {
            Ok(Remote {
                verdict: Verdict::Valid,
                max_age,
            })
        };
        let invalid = Ok(Remote {
            verdict: Verdict::Invalid,
            max_age: None,
        });
        assert_eq!(judge(StatusCode::OK, &none, b""), valid(None));
        assert_eq!(judge(StatusCode::NO_CONTENT, &none, b""), valid(None));
        assert_eq!(
            judge(StatusCode::OK, &none, br#"{"active":true}"#),
            valid(None)
        );
        assert_eq!(
            judge(StatusCode::OK, &none, br#"{"active":false}"#),
            invalid
        );
        assert_eq!(judge(StatusCode::OK, &none, b"not json"), valid(None));
        assert_eq!(judge(StatusCode::UNAUTHORIZED, &none, b""), invalid);
        assert_eq!(judge(StatusCode::FORBIDDEN, &none, b""), invalid);
        for s in [404, 500, 502, 503, 302] {
            assert!(
                judge(StatusCode::from_u16(s).unwrap(), &none, b"").is_err(),
                "{s}"
            );
        }
        let cc = h(&[
            ("cache-control", "private, max-age=5"),
            ("cache-control", "max-age=9"),
        ]);
        assert_eq!(
            judge(StatusCode::OK, &cc, b""),
            valid(Some(Duration::from_secs(5)))
        );
    }
}
