//! Compilation of the schemas of a document into a graph of nodes (gateway.md §5's keywords).
//!
//! Each schema of the document becomes one `Node` in an arena, found by its JSON pointer, so a
//! `$ref` is an index and a recursive schema is a cycle in the graph, not an endless expansion. A
//! keyword outside §5's lists is a load error that names its pointer: an ignored rule would be a
//! false pass.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Number, Value};

use super::names::{self, Name};
use super::{Field, LoadError, UnknownFields};

/// Index of a node in `Schemas::nodes`.
pub(crate) type NodeId = u32;

/// JSON types as a bit set.
pub(crate) mod ty {
    pub(crate) const NULL: u8 = 1;
    pub(crate) const BOOLEAN: u8 = 2;
    pub(crate) const OBJECT: u8 = 4;
    pub(crate) const ARRAY: u8 = 8;
    pub(crate) const NUMBER: u8 = 16;
    /// Only an integer number (`1.0` is one, as JSON Schema says).
    pub(crate) const INTEGER: u8 = 32;
    pub(crate) const STRING: u8 = 64;
    pub(crate) const ANY: u8 = 127;
}

/// The formats gateway.md §5 checks; any other is an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Email,
    Uuid,
    Date,
    DateTime,
    Time,
    Uri,
    Hostname,
    Ipv4,
    Ipv6,
    Int32,
    Int64,
    Float,
    Double,
}

impl Format {
    fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "email" => Format::Email,
            "uuid" => Format::Uuid,
            "date" => Format::Date,
            "date-time" => Format::DateTime,
            "time" => Format::Time,
            "uri" => Format::Uri,
            "hostname" => Format::Hostname,
            "ipv4" => Format::Ipv4,
            "ipv6" => Format::Ipv6,
            "int32" => Format::Int32,
            "int64" => Format::Int64,
            "float" => Format::Float,
            "double" => Format::Double,
            _ => return None,
        })
    }
}

/// A numeric bound: the number of the document, and whether it is exclusive.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub value: Number,
    pub exclusive: bool,
}

/// What `additionalProperties` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Additional {
    /// Anything goes (explicit `true`, or unset with `unknown_fields = "allow"`).
    Any,
    /// Refused: `false`, or unset with `unknown_fields = "reject"`.
    Refuse,
    Schema(NodeId),
}

/// One compiled schema.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Allowed JSON types (`ty::ANY` when `type` is unset).
    pub types: u8,
    /// `false` as a schema: nothing passes.
    pub never: bool,
    pub enum_values: Option<Vec<Value>>,
    pub const_value: Option<Value>,
    pub properties: Vec<(Box<str>, NodeId)>,
    /// Each property's name as `names::position` compares it, by index.
    pub property_names: Vec<Name>,
    /// The label of each property, by index (for a body's top level).
    pub property_fields: Vec<Field>,
    pub required: Vec<(Box<str>, Field)>,
    /// Where each required name is among `properties`.
    pub required_at: Vec<Option<usize>>,
    pub additional: Additional,
    pub pattern_properties: Vec<(Regex, NodeId)>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub prefix_items: Vec<NodeId>,
    pub items: Option<NodeId>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub unique_items: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<Regex>,
    pub format: Option<Format>,
    pub minimum: Option<Bound>,
    pub maximum: Option<Bound>,
    pub multiple_of: Option<Number>,
    pub all_of: Vec<NodeId>,
    pub any_of: Vec<NodeId>,
    pub one_of: Vec<NodeId>,
    pub not: Option<NodeId>,
    pub read_only: bool,
    /// Has `enum`, `const` or a combinator: more than the per-type keywords to check.
    pub checks_more: bool,
    /// Needs the whole value at once (combinators, `enum`/`const`, `uniqueItems`,
    /// `patternProperties`): such a container is buffered and checked as a tree.
    pub tree: bool,
    /// The unknown-field detail: "the contract names only a, b and c".
    pub names_text: Box<str>,
}

