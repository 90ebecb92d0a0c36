//! Differential property tests: the compiled validator against the `jsonschema` crate, on
//! generated schemas (every supported keyword) and instances. Both must give the same verdict and
//! fail at the same places.
//!
//! Where the two report a problem differs by design, the comparison maps ours first: a missing
//! required member and an unknown member are reported by the gateway at the member's own pointer
//! (gateway.md §2), by `jsonschema` at the object that lacks or holds it. Formats are left out
//! (the gateway's `email` is deliberately stricter) and so is `readOnly` (refused in a request,
//! an annotation to JSON Schema).

use std::collections::BTreeSet;

use companies_gateway::contract::{Api, Code, CompileOptions, Location, UnknownFields};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The gateway's failing places, as `jsonschema` would name them.
fn ours(api: &Api, instance: &Value) -> BTreeSet<String> {
    let text = serde_json::to_string(instance).unwrap();
    match api.operations()[0].check_json_body(text.as_bytes()) {
        Ok(()) => BTreeSet::new(),
        Err(violations) => {
            assert_eq!(violations.unlisted(), 0, "keep instances small");
            violations
                .iter()
                .map(|v| {
                    let Location::Pointer(p) = &v.location else {
                        panic!("{v:?}")
                    };
                    match v.code {
                        Code::Required | Code::UnknownField => p
                            .rsplit_once('/')
                            .map_or("", |(parent, _)| parent)
                            .to_owned(),
                        _ => p.clone(),
                    }
                })
                .collect()
        }
    }
}

fn theirs(schema: &Value, instance: &Value) -> BTreeSet<String> {
    let validator = jsonschema::draft202012::new(schema).expect("a valid JSON Schema");
    validator
        .iter_errors(instance)
        .map(|e| e.instance_path().to_string())
        .collect()
}

/// A 3.1 document whose one operation takes `schema` as its JSON body.
fn document_31(schema: &Value) -> String {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "diff", "version": "1"},
        "paths": {"/x": {"post": {
            "operationId": "x",
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema}}},
            "responses": {}
        }}}
    })
    .to_string()
}

fn compile(doc: &str) -> Api {
    let opts = CompileOptions {
        // JSON Schema's own rule: unset additionalProperties allows anything
        unknown_fields: UnknownFields::Allow,
        ..CompileOptions::default()
    };
    Api::from_text(doc, &opts).unwrap_or_else(|e| panic!("{e}: {doc}"))
}

const KEYS: &[&str] = &["a", "b", "c", "x1"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(str::to_owned)
}

fn instance() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-6i64..12).prop_map(Value::from),
        (-12i64..24).prop_map(|n| json!(n as f64 / 2.0 + 0.25)),
        Just(json!(2.0)),
        "[a-cx0-9]{0,5}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((key(), inner), 0..5).prop_map(|members| {
                Value::Object(members.into_iter().collect::<Map<String, Value>>())
            }),
        ]
    })
}

fn type_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(
        &[
            "null", "boolean", "integer", "number", "string", "array", "object",
        ][..],
    )
}

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..6).prop_map(Value::from),
        Just(json!(1.0)),
        "[abc]{0,2}".prop_map(Value::from),
        Just(json!([1, "a"])),
        Just(json!({"a": 1})),
    ]
}

