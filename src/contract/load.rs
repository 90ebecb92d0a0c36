//! Loading a document: YAML or JSON text into a tree, then every operation compiled into a plan
//! (security alternatives, parameters, request-body media types and schemas). Every error names
//! the JSON pointer of the place in the document.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderName, Method};
use serde_json::{Map, Value};

use super::engine::BodySchema;
use super::headers::MediaRange;
use super::params::{Param, Place, Style};
use super::schema::{deref, escape_token, Compiler, NodeId, Version};
use super::*;

/// The methods a path item may hold, in the order OpenAPI lists them.
const METHODS: &[(&str, Method)] = &[
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

const PARAMETER_KEYS: &[&str] = &[
    "name",
    "in",
    "description",
    "required",
    "deprecated",
    "allowEmptyValue",
    "style",
    "explode",
    "allowReserved",
    "schema",
    "example",
    "examples",
];

/// YAML or JSON text into a tree. JSON is YAML too, but its own parser gives better errors.
fn parse(text: &str) -> Result<Value, LoadError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| LoadError::parse(format!("the document is not valid JSON: {e}")))
    } else {
        serde_yaml_ng::from_str(text)
            .map_err(|e| LoadError::parse(format!("the document is not valid YAML: {e}")))
    }
}

/// The whole document, compiled.
pub(crate) fn compile(text: &str, opts: &CompileOptions) -> Result<Api, LoadError> {
    let doc = parse(text)?;
    let Some(root) = doc.as_object() else {
        return Err(LoadError::at("", "the document must be an object"));
    };
    let version = match root.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") => Version::V30,
        Some(v) if v.starts_with("3.1.") => Version::V31,
        _ => {
            return Err(LoadError::at(
                "/openapi",
                "openapi must be a 3.0.x or 3.1.x version string",
            ))
        }
    };
    let base_paths = base_paths(root)?;
    let mut compiler = Compiler::new(&doc, version, opts.unknown_fields);
    let mut ops = Vec::new();
    let mut labels = HashSet::new();
    let no_paths = Map::new();
    let paths = match root.get("paths") {
        None => &no_paths,
        Some(Value::Object(paths)) => paths,
        Some(_) => return Err(LoadError::at("/paths", "paths must be an object")),
    };
    for (template, item) in paths {
        let item_at = format!("/paths/{}", escape_token(template));
        if !template.starts_with('/') {
            return Err(LoadError::at(item_at, "a path must start with /"));
        }
        let (item, item_at) = deref_any(&doc, item, item_at)?;
        let Some(item) = item.as_object() else {
            return Err(LoadError::at(item_at, "a path item must be an object"));
        };
        let shared = item.get("parameters");
        for (key, method) in METHODS {
            let Some(op) = item.get(*key) else { continue };
            let at = format!("{item_at}/{key}");
            let op = Plan {
                doc: &doc,
                opts,
                compiler: &mut compiler,
            }
            .operation(template, method.clone(), op, shared, &item_at, &at)?;
            if op.label == "other" || !labels.insert(op.label.clone()) {
                return Err(LoadError::at(
                    at,
                    format!(
                        "the route label {:?} is taken by another operation",
                        op.label
                    ),
                ));
            }
            ops.push(op);
        }
    }
    compiler.check_cycles()?;
    let schemas = Arc::new(std::mem::take(&mut compiler.schemas));
    let operations = ops
        .into_iter()
        .map(|op| op.finish(Arc::clone(&schemas)))
        .collect();
    Ok(Api {
        operations,
        annotation_formats: compiler.annotation_formats,
        base_paths,
    })
}

/// The path of each server URL (`https://host/main` → `/main`), without a trailing slash.
fn base_paths(root: &Map<String, Value>) -> Result<Vec<String>, LoadError> {
    let Some(servers) = root.get("servers") else {
        return Ok(Vec::new());
    };
    let Value::Array(servers) = servers else {
        return Err(LoadError::at("/servers", "servers must be a list"));
    };
    let mut out = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let Some(url) = server.get("url").and_then(Value::as_str) else {
            return Err(LoadError::at(
                format!("/servers/{i}"),
                "a server needs a url",
            ));
        };
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
            None => url,
        };
        let path = path.trim_end_matches('/').to_owned();
        if !out.contains(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

/// `$ref` chains of anything (path items, parameters, request bodies, security schemes).
fn deref_any<'d>(
    doc: &'d Value,
    value: &'d Value,
    at: String,
) -> Result<(&'d Value, String), LoadError> {
    deref(doc, value, at)
}

