//! The request contract, as data: an OpenAPI 3.0/3.1 document loaded once and compiled into one
//! plan per operation (gateway.md §5). Pure: no I/O but reading the document, no panics on any
//! request.
//!
//! - `problems`: violations and header problems, with the closed label sets of gateway.md §3;
//! - `headers`: stages 1–3 on the request head;
//! - `params`: stage 5, path, query and header parameters;
//! - `engine`: stage 5, the body, in one streaming pass;
//! - `formats`: the `format`s that are checked.
//!
//! The facade below (`Api`, `Operation`, `CompileOptions`, `LoadError`) is what the router, the
//! layers, the tests, the benches and the fuzz targets use.

use std::fmt;
use std::path::Path as FsPath;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, Method};

use crate::error::GatewayError;
use crate::outcome::Reason;

mod engine;
pub(crate) mod fast;
mod formats;
mod headers;
mod load;
mod names;
mod params;
mod problems;
mod schema;

pub(crate) use engine::*;
pub(crate) use headers::*;
pub(crate) use problems::*;
// The part of the stages above that tests, benches and fuzz targets call directly.
pub use headers::{check_authorization, check_content_type, check_session_token};
pub use params::check_path_params;
pub use problems::{
    Code, Field, HeaderProblem, Location, UnknownFields, UnknownQuery, Violation, Violations,
};

/// The built-in document: `../shared/contract/openapi.yaml` (copied in `tests/data/shared/`) but
/// for `additionalProperties` (see its head comment).
pub(crate) const BUILTIN_DOCUMENT: &str = include_str!("builtin.yaml");

/// Options the compiled document depends on (from `[validation]` and `[session]`): a change to
/// any of them needs a new compile, which a reload does anyway.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// `session.token_header`: an operation that requires it gets stages 2 and 6.
    pub token_header: HeaderName,
    /// `validation.unknown_fields`: `reject` acts as `additionalProperties: false` where unset.
    pub unknown_fields: UnknownFields,
    /// `validation.unknown_query`.
    pub unknown_query: UnknownQuery,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            token_header: HeaderName::from_static("x-session-token"),
            unknown_fields: UnknownFields::default(),
            unknown_query: UnknownQuery::default(),
        }
    }
}

/// A document the gateway cannot load. `Display` names the JSON pointer into the document (and
/// the file and line for a parse error), so the operator finds the place at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file, when the document came from one.
    file: Option<String>,
    /// RFC 6901 pointer into the document; `None` for a parse error.
    pointer: Option<String>,
    message: String,
}

impl LoadError {
    pub(crate) fn at(pointer: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError {
            file: None,
            pointer: Some(pointer.into()),
            message: message.into(),
        }
    }

    pub(crate) fn parse(message: impl Into<String>) -> LoadError {
        LoadError {
            file: None,
            pointer: None,
            message: message.into(),
        }
    }

    fn in_file(mut self, path: &FsPath) -> LoadError {
        self.file = Some(path.display().to_string());
        self
    }

