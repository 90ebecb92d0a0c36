//! Stand-in for the `contract::Api` facade (issue 15) until the compiled OpenAPI document lands:
//! the one built-in operation, update-contact, over today's hand-written contract, behind the
//! facade's names and signatures so that the router, the context and the layers already use it.

use http::{HeaderMap, HeaderName, Method};

use crate::contract::{self, UnknownFields, Violations};
use crate::error::GatewayError;
use crate::outcome::Reason;

/// What to do with query parameters an operation does not declare (`validation.unknown_query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownQuery {
    #[default]
    Allow,
    Reject,
}

/// Options the compiled document depends on.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub token_header: HeaderName,
    pub unknown_fields: UnknownFields,
    pub unknown_query: UnknownQuery,
}

/// A document that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

/// The compiled document.
#[derive(Debug)]
pub struct Api {
    operations: Vec<Operation>,
}

/// One operation.
#[derive(Debug)]
pub struct Operation {
    label: String,
    method: Method,
    template: String,
    unknown_fields: UnknownFields,
}

impl Api {
    pub fn builtin(opts: &CompileOptions) -> Result<Api, LoadError> {
        Ok(Api {
            operations: vec![Operation {
                label: "update_contact".into(),
                method: Method::PATCH,
                template: "/companies/v2/rs/{companyId}/contacts/{contactId}".into(),
                unknown_fields: opts.unknown_fields,
            }],
        })
    }

    pub fn load(path: &std::path::Path, _opts: &CompileOptions) -> Result<Api, LoadError> {
        Err(LoadError(format!(
            "{}: loading an OpenAPI document is not built yet",
            path.display()
        )))
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn field_labels(&self) -> Vec<&str> {
        contract::Field::ALL.iter().map(|f| f.as_str()).collect()
    }

    pub fn annotation_formats(&self) -> Vec<&str> {
        Vec::new()
    }
}

impl Operation {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    pub fn requires_session(&self) -> bool {
        true
    }

    pub fn has_body(&self) -> bool {
        true
    }

    pub fn check_head(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        contract::check_authorization(headers).map_err(|problems| GatewayError::Unauthorized {
            reason: Reason::Authorization,
            problems,
        })?;
        contract::check_session_token(headers).map_err(|problems| GatewayError::Unauthorized {
            reason: Reason::SessionToken,
            problems,
        })?;
        contract::check_content_type(headers).map_err(GatewayError::UnsupportedMediaType)
    }

    pub fn check_request(
        &self,
        path_params: &[&str],
        _query: Option<&str>,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Violations> {
        let [company_id, contact_id] = path_params else {
            return Err(Violations::default());
        };
        let path = contract::check_path_params(company_id, contact_id);
        let body = contract::check_body(body, self.unknown_fields);
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