impl Node {
    fn new() -> Node {
        Node {
            types: ty::ANY,
            never: false,
            enum_values: None,
            const_value: None,
            properties: Vec::new(),
            property_names: Vec::new(),
            property_fields: Vec::new(),
            required: Vec::new(),
            required_at: Vec::new(),
            additional: Additional::Any,
            pattern_properties: Vec::new(),
            min_properties: None,
            max_properties: None,
            prefix_items: Vec::new(),
            items: None,
            min_items: None,
            max_items: None,
            unique_items: false,
            min_length: None,
            max_length: None,
            pattern: None,
            format: None,
            minimum: None,
            maximum: None,
            multiple_of: None,
            all_of: Vec::new(),
            any_of: Vec::new(),
            one_of: Vec::new(),
            not: None,
            read_only: false,
            checks_more: false,
            tree: false,
            names_text: Box::from(""),
        }
    }

    /// The node of property `key`, if the schema names it.
    pub(crate) fn property(&self, key: &str) -> Option<NodeId> {
        let i = self.property_index(key)?;
        self.properties.get(i).map(|&(_, id)| id)
    }

    /// Where `key` is among the properties.
    #[inline]
    pub(crate) fn property_index(&self, key: &str) -> Option<usize> {
        names::position(&self.property_names, key, |i| {
            self.properties
                .get(i)
                .is_some_and(|(name, _)| &**name == key)
        })
    }
}

/// Every compiled schema of a document.
#[derive(Debug, Default)]
pub(crate) struct Schemas {
    pub nodes: Vec<Node>,
}

impl Schemas {
    pub(crate) fn node(&self, id: NodeId) -> &Node {
        // Ids come only from `Compiler::compile`, which pushes the node first.
        &self.nodes[id as usize]
    }
}

/// How deep schemas may nest, `$ref`s followed (a recursive schema does not count: it is a cycle).
/// Within a 2 MiB thread stack even in a debug build.
const MAX_DEPTH: usize = 64;

/// Keywords gateway.md §5 checks.
const KEYWORDS: &[&str] = &[
    "type",
    "nullable",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "readOnly",
    "$ref",
];

/// Annotations: read by nobody, so they change no verdict.
const ANNOTATIONS: &[&str] = &[
    "description",
    "example",
    "examples",
    "default",
    "title",
    "deprecated",
    "discriminator",
    "xml",
    "externalDocs",
];

/// The OpenAPI version, which decides `exclusiveMinimum`'s form and `$ref` siblings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V30,
    V31,
}

/// RFC 6901 escaping of one token.
pub(crate) fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Follows a local `$ref` (`#/components/…` only) to its value and pointer.
pub(crate) fn resolve_ref<'d>(
    doc: &'d Value,
    reference: &str,
    at: &str,
) -> Result<(&'d Value, String), LoadError> {
    let Some(pointer) = reference.strip_prefix('#') else {
        return Err(LoadError::at(
            at,
            format!("$ref {reference:?} is not local: remote and file references are refused"),
        ));
    };
    if !pointer.starts_with("/components/") {
        return Err(LoadError::at(
            at,
            format!("$ref {reference:?} must point into #/components/"),
        ));
    }
    let mut value = doc;
    for token in pointer.split('/').skip(1) {
        let token = unescape_token(token);
        value = match value {
            Value::Object(map) => map.get(&token),
            Value::Array(list) => token.parse::<usize>().ok().and_then(|i| list.get(i)),
            _ => None,
        }
        .ok_or_else(|| LoadError::at(at, format!("$ref {reference:?} points to nothing")))?;
    }
    Ok((value, pointer.to_owned()))
}