    /// The JSON pointer of the offending place (`None` for a parse error).
    #[cfg(test)] // Display names it; tests check it alone.
    pub(crate) fn pointer(&self) -> Option<&str> {
        self.pointer.as_deref()
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        match &self.pointer {
            Some(pointer) => write!(f, "at #{pointer}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for LoadError {}

/// A compiled OpenAPI document: immutable, shared as `Arc<Api>` by the stack.
#[derive(Debug)]
pub struct Api {
    operations: Vec<Operation>,
    annotation_formats: Vec<String>,
    base_paths: Vec<String>,
}

impl Api {
    /// The built-in document (the update-contact operation of openapi.yaml, shipped in the crate).
    pub fn builtin(opts: &CompileOptions) -> Result<Api, LoadError> {
        Api::from_text(BUILTIN_DOCUMENT, opts)
    }

    /// A YAML or JSON file (`validation.openapi`).
    pub(crate) fn load(path: &FsPath, opts: &CompileOptions) -> Result<Api, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoadError::parse(format!("cannot read the document: {e}")).in_file(path)
        })?;
        Api::from_text(&text, opts).map_err(|e| e.in_file(path))
    }

    /// A document as text, YAML or JSON.
    pub fn from_text(text: &str, opts: &CompileOptions) -> Result<Api, LoadError> {
        load::compile(text, opts)
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// Every `field` metric label value the document can produce (closed set, gateway.md §3).
    pub fn field_labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = self
            .operations
            .iter()
            .flat_map(|op| op.fields.iter().map(|f| f.as_str()))
            .chain([Field::Document.as_str(), Field::Unknown.as_str()])
            .collect();
        labels.sort_unstable();
        labels.dedup();
        labels
    }

    /// Formats the document uses that are only annotations (for `--check-config` warnings).
    pub(crate) fn annotation_formats(&self) -> Vec<&str> {
        self.annotation_formats.iter().map(String::as_str).collect()
    }

    /// The paths of the document's `servers` URLs (`https://host/main` gives `/main`), without a
    /// trailing slash, as listed; a request path may carry one before an operation's template.
    pub fn base_paths(&self) -> Vec<&str> {
        self.base_paths.iter().map(String::as_str).collect()
    }
}

/// One requirement of a security alternative.
#[derive(Debug, Clone)]
pub(crate) enum Requirement {
    /// `Authorization: Bearer <token>` (http bearer, oauth2, openIdConnect).
    Bearer,
    /// An API key header, as the document spells its name.
    ApiKey(HeaderName, &'static str),
    /// An API key in `session.token_header`: stage 2 checks it.
    Token,
}

/// The request body of an operation: its media ranges, in the document's order, and for each the
/// schema (JSON types only).
#[derive(Debug)]
pub(crate) struct Body {
    required: bool,
    ranges: Vec<MediaRange>,
    media: Vec<Media>,
}

#[derive(Debug)]
pub(crate) struct Media {
    schema: Option<engine::BodySchema>,
}

/// One operation of the document, compiled.
#[derive(Debug)]
pub struct Operation {
    label: String,
    method: Method,
    template: String,
    security: Vec<Vec<Requirement>>,
    /// `session.token_header` as the document spells it, when the operation requires it.
    token: Option<(HeaderName, &'static str)>,
    body: Option<Body>,
    params: Vec<params::Param>,
    unknown_query: UnknownQuery,
    schemas: Arc<schema::Schemas>,
    /// Labels its violations can carry (besides `document` and `unknown`).
    fields: Vec<Field>,
}

impl Operation {
    /// `route` label: snake-case operationId, else method + template in snake case (gateway.md §3).
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Path template with the servers' base path stripped:
    /// `/companies/v2/rs/{companyId}/contacts/{contactId}`.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// True when the operation requires `session.token_header` (header parameter or apiKey
    /// scheme): stage 6 must run.
    pub fn requires_session(&self) -> bool {
        self.token.is_some()
    }

    /// True when the operation declares a requestBody: the body is buffered (`max_body_bytes`)
    /// and validated.
    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    /// Stages 1–3 on the head alone (security alternatives, token header, Content-Type), in
    /// order; the first failing stage answers with all its problems.
    pub fn check_head(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        self.check_security(headers)
            .map_err(|problems| GatewayError::Unauthorized {
                reason: Reason::Authorization,
                problems,
            })?;
        if let Some((name, label)) = &self.token {
            check_token_header(headers, name, label).map_err(|problems| {
                GatewayError::Unauthorized {
                    reason: Reason::SessionToken,
                    problems,
                }
            })?;
        }
        if let Some(body) = &self.body {
            // An optional body may be left out, Content-Type and all.
            let absent = !body.required && !headers.contains_key(http::header::CONTENT_TYPE);
            if !absent {
                check_media_type(headers, &body.ranges)
                    .map_err(GatewayError::UnsupportedMediaType)?;
            }
        }
        Ok(())
    }

    /// Stage 1: any one alternative passes; else the problems of all of them.
    fn check_security(&self, headers: &HeaderMap) -> Result<(), Vec<HeaderProblem>> {
        if self.security.is_empty() {
            return Ok(());
        }
        let mut all: Vec<HeaderProblem> = Vec::new();
        for alternative in &self.security {
            let mut problems = Vec::new();
            for req in alternative {
                let found = match req {
                    Requirement::Bearer => check_authorization(headers),
                    Requirement::ApiKey(name, label) => check_token_header(headers, name, label),
                    Requirement::Token => Ok(()),
                };
                problems.extend(found.err().unwrap_or_default());
            }
            if problems.is_empty() {
                return Ok(());
            }
            for p in problems {
                if !all.iter().any(|q| q.header == p.header && q.code == p.code) {
                    all.push(p);
                }
            }
        }
        Err(all)
    }