/// An operation on its way: everything but the shared schemas.
pub(crate) struct Draft {
    label: String,
    method: Method,
    template: String,
    security: Vec<Vec<Requirement>>,
    token: Option<(HeaderName, &'static str)>,
    body: Option<Body>,
    params: Vec<Param>,
    unknown_query: UnknownQuery,
}

impl Draft {
    fn finish(mut self, schemas: Arc<super::schema::Schemas>) -> Operation {
        for param in &mut self.params {
            if matches!(param.place, Place::Path(_)) {
                param.int_range = super::params::integer_range(&schemas, param.node);
            }
        }
        let mut fields: Vec<Field> = self.params.iter().map(|p| p.field).collect();
        if let Some(body) = &self.body {
            for media in &body.media {
                if let Some(schema) = &media.schema {
                    fields.extend(schema.top.iter().map(|&(_, f)| f));
                }
            }
        }
        fields.sort();
        fields.dedup();
        Operation {
            label: self.label,
            method: self.method,
            template: self.template,
            security: self.security,
            token: self.token,
            body: self.body,
            params: self.params,
            unknown_query: self.unknown_query,
            schemas,
            fields,
        }
    }
}

struct Plan<'a, 'd> {
    doc: &'d Value,
    opts: &'a CompileOptions,
    compiler: &'a mut Compiler<'d>,
}

impl<'d> Plan<'_, 'd> {
    fn operation(
        mut self,
        template: &str,
        method: Method,
        op: &'d Value,
        shared: Option<&'d Value>,
        item_at: &str,
        at: &str,
    ) -> Result<Draft, LoadError> {
        let Some(op_map) = op.as_object() else {
            return Err(LoadError::at(at, "an operation must be an object"));
        };
        let label = match op_map.get("operationId") {
            Some(Value::String(id)) => snake_case(id),
            Some(_) => {
                return Err(LoadError::at(
                    format!("{at}/operationId"),
                    "operationId must be a string",
                ))
            }
            None => snake_case(&format!(
                "{} {template}",
                method.as_str().to_ascii_lowercase()
            )),
        };
        let names = template_names(template, item_at)?;

        // Parameters: the operation's win over the path item's of the same name and place.
        let mut declared: Vec<(&'d Value, String)> = Vec::new();
        for (list, list_at) in [
            (shared, format!("{item_at}/parameters")),
            (op_map.get("parameters"), format!("{at}/parameters")),
        ] {
            let Some(list) = list else { continue };
            let Value::Array(list) = list else {
                return Err(LoadError::at(list_at, "parameters must be a list"));
            };
            for (i, p) in list.iter().enumerate() {
                let (p, p_at) = deref_any(self.doc, p, format!("{list_at}/{i}"))?;
                let key = |v: &Value| (v.get("name").cloned(), v.get("in").cloned());
                declared.retain(|(q, _)| key(q) != key(p));
                declared.push((p, p_at));
            }
        }
        let mut params = Vec::new();
        let mut token = None;
        for (p, p_at) in declared {
            if let Some(param) = self.parameter(p, &p_at, &names, &mut token)? {
                params.push(param);
            }
        }
        for (i, name) in names.iter().enumerate() {
            if !params
                .iter()
                .any(|p| matches!(p.place, Place::Path(j) if j == i))
            {
                return Err(LoadError::at(
                    item_at.to_owned(),
                    format!("the path parameter {name:?} of the template is not declared"),
                ));
            }
        }
        // Path parameters in template order, then the others as declared.
        params.sort_by_key(|p| match p.place {
            Place::Path(i) => (0, i),
            Place::Query => (1, 0),
            Place::Header(_) => (2, 0),
        });

        let security = match op_map.get("security") {
            Some(list) => self.security(list, &format!("{at}/security"), &mut token)?,
            None => match self.doc.get("security") {
                Some(list) => self.security(list, "/security", &mut token)?,
                None => Vec::new(),
            },
        };
        let body = match op_map.get("requestBody") {
            None => None,
            Some(b) => Some(self.body(b, &format!("{at}/requestBody"))?),
        };
        Ok(Draft {
            label,
            method,
            template: template.to_owned(),
            security,
            token,
            body,
            params,
            unknown_query: self.opts.unknown_query,
        })
    }

    /// One parameter; `None` for the header parameters OpenAPI says to ignore and for the
    /// session token header (stage 2 checks it).
    fn parameter(
        &mut self,
        p: &'d Value,
        at: &str,
        names: &[String],
        token: &mut Option<(HeaderName, &'static str)>,
    ) -> Result<Option<Param>, LoadError> {
        let Some(map) = p.as_object() else {
            return Err(LoadError::at(at, "a parameter must be an object"));
        };
        for key in map.keys() {
            if key == "content" {
                return Err(LoadError::at(
                    format!("{at}/content"),
                    "a parameter with content is not supported: use schema",
                ));
            }
            if !PARAMETER_KEYS.contains(&key.as_str()) && !key.starts_with("x-") {
                return Err(LoadError::at(
                    format!("{at}/{}", escape_token(key)),
                    format!("keyword {key:?} is not supported in a parameter"),
                ));
            }
        }
        let Some(name) = map.get("name").and_then(Value::as_str) else {
            return Err(LoadError::at(
                format!("{at}/name"),
                "a parameter needs a name",
            ));
        };
        let required = match map.get("required") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(LoadError::at(
                    format!("{at}/required"),
                    "required must be a boolean",
                ))
            }
        };
        let place = match map.get("in").and_then(Value::as_str) {
            Some("path") => match names.iter().position(|n| n == name) {
                Some(i) => Place::Path(i),
                None => {
                    return Err(LoadError::at(
                        format!("{at}/name"),
                        format!("path parameter {name:?} is not in the template"),
                    ))
                }
            },
            Some("query") => Place::Query,
            Some("header") => {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    LoadError::at(
                        format!("{at}/name"),
                        format!("{name:?} is not a header name"),
                    )
                })?;
                if header == self.opts.token_header {
                    *token = Some((header, intern(name)));
                    return Ok(None);
                }
                if [
                    http::header::ACCEPT,
                    http::header::CONTENT_TYPE,
                    http::header::AUTHORIZATION,
                ]
                .contains(&header)
                {
                    return Ok(None);
                }
                Place::Header(header)
            }
            Some("cookie") => {
                return Err(LoadError::at(
                    format!("{at}/in"),
                    "cookie parameters are not supported",
                ))
            }
            _ => {
                return Err(LoadError::at(
                    format!("{at}/in"),
                    "in must be path, query or header",
                ))
            }
        };
        let default_style = match place {
            Place::Query => Style::Form,
            _ => Style::Simple,
        };
        let style = match map.get("style").and_then(Value::as_str) {
            None => default_style,
            Some("simple") if !matches!(place, Place::Query) => Style::Simple,
            Some("form") if matches!(place, Place::Query) => Style::Form,
            Some(other) => return Err(LoadError::at(format!("{at}/style"), format!("style {other:?} is not supported here (simple for path and header, form for query)"))),
        };
        let explode = match map.get("explode") {
            None => style == Style::Form,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(LoadError::at(
                    format!("{at}/explode"),
                    "explode must be a boolean",
                ))
            }
        };
        let node = match map.get("schema") {
            None => None,
            Some(schema) => Some(self.compiler.compile(schema, &format!("{at}/schema"))?),
        };
        if let Some(id) = node {
            let n = self.compiler.schemas.node(id);
            if style == Style::Form
                && explode
                && n.types & super::schema::ty::OBJECT != 0
                && n.types & super::schema::ty::ARRAY == 0
                && n.types != super::schema::ty::ANY
            {
                return Err(LoadError::at(
                    format!("{at}/explode"),
                    "an exploded form object is not supported",
                ));
            }
        }
        Ok(Some(Param {
            name: intern(name),
            field: Field::named(name),
            place,
            required: required || matches!(map.get("in").and_then(Value::as_str), Some("path")),
            node,
            explode,
            int_range: None,
        }))
    }

    /// Security requirement alternatives: any one may pass.
    fn security(
        &mut self,
        list: &'d Value,
        at: &str,
        token: &mut Option<(HeaderName, &'static str)>,
    ) -> Result<Vec<Vec<Requirement>>, LoadError> {
        let Value::Array(list) = list else {
            return Err(LoadError::at(at, "security must be a list"));
        };
        let schemes = self.doc.pointer("/components/securitySchemes");
        let mut out = Vec::new();
        for (i, alternative) in list.iter().enumerate() {
            let Some(alternative) = alternative.as_object() else {
                return Err(LoadError::at(
                    format!("{at}/{i}"),
                    "a security requirement must be an object",
                ));
            };
            let mut reqs = Vec::new();
            for name in alternative.keys() {
                let req_at = format!("{at}/{i}/{}", escape_token(name));
                let Some(scheme) = schemes.and_then(|s| s.get(name)) else {
                    return Err(LoadError::at(
                        req_at,
                        format!("security scheme {name:?} is not in #/components/securitySchemes"),
                    ));
                };
                let scheme_at = format!("/components/securitySchemes/{}", escape_token(name));
                let (scheme, scheme_at) = deref_any(self.doc, scheme, scheme_at)?;
                let kind = scheme.get("type").and_then(Value::as_str);
                let req = match kind {
                    Some("http") => match scheme.get("scheme").and_then(Value::as_str) {
                        Some(s) if s.eq_ignore_ascii_case("bearer") => Requirement::Bearer,
                        _ => return Err(LoadError::at(format!("{scheme_at}/scheme"), "only the http scheme bearer is supported")),
                    },
                    // Both send an access token as `Authorization: Bearer`.
                    Some("oauth2" | "openIdConnect") => Requirement::Bearer,
                    Some("apiKey") => {
                        if scheme.get("in").and_then(Value::as_str) != Some("header") {
                            return Err(LoadError::at(format!("{scheme_at}/in"), "only apiKey in header is supported"));
                        }
                        let Some(header) = scheme.get("name").and_then(Value::as_str) else {
                            return Err(LoadError::at(format!("{scheme_at}/name"), "an apiKey scheme needs a name"));
                        };
                        let parsed = HeaderName::from_bytes(header.as_bytes())
                            .map_err(|_| LoadError::at(format!("{scheme_at}/name"), format!("{header:?} is not a header name")))?;
                        if parsed == self.opts.token_header {
                            // Checked in stage 2, and it makes the session check run.
                            if token.is_none() {
                                *token = Some((parsed, intern(header)));
                            }
                            Requirement::Token
                        } else {
                            Requirement::ApiKey(parsed, intern(header))
                        }
                    }
                    _ => return Err(LoadError::at(format!("{scheme_at}/type"), "security scheme type must be http (bearer), apiKey (header), oauth2 or openIdConnect")),
                };
                reqs.push(req);
            }
            out.push(reqs);
        }
        Ok(out)
    }

    fn body(&mut self, b: &'d Value, at: &str) -> Result<Body, LoadError> {
        let (b, at) = deref_any(self.doc, b, at.to_owned())?;
        let Some(map) = b.as_object() else {
            return Err(LoadError::at(at, "requestBody must be an object"));
        };
        let required = match map.get("required") {
            None => false,
            Some(Value::Bool(r)) => *r,
            Some(_) => {
                return Err(LoadError::at(
                    format!("{at}/required"),
                    "required must be a boolean",
                ))
            }
        };
        let Some(Value::Object(content)) = map.get("content") else {
            return Err(LoadError::at(
                format!("{at}/content"),
                "requestBody needs a content map",
            ));
        };
        let mut ranges = Vec::new();
        let mut media = Vec::new();
        for (key, entry) in content {
            let entry_at = format!("{at}/content/{}", escape_token(key));
            let Some(range) = MediaRange::parse(key) else {
                return Err(LoadError::at(
                    entry_at,
                    format!("{key:?} is not a media range"),
                ));
            };
            let schema = match entry.get("schema") {
                None => None,
                Some(schema) => Some(
                    self.compiler
                        .compile(schema, &format!("{entry_at}/schema"))?,
                ),
            };
            let schema = schema.map(|root| BodySchema {
                root: Some(root),
                top: top_fields(&self.compiler.schemas, root),
            });
            ranges.push(range);
            media.push(Media { schema });
        }
        if ranges.is_empty() {
            return Err(LoadError::at(
                format!("{at}/content"),
                "requestBody needs at least one media type",
            ));
        }
        Ok(Body {
            required,
            ranges,
            media,
        })
    }
}