/// Follows `$ref` chains of a non-schema object (parameter, request body, security scheme).
pub(crate) fn deref<'d>(
    doc: &'d Value,
    mut value: &'d Value,
    mut at: String,
) -> Result<(&'d Value, String), LoadError> {
    for _ in 0..32 {
        match value.get("$ref") {
            Some(Value::String(reference)) => {
                let ref_at = format!("{at}/$ref");
                (value, at) = resolve_ref(doc, reference, &ref_at)?;
            }
            Some(_) => return Err(LoadError::at(format!("{at}/$ref"), "$ref must be a string")),
            None => return Ok((value, at)),
        }
    }
    Err(LoadError::at(at, "a chain of $ref that never ends"))
}

/// Compiles schemas into `Schemas`, once per pointer.
pub(crate) struct Compiler<'d> {
    doc: &'d Value,
    version: Version,
    unknown_fields: UnknownFields,
    pub schemas: Schemas,
    by_pointer: HashMap<String, NodeId>,
    /// Lone `$ref`s being followed, to refuse `A: {$ref: A}`.
    aliasing: Vec<String>,
    /// How deep `compile` is nested.
    depth: usize,
    /// Patterns compiled so far: a document repeats the same few many times, and compiling one
    /// costs far more than cloning it (a shared handle).
    patterns: HashMap<String, Regex>,
    /// Formats met that are only annotations.
    pub annotation_formats: Vec<String>,
}

impl<'d> Compiler<'d> {
    pub(crate) fn new(doc: &'d Value, version: Version, unknown_fields: UnknownFields) -> Self {
        Compiler {
            doc,
            version,
            unknown_fields,
            schemas: Schemas::default(),
            by_pointer: HashMap::new(),
            aliasing: Vec::new(),
            depth: 0,
            patterns: HashMap::new(),
            annotation_formats: Vec::new(),
        }
    }

    /// The node of the schema `value` found at `at`.
    pub(crate) fn compile(&mut self, value: &'d Value, at: &str) -> Result<NodeId, LoadError> {
        if let Some(&id) = self.by_pointer.get(at) {
            return Ok(id);
        }
        // Compiling (and later checking) follows the nesting: bound it, so no document can
        // exhaust the stack.
        if self.depth >= MAX_DEPTH {
            return Err(LoadError::at(
                at,
                format!("schemas nest (through $ref too) deeper than {MAX_DEPTH}"),
            ));
        }
        self.depth += 1;
        let id = self.compile_new(value, at);
        self.depth -= 1;
        id
    }

    fn compile_new(&mut self, value: &'d Value, at: &str) -> Result<NodeId, LoadError> {
        if let Some(reference) = self.alias(value, at)? {
            // A lone $ref is its target: no node of its own, so the common path stays direct.
            if self.aliasing.iter().any(|p| p == at) {
                return Err(LoadError::at(
                    at,
                    "a $ref cycle that never descends into a value",
                ));
            }
            self.aliasing.push(at.to_owned());
            let ref_at = format!("{at}/$ref");
            let (target, pointer) = resolve_ref(self.doc, reference, &ref_at)?;
            let id = self.compile(target, &pointer);
            self.aliasing.pop();
            let id = id?;
            self.by_pointer.insert(at.to_owned(), id);
            return Ok(id);
        }
        let id = NodeId::try_from(self.schemas.nodes.len())
            .map_err(|_| LoadError::at(at, "too many schemas"))?;
        // Reserved first, so a `$ref` back to this schema finds it: a cycle, not a loop.
        self.schemas.nodes.push(Node::new());
        self.by_pointer.insert(at.to_owned(), id);
        let node = self.build(value, at)?;
        self.schemas.nodes[id as usize] = node;
        Ok(id)
    }