/// Schemas over every supported keyword but `format` and `readOnly`.
fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!({})),
        type_name().prop_map(|t| json!({ "type": t })),
        prop::sample::subsequence(
            vec!["null", "boolean", "integer", "number", "string", "array", "object"],
            1..3
        )
        .prop_map(|t| json!({ "type": t })),
        (
            prop::option::of(0u64..4),
            prop::option::of(0u64..5),
            prop::option::of(prop::sample::select(
                &["^a", "b$", "^[a-c]*$", "[0-9]{2}", "^\\d"][..]
            ))
        )
            .prop_map(|(min, max, pattern)| {
                let mut s = json!({"type": "string"});
                if let Some(n) = min {
                    s["minLength"] = json!(n);
                }
                if let Some(n) = max {
                    s["maxLength"] = json!(n);
                }
                if let Some(p) = pattern {
                    s["pattern"] = json!(p);
                }
                s
            }),
        (
            prop::sample::select(&["integer", "number"][..]),
            prop::option::of(-4i64..4),
            prop::option::of(-2i64..8),
            prop::option::of(-4i64..4),
            prop::option::of(-2i64..8),
            prop::option::of(prop::sample::select(vec![json!(2), json!(3), json!(0.5)]))
        )
            .prop_map(|(t, min, max, xmin, xmax, m)| {
                let mut s = json!({"type": t});
                if let Some(n) = min {
                    s["minimum"] = json!(n);
                }
                if let Some(n) = max {
                    s["maximum"] = json!(n);
                }
                if let Some(n) = xmin {
                    s["exclusiveMinimum"] = json!(n);
                }
                if let Some(n) = xmax {
                    s["exclusiveMaximum"] = json!(n);
                }
                if let Some(m) = m {
                    s["multipleOf"] = m;
                }
                s
            }),
        vec(small_value(), 1..4).prop_map(|values| json!({ "enum": values })),
        small_value().prop_map(|v| json!({ "const": v })),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            (
                vec((key(), inner.clone()), 0..3),
                vec(key(), 0..3),
                prop::option::of(prop_oneof![
                    Just(json!(true)),
                    Just(json!(false)),
                    inner.clone()
                ]),
                prop::option::of(inner.clone()),
                prop::option::of(0u64..3),
                prop::option::of(0u64..4),
            )
                .prop_map(|(props, required, additional, pattern, min, max)| {
                    let mut s = json!({"type": "object"});
                    if !props.is_empty() {
                        s["properties"] = Value::Object(props.into_iter().collect());
                    }
                    if !required.is_empty() {
                        let mut r = required;
                        r.sort();
                        r.dedup();
                        s["required"] = json!(r);
                    }
                    if let Some(a) = additional {
                        s["additionalProperties"] = a;
                    }
                    if let Some(p) = pattern {
                        s["patternProperties"] = json!({ "^x": p });
                    }
                    if let Some(n) = min {
                        s["minProperties"] = json!(n);
                    }
                    if let Some(n) = max {
                        s["maxProperties"] = json!(n);
                    }
                    s
                }),
            (
                prop::option::of(inner.clone()),
                vec(inner.clone(), 0..3),
                prop::option::of(0u64..3),
                prop::option::of(0u64..5),
                any::<bool>(),
            )
                .prop_map(|(items, prefix, min, max, unique)| {
                    let mut s = json!({"type": "array"});
                    if let Some(i) = items {
                        s["items"] = i;
                    }
                    if !prefix.is_empty() {
                        s["prefixItems"] = json!(prefix);
                    }
                    if let Some(n) = min {
                        s["minItems"] = json!(n);
                    }
                    if let Some(n) = max {
                        s["maxItems"] = json!(n);
                    }
                    if unique {
                        s["uniqueItems"] = json!(true);
                    }
                    s
                }),
            vec(inner.clone(), 1..3).prop_map(|l| json!({ "allOf": l })),
            vec(inner.clone(), 1..3).prop_map(|l| json!({ "anyOf": l })),
            vec(inner.clone(), 1..4).prop_map(|l| json!({ "oneOf": l })),
            inner.clone().prop_map(|s| json!({ "not": s })),
            (inner.clone(), inner).prop_map(|(a, b)| {
                // keywords beside each other and a combinator in one schema
                let mut s = a;
                if let Value::Object(map) = &mut s {
                    map.insert("anyOf".into(), json!([b, {"type": "null"}]));
                }
                s
            }),
        ]
    })
}

/// A 3.0 schema: `nullable` and boolean exclusive bounds, converted for `jsonschema`.
fn schema_30() -> impl Strategy<Value = (Value, Value)> {
    (
        prop::sample::select(&["integer", "number", "string"][..]),
        any::<bool>(),
        prop::option::of((-3i64..4, any::<bool>())),
        prop::option::of((0i64..8, any::<bool>())),
    )
        .prop_map(|(t, nullable, min, max)| {
            let mut v30 = json!({"type": t, "nullable": nullable});
            let mut v31 = json!({"type": if nullable { json!([t, "null"]) } else { json!(t) }});
            if let Some((n, x)) = min {
                v30["minimum"] = json!(n);
                v30["exclusiveMinimum"] = json!(x);
                v31[if x { "exclusiveMinimum" } else { "minimum" }] = json!(n);
            }
            if let Some((n, x)) = max {
                v30["maximum"] = json!(n);
                v30["exclusiveMaximum"] = json!(x);
                v31[if x { "exclusiveMaximum" } else { "maximum" }] = json!(n);
            }
            (
                json!({"type": "object", "properties": {"a": v30}}),
                json!({"type": "object", "properties": {"a": v31}}),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn the_compiled_validator_agrees_with_jsonschema(schema in schema(), instances in vec(instance(), 1..6)) {
        let api = compile(&document_31(&schema));
        for instance in &instances {
            let ours = ours(&api, instance);
            let theirs = theirs(&schema, instance);
            prop_assert_eq!(ours.is_empty(), theirs.is_empty(), "verdict: schema {} instance {}", schema, instance);
            prop_assert_eq!(&ours, &theirs, "places: schema {} instance {}", schema, instance);
        }
    }

    #[test]
    fn openapi_3_0_forms_agree_once_converted((v30, v31) in schema_30(), a in prop_oneof![Just(Value::Null), (-4i64..9).prop_map(Value::from), (-8i64..18).prop_map(|n| json!(n as f64 / 2.0)), "[a-c]{0,2}".prop_map(Value::from)]) {
        let doc = document_31(&v30).replace("\"3.1.0\"", "\"3.0.3\"");
        let api = compile(&doc);
        let instance = json!({ "a": a });
        prop_assert_eq!(ours(&api, &instance), theirs(&v31, &instance), "schema {} instance {}", v30, instance);
    }
}