/// The labels of a body's top-level members: what the root schema (and its allOf/anyOf/oneOf
/// branches) names in `properties` and `required`.
fn top_fields(schemas: &super::schema::Schemas, root: NodeId) -> Vec<(Box<str>, Field)> {
    let mut out: Vec<(Box<str>, Field)> = Vec::new();
    let mut todo = vec![root];
    let mut seen = HashSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let node = schemas.node(id);
        let names = node
            .properties
            .iter()
            .map(|(n, _)| &**n)
            .chain(node.required.iter().map(|(n, _)| &**n));
        for name in names {
            if !out.iter().any(|(n, _)| &**n == name) {
                out.push((name.into(), Field::named(name)));
            }
        }
        todo.extend(node.all_of.iter().chain(&node.any_of).chain(&node.one_of));
    }
    out
}

/// The `{name}`s of a template, in order.
fn template_names(template: &str, at: &str) -> Result<Vec<String>, LoadError> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(LoadError::at(at, "a { without its } in the path template"));
        };
        let name = &rest[open + 1..open + close];
        if name.is_empty() || names.iter().any(|n| n == name) {
            return Err(LoadError::at(
                at,
                "template parameters must be named once each",
            ));
        }
        names.push(name.to_owned());
        rest = &rest[open + close + 1..];
    }
    Ok(names)
}