    /// Stage 5: path parameters (raw, still percent-encoded, in template order as matched), the
    /// raw query string, header parameters and the body; every violation, in that order.
    pub fn check_request(
        &self,
        path_params: &[&str],
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Violations> {
        let mut out = Violations::default();
        params::check_params(
            &self.schemas,
            &self.params,
            self.unknown_query,
            path_params,
            query,
            headers,
            &mut out,
        );
        if let Some(plan) = &self.body {
            if let Err(found) = self.check_body(plan, headers, body) {
                out.append(found);
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }

    fn check_body(&self, plan: &Body, headers: &HeaderMap, body: &[u8]) -> Result<(), Violations> {
        let absent =
            !plan.required && body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE);
        if absent {
            return Ok(());
        }
        // Stage 3 passed, so the type matches one of the ranges; if it does not, stage 3 answers.
        let Ok((at, json)) = check_media_type(headers, &plan.ranges) else {
            return Ok(());
        };
        if !json {
            return Ok(());
        }
        let any = engine::BodySchema {
            root: None,
            top: Vec::new(),
        };
        let schema = plan
            .media
            .get(at)
            .and_then(|m| m.schema.as_ref())
            .unwrap_or(&any);
        engine::check_json(&self.schemas, schema, body)
    }

    /// The body check alone, for a JSON body (benches and fuzzing).
    pub fn check_json_body(&self, body: &[u8]) -> Result<(), Violations> {
        let schema = self
            .body
            .as_ref()
            .and_then(|b| b.media.iter().find_map(|m| m.schema.as_ref()));
        match schema {
            Some(schema) => engine::check_json(&self.schemas, schema, body),
            None => Ok(()),
        }
    }
}

/// Stage 5 (body) of the built-in update-contact operation. Kept for the tests, benches and fuzz
/// targets written against the hand-made contract it replaces.
pub fn check_body(body: &[u8], unknown: UnknownFields) -> Result<(), Violations> {
    static APIS: [OnceLock<Option<Api>>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = match unknown {
        UnknownFields::Reject => &APIS[0],
        UnknownFields::Allow => &APIS[1],
    };
    let api = slot.get_or_init(|| {
        Api::builtin(&CompileOptions {
            unknown_fields: unknown,
            ..CompileOptions::default()
        })
        .ok()
    });
    match api.as_ref().and_then(|api| api.operations.first()) {
        Some(op) => op.check_json_body(body),
        // The built-in document always compiles (a test says so); fail closed all the same.
        None => Err(Violations::from(vec![Violation {
            field: Field::Document,
            code: Code::Syntax,
            location: Location::Pointer(String::new()),
            detail: "the built-in contract did not compile".to_owned(),
        }])),
    }
}

/// `f` on the built-in document's body schema.
#[cfg(test)]
fn with_builtin_body<T>(
    unknown: UnknownFields,
    f: impl FnOnce(&schema::Schemas, &engine::BodySchema) -> T,
) -> T {
    let opts = CompileOptions {
        unknown_fields: unknown,
        ..CompileOptions::default()
    };
    let api = Api::builtin(&opts).expect("the built-in document compiles");
    let op = &api.operations[0];
    let schema = op
        .body
        .as_ref()
        .and_then(|b| b.media[0].schema.as_ref())
        .expect("a body schema");
    f(&op.schemas, schema)
}

/// The built-in body check by both JSON readers.
#[cfg(test)]
fn builtin_by_both_readers(
    text: &str,
    unknown: UnknownFields,
) -> (Result<(), Violations>, Result<(), Violations>) {
    with_builtin_body(unknown, |schemas, schema| {
        engine::check_json_both(schemas, schema, text)
    })
}

/// The built-in body check by the fast reader alone (`None`: it gave up).
#[cfg(test)]
fn builtin_by_fast_reader(text: &str) -> Option<Result<(), Violations>> {
    with_builtin_body(UnknownFields::Reject, |schemas, schema| {
        engine::check_json_fast(schemas, schema, text)
    })
}

#[cfg(test)]
mod tests;
