//! The gateway's one error type, and the one place where an error becomes an HTTP response: an
//! RFC 9457 problem (gateway.md §2). Errors are sorted by where they came from: the client gets a
//! 4xx, the upstream a 502 or 504, the gateway itself a 500.

use std::borrow::Cow;

use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::contract::{HeaderProblem, Location, Violation, Violations};
use crate::outcome::{Outcome, OutcomeKind, Reason, UpstreamErrorKind};
use crate::{full_body, Body, BoxError};

mod json;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Framing or header abuse, or a non-canonical path.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// `Authorization` (stage 1) or `X-Session-Token` (stage 2) missing, repeated or malformed.
    #[error("unauthorized")]
    Unauthorized {
        reason: Reason,
        problems: Vec<HeaderProblem>,
    },
    #[error("unsupported media type")]
    UnsupportedMediaType(Vec<HeaderProblem>),
    #[error("body over {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("body not received in time")]
    RequestTimeout,
    /// The client went away before its body was complete (connection closed or reset, h2
    /// stream reset): not a rejection, and the response most likely reaches no one.
    #[error("the client went away mid-body")]
    ClientAborted,
    #[error("unsupported expectation")]
    ExpectationFailed,
    #[error("no contract for this route")]
    UnknownRoute,
    /// Stage 5: path or body break the contract.
    #[error("invalid request: {} violation(s)", .0.total())]
    InvalidRequest(Violations),
    #[error("invalid session")]
    InvalidSession,
    #[error("overloaded")]
    Overloaded,
    /// Shed by `max_concurrent_requests_per_client`: the same 503, but the detail says whose limit.
    #[error("client over its concurrency limit")]
    ClientOverloaded,
    #[error("session verifier unavailable")]
    SessionUnavailable,
    /// A `[[rate_limit]]` is exhausted: 429 with `Retry-After` (seconds), and the draft's
    /// `RateLimit-Policy` and `RateLimit` of the exhausted limit (gateway.md §8).
    #[error("rate limited")]
    RateLimited {
        retry_after: u64,
        policy: HeaderValue,
        state: HeaderValue,
    },
    #[error("upstream {}: {source}", kind.as_str())]
    Upstream {
        kind: UpstreamErrorKind,
        #[source]
        source: BoxError,
    },
    /// A bug, or a caught panic.
    #[error("internal error: {0}")]
    Internal(String),
    /// A request on an operation reached the upstream side without the contract's or the
    /// session's decision (a layer missing or out of order): refused, never forwarded.
    #[error("internal error: the request reached the upstream without its {0} decision")]
    Undecided(&'static str),
}

/// The IETF httpapi draft's headers (gateway.md §8).
pub(crate) const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: http::HeaderName =
    http::HeaderName::from_static("ratelimit-policy");

/// How long a client is asked to wait after a 503.
const RETRY_AFTER_SECS: u64 = 1;

/// The serde rendering the hand-written one replaced, kept as the tests' reference.
#[cfg(test)]
#[derive(serde::Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    instance: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<ProblemItem<'a>>,
}

/// One item of a problem's `errors`; exactly one of `pointer`, `parameter`, `header` is set.
#[cfg_attr(test, derive(serde::Serialize))]
struct ProblemItem<'a> {
    code: &'a str,
    detail: &'a str,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pointer: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    parameter: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    header: Option<&'a str>,
}

