//! companies-gateway: a validating reverse proxy in front of the Companies API.
//!
//! `main.rs` only parses the command line; everything else lives here so that tests and benches
//! build the same stack the binary runs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod context;
pub mod contract;
pub mod edge;
pub mod error;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod observe;
pub mod outcome;
pub mod pool;
pub mod problem;
#[cfg(target_os = "linux")]
pub mod process;
pub mod reload;
pub mod request_id;
pub mod route;
pub mod server;
pub mod session;
pub mod shed;
pub mod shed_client;
pub mod stack;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod validate;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

pub use config::Config;
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