/// `updateContact` → `update_contact`; `patch /a/{companyId}` → `patch_a_company_id`.
pub(crate) fn snake_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    let mut prev_lower = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_lowercase());
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn opts() -> CompileOptions {
        CompileOptions::default()
    }

    /// A 3.1 document with `schemas` under components and one POST /x whose body is `body`.
    fn doc(schemas: &str, body: &str) -> String {
        format!(
            r##"{{"openapi":"3.1.0","info":{{"title":"t","version":"1"}},
            "components":{{"schemas":{{{schemas}}}}},
            "paths":{{"/x":{{"post":{{"operationId":"postX","requestBody":{{"required":true,
              "content":{{"application/json":{{"schema":{body}}}}}}},"responses":{{}}}}}}}}}}"##
        )
    }

    fn load_err(text: &str) -> LoadError {
        match Api::from_text(text, &opts()) {
            Ok(_) => panic!("loaded: {text}"),
            Err(e) => e,
        }
    }

    fn body_check(api: &Api, body: &str) -> Vec<(String, Code, String)> {
        match api.operations()[0].check_json_body(body.as_bytes()) {
            Ok(()) => Vec::new(),
            Err(v) => v
                .iter()
                .map(|v| {
                    let at = match &v.location {
                        Location::Pointer(p) => p.clone(),
                        Location::Path(p) | Location::Query(p) | Location::Header(p) => {
                            (*p).to_owned()
                        }
                    };
                    (v.field.as_str().to_owned(), v.code, at)
                })
                .collect(),
        }
    }

    #[test]
    fn the_builtin_copy_matches_the_shared_document() {
        // The project's copy of the shared file (tests/shared_copies.rs keeps it equal to it).
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/shared/contract/openapi.yaml"
        ));
        let mut shared = parse(text).unwrap();
        let removed = shared
            .pointer_mut("/components/schemas/ContactUpdate")
            .and_then(Value::as_object_mut)
            .and_then(|s| s.remove("additionalProperties"));
        assert_eq!(removed, Some(Value::Bool(false)));
        assert_eq!(parse(BUILTIN_DOCUMENT).unwrap(), shared);
    }

    #[test]
    fn the_builtin_operation() {
        let api = Api::builtin(&opts()).unwrap();
        let [op] = api.operations() else {
            panic!("one operation")
        };
        assert_eq!(op.label(), "update_contact");
        assert_eq!(op.method(), &Method::PATCH);
        assert_eq!(
            op.template(),
            "/companies/v2/rs/{companyId}/contacts/{contactId}"
        );
        assert!(op.requires_session());
        assert!(op.has_body());
        assert_eq!(api.base_paths(), ["/main"]);
        let mut want: Vec<&str> = Field::ALL.iter().map(|f| f.as_str()).collect();
        want.sort_unstable();
        assert_eq!(api.field_labels(), want);
        // Contact's date-time is on the response side: nothing is an annotation.
        assert!(api.annotation_formats().is_empty());
    }

    fn valid_head() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        h.insert("x-session-token", HeaderValue::from_static("tok"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h
    }

    #[test]
    fn the_builtin_head_stages_keep_their_order_and_problems() {
        let api = Api::builtin(&opts()).unwrap();
        let op = &api.operations()[0];
        assert!(op.check_head(&valid_head()).is_ok());
        let mut h = valid_head();
        h.remove("authorization");
        h.remove("x-session-token");
        match op.check_head(&h) {
            Err(GatewayError::Unauthorized { reason, problems }) => {
                assert_eq!(reason, Reason::Authorization);
                assert_eq!(Err(problems), check_authorization(&h));
            }
            other => panic!("{other:?}"),
        }
        let mut h = valid_head();
        h.insert("x-session-token", HeaderValue::from_static(""));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        match op.check_head(&h) {
            Err(GatewayError::Unauthorized { reason, problems }) => {
                assert_eq!(reason, Reason::SessionToken);
                assert_eq!(Err(problems), check_session_token(&h));
            }
            other => panic!("{other:?}"),
        }
        let mut h = valid_head();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=latin1"),
        );
        match op.check_head(&h) {
            Err(GatewayError::UnsupportedMediaType(problems)) => {
                assert_eq!(Err(problems), check_content_type(&h));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_builtin_request_check_is_path_then_body() {
        let api = Api::builtin(&opts()).unwrap();
        let op = &api.operations()[0];
        let h = valid_head();
        assert_eq!(
            op.check_request(&["1", "-2"], None, &h, br#"{"notify":true}"#),
            Ok(())
        );
        let body = br#"{"name":5,"x":1}"#;
        let mut want = check_path_params("1x", "+2").unwrap_err();
        want.append(check_body(body, UnknownFields::Reject).unwrap_err());
        let got = op
            .check_request(&["1x", "+2"], Some("q=1"), &h, body)
            .unwrap_err();
        assert_eq!(got, want);
        // percent-encoded digits are still digits
        assert_eq!(
            op.check_request(&["%31", "2"], None, &h, br#"{"notify":true}"#),
            Ok(())
        );
    }

    #[test]
    fn labels_are_snake_case() {
        assert_eq!(snake_case("updateContact"), "update_contact");
        assert_eq!(
            snake_case("get /companies/{companyId}"),
            "get_companies_company_id"
        );
        assert_eq!(snake_case("HTTPThing-x"), "httpthing_x");
    }

    #[test]
    fn an_unknown_keyword_is_refused_at_its_pointer() {
        let e = load_err(&doc(
            r#""A":{"type":"object","properties":{"a/b":{"type":"string","writeOnly":true}}}"#,
            r##"{"$ref":"#/components/schemas/A"}"##,
        ));
        assert_eq!(
            e.pointer(),
            Some("/components/schemas/A/properties/a~1b/writeOnly")
        );
        assert!(e.to_string().contains("writeOnly"), "{e}");
        // annotations and x- extensions are fine
        Api::from_text(
            &doc(r#""A":{"type":"string","description":"d","x-y":1,"example":"e","deprecated":true}"#, r##"{"$ref":"#/components/schemas/A"}"##),
            &opts(),
        )
        .unwrap();
    }

    #[test]
    fn remote_and_file_references_are_refused() {
        for reference in [
            "https://example.com/s.json",
            "other.yaml#/components/schemas/A",
            "#/paths/x",
        ] {
            let e = load_err(&doc("", &format!(r#"{{"$ref":"{reference}"}}"#)));
            assert_eq!(
                e.pointer(),
                Some("/paths/~1x/post/requestBody/content/application~1json/schema/$ref"),
                "{e}"
            );
        }
        let e = load_err(&doc("", r##"{"$ref":"#/components/schemas/Nope"}"##));
        assert!(e.to_string().contains("points to nothing"), "{e}");
    }

    #[test]
    fn a_pattern_that_needs_backtracking_is_refused() {
        for pattern in ["(?=a)b", "(?!a)b", "(?<=a)b", r"(a)\\1"] {
            let e = load_err(&doc(
                &format!(r#""A":{{"type":"string","pattern":"{pattern}"}}"#),
                r##"{"$ref":"#/components/schemas/A"}"##,
            ));
            assert_eq!(
                e.pointer(),
                Some("/components/schemas/A/pattern"),
                "{pattern}: {e}"
            );
        }
        // ECMA's \d is ASCII
        let api = Api::from_text(
            &doc(
                r#""A":{"type":"object","properties":{"d":{"type":"string","pattern":"^\\d+$"}}}"#,
                r##"{"$ref":"#/components/schemas/A"}"##,
            ),
            &opts(),
        )
        .unwrap();
        assert!(body_check(&api, r#"{"d":"123"}"#).is_empty());
        assert_eq!(
            body_check(&api, r#"{"d":"١٢"}"#),
            [("d".to_owned(), Code::Pattern, "/d".to_owned())]
        );
    }

    #[test]
    fn cycles_that_never_descend_are_refused_and_recursion_compiles() {
        for schemas in [
            r##""A":{"$ref":"#/components/schemas/A"}"##,
            r##""A":{"$ref":"#/components/schemas/B"},"B":{"$ref":"#/components/schemas/A"}"##,
            r##""A":{"allOf":[{"$ref":"#/components/schemas/B"}]},"B":{"anyOf":[{"$ref":"#/components/schemas/A"}]}"##,
        ] {
            let e = load_err(&doc(schemas, r##"{"$ref":"#/components/schemas/A"}"##));
            assert!(e.to_string().contains("cycle"), "{schemas}: {e}");
        }
        // A tree: recursive through properties and items.
        let api = Api::from_text(
            &doc(
                r##""Node":{"type":"object","required":["v"],"properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/components/schemas/Node"}}}}"##,
                r##"{"$ref":"#/components/schemas/Node"}"##,
            ),
            &opts(),
        )
        .unwrap();
        assert!(body_check(&api, r#"{"v":1,"kids":[{"v":2,"kids":[{"v":3}]}]}"#).is_empty());
        assert_eq!(
            body_check(&api, r#"{"v":1,"kids":[{"v":2,"kids":[{"v":"x"},{}]}]}"#),
            [
                ("kids".to_owned(), Code::Type, "/kids/0/kids/0/v".to_owned()),
                (
                    "kids".to_owned(),
                    Code::Required,
                    "/kids/0/kids/1/v".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_long_chain_of_refs_is_refused_not_a_stack_overflow() {
        let chain: Vec<String> = (0..1000)
            .map(|i| format!(r##""S{i}":{{"type":"object","properties":{{"a":{{"$ref":"#/components/schemas/S{}"}}}}}}"##, i + 1))
            .chain([r#""S1000":{"type":"string"}"#.to_owned()])
            .collect();
        let e = load_err(&doc(
            &chain.join(","),
            r##"{"$ref":"#/components/schemas/S0"}"##,
        ));
        assert!(e.to_string().contains("deeper than"), "{e}");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = load_err("openapi: 3.1.0\npaths:\n  /x: [\n");
        assert!(e.to_string().contains("line"), "{e}");
        let e = load_err("{\"openapi\": \"3.1.0\",\n \"paths\": {,}}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = load_err("openapi: 2.0\n");
        assert_eq!(e.pointer(), Some("/openapi"));
        let e = load_err("openapi: 3.0.3\npaths:\n  /x/{id}:\n    get:\n      responses: {}\n");
        assert!(e.to_string().contains("\"id\""), "{e}");
    }

    #[test]
    fn openapi_3_0_forms() {
        let text = r##"
openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /x:
    post:
      requestBody:
        content:
          application/json:
            schema:
              type: object
              properties:
                n: {type: number, minimum: 1, exclusiveMinimum: true, maximum: 5, exclusiveMaximum: false}
                s: {type: string, nullable: true, format: uuid}
                d: {type: string, format: color}
      responses: {}
"##;
        let api = Api::from_text(text, &opts()).unwrap();
        assert_eq!(api.operations()[0].label(), "post_x");
        assert_eq!(api.annotation_formats(), ["color"]);
        assert!(body_check(&api, r#"{"n":5,"s":null}"#).is_empty());
        assert_eq!(
            body_check(&api, r#"{"n":1,"s":"nope"}"#),
            [
                ("n".to_owned(), Code::Minimum, "/n".to_owned()),
                ("s".to_owned(), Code::Format, "/s".to_owned())
            ]
        );
        // 3.0: $ref siblings would be ignored by the standard, so they are refused
        let e = load_err(&format!(
            "{}components:\n  schemas:\n    D: {{type: string}}\n",
            text.replace(
                "d: {type: string, format: color}",
                "d: {$ref: '#/components/schemas/D', maxLength: 3}"
            )
        ));
        assert!(e.to_string().contains("maxLength"), "{e}");
    }
}