impl<'a> ProblemItem<'a> {
    fn from_header(p: &'a HeaderProblem) -> Self {
        ProblemItem {
            code: p.code,
            detail: &p.detail,
            pointer: None,
            parameter: None,
            header: Some(p.header),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        // Codes are fixed snake_case words: nothing to escape.
        json::plain(out, b"{\"code\":\"", self.code);
        out.extend_from_slice(b"\",\"detail\":");
        json::string(out, self.detail);
        let (name, value): (&[u8], _) = match (self.pointer, self.parameter, self.header) {
            (Some(p), _, _) => (b",\"pointer\":", p),
            (None, Some(p), _) => (b",\"parameter\":", p),
            (None, None, Some(h)) => (b",\"header\":", h),
            (None, None, None) => (b"", ""),
        };
        if !name.is_empty() {
            out.extend_from_slice(name);
            json::string(out, value);
        }
        out.push(b'}');
    }

    fn from_violation(v: &'a Violation) -> Self {
        let (pointer, parameter, header) = match &v.location {
            Location::Pointer(p) => (Some(p.as_str()), None, None),
            Location::Path(p) | Location::Query(p) => (None, Some(*p), None),
            Location::Header(h) => (None, None, Some(*h)),
        };
        ProblemItem {
            code: v.code.as_str(),
            detail: &v.detail,
            pointer,
            parameter,
            header,
        }
    }
}

impl GatewayError {
    /// The error's status, problem slug and title.
    pub(crate) fn status(&self) -> (StatusCode, &'static str, &'static str) {
        use GatewayError::*;
        match self {
            BadRequest(_) | ClientAborted => {
                (StatusCode::BAD_REQUEST, "bad-request", "Bad request")
            }
            Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
            ),
            ExpectationFailed => (
                StatusCode::EXPECTATION_FAILED,
                "expectation-failed",
                "Expectation failed",
            ),
            UnknownRoute => (StatusCode::NOT_FOUND, "unknown-route", "Unknown route"),
            InvalidRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Request breaks the contract",
            ),
            InvalidSession => (
                StatusCode::UNAUTHORIZED,
                "invalid-session",
                "Invalid session",
            ),
            Overloaded | ClientOverloaded => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded")
            }
            SessionUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "session-unavailable",
                "Session check unavailable",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limited",
            ),
            Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway-timeout",
                "Gateway timeout",
            ),
            Upstream { .. } => (StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway"),
            Internal(_) | Undecided(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// What the observer records for this error.
    pub(crate) fn outcome(&self) -> Outcome {
        use GatewayError::*;
        let rejected = Outcome::rejected;
        match self {
            BadRequest(_) => rejected(Reason::Framing),
            Unauthorized { reason, .. } => rejected(*reason),
            UnsupportedMediaType(_) => rejected(Reason::ContentType),
            PayloadTooLarge { .. } => rejected(Reason::BodyTooLarge),
            RequestTimeout => rejected(Reason::Timeout),
            ClientAborted => Outcome {
                kind: OutcomeKind::Aborted,
                reason: None,
                upstream_error: None,
                upstream: None,
            },
            ExpectationFailed => rejected(Reason::Expectation),
            UnknownRoute => rejected(Reason::UnknownRoute),
            InvalidRequest(v) => rejected(stage5_reason(v)),
            InvalidSession => rejected(Reason::SessionInvalid),
            RateLimited { .. } => rejected(Reason::RateLimited),
            Overloaded | ClientOverloaded => Outcome {
                kind: OutcomeKind::Shed,
                reason: None,
                upstream_error: None,
                upstream: None,
            },
            SessionUnavailable => Outcome {
                kind: OutcomeKind::Unavailable,
                reason: None,
                upstream_error: None,
                upstream: None,
            },
            Upstream { kind, .. } => Outcome {
                kind: OutcomeKind::UpstreamError,
                reason: None,
                upstream_error: Some(*kind),
                upstream: None,
            },
            Internal(_) | Undecided(_) => Outcome {
                kind: OutcomeKind::Error,
                reason: None,
                upstream_error: None,
                upstream: None,
            },
        }
    }

    fn detail(&self) -> Cow<'static, str> {
        use GatewayError::*;
        match self {
            BadRequest(d) => Cow::Borrowed(*d),
            Unauthorized { reason, .. } => match reason {
                Reason::SessionToken => "X-Session-Token is missing, repeated or malformed".into(),
                _ => "Authorization must be one `Bearer <token>` header".into(),
            },
            UnsupportedMediaType(_) => "Content-Type must be application/json (utf-8)".into(),
            PayloadTooLarge { limit } => format!("the body must be at most {limit} bytes").into(),
            RequestTimeout => "the request body did not arrive in time".into(),
            ClientAborted => "the request body ended before it was complete".into(),
            ExpectationFailed => "only `Expect: 100-continue` is supported".into(),
            UnknownRoute => "the gateway has no contract for this route".into(),
            InvalidRequest(v) if v.unlisted() > 0 => format!(
                "{} violation(s) of the contract; the first {} are listed",
                v.total(),
                v.len()
            )
            .into(),
            InvalidRequest(v) => format!("{} violation(s) of the contract", v.total()).into(),
            InvalidSession => "the session is not valid".into(),
            Overloaded => "the gateway is at its concurrency limit; retry later".into(),
            ClientOverloaded => {
                "this client has as many requests in flight as it may; retry later".into()
            }
            SessionUnavailable => "the session could not be checked; retry later".into(),
            RateLimited { retry_after, .. } => {
                format!("a rate limit is exhausted; retry in {retry_after} s").into()
            }
            Upstream { kind, .. } => match kind {
                UpstreamErrorKind::Connect => "the upstream could not be reached".into(),
                UpstreamErrorKind::Tls => "the upstream's TLS handshake failed".into(),
                UpstreamErrorKind::Timeout => "the upstream did not answer in time".into(),
                UpstreamErrorKind::Reset => "the upstream closed the connection".into(),
                UpstreamErrorKind::Protocol => "the upstream sent a malformed response".into(),
            },
            Internal(_) | Undecided(_) => "the gateway failed to handle the request".into(),
        }
    }

    /// The problem response for this error. `instance` is the request path; `request_id` the id
    /// the response will carry.
    pub(crate) fn into_response(self, instance: &str, request_id: &str) -> Response<Body> {
        let (status, slug, title) = self.status();
        let outcome = self.outcome();
        let body = self.render(slug, title, status, instance, request_id);
        let mut response = Response::new(full_body(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            GatewayError::Unauthorized { .. } => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::InvalidSession => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            GatewayError::Overloaded
            | GatewayError::ClientOverloaded
            | GatewayError::SessionUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            GatewayError::RateLimited {
                retry_after,
                policy,
                state,
            } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
                headers.insert(RATELIMIT_POLICY, policy.clone());
                headers.insert(RATELIMIT, state.clone());
            }
            // After framing abuse nothing more is read from the connection (hyper drops this
            // header on h2).
            GatewayError::BadRequest(_) | GatewayError::ClientAborted => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response.extensions_mut().insert(outcome);
        response
            .extensions_mut()
            .insert(crate::outcome::ProblemSlug(slug));
        response
    }

    /// The problem body, in serde_json's compact form with the members in `Problem`'s order
    /// (tests compare it with that rendering byte for byte).
    fn render(
        &self,
        slug: &str,
        title: &str,
        status: StatusCode,
        instance: &str,
        request_id: &str,
    ) -> Vec<u8> {
        let items: &[_] = match self {
            GatewayError::InvalidRequest(v) => v,
            _ => &[],
        };
        let headers: &[HeaderProblem] = match self {
            GatewayError::Unauthorized { problems, .. }
            | GatewayError::UnsupportedMediaType(problems) => problems,
            _ => &[],
        };
        // Sized for the usual problem, so writing does not grow the buffer item by item.
        let mut out = Vec::with_capacity(384 + 192 * (items.len() + headers.len()));
        // Slugs and titles are fixed words, and the status three digits: nothing to escape, so
        // they go in with the member names around them as plain bytes.
        json::plain(
            &mut out,
            b"{\"type\":\"urn:companies-gateway:problem:",
            slug,
        );
        json::plain(&mut out, b"\",\"title\":\"", title);
        json::plain(&mut out, b"\",\"status\":", status.as_str());
        out.extend_from_slice(b",\"detail\":");
        self.write_detail(&mut out);
        out.extend_from_slice(b",\"instance\":");
        json::string(&mut out, instance);
        out.extend_from_slice(b",\"request_id\":");
        json::string(&mut out, request_id);
        if !items.is_empty() || !headers.is_empty() {
            out.extend_from_slice(b",\"errors\":[");
            let all = headers
                .iter()
                .map(ProblemItem::from_header)
                .chain(items.iter().map(ProblemItem::from_violation));
            for (i, item) in all.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                item.write(&mut out);
            }
            out.push(b']');
        }
        out.push(b'}');
        out
    }

    /// `detail()` as a JSON string, without formatting it first in the usual rejection.
    fn write_detail(&self, out: &mut Vec<u8>) {
        match self {
            GatewayError::InvalidRequest(v) if v.unlisted() == 0 => {
                out.push(b'"');
                json::uint(out, v.total());
                out.extend_from_slice(b" violation(s) of the contract\"");
            }
            _ => json::string(out, &self.detail()),
        }
    }

    /// An upstream error of `kind`.
    pub(crate) fn upstream(kind: UpstreamErrorKind, source: impl Into<BoxError>) -> Self {
        GatewayError::Upstream {
            kind,
            source: source.into(),
        }
    }
}

