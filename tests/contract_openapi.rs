//! A richer document than the built-in one (tests/data/rich-openapi.yaml) through the contract
//! facade: which operations require the session, stages 1–3 in order, parameters of every place
//! and style, and bodies over every keyword, with their fields, codes and places.

use companies_gateway::contract::{Api, Code, CompileOptions, Location, Operation, UnknownQuery};
use companies_gateway::error::GatewayError;
use http::{HeaderMap, HeaderValue, Method};

const RICH: &str = include_str!("data/rich-openapi.yaml");

fn api(unknown_query: UnknownQuery) -> Api {
    let opts = CompileOptions {
        unknown_query,
        ..CompileOptions::default()
    };
    Api::from_text(RICH, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn op<'a>(api: &'a Api, label: &str) -> &'a Operation {
    api.operations()
        .iter()
        .find(|op| op.label() == label)
        .unwrap_or_else(|| panic!("no {label}"))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// `(field, code, where)` of each violation; `where` is the pointer, parameter or header.
fn found(
    result: Result<(), companies_gateway::contract::Violations>,
) -> Vec<(String, Code, String)> {
    match result {
        Ok(()) => Vec::new(),
        Err(v) => v
            .iter()
            .map(|v| {
                let at = match &v.location {
                    Location::Pointer(p) => p.clone(),
                    Location::Path(p) | Location::Query(p) => format!("parameter {p}"),
                    Location::Header(h) => format!("header {h}"),
                };
                (v.field.as_str().to_owned(), v.code, at)
            })
            .collect(),
    }
}

fn want(items: &[(&str, Code, &str)]) -> Vec<(String, Code, String)> {
    items
        .iter()
        .map(|&(f, c, a)| (f.to_owned(), c, a.to_owned()))
        .collect()
}

#[test]
fn operations_labels_and_session() {
    let api = api(UnknownQuery::Allow);
    let summary: Vec<(&str, Method, &str, bool, bool)> = api
        .operations()
        .iter()
        .map(|op| {
            (
                op.label(),
                op.method().clone(),
                op.template(),
                op.requires_session(),
                op.has_body(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("get_health", Method::GET, "/health", false, false),
            ("list_items", Method::GET, "/items", false, false),
            ("create_item", Method::POST, "/items", true, true),
            (
                "put_part",
                Method::PUT,
                "/items/{itemId}/parts/{part}",
                true,
                true
            ),
        ]
    );
    assert_eq!(api.base_paths(), ["/v3"]);
    for label in [
        "limit",
        "tags",
        "ids",
        "X-Trace-Id",
        "itemId",
        "part",
        "name",
        "sub",
        "code",
        "child",
        "document",
        "unknown",
    ] {
        assert!(
            api.field_labels().contains(&label),
            "{label}: {:?}",
            api.field_labels()
        );
    }
}

#[test]
fn security_alternatives_and_public_operations() {
    let api = api(UnknownQuery::Allow);
    assert!(op(&api, "get_health").check_head(&HeaderMap::new()).is_ok());
    let list = op(&api, "list_items");
    assert!(list
        .check_head(&headers(&[("authorization", "Bearer t")]))
        .is_ok());
    assert!(list.check_head(&headers(&[("x-api-key", "k")])).is_ok());
    match list.check_head(&headers(&[("authorization", "Basic x")])) {
        Err(GatewayError::Unauthorized { problems, .. }) => {
            let got: Vec<_> = problems.iter().map(|p| (p.header, p.code)).collect();
            assert_eq!(
                got,
                [("Authorization", "malformed"), ("X-Api-Key", "missing")]
            );
        }
        other => panic!("{other:?}"),
    }
    // the session token as an apiKey scheme: stage 2, with the document's spelling
    let create = op(&api, "create_item");
    match create.check_head(&headers(&[("content-type", "application/json")])) {
        Err(GatewayError::Unauthorized { problems, .. }) => {
            assert_eq!(problems[0].header, "X-Session-Token");
            assert_eq!(problems[0].code, "missing");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn media_types_json_plus_json_and_others() {
    let api = api(UnknownQuery::Allow);
    let create = op(&api, "create_item");
    let with = |ct: &str| headers(&[("x-session-token", "s"), ("content-type", ct)]);
    for ok in [
        "application/json",
        "application/merge-patch+json; charset=utf-8",
        "text/plain; charset=latin1",
    ] {
        assert!(create.check_head(&with(ok)).is_ok(), "{ok}");
    }
    for bad in [
        "application/xml",
        "application/merge-patch+json; charset=latin1",
    ] {
        assert!(
            matches!(
                create.check_head(&with(bad)),
                Err(GatewayError::UnsupportedMediaType(_))
            ),
            "{bad}"
        );
    }
    // text/plain is only checked against the list; +json is validated like JSON
    let body = br#"{"name":"n"}"#;
    assert_eq!(
        create.check_request(&[], None, &with("text/plain"), body),
        Ok(())
    );
    assert_eq!(
        found(create.check_request(&[], None, &with("application/merge-patch+json"), body)),
        want(&[
            ("kind", Code::Required, "/kind"),
            ("document", Code::MinProperties, "")
        ])
    );
    // put_part's body is optional: no body, no Content-Type is fine
    let put = op(&api, "put_part");
    let h = headers(&[("authorization", "Bearer t"), ("x-session-token", "s")]);
    assert!(put.check_head(&h).is_ok());
    assert_eq!(put.check_request(&["1", "ab"], None, &h, b""), Ok(()));
}

#[test]
fn parameters_of_every_place_and_style() {
    let api = api(UnknownQuery::Reject);
    let list = op(&api, "list_items");
    let h = HeaderMap::new();
    assert_eq!(
        list.check_request(&[], Some("limit=10&tags=red&tags=blue&ids=1,2,3"), &h, b""),
        Ok(())
    );
    assert_eq!(
        found(list.check_request(
            &[],
            Some("tags=red&tags=pink&tags=red&tags=blue&ids=1,x,1&other=%41"),
            &headers(&[("x-trace-id", "not-a-uuid")]),
            b""
        )),
        want(&[
            ("limit", Code::Required, "parameter limit"),
            ("tags", Code::MaxItems, "parameter tags"),
            ("tags", Code::Enum, "parameter tags"),
            ("ids", Code::Integer, "parameter ids"),
            ("unknown", Code::UnknownField, "parameter unknown"),
            ("X-Trace-Id", Code::Format, "header X-Trace-Id"),
        ])
    );
    assert_eq!(
        found(list.check_request(&[], Some("limit=0&ids=2,2"), &h, b"")),
        want(&[
            ("limit", Code::Minimum, "parameter limit"),
            ("ids", Code::UniqueItems, "parameter ids"),
        ])
    );
    let Err(v) = list.check_request(&[], Some("limit=1e2"), &h, b"") else {
        panic!("an exponent is not an integer")
    };
    // No `format: int64` here, so the detail names no range.
    assert_eq!(v[0].detail, "limit must be a decimal integer");
    // An integer wider than i64 is still an integer (as in a JSON body): its bounds decide.
    assert_eq!(
        found(list.check_request(&[], Some("limit=100000000000000000000000"), &h, b"")),
        want(&[("limit", Code::Maximum, "parameter limit")])
    );
    // `ids=` is the empty array in form style (explode false), not one empty item.
    assert_eq!(
        list.check_request(&[], Some("limit=5&ids="), &h, b""),
        Ok(())
    );

    let put = op(&api, "put_part");
    let h = headers(&[("content-type", "application/json")]);
    assert_eq!(put.check_request(&["7", "ab"], None, &h, b"{}"), Ok(()));
    assert_eq!(
        found(put.check_request(&["0", "A%20b"], None, &h, br#"{"code":"x"}"#)),
        want(&[
            ("itemId", Code::Minimum, "parameter itemId"),
            ("part", Code::Pattern, "parameter part"),
            ("code", Code::MinLength, "/code"),
        ])
    );
    assert_eq!(
        found(put.check_request(&["3000000000", "%ff"], None, &h, b"{}")),
        want(&[
            ("itemId", Code::Format, "parameter itemId"),
            ("part", Code::Type, "parameter part"),
        ])
    );
}

#[test]
fn bodies_over_every_keyword() {
    let api = api(UnknownQuery::Allow);
    let create = op(&api, "create_item");
    let h = headers(&[("content-type", "application/json")]);
    let check = |body: &str| found(create.check_request(&[], None, &h, body.as_bytes()));
    let good = r#"{"name":"drill","kind":"tool","version":2,"price":19.99,"when":"2024-12-05T14:56:23.000Z",
        "day":"2024-02-29","host":"10.0.0.1","link":"https://example.com/a?b=c","dims":[1,2.5],
        "label":"ABCDEF","note":"n","meta":{"x-a":"b","n":1},"sub":{"code":"ab","child":{"code":"cd"}}}"#;
    assert_eq!(check(good), []);
    assert_eq!(check(r#"{"name":"n","kind":"kit","host":"::1"}"#), []);
    assert_eq!(
        check(
            r#"{"id":1,"name":"","kind":"car","version":3,"price":0,"when":"2024-12-05 14:56","day":"2023-02-29",
            "host":"bad host","link":"no scheme","dims":[1,2,3],"label":"abcd","note":"","meta":{"x-a":1,"n":"s"},
            "sub":{"child":{"code":"x"}},"extra":true}"#
        ),
        want(&[
            ("id", Code::ReadOnly, "/id"),
            ("name", Code::MinLength, "/name"),
            ("kind", Code::Enum, "/kind"),
            ("version", Code::Const, "/version"),
            ("price", Code::Minimum, "/price"),
            ("when", Code::Format, "/when"),
            ("day", Code::Format, "/day"),
            ("host", Code::AnyOf, "/host"),
            ("link", Code::Format, "/link"),
            ("dims", Code::Type, "/dims/2"),
            ("label", Code::OneOf, "/label"),
            ("note", Code::Not, "/note"),
            ("meta", Code::Type, "/meta/x-a"),
            ("meta", Code::Type, "/meta/n"),
            ("sub", Code::MinLength, "/sub/child/code"),
            ("sub", Code::Required, "/sub/code"),
            ("unknown", Code::UnknownField, "/extra"),
            ("document", Code::MaxProperties, ""),
        ])
    );
    assert_eq!(
        check(r#"{"name":"n","kind":"tool","dims":[1]}"#),
        want(&[("dims", Code::MinItems, "/dims")])
    );
    // a duplicate inside a buffered (oneOf) value is still found
    assert_eq!(
        check(r#"{"name":"n","kind":"tool","sub":{"code":"ab","code":"cd"}}"#),
        want(&[("document", Code::DuplicateKey, "")])
    );
    assert_eq!(
        check(r#"{"kind":"tool"}"#),
        want(&[
            ("name", Code::Required, "/name"),
            ("document", Code::MinProperties, "")
        ])
    );
}

#[test]
fn numbers_are_read_correctly_rounded() {
    let doc = r#"openapi: 3.1.0
info: {title: numbers, version: "1"}
paths:
  /n:
    post:
      security: []
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, properties: {x: {type: number, exclusiveMaximum: 100}}}
      responses: {"200": {description: ok}}
"#;
    let api = Api::from_text(doc, &CompileOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let op = &api.operations()[0];
    let h = headers(&[("content-type", "application/json")]);
    // The f64 just below 100: a fast parse that is not correctly rounded reads it as 100.
    assert_eq!(
        op.check_request(&[], None, &h, br#"{"x":99.99999999999999}"#),
        Ok(())
    );
    assert_eq!(
        found(op.check_request(&[], None, &h, br#"{"x":100.0}"#)),
        want(&[("x", Code::Maximum, "/x")])
    );
}
