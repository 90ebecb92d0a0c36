//! companies-gateway: a validating reverse proxy in front of the Companies API.
//!
//! `main.rs` only parses the command line; everything else lives here so that tests and benches
//! build the same stack the binary runs.
//!
//! # The public facade
//!
//! Everything is `pub(crate)` by default, so that the compiler reports dead code. What stays `pub`
//! is only what code outside the crate uses: `main.rs` (`cli`, `telemetry`, [`run`]), the
//! integration tests (`tests/`), the benches (`benches/`) and the fuzz targets (`fuzz/`):
//!
//! - `preflight::load` (what `--check-config`, start-up and reload run), [`start`], [`start_with`],
//!   [`run`], [`Running`], [`Config`] (and `config`'s types), [`Options`] (and the [`Resolve`]
//!   it may hold), [`Reloaded`] and [`ReloadError`] (what `Running::reload` returns);
//! - `stack::{parts, build, Parts}`, to assemble the layers in another order;
//! - the pure decisions and the layers they exercise directly: `contract` (the compiled document
//!   and its checks), `route`, `edge`, `headers`, `request_id`, `problem`, `forward`, `session`,
//!   `metrics::Metrics`, `error::GatewayError`;
//! - the body helpers below.
//!
//! The other modules are private; an item is made `pub` only when one of those users needs it.
#![forbid(unsafe_code)]

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod body;
pub mod cli;
pub mod config;
pub(crate) mod context;
pub mod contract;
pub mod edge;
pub(crate) mod endpoints;
pub mod error;
pub mod forward;
pub mod headers;
pub mod metrics;
pub(crate) mod observe;
pub(crate) mod otel;
pub(crate) mod outcome;
pub(crate) mod pool;
pub mod preflight;
pub mod problem;
#[cfg(target_os = "linux")]
pub(crate) mod process;
pub(crate) mod proxy;
pub(crate) mod rate_limit;
pub(crate) mod reload;
pub mod request_id;
pub(crate) mod retry;
pub mod route;
pub(crate) mod server;
pub mod session;
pub(crate) mod shared;
pub(crate) mod shed;
pub(crate) mod shed_client;
pub mod stack;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod upstream;
pub(crate) mod validate;
pub(crate) mod x509;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

pub use config::Config;
pub use endpoints::{Resolve, SystemResolver};
pub use reload::{ReloadError, Reloaded};
pub use server::{run, start, start_with, Running};
pub use stack::Options;

/// Errors that cross the body and client boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response inside the stack.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose data is `Bytes`.
pub fn box_body<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
