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

use http::{HeaderMap, HeaderName, Method};

use crate::error::GatewayError;
use crate::outcome::Reason;

mod engine;
mod formats;
mod headers;
mod params;
mod problems;

pub use engine::*;
pub(crate) use formats::*;
pub use headers::*;
pub use params::*;
pub use problems::*;

/// The built-in document: `../shared/contract/openapi.yaml` but for `additionalProperties` (see
/// its head comment).
pub const BUILTIN_DOCUMENT: &str = include_str!("builtin.yaml");

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
    pub fn pointer(&self) -> Option<&str> {
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
}

impl Api {
    /// The built-in document (the update-contact operation of openapi.yaml, shipped in the crate).
    pub fn builtin(opts: &CompileOptions) -> Result<Api, LoadError> {
        Api::from_text(BUILTIN_DOCUMENT, opts)
    }

    /// A YAML or JSON file (`validation.openapi`).
    pub fn load(path: &FsPath, opts: &CompileOptions) -> Result<Api, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoadError::parse(format!("cannot read the document: {e}")).in_file(path)
        })?;
        Api::from_text(&text, opts).map_err(|e| e.in_file(path))
    }

    /// A document as text: JSON or YAML (JSON is YAML, but its own parser gives better errors).
    pub fn from_text(text: &str, opts: &CompileOptions) -> Result<Api, LoadError> {
        // Until the compiler lands, the built-in document is the hand-written update-contact
        // contract; any other document is refused rather than half-checked.
        if text != BUILTIN_DOCUMENT {
            return Err(LoadError::parse(
                "only the built-in document can be loaded yet",
            ));
        }
        Ok(Api {
            operations: vec![Operation::update_contact(opts)],
            annotation_formats: Vec::new(),
        })
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
    pub fn annotation_formats(&self) -> Vec<&str> {
        self.annotation_formats.iter().map(String::as_str).collect()
    }
}

/// One operation of the document, compiled.
#[derive(Debug)]
pub struct Operation {
    label: String,
    method: Method,
    template: String,
    token_header: Option<HeaderName>,
    has_body: bool,
    unknown_fields: UnknownFields,
    /// Labels its violations can carry (besides `document` and `unknown`).
    fields: Vec<Field>,
}

impl Operation {
    /// Today's hand-written update-contact contract, until the compiler lands.
    fn update_contact(opts: &CompileOptions) -> Operation {
        Operation {
            label: "update_contact".to_owned(),
            method: Method::PATCH,
            template: "/companies/v2/rs/{companyId}/contacts/{contactId}".to_owned(),
            token_header: Some(opts.token_header.clone()),
            has_body: true,
            unknown_fields: opts.unknown_fields,
            fields: Field::ALL.to_vec(),
        }
    }

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
        self.token_header.is_some()
    }

    /// True when the operation declares a requestBody: the body is buffered (`max_body_bytes`)
    /// and validated.
    pub fn has_body(&self) -> bool {
        self.has_body
    }

    /// Stages 1–3 on the head alone (security alternatives, token header, Content-Type), in
    /// order; the first failing stage answers with all its problems.
    pub fn check_head(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        check_authorization(headers).map_err(|problems| GatewayError::Unauthorized {
            reason: Reason::Authorization,
            problems,
        })?;
        if self.token_header.is_some() {
            check_session_token(headers).map_err(|problems| GatewayError::Unauthorized {
                reason: Reason::SessionToken,
                problems,
            })?;
        }
        check_content_type(headers).map_err(GatewayError::UnsupportedMediaType)
    }

    /// Stage 5: path parameters (raw, still percent-encoded, in template order as matched), the
    /// raw query string, header parameters and the body; every violation, in that order.
    pub fn check_request(
        &self,
        path_params: &[&str],
        _query: Option<&str>,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Violations> {
        let (company_id, contact_id) = match path_params {
            [company_id, contact_id] => (*company_id, *contact_id),
            // The router matched this template, so two values; refuse rather than guess.
            _ => ("", ""),
        };
        let path = check_path_params(company_id, contact_id);
        let body = check_body(body, self.unknown_fields);
        match (path, body) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(mut p), Err(b)) => {
                p.append(b);
                Err(p)
            }
            (Err(v), Ok(())) | (Ok(()), Err(v)) => Err(v),
        }
    }
}

#[cfg(test)]
mod tests;
