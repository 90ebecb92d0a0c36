//! What became of a request: set as a response extension by whoever answered it, and read by the
//! observer for metrics and the access log. Label values are the closed sets of gateway.md §3.

/// `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Forwarded,
    Rejected,
    UpstreamError,
    Shed,
    Unavailable,
    Error,
    Aborted,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 7] = [
        OutcomeKind::Forwarded,
        OutcomeKind::Rejected,
        OutcomeKind::UpstreamError,
        OutcomeKind::Shed,
        OutcomeKind::Unavailable,
        OutcomeKind::Error,
        OutcomeKind::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Forwarded => "forwarded",
            OutcomeKind::Rejected => "rejected",
            OutcomeKind::UpstreamError => "upstream_error",
            OutcomeKind::Shed => "shed",
            OutcomeKind::Unavailable => "unavailable",
            OutcomeKind::Error => "error",
            OutcomeKind::Aborted => "aborted",
        }
    }
}

/// `reason` label of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Authorization,
    SessionToken,
    ContentType,
    BodyTooLarge,
    Path,
    Query,
    Header,
    Body,
    SessionInvalid,
    UnknownRoute,
    Framing,
    Expectation,
    Timeout,
    RateLimited,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::Authorization,
        Reason::SessionToken,
        Reason::ContentType,
        Reason::BodyTooLarge,
        Reason::Path,
        Reason::Query,
        Reason::Header,
        Reason::Body,
        Reason::SessionInvalid,
        Reason::UnknownRoute,
        Reason::Framing,
        Reason::Expectation,
        Reason::Timeout,
        Reason::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Authorization => "authorization",
            Reason::SessionToken => "session_token",
            Reason::ContentType => "content_type",
            Reason::BodyTooLarge => "body_too_large",
            Reason::Path => "path",
            Reason::Query => "query",
            Reason::Header => "header",
            Reason::Body => "body",
            Reason::SessionInvalid => "session_invalid",
            Reason::UnknownRoute => "unknown_route",
            Reason::Framing => "framing",
            Reason::Expectation => "expectation",
            Reason::Timeout => "timeout",
            Reason::RateLimited => "rate_limited",
        }
    }
}

/// `kind` label of an upstream error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Tls,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// The response extension the observer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub reason: Option<Reason>,
    pub upstream_error: Option<UpstreamErrorKind>,
    /// Set when the upstream answered.
    pub upstream: Option<UpstreamTiming>,
}

impl Outcome {
    /// The upstream answered with `timing.status`.
    pub fn forwarded(timing: UpstreamTiming) -> Outcome {
        Outcome {
            kind: OutcomeKind::Forwarded,
            reason: None,
            upstream_error: None,
            upstream: Some(timing),
        }
    }

    pub fn rejected(reason: Reason) -> Outcome {
        Outcome {
            kind: OutcomeKind::Rejected,
            reason: Some(reason),
            upstream_error: None,
            upstream: None,
        }
    }
}

/// The upstream's status and how long it took, on an outcome the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTiming {
    pub status: http::StatusCode,
    pub elapsed: std::time::Duration,
    /// The request passed the contract cleanly (not by report mode): an upstream 400 or 422 to
    /// it is contract drift. Forward reads it from the request's context.
    pub validated: bool,
    /// The address (ip:port) of the connection that answered: the access log's `upstream_addr`.
    pub addr: Option<std::net::SocketAddr>,
}

/// The address an upstream response came from, set by the pool on the response head (read by
/// the forwarder into [`UpstreamTiming::addr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpstreamAddr(pub std::net::SocketAddr);

/// The problem slug of a response the gateway wrote itself, for the span's `error.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProblemSlug(pub &'static str);