    /// The reference of a schema that is a `$ref` and nothing else that counts. In 3.0 the
    /// siblings of `$ref` are ignored by the standard, so a keyword there is refused instead.
    fn alias(&self, value: &'d Value, at: &str) -> Result<Option<&'d str>, LoadError> {
        let Some(map) = value.as_object() else {
            return Ok(None);
        };
        let Some(reference) = map.get("$ref") else {
            return Ok(None);
        };
        let Value::String(reference) = reference else {
            return Err(LoadError::at(format!("{at}/$ref"), "$ref must be a string"));
        };
        let sibling = map.keys().find(|k| {
            k.as_str() != "$ref" && !ANNOTATIONS.contains(&k.as_str()) && !k.starts_with("x-")
        });
        match sibling {
            None => Ok(Some(reference)),
            Some(key) if self.version == Version::V30 => Err(LoadError::at(
                format!("{at}/{}", escape_token(key)),
                format!("{key:?} beside $ref is ignored by OpenAPI 3.0: put both under allOf"),
            )),
            Some(_) => Ok(None),
        }
    }

    fn build(&mut self, value: &'d Value, at: &str) -> Result<Node, LoadError> {
        let mut node = Node::new();
        let map = match value {
            Value::Bool(true) if self.version == Version::V31 => return Ok(node),
            Value::Bool(false) if self.version == Version::V31 => {
                node.never = true;
                return Ok(node);
            }
            Value::Object(map) => map,
            _ => return Err(LoadError::at(at, "a schema must be an object")),
        };
        for key in map.keys() {
            if !KEYWORDS.contains(&key.as_str())
                && !ANNOTATIONS.contains(&key.as_str())
                && !key.starts_with("x-")
            {
                return Err(LoadError::at(
                    format!("{at}/{}", escape_token(key)),
                    format!("keyword {key:?} is not supported: the gateway never ignores a rule it cannot check"),
                ));
            }
        }
        let child = |key: &str| format!("{at}/{}", escape_token(key));

        if let Some(reference) = map.get("$ref") {
            // Only with sibling keywords in 3.1 (a lone $ref is an alias, see `compile`).
            let Value::String(reference) = reference else {
                return Err(LoadError::at(child("$ref"), "$ref must be a string"));
            };
            let (target, pointer) = resolve_ref(self.doc, reference, &child("$ref"))?;
            node.all_of.push(self.compile(target, &pointer)?);
        }

        if let Some(types) = map.get("type") {
            node.types = 0;
            let names: Vec<&Value> = match types {
                Value::Array(list) if !list.is_empty() => list.iter().collect(),
                Value::String(_) => vec![types],
                _ => {
                    return Err(LoadError::at(
                        child("type"),
                        "type must be a type name or a non-empty list of them",
                    ))
                }
            };
            for name in names {
                node.types |= match name.as_str() {
                    Some("null") => ty::NULL,
                    Some("boolean") => ty::BOOLEAN,
                    Some("object") => ty::OBJECT,
                    Some("array") => ty::ARRAY,
                    Some("number") => ty::NUMBER | ty::INTEGER,
                    Some("integer") => ty::INTEGER,
                    Some("string") => ty::STRING,
                    _ => return Err(LoadError::at(child("type"), format!("unknown type {name}"))),
                };
            }
        }
        match map.get("nullable") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => node.types |= ty::NULL,
            Some(_) => {
                return Err(LoadError::at(
                    child("nullable"),
                    "nullable must be a boolean",
                ))
            }
        }
        if let Some(values) = map.get("enum") {
            match values {
                Value::Array(list) => node.enum_values = Some(list.clone()),
                _ => return Err(LoadError::at(child("enum"), "enum must be a list")),
            }
        }
        if let Some(value) = map.get("const") {
            node.const_value = Some(value.clone());
        }
        if let Some(props) = map.get("properties") {
            let Value::Object(props) = props else {
                return Err(LoadError::at(
                    child("properties"),
                    "properties must be an object",
                ));
            };
            for (name, schema) in props {
                let id = self.compile(
                    schema,
                    &format!("{}/{}", child("properties"), escape_token(name)),
                )?;
                node.properties.push((name.as_str().into(), id));
            }
        }
        if let Some(required) = map.get("required") {
            let Value::Array(list) = required else {
                return Err(LoadError::at(
                    child("required"),
                    "required must be a list of names",
                ));
            };
            for (i, name) in list.iter().enumerate() {
                let Value::String(name) = name else {
                    return Err(LoadError::at(
                        format!("{}/{i}", child("required")),
                        "required must be a list of names",
                    ));
                };
                node.required
                    .push((name.as_str().into(), Field::named(name)));
            }
        }
        // `unknown_fields = "reject"` speaks for schemas that name members; one that names none
        // (a free-form object, an allOf wrapper) leaves them to its branches.
        let names_members = map.contains_key("properties") || map.contains_key("patternProperties");
        node.additional = match map.get("additionalProperties") {
            None if names_members && self.unknown_fields == UnknownFields::Reject => {
                Additional::Refuse
            }
            None => Additional::Any,
            Some(Value::Bool(true)) => Additional::Any,
            Some(Value::Bool(false)) => Additional::Refuse,
            Some(schema @ Value::Object(_)) => {
                Additional::Schema(self.compile(schema, &child("additionalProperties"))?)
            }
            Some(_) => {
                return Err(LoadError::at(
                    child("additionalProperties"),
                    "additionalProperties must be a boolean or a schema",
                ))
            }
        };
        if let Some(props) = map.get("patternProperties") {
            let Value::Object(props) = props else {
                return Err(LoadError::at(
                    child("patternProperties"),
                    "patternProperties must be an object",
                ));
            };
            for (pattern, schema) in props {
                let here = format!("{}/{}", child("patternProperties"), escape_token(pattern));
                let regex = self.pattern(pattern, &here)?;
                let id = self.compile(schema, &here)?;
                node.pattern_properties.push((regex, id));
            }
        }
        node.min_properties = count(map, "minProperties", at)?;
        node.max_properties = count(map, "maxProperties", at)?;
        match map.get("items") {
            None => {}
            Some(schema @ (Value::Object(_) | Value::Bool(_))) => {
                node.items = Some(self.compile(schema, &child("items"))?);
            }
            Some(_) => {
                return Err(LoadError::at(
                    child("items"),
                    "items must be a schema (a list is prefixItems)",
                ))
            }
        }
        if let Some(list) = map.get("prefixItems") {
            let Value::Array(list) = list else {
                return Err(LoadError::at(
                    child("prefixItems"),
                    "prefixItems must be a list of schemas",
                ));
            };
            for (i, schema) in list.iter().enumerate() {
                let id = self.compile(schema, &format!("{}/{i}", child("prefixItems")))?;
                node.prefix_items.push(id);
            }
        }
        node.min_items = count(map, "minItems", at)?;
        node.max_items = count(map, "maxItems", at)?;
        node.unique_items = match map.get("uniqueItems") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(LoadError::at(
                    child("uniqueItems"),
                    "uniqueItems must be a boolean",
                ))
            }
        };
        node.min_length = count(map, "minLength", at)?;
        node.max_length = count(map, "maxLength", at)?;
        if let Some(pattern) = map.get("pattern") {
            let Value::String(pattern) = pattern else {
                return Err(LoadError::at(child("pattern"), "pattern must be a string"));
            };
            node.pattern = Some(self.pattern(pattern, &child("pattern"))?);
        }
        if let Some(format) = map.get("format") {
            let Value::String(format) = format else {
                return Err(LoadError::at(child("format"), "format must be a string"));
            };
            node.format = Format::from_name(format);
            if node.format.is_none() && !self.annotation_formats.contains(format) {
                self.annotation_formats.push(format.clone());
            }
        }
        node.minimum = number(map, "minimum", at)?.map(|value| Bound {
            value,
            exclusive: false,
        });
        node.maximum = number(map, "maximum", at)?.map(|value| Bound {
            value,
            exclusive: false,
        });
        for (key, bound) in [
            ("exclusiveMinimum", &mut node.minimum),
            ("exclusiveMaximum", &mut node.maximum),
        ] {
            match map.get(key) {
                None => {}
                // 3.0: a flag on minimum/maximum.
                Some(Value::Bool(flag)) if self.version == Version::V30 => match bound {
                    Some(bound) => bound.exclusive = *flag,
                    None if !flag => {}
                    None => {
                        return Err(LoadError::at(
                            child(key),
                            format!(
                                "{key}: true needs {}",
                                if key == "exclusiveMinimum" {
                                    "minimum"
                                } else {
                                    "maximum"
                                }
                            ),
                        ))
                    }
                },
                // 3.1: a number of its own; the tighter of the two bounds wins.
                Some(Value::Number(n)) if self.version == Version::V31 => {
                    let exclusive = Bound {
                        value: n.clone(),
                        exclusive: true,
                    };
                    let lower = key == "exclusiveMinimum";
                    let tighter = match bound {
                        None => true,
                        Some(old) => {
                            let (new, old) = (as_f64(n), as_f64(&old.value));
                            if lower {
                                new >= old
                            } else {
                                new <= old
                            }
                        }
                    };
                    if tighter {
                        *bound = Some(exclusive);
                    }
                }
                Some(_) => {
                    let form = if self.version == Version::V30 {
                        "a boolean (OpenAPI 3.0)"
                    } else {
                        "a number (OpenAPI 3.1)"
                    };
                    return Err(LoadError::at(child(key), format!("{key} must be {form}")));
                }
            }
        }
        if let Some(n) = number(map, "multipleOf", at)? {
            if as_f64(&n) <= 0.0 {
                return Err(LoadError::at(
                    child("multipleOf"),
                    "multipleOf must be greater than 0",
                ));
            }
            node.multiple_of = Some(n);
        }
        for (key, list) in [
            ("allOf", &mut node.all_of),
            ("anyOf", &mut node.any_of),
            ("oneOf", &mut node.one_of),
        ] {
            let Some(value) = map.get(key) else { continue };
            let Value::Array(schemas) = value else {
                return Err(LoadError::at(
                    child(key),
                    format!("{key} must be a list of schemas"),
                ));
            };
            if schemas.is_empty() {
                return Err(LoadError::at(
                    child(key),
                    format!("{key} must not be empty"),
                ));
            }
            for (i, schema) in schemas.iter().enumerate() {
                list.push(self.compile(schema, &format!("{}/{i}", child(key)))?);
            }
        }
        if let Some(schema) = map.get("not") {
            node.not = Some(self.compile(schema, &child("not"))?);
        }
        node.read_only = match map.get("readOnly") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(LoadError::at(
                    child("readOnly"),
                    "readOnly must be a boolean",
                ))
            }
        };
        node.tree = node.all_of.len() + node.any_of.len() + node.one_of.len() > 0
            || node.not.is_some()
            || node.enum_values.is_some()
            || node.const_value.is_some()
            || node.unique_items
            || !node.pattern_properties.is_empty();
        node.checks_more = node.all_of.len() + node.any_of.len() + node.one_of.len() > 0
            || node.not.is_some()
            || node.enum_values.is_some()
            || node.const_value.is_some();
        node.property_names = node
            .properties
            .iter()
            .map(|(name, _)| Name::of(name))
            .collect();
        node.property_fields = node
            .properties
            .iter()
            .map(|(name, _)| Field::named(name))
            .collect();
        node.required_at = node
            .required
            .iter()
            .map(|(name, _)| node.properties.iter().position(|(p, _)| p == name))
            .collect();
        node.names_text = names_text(&node.properties).into();
        Ok(node)
    }

    fn pattern(&mut self, pattern: &str, at: &str) -> Result<Regex, LoadError> {
        if let Some(regex) = self.patterns.get(pattern) {
            return Ok(regex.clone());
        }
        let regex = compile_pattern(pattern, at)?;
        self.patterns.insert(pattern.to_owned(), regex.clone());
        Ok(regex)
    }

    /// Refuses a cycle that never descends into a value (`A: {allOf: [$ref: A]}`): checking it
    /// would never end. Cycles through `properties` or `items` are fine: the value is finite.
    pub(crate) fn check_cycles(&self) -> Result<(), LoadError> {
        let pointers: HashMap<NodeId, &str> = self
            .by_pointer
            .iter()
            .map(|(p, &id)| (id, p.as_str()))
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; self.schemas.nodes.len()];
        for start in 0..self.schemas.nodes.len() {
            if state[start] != 0 {
                continue;
            }
            let mut stack: Vec<(NodeId, usize)> = vec![(start as NodeId, 0)];
            state[start] = 1;
            while let Some(&mut (id, ref mut next)) = stack.last_mut() {
                let node = self.schemas.node(id);
                let edges: Vec<NodeId> = node
                    .all_of
                    .iter()
                    .chain(&node.any_of)
                    .chain(&node.one_of)
                    .chain(node.not.iter())
                    .copied()
                    .collect();
                if let Some(&to) = edges.get(*next) {
                    *next += 1;
                    match state[to as usize] {
                        0 => {
                            state[to as usize] = 1;
                            stack.push((to, 0));
                        }
                        1 => {
                            let at = pointers.get(&to).copied().unwrap_or("");
                            return Err(LoadError::at(at, "a $ref cycle through allOf/anyOf/oneOf/not that never descends into a value"));
                        }
                        _ => {}
                    }
                } else {
                    state[id as usize] = 2;
                    stack.pop();
                }
            }
        }
        Ok(())
    }
}