/// The `reason` of a stage-5 rejection: the first kind of place that failed, in the order the
/// stage checks them (path, query, headers, body), so one request counts once.
fn stage5_reason(violations: &Violations) -> Reason {
    let mut reason = Reason::Body;
    for v in violations.iter() {
        let r = match v.location {
            Location::Path(_) => return Reason::Path,
            Location::Query(_) => Reason::Query,
            Location::Header(_) => Reason::Header,
            Location::Pointer(_) => continue,
        };
        if reason == Reason::Body || r == Reason::Query {
            reason = r;
        }
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Code, Field};
    use http_body_util::BodyExt;

    async fn problem(err: GatewayError) -> (Response<()>, serde_json::Value) {
        let (parts, body) = err.into_response("/x", "rid-1").into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, ()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn every_error_is_a_problem_with_type_status_instance_and_request_id() {
        let all = vec![
            GatewayError::BadRequest("x"),
            GatewayError::UnknownRoute,
            GatewayError::RequestTimeout,
            GatewayError::ClientAborted,
            GatewayError::PayloadTooLarge { limit: 10 },
            GatewayError::ExpectationFailed,
            GatewayError::InvalidSession,
            GatewayError::Overloaded,
            GatewayError::ClientOverloaded,
            GatewayError::SessionUnavailable,
            GatewayError::upstream(UpstreamErrorKind::Connect, "refused"),
            GatewayError::upstream(UpstreamErrorKind::Timeout, "slow"),
            GatewayError::Internal("boom".into()),
        ];
        let expected = [
            400, 404, 408, 400, 413, 417, 401, 503, 503, 503, 502, 504, 500,
        ];
        for (err, status) in all.into_iter().zip(expected) {
            let (res, body) = problem(err).await;
            assert_eq!(res.status().as_u16(), status);
            assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
            assert_eq!(body["status"], status);
            assert!(body["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:companies-gateway:problem:"));
            assert_eq!(body["instance"], "/x");
            assert_eq!(body["request_id"], "rid-1");
            assert!(body["title"].is_string() && body["detail"].is_string());
            assert!(res.extensions().get::<Outcome>().is_some());
        }
    }

    #[tokio::test]
    async fn internal_details_never_reach_the_client() {
        let (_, body) = problem(GatewayError::Internal("secret panic text".into())).await;
        assert!(!body.to_string().contains("secret panic text"));
        let (_, body) = problem(GatewayError::upstream(
            UpstreamErrorKind::Tls,
            "invalid peer certificate: UnknownIssuer",
        ))
        .await;
        assert!(!body.to_string().contains("UnknownIssuer"));
    }

    #[tokio::test]
    async fn a_401_carries_www_authenticate() {
        let (res, body) = problem(GatewayError::Unauthorized {
            reason: Reason::Authorization,
            problems: vec![HeaderProblem {
                header: "Authorization",
                code: "missing",
                detail: "required".into(),
            }],
        })
        .await;
        assert_eq!(res.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["errors"][0]["header"], "Authorization");
        assert_eq!(body["errors"][0]["code"], "missing");
        let (res, body) = problem(GatewayError::InvalidSession).await;
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        assert!(body.get("errors").is_none());
    }

    #[tokio::test]
    async fn violations_keep_their_locations() {
        let err = GatewayError::InvalidRequest(Violations::from(vec![
            Violation {
                field: Field::Notify,
                code: Code::Required,
                location: Location::Pointer("/notify".into()),
                detail: "required".into(),
            },
            Violation {
                field: Field::CompanyId,
                code: Code::Integer,
                location: Location::Path("companyId"),
                detail: "integer".into(),
            },
        ]));
        assert_eq!(err.outcome(), Outcome::rejected(Reason::Path));
        let (_, body) = problem(err).await;
        assert_eq!(
            body["type"],
            "urn:companies-gateway:problem:invalid-request"
        );
        assert_eq!(body["errors"][0]["pointer"], "/notify");
        assert_eq!(body["errors"][0]["code"], "required");
        assert_eq!(body["errors"][1]["parameter"], "companyId");
        assert!(body["errors"][1].get("pointer").is_none());
    }

    #[test]
    fn a_stage_5_rejection_counts_the_first_place_that_failed() {
        let at = |location: Location| Violation {
            field: Field::Unknown,
            code: Code::Type,
            location,
            detail: String::new(),
        };
        let reason = |locations: Vec<Location>| {
            let err = GatewayError::InvalidRequest(Violations::from(
                locations.into_iter().map(at).collect::<Vec<_>>(),
            ));
            err.outcome().reason
        };
        let body = || Location::Pointer("/a".into());
        assert_eq!(reason(vec![body()]), Some(Reason::Body));
        assert_eq!(
            reason(vec![body(), Location::Header("X-A")]),
            Some(Reason::Header)
        );
        assert_eq!(
            reason(vec![Location::Header("X-A"), Location::Query("q"), body()]),
            Some(Reason::Query)
        );
        assert_eq!(
            reason(vec![Location::Query("q"), Location::Header("X-A")]),
            Some(Reason::Query)
        );
        assert_eq!(
            reason(vec![Location::Query("q"), Location::Path("id")]),
            Some(Reason::Path)
        );
        // Query parameters render as a problem's `parameter`, like path parameters.
        let items: Vec<_> = [Location::Query("q"), Location::Header("X-A")]
            .iter()
            .map(|l| {
                let v = at(l.clone());
                let item = ProblemItem::from_violation(&v);
                (
                    item.parameter.map(str::to_owned),
                    item.header.map(str::to_owned),
                )
            })
            .collect();
        let owned = |s: &str| Some(s.to_owned());
        assert_eq!(items, vec![(owned("q"), None), (None, owned("X-A"))]);
    }

    #[tokio::test]
    async fn a_429_carries_retry_after_and_the_limit_headers() {
        let err = GatewayError::RateLimited {
            retry_after: 7,
            policy: HeaderValue::from_static("\"burst\";q=10;w=60"),
            state: HeaderValue::from_static("\"burst\";r=0;t=7"),
        };
        assert_eq!(err.outcome(), Outcome::rejected(Reason::RateLimited));
        let (res, body) = problem(err).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[RETRY_AFTER], "7");
        assert_eq!(res.headers()["ratelimit-policy"], "\"burst\";q=10;w=60");
        assert_eq!(res.headers()["ratelimit"], "\"burst\";r=0;t=7");
        assert_eq!(body["type"], "urn:companies-gateway:problem:rate-limited");
        assert_eq!(body["status"], 429);
    }

    /// The body as the serde rendering wrote it before the hand-written one.
    fn by_serde(err: &GatewayError, instance: &str, request_id: &str) -> Vec<u8> {
        let (status, slug, title) = err.status();
        let errors: Vec<ProblemItem<'_>> = match err {
            GatewayError::Unauthorized { problems, .. }
            | GatewayError::UnsupportedMediaType(problems) => {
                problems.iter().map(ProblemItem::from_header).collect()
            }
            GatewayError::InvalidRequest(v) => v.iter().map(ProblemItem::from_violation).collect(),
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: format!("urn:companies-gateway:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: err.detail().into_owned(),
            instance,
            request_id,
            errors,
        };
        serde_json::to_vec(&problem).unwrap()
    }

    #[tokio::test]
    async fn problem_bodies_are_byte_for_byte_what_serde_json_wrote() {
        let header = |header, code, detail: &str| HeaderProblem {
            header,
            code,
            detail: detail.to_owned(),
        };
        let violation = |location, detail: &str| Violation {
            field: Field::Name,
            code: Code::MaxLength,
            location,
            detail: detail.to_owned(),
        };
        let many: Vec<Violation> = (0..130)
            .map(|i| {
                violation(
                    Location::Pointer(format!("/phones/{i}")),
                    "must be a string",
                )
            })
            .collect();
        let all = vec![
            GatewayError::BadRequest("a \"quoted\" \\ detail\n"),
            GatewayError::Unauthorized {
                reason: Reason::Authorization,
                problems: vec![
                    header("Authorization", "missing", "required"),
                    header("X-Api-Key", "malformed", "bad byte \u{1} \u{7f} é \u{2028}"),
                ],
            },
            GatewayError::UnsupportedMediaType(vec![header(
                "Content-Type",
                "unsupported",
                "got \"text/plain\"",
            )]),
            GatewayError::PayloadTooLarge { limit: 65536 },
            GatewayError::InvalidRequest(Violations::from(vec![
                violation(
                    Location::Pointer("/na\"me~1x".into()),
                    "must be at most 3\tchars",
                ),
                violation(
                    Location::Path("companyId"),
                    "companyId must be a decimal integer",
                ),
                violation(
                    Location::Query("unknown"),
                    "unknown query parameter \"\u{0}\"",
                ),
                violation(
                    Location::Header("X-Session-Token"),
                    "X-Session-Token too long",
                ),
            ])),
            GatewayError::InvalidRequest(Violations::from(many)),
            GatewayError::InvalidRequest(Violations::default()),
            GatewayError::RateLimited {
                retry_after: 7,
                policy: HeaderValue::from_static("\"burst\";q=10;w=60"),
                state: HeaderValue::from_static("\"burst\";r=0;t=7"),
            },
            GatewayError::upstream(UpstreamErrorKind::Protocol, "x"),
            GatewayError::Undecided("session"),
        ];
        for err in all {
            for (instance, request_id) in [
                (
                    "/companies/v2/rs/1/contacts/2",
                    "0193a7c4-5c4e-7b1f-9a0e-3f1d2c4b5a69",
                ),
                ("/x\"y\\z/\u{1b}é", "rid\n\u{0}"),
            ] {
                let want = by_serde(&err, instance, request_id);
                let (status, slug, title) = err.status();
                let got = err.render(slug, title, status, instance, request_id);
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(want).unwrap(),
                    "{err:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_503_carries_retry_after() {
        let (res, _) = problem(GatewayError::Overloaded).await;
        assert_eq!(res.headers()[RETRY_AFTER], "1");
    }
}