fn count(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u64>, LoadError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| {
                LoadError::at(
                    format!("{at}/{key}"),
                    format!("{key} must be a non-negative integer"),
                )
            }),
        Some(_) => Err(LoadError::at(
            format!("{at}/{key}"),
            format!("{key} must be a non-negative integer"),
        )),
    }
}

fn number(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<Number>, LoadError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n.clone())),
        Some(_) => Err(LoadError::at(
            format!("{at}/{key}"),
            format!("{key} must be a number"),
        )),
    }
}

pub(crate) fn as_f64(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// "the contract names only a, b and c" for the unknown-field detail.
fn names_text(properties: &[(Box<str>, NodeId)]) -> String {
    let names: Vec<&str> = properties.iter().map(|(n, _)| &**n).collect();
    match names.as_slice() {
        [] => "the contract names no fields".to_owned(),
        [one] => format!("the contract names only {one}"),
        [rest @ .., last] => format!("the contract names only {} and {last}", rest.join(", ")),
    }
}

/// Most bytes a compiled pattern may take: a pattern stays cheap in memory as well as in time.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// An ECMA-262 pattern through the `regex` crate, which matches in linear time. A pattern that
/// needs backtracking (look-around, back-references) does not compile there: a load error.
pub(crate) fn compile_pattern(pattern: &str, at: &str) -> Result<Regex, LoadError> {
    let translated = ecma_to_rust(pattern);
    regex::RegexBuilder::new(&translated)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let why = e.to_string();
            let why = why.lines().last().unwrap_or("").trim();
            LoadError::at(
                at,
                format!("pattern {pattern:?} cannot be matched in linear time ({why}); look-around and back-references are refused"),
            )
        })
}

/// ECMA's `\d`, `\w` (and negations) are ASCII; the crate's are Unicode. Everything else of the
/// common subset reads the same.
fn ecma_to_rust(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('d') if in_class => out.push_str("0-9"),
                Some('d') => out.push_str("[0-9]"),
                Some('D') if !in_class => out.push_str("[^0-9]"),
                Some('w') if in_class => out.push_str("A-Za-z0-9_"),
                Some('w') => out.push_str("[A-Za-z0-9_]"),
                Some('W') if !in_class => out.push_str("[^A-Za-z0-9_]"),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A `]` right after `[` or `[^` is ECMA's empty class edge; keep it literal.
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '[' if in_class => out.push_str("\\["),
            c => out.push(c),
        }
    }
    out
}
