//! Unit tests of the update-contact contract as it was written by hand: the built-in document
//! must keep every verdict, pointer and detail.

use super::*;
use std::fmt::Write as _;

use http::HeaderValue;

// ----- helpers -----

type Found = Vec<(Field, Code, String)>;

fn found(result: Result<(), Violations>) -> Found {
    match result {
        Ok(()) => Vec::new(),
        Err(violations) => violations
            .into_iter()
            .map(|v| match v.location {
                Location::Pointer(p) => (v.field, v.code, p),
                Location::Path(p) | Location::Query(p) | Location::Header(p) => {
                    (v.field, v.code, p.to_owned())
                }
            })
            .collect(),
    }
}

fn want(items: &[(Field, Code, &str)]) -> Found {
    items
        .iter()
        .map(|&(f, c, p)| (f, c, p.to_owned()))
        .collect()
}

fn body(text: &str) -> Found {
    found(check_body(text.as_bytes(), UnknownFields::Reject))
}

/// `{"notify":true` + members + `}`.
fn with(members: &str) -> String {
    format!(r#"{{"notify":true{members}}}"#)
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn rep(s: &str, n: usize) -> String {
    s.repeat(n)
}

/// An address of exactly `len` characters (len >= 70): 64-char local part, dotted domain.
fn email_of_len(len: usize) -> String {
    let local = "l".repeat(64);
    let rest = len - 64 - 1 - 4; // "@" and ".com"
    let count = (rest + 1).div_ceil(64); // labels of at most 63, dots between them
    let total = rest - (count - 1);
    let labels: Vec<String> = (0..count)
        .map(|i| "d".repeat(total / count + usize::from(i < total % count)))
        .collect();
    let e = format!("{local}@{}.com", labels.join("."));
    assert_eq!(e.chars().count(), len, "{e}");
    e
}

use Code as C;
use Field as F;

// ----- the listing limit -----

#[test]
fn past_the_limit_violations_are_counted_not_listed() {
    let phones = vec!["0"; 1000].join(",");
    let Err(v) = check_body(
        with(&format!(r#","phones":[{phones}],"x":1"#)).as_bytes(),
        UnknownFields::Reject,
    ) else {
        panic!("accepted");
    };
    assert_eq!(v.len(), MAX_LISTED);
    assert_eq!(v.total(), 1002);
    assert_eq!(v.unlisted(), 1002 - MAX_LISTED as u64);
    // Max items still comes first, then the items in order.
    assert_eq!((v[0].field, v[0].code), (F::Phones, C::MaxItems));
    assert_eq!(v[1].location, Location::Pointer("/phones/0".into()));
    assert_eq!(
        v[MAX_LISTED - 1].location,
        Location::Pointer("/phones/98".into())
    );
    let mut counts: Vec<_> = v.counts().collect();
    counts.sort_by_key(|&(f, c, _)| (f.as_str(), c.as_str()));
    let sum = |field, code| {
        counts
            .iter()
            .filter(|&&(f, c, _)| f == field && c == code)
            .map(|&(_, _, n)| n)
            .sum::<u64>()
    };
    assert_eq!(sum(F::Phones, C::Type), 1000);
    assert_eq!(sum(F::Phones, C::MaxItems), 1);
    assert_eq!(sum(F::Unknown, C::UnknownField), 1);

    // Appending keeps the order and the counts.
    let mut path = check_path_params("x", "1").unwrap_err();
    path.append(v);
    assert_eq!(path.len(), MAX_LISTED);
    assert_eq!(path.total(), 1003);
    assert_eq!(path[0].location, Location::Path("companyId"));
}

// ----- labels -----

#[test]
fn metric_labels_are_the_documented_sets() {
    let fields: Vec<_> = Field::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "notify",
            "name",
            "email",
            "phones",
            "comment",
            "companyId",
            "contactId",
            "document",
            "unknown"
        ]
    );
    let codes: Vec<_> = Code::ALL.iter().map(|c| c.as_str()).collect();
    // gateway.md §3, in its order.
    assert_eq!(
        codes,
        [
            "required",
            "type",
            "max_length",
            "min_length",
            "max_items",
            "min_items",
            "unique_items",
            "format",
            "integer",
            "pattern",
            "enum",
            "const",
            "minimum",
            "maximum",
            "multiple_of",
            "min_properties",
            "max_properties",
            "one_of",
            "any_of",
            "not",
            "read_only",
            "unknown_field",
            "duplicate_key",
            "syntax"
        ]
    );
}

#[test]
fn unknown_fields_config_values() {
    assert_eq!(
        serde_json::from_str::<UnknownFields>(r#""reject""#).unwrap(),
        UnknownFields::Reject
    );
    assert_eq!(
        serde_json::from_str::<UnknownFields>(r#""allow""#).unwrap(),
        UnknownFields::Allow
    );
    assert!(serde_json::from_str::<UnknownFields>(r#""Allow""#).is_err());
    assert_eq!(UnknownFields::default(), UnknownFields::Reject);
    assert_eq!(
        serde_json::to_string(&UnknownFields::Allow).unwrap(),
        r#""allow""#
    );
}

// ----- body: boundaries -----

#[rustfmt::skip]
#[test]
fn body_table() {
    let ok: &[(Field, Code, &str)] = &[];
    let cases: Vec<(String, String, Found)> = vec![
        // the contract's example and minimal bodies
        (
            "example".into(),
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/shared/contract/examples/update-contact.request.json"
            ))
            .into(),
            want(ok),
        ),
        ("notify true".into(), r#"{"notify":true}"#.into(), want(ok)),
        ("notify false".into(), r#" {"notify" : false} "#.into(), want(ok)),
        ("trailing whitespace".into(), "{\"notify\":true}\r\n\t ".into(), want(ok)),
        // name
        ("name 250".into(), with(&format!(r#","name":"{}""#, rep("a", 250))), want(ok)),
        ("name 251".into(), with(&format!(r#","name":"{}""#, rep("a", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
        ("name 250 é".into(), with(&format!(r#","name":"{}""#, rep("é", 250))), want(ok)),
        ("name 251 é".into(), with(&format!(r#","name":"{}""#, rep("é", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
        ("name 250 emoji".into(), with(&format!(r#","name":"{}""#, rep("😀", 250))), want(ok)),
        ("name 251 emoji".into(), with(&format!(r#","name":"{}""#, rep("😀", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
        ("name 250 \\u00e9".into(), with(&format!(r#","name":"{}""#, rep("\\u00e9", 250))), want(ok)),
        ("name 251 \\u00e9".into(), with(&format!(r#","name":"{}""#, rep("\\u00e9", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
        ("name 250 surrogate pairs".into(), with(&format!(r#","name":"{}""#, rep("\\ud83d\\ude00", 250))), want(ok)),
        ("name 251 surrogate pairs".into(), with(&format!(r#","name":"{}""#, rep("\\ud83d\\ude00", 251))), want(&[(F::Name, C::MaxLength, "/name")])),
        ("name 250 mixed escapes".into(), with(&format!(r#","name":"{}{}""#, rep("\\n\\\"", 100), rep("x", 50))), want(ok)),
        ("name empty".into(), with(r#","name":"""#), want(ok)),
        ("name null".into(), with(r#","name":null"#), want(&[(F::Name, C::Type, "/name")])),
        ("name number".into(), with(r#","name":1"#), want(&[(F::Name, C::Type, "/name")])),
        ("name array".into(), with(r#","name":["a"]"#), want(&[(F::Name, C::Type, "/name")])),
        ("name object".into(), with(r#","name":{}"#), want(&[(F::Name, C::Type, "/name")])),
        ("name bool".into(), with(r#","name":false"#), want(&[(F::Name, C::Type, "/name")])),
        // email
        ("email 250".into(), with(&format!(r#","email":"{}""#, email_of_len(250))), want(ok)),
        ("email 251".into(), with(&format!(r#","email":"{}""#, email_of_len(251))), want(&[(F::Email, C::MaxLength, "/email")])),
        ("email plain".into(), with(r#","email":"first.last+tag@sub.example.co""#), want(ok)),
        // format: email is RFC 5321's ASCII mailbox; UTF-8 addresses are idn-email.
        ("email unicode".into(), with(r#","email":"josé@bücher.de""#), want(&[(F::Email, C::Format, "/email")])),
        ("email null".into(), with(r#","email":null"#), want(ok)),
        ("email no dot".into(), with(r#","email":"a@localhost""#), want(&[(F::Email, C::Format, "/email")])),
        ("email trailing dot".into(), with(r#","email":"a@b.com.""#), want(&[(F::Email, C::Format, "/email")])),
        ("email leading dot".into(), with(r#","email":"a@.b.com""#), want(&[(F::Email, C::Format, "/email")])),
        ("email display name".into(), with(r#","email":"John <a@b.com>""#), want(&[(F::Email, C::Format, "/email")])),
        ("email angle".into(), with(r#","email":"<a@b.com>""#), want(&[(F::Email, C::Format, "/email")])),
        ("email empty display".into(), with(r#","email":" <a@b.com>""#), want(&[(F::Email, C::Format, "/email")])),
        ("email domain literal".into(), with(r#","email":"a@[1.2.3.4]""#), want(&[(F::Email, C::Format, "/email")])),
        ("email no at".into(), with(r#","email":"ab.com""#), want(&[(F::Email, C::Format, "/email")])),
        ("email empty".into(), with(r#","email":"""#), want(&[(F::Email, C::Format, "/email")])),
        ("email space".into(), with(r#","email":"a b@c.com""#), want(&[(F::Email, C::Format, "/email")])),
        ("email trailing space".into(), with(r#","email":"a@b.com ""#), want(&[(F::Email, C::Format, "/email")])),
        ("email number".into(), with(r#","email":5"#), want(&[(F::Email, C::Type, "/email")])),
        ("email object".into(), with(r#","email":{"a":1}"#), want(&[(F::Email, C::Type, "/email")])),
        // phones
        ("phones empty".into(), with(r#","phones":[]"#), want(ok)),
        ("phones 5".into(), with(r#","phones":["1","2","3","4","5"]"#), want(ok)),
        ("phones 6".into(), with(r#","phones":["1","2","3","4","5","6"]"#), want(&[(F::Phones, C::MaxItems, "/phones")])),
        ("phone 50".into(), with(&format!(r#","phones":["1","{}"]"#, rep("9", 50))), want(ok)),
        ("phone 51".into(), with(&format!(r#","phones":["1","{}"]"#, rep("9", 51))), want(&[(F::Phones, C::MaxLength, "/phones/1")])),
        ("phone 50 emoji".into(), with(&format!(r#","phones":["{}"]"#, rep("😀", 50))), want(ok)),
        ("phone 51 escaped".into(), with(&format!(r#","phones":["{}"]"#, rep("\\u0031", 51))), want(&[(F::Phones, C::MaxLength, "/phones/0")])),
        ("phone number".into(), with(r#","phones":[1,"2",null]"#), want(&[(F::Phones, C::Type, "/phones/0"), (F::Phones, C::Type, "/phones/2")])),
        (
            "phones 7 with bad items".into(),
            with(&format!(r#","phones":["1",{{}},"3","4","5","6","{}"]"#, rep("x", 51))),
            want(&[(F::Phones, C::MaxItems, "/phones"), (F::Phones, C::Type, "/phones/1"), (F::Phones, C::MaxLength, "/phones/6")]),
        ),
        ("phones null".into(), with(r#","phones":null"#), want(&[(F::Phones, C::Type, "/phones")])),
        ("phones string".into(), with(r#","phones":"123""#), want(&[(F::Phones, C::Type, "/phones")])),
        ("phones object".into(), with(r#","phones":{"0":"1"}"#), want(&[(F::Phones, C::Type, "/phones")])),
        // comment
        ("comment 2500".into(), with(&format!(r#","comment":"{}""#, rep("c", 2500))), want(ok)),
        ("comment 2501".into(), with(&format!(r#","comment":"{}""#, rep("c", 2501))), want(&[(F::Comment, C::MaxLength, "/comment")])),
        ("comment 2500 emoji".into(), with(&format!(r#","comment":"{}""#, rep("😀", 2500))), want(ok)),
        ("comment 2501 é".into(), with(&format!(r#","comment":"{}""#, rep("é", 2501))), want(&[(F::Comment, C::MaxLength, "/comment")])),
        ("comment null".into(), with(r#","comment":null"#), want(ok)),
        ("comment bool".into(), with(r#","comment":true"#), want(&[(F::Comment, C::Type, "/comment")])),
        ("comment array".into(), with(r#","comment":[]"#), want(&[(F::Comment, C::Type, "/comment")])),
        // notify
        ("notify absent".into(), r#"{}"#.into(), want(&[(F::Notify, C::Required, "/notify")])),
        ("notify absent with others".into(), r#"{"name":"x"}"#.into(), want(&[(F::Notify, C::Required, "/notify")])),
        ("notify null".into(), r#"{"notify":null}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
        ("notify string".into(), r#"{"notify":"true"}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
        ("notify number".into(), r#"{"notify":1}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
        ("notify object".into(), r#"{"notify":{}}"#.into(), want(&[(F::Notify, C::Type, "/notify")])),
        // all absent optional members
        ("all null-able null".into(), with(r#","email":null,"comment":null"#), want(ok)),
        // not an object
        ("array".into(), "[]".into(), want(&[(F::Document, C::Type, "")])),
        ("array of objects".into(), r#"[{"notify":true}]"#.into(), want(&[(F::Document, C::Type, "")])),
        ("number".into(), "1".into(), want(&[(F::Document, C::Type, "")])),
        ("null".into(), "null".into(), want(&[(F::Document, C::Type, "")])),
        ("string".into(), r#""x""#.into(), want(&[(F::Document, C::Type, "")])),
        ("escaped string".into(), r#""\n""#.into(), want(&[(F::Document, C::Type, "")])),
        ("bool".into(), "true".into(), want(&[(F::Document, C::Type, "")])),
        // syntax
        ("empty".into(), "".into(), want(&[(F::Document, C::Syntax, "")])),
        ("whitespace only".into(), " \n ".into(), want(&[(F::Document, C::Syntax, "")])),
        ("trailing data".into(), r#"{"notify":true} x"#.into(), want(&[(F::Document, C::Syntax, "")])),
        ("two objects".into(), r#"{"notify":true}{"notify":true}"#.into(), want(&[(F::Document, C::Syntax, "")])),
        ("trailing comma".into(), r#"{"notify":true,}"#.into(), want(&[(F::Document, C::Syntax, "")])),
        ("unterminated".into(), r#"{"notify":true"#.into(), want(&[(F::Document, C::Syntax, "")])),
        ("bom".into(), "\u{feff}{\"notify\":true}".into(), want(&[(F::Document, C::Syntax, "")])),
        ("lone surrogate".into(), with(r#","name":"\ud800""#), want(&[(F::Document, C::Syntax, "")])),
        ("raw control char".into(), with(",\"name\":\"a\u{1}b\""), want(&[(F::Document, C::Syntax, "")])),
        ("single quotes".into(), "{'notify':true}".into(), want(&[(F::Document, C::Syntax, "")])),
        ("syntax error wins over other problems".into(), r#"{"name":1,"x":2,"#.into(), want(&[(F::Document, C::Syntax, "")])),
        ("trailing data after array".into(), "[] x".into(), want(&[(F::Document, C::Syntax, "")])),
        // Out of f64's range: serde_json (without arbitrary_precision) refuses it while parsing.
        ("huge number".into(), with(r#","x":1e400"#), want(&[(F::Document, C::Syntax, "")])),
        // unknown fields and their pointers
        ("unknown companyId".into(), with(r#","companyId":1"#), want(&[(F::Unknown, C::UnknownField, "/companyId")])),
        ("unknown escaped".into(), with(r#","a/b~c":1"#), want(&[(F::Unknown, C::UnknownField, "/a~1b~0c")])),
        ("unknown ~1 literal".into(), with(r#","~1":1"#), want(&[(F::Unknown, C::UnknownField, "/~01")])),
        ("unknown empty name".into(), with(r#","":1"#), want(&[(F::Unknown, C::UnknownField, "/")])),
        ("unknown case".into(), with(r#","Notify":true"#), want(&[(F::Unknown, C::UnknownField, "/Notify")])),
        ("unknown two".into(), with(r#","x":1,"y":{"z":[]}"#), want(&[(F::Unknown, C::UnknownField, "/x"), (F::Unknown, C::UnknownField, "/y")])),
        // duplicate keys
        ("dup notify".into(), r#"{"notify":true,"notify":false}"#.into(), want(&[(F::Document, C::DuplicateKey, "")])),
        ("dup notify escaped".into(), r#"{"notify":true,"\u006eotify":"x"}"#.into(), want(&[(F::Document, C::DuplicateKey, "")])),
        ("dup name second value not checked".into(), with(r#","name":"a","name":5"#), want(&[(F::Document, C::DuplicateKey, "")])),
        ("dup unknown".into(), with(r#","x":1,"x":2"#), want(&[(F::Unknown, C::UnknownField, "/x"), (F::Document, C::DuplicateKey, "")])),
        ("dup nested in unknown".into(), with(r#","x":{"a":1,"b":{"a":1},"a":2}"#), want(&[(F::Document, C::DuplicateKey, ""), (F::Unknown, C::UnknownField, "/x")])),
        ("dup in array".into(), with(r#","x":[1,{"k":1,"k":2}]"#), want(&[(F::Document, C::DuplicateKey, ""), (F::Unknown, C::UnknownField, "/x")])),
        ("dup in phones item".into(), with(r#","phones":[{"k":1,"k":2}]"#), want(&[(F::Document, C::DuplicateKey, ""), (F::Phones, C::Type, "/phones/0")])),
        ("dup in top-level array".into(), r#"[{"k":1,"k":2}]"#.into(), want(&[(F::Document, C::Type, ""), (F::Document, C::DuplicateKey, "")])),
        ("same key in sibling objects".into(), with(r#","x":[{"k":1},{"k":2}]"#), want(&[(F::Unknown, C::UnknownField, "/x")])),
        (
            "dup reported once".into(),
            r#"{"notify":true,"notify":true,"name":"a","name":"b"}"#.into(),
            want(&[(F::Document, C::DuplicateKey, "")]),
        ),
        // every violation from one body
        (
            "all gathered".into(),
            format!(
                r#"{{"name":"{}","email":"nope","phones":["1","{}"],"comment":7,"companyId":3}}"#,
                rep("n", 251),
                rep("p", 51)
            ),
            want(&[
                (F::Name, C::MaxLength, "/name"),
                (F::Email, C::Format, "/email"),
                (F::Phones, C::MaxLength, "/phones/1"),
                (F::Comment, C::Type, "/comment"),
                (F::Unknown, C::UnknownField, "/companyId"),
                (F::Notify, C::Required, "/notify"),
            ]),
        ),
    ];
    for (name, text, expected) in cases {
        assert_eq!(body(&text), expected, "case {name:?}: {}", text.chars().take(200).collect::<String>());
    }
}

#[test]
fn allow_lets_unknown_fields_pass() {
    let text = with(r#","companyId":1,"a/b":{"deep":[1,2,{"x":null}]}"#);
    assert_eq!(check_body(text.as_bytes(), UnknownFields::Allow), Ok(()));
    // ...but duplicates inside them are still refused.
    let text = with(r#","x":{"a":{"b":1,"b":2}}"#);
    let violations = check_body(text.as_bytes(), UnknownFields::Allow).unwrap_err();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].code, Code::DuplicateKey);
    assert_eq!(violations[0].location, Location::Pointer(String::new()));
    assert!(
        violations[0].detail.contains("\"/x/a/b\""),
        "{}",
        violations[0].detail
    );
    // and known members are checked as usual
    let text = r#"{"name":null,"x":1}"#;
    assert_eq!(
        found(check_body(text.as_bytes(), UnknownFields::Allow)),
        want(&[
            (F::Name, C::Type, "/name"),
            (F::Notify, C::Required, "/notify")
        ])
    );
}

#[test]
fn duplicate_detail_names_the_pointer() {
    for (text, pointer) in [
        (r#"{"notify":true,"notify":true}"#, "/notify"),
        (r#"{"notify":true,"x":[0,{"a~/":1,"a~/":2}]}"#, "/x/1/a~0~1"),
        (r#"{"notify":true,"x":{"a":1,"\u0061":2}}"#, "/x/a"),
    ] {
        let violations = check_body(text.as_bytes(), UnknownFields::Allow).unwrap_err();
        let dup: Vec<_> = violations
            .iter()
            .filter(|v| v.code == Code::DuplicateKey)
            .collect();
        assert_eq!(dup.len(), 1, "{text}");
        assert_eq!(dup[0].field, Field::Document);
        assert!(
            dup[0].detail.contains(&format!("{pointer:?}")),
            "{text}: {}",
            dup[0].detail
        );
    }
}

#[test]
fn large_objects_use_the_hash_set() {
    // 10k distinct keys, then a duplicate of the first one at the very end.
    let mut text = String::from(r#"{"notify":true,"x":{"#);
    for i in 0..10_000 {
        let _ = write!(text, r#""k{i}":{i},"#);
    }
    let unique = format!("{}}}}}", text.trim_end_matches(','));
    assert_eq!(check_body(unique.as_bytes(), UnknownFields::Allow), Ok(()));
    let dup = format!("{text}\"k0\":1}}}}");
    let violations = check_body(dup.as_bytes(), UnknownFields::Allow).unwrap_err();
    assert_eq!(violations.len(), 1);
    assert!(
        violations[0].detail.contains("\"/x/k0\""),
        "{}",
        violations[0].detail
    );
    // a duplicate among the first 16 and among many, at the top level
    let mut top = String::from(r#"{"notify":true"#);
    for i in 0..40 {
        let _ = write!(top, r#","u{i}":0"#);
    }
    top.push_str(r#","u39":1,"u3":2}"#);
    let violations = check_body(top.as_bytes(), UnknownFields::Allow).unwrap_err();
    assert_eq!(
        found(Err(violations)),
        want(&[(F::Document, C::DuplicateKey, "")])
    );
}

#[test]
fn syntax_detail_names_line_and_column() {
    let violations = check_body(b"{\n  \"notify\": x\n}", UnknownFields::Reject).unwrap_err();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].code, Code::Syntax);
    assert!(
        violations[0].detail.contains("line 2 column 13"),
        "{}",
        violations[0].detail
    );
}

#[test]
fn invalid_utf8_is_a_syntax_error() {
    for bytes in [
        &b"{\"notify\":true,\"name\":\"\xff\"}"[..],
        b"{\"notify\":true,\"n\xc3\":1}",
        b"{\"notify\":true,\"x\":[\"\xed\xa0\x80\"]}", // an encoded surrogate
        b"{\"notify\":true,\"x\":{\"y\":\"ok\xc0\xaf\"}}", // overlong
        b"\xff",
        b"{\"notify\":true}\xff",
    ] {
        for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
            assert_eq!(
                found(check_body(bytes, unknown)),
                want(&[(F::Document, C::Syntax, "")]),
                "{bytes:?}"
            );
        }
    }
}

#[test]
fn deep_nesting_is_a_syntax_error_not_a_crash() {
    let arrays = "[".repeat(100_000);
    let objects = r#"{"a":"#.repeat(100_000);
    let in_member = format!(r#"{{"notify":true,"x":{}"#, "[".repeat(100_000));
    let in_phones = format!(r#"{{"notify":true,"phones":{}"#, "[".repeat(100_000));
    for text in [arrays, objects, in_member, in_phones] {
        for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
            assert_eq!(
                found(check_body(text.as_bytes(), unknown)),
                want(&[(F::Document, C::Syntax, "")])
            );
        }
    }
    // A nesting well inside the limit is fine.
    let ok = format!(
        r#"{{"notify":true,"x":{}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(check_body(ok.as_bytes(), UnknownFields::Allow), Ok(()));
}

#[test]
fn details_do_not_echo_long_values() {
    let text = with(&format!(
        r#","name":{},"comment":{},"phones":[{}],"email":{}"#,
        js(&rep("N", 300)),
        js(&rep("C", 3000)),
        js(&rep("P", 60)),
        js(&format!("{}@x", rep("E", 40)))
    ));
    let violations = check_body(text.as_bytes(), UnknownFields::Reject).unwrap_err();
    assert_eq!(violations.len(), 4);
    for v in violations.iter() {
        assert!(v.detail.len() < 150, "{v:?}");
        for long in ["NNNNNNNNNN", "CCCCCCCCCC", "PPPPPPPPPP", "EEEEEEEEEE"] {
            assert!(!v.detail.contains(long), "{v:?}");
        }
    }
    assert!(violations[0]
        .detail
        .contains("at most 250 characters, got 300"));
}

// ----- fast paths -----

mod fast_paths {
    use super::super::formats::*;
    use super::super::*;
    use email_address::EmailAddress;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    /// Characters that break or bend an address, put into near-valid ones.
    const ODD: &[&str] = &[
        ".", "..", "-", "@", "+", "_", "\"", " ", " <", "<", ">", "\\", "[", "]", "(", ")", ",",
        ":", ";", "!", "~", "'", "/", "=", "?", "`", "{", "}", "\t", "\n", "\u{0}", "\u{7f}", "é",
        "ü", "ß", "😀", "ǅ", "٣", "\u{a0}", "\u{200b}", "İ", "A", "9",
    ];

    fn odd() -> impl Strategy<Value = String> {
        select(ODD).prop_map(str::to_owned)
    }

    /// Up to two odd pieces put in at random places.
    fn odd_inserts() -> impl Strategy<Value = Vec<(Index, String)>> {
        prop_oneof![2 => Just(Vec::new()), 1 => vec((any::<Index>(), odd()), 1..=2)]
    }

    fn insert_all(mut text: String, inserts: Vec<(Index, String)>) -> String {
        for (at, piece) in inserts {
            let bounds: Vec<usize> = text
                .char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect();
            text.insert_str(bounds[at.index(bounds.len())], &piece);
        }
        text
    }

    /// Local parts around the rules: dots anywhere, quotes, lengths around 64.
    fn local() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}(\\.[a-zA-Z0-9_+-]{1,6}){0,2}",
            3 => "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~.-]{0,12}",
            1 => (60usize..=66, "[a-z.]{0,2}").prop_map(|(n, tail)| format!("{}{tail}", "l".repeat(n))),
            1 => "\"[a-z @.\\\\\"]{0,6}\"",
            1 => "[a-zé😀 .]{0,6}",
        ]
    }

    /// Labels around the rules: hyphens at the ends, empty, lengths around 63.
    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-z0-9]([a-zA-Z0-9-]{0,6}[a-z0-9])?",
            2 => "[a-zA-Z0-9-]{0,8}",
            2 => (61usize..=65).prop_map(|n| "d".repeat(n)),
            1 => "[a-zü_!-]{1,4}",
        ]
    }

    /// `local@label.label...` (or any text), then maybe odd pieces put in.
    fn near_email() -> impl Strategy<Value = String> {
        // domains around the 254-byte limit, in labels of at most 63
        let long = (248usize..=260).prop_map(|len| {
            let count = (len + 1).div_ceil(64);
            let letters = len - (count - 1);
            (0..count)
                .map(|i| "d".repeat(letters / count + usize::from(i < letters % count)))
                .collect::<Vec<_>>()
        });
        let labels = prop_oneof![4 => vec(label(), 1..=4), 1 => vec(label(), 0..=6), 1 => long];
        let ending = prop_oneof![4 => Just(""), 1 => Just("."), 1 => Just("-")];
        let shaped = (local(), labels, ending)
            .prop_map(|(local, labels, end)| format!("{local}@{}{end}", labels.join(".")));
        let soup = vec(prop_oneof![3 => "[a-z0-9]{1,8}", 2 => odd()], 0..12)
            .prop_map(|pieces| pieces.concat());
        (
            prop_oneof![8 => shaped, 1 => soup, 1 => any::<String>()],
            odd_inserts(),
        )
            .prop_map(|(text, inserts)| insert_all(text, inserts))
    }

    /// Addresses of the common shape: the fast path must take all of them.
    fn common_email() -> impl Strategy<Value = String> {
        (
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-zA-Z0-9_+-]{1,10}){0,3}",
            vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 2..=4),
        )
            .prop_map(|(local, labels)| format!("{local}@{}", labels.join(".")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn email_fast_path_agrees_with_the_crate(text in near_email()) {
            let full = email_syntax_full(&text);
            if plain_email(&text) {
                prop_assert_eq!(&full, &Ok(()), "{:?}", text);
            }
            prop_assert_eq!(email_syntax(&text), full, "{:?}", text);
        }

        #[test]
        fn email_fast_path_takes_the_common_shape(text in common_email()) {
            prop_assert!(plain_email(&text), "{:?}", text);
            prop_assert_eq!(email_syntax_full(&text), Ok(()), "{:?}", text);
        }
    }

    #[test]
    fn email_is_rfc_5321_ascii_with_a_host_name_domain() {
        for bad in [
            "用户@example.com",
            "user@例子.广告",
            "josé@example.com",
            "a@b_c.de",
            "a@exa mple.com",
        ] {
            assert!(email_syntax(bad).is_err(), "{bad}");
        }
        for good in [
            "\"john doe\"@example.com",
            "\"a@b\"@example.com",
            "first.last+tag@sub.example-host.co",
        ] {
            assert_eq!(email_syntax(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn email_byte_classes_match_the_crate() {
        for b in 0..=u8::MAX {
            let one = char::from(b).to_string();
            let atext = b.is_ascii() && EmailAddress::is_valid_local_part(&one);
            let alnum = b.is_ascii() && EmailAddress::is_valid_domain(&one);
            assert_eq!(is_class(b, ATEXT), atext, "{b:#x}");
            assert_eq!(is_class(b, ALNUM), alnum, "{b:#x}");
        }
    }

    #[test]
    fn email_fast_path_limits_are_the_crate_limits() {
        let label63 = "d".repeat(63);
        let cases = [
            format!("{}@b.co", "l".repeat(64)),
            format!("{}@b.co", "l".repeat(65)),
            format!("a@{label63}.co"),
            format!("a@{}.co", "d".repeat(64)),
            // domains of 254 and 255 bytes
            format!("a@{label63}.{label63}.{label63}.{}", "d".repeat(62)),
            format!("a@{label63}.{label63}.{label63}.{label63}"),
            "a@b.c".to_owned(),
            "a@b".to_owned(),
            "a.b@c-d.e".to_owned(),
            "a@-b.c".to_owned(),
            "a@b-.c".to_owned(),
            "a..b@c.d".to_owned(),
            ".a@c.d".to_owned(),
            "a.@c.d".to_owned(),
            "a@b..c".to_owned(),
            "a@b@c.d".to_owned(),
            "@b.c".to_owned(),
        ];
        let taken: Vec<bool> = cases.iter().map(|t| plain_email(t)).collect();
        assert_eq!(
            taken,
            [
                true, false, true, false, true, false, true, false, true, false, false, false,
                false, false, false, false, false
            ]
        );
        for text in &cases {
            let full = email_syntax_full(text);
            if plain_email(text) {
                assert_eq!(full, Ok(()), "{text}");
            }
            assert_eq!(email_syntax(text), full, "{text}");
        }
    }

    /// JSON-ish text: values nested a few levels, keys from a small set (so duplicates happen),
    /// strings plain or escaped, lone surrogates and odd bytes now and then.
    fn json_value() -> impl Strategy<Value = String> {
        let string = prop_oneof![
            3 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            1 => "\"([a-zé😀 @.]|\\\\u00e9|\\\\ud83d\\\\ude00|\\\\ud800|\\\\udc00|\\\\n|\\\\\"|\\\\u12|\\\\x){0,6}\"",
            1 => Just("\"contact@example.com\"".to_owned()),
        ];
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?[0-9]{1,3}(\\.[0-9]{1,2})?([eE][+-]?[0-9]{1,3})?",
            string.clone(),
        ];
        let key = prop_oneof![
            select(
                &[
                    "notify",
                    "name",
                    "email",
                    "phones",
                    "comment",
                    "x",
                    "a/b~c",
                    "\\u006eotify"
                ][..]
            )
            .prop_map(|k| format!("\"{k}\"")),
            string,
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(","))),
                vec((key.clone(), inner), 0..7).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v)| format!("{k} : {v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn json_text() -> impl Strategy<Value = String> {
        (json_value(), odd_inserts()).prop_map(|(text, inserts)| insert_all(text, inserts))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn str_and_slice_readers_agree(text in json_text()) {
            for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
                let (by_str, by_slice) = builtin_by_both_readers(&text, unknown);
                prop_assert_eq!(&by_str, &by_slice, "{}", text);
                prop_assert_eq!(check_body(text.as_bytes(), unknown), by_slice, "{}", text);
                if unknown == UnknownFields::Reject {
                    if let Some(fast) = builtin_by_fast_reader(&text) {
                        prop_assert_eq!(fast, by_str, "{}", text);
                    }
                }
            }
        }
    }
}

// ----- path parameters -----

#[rustfmt::skip]
#[test]
fn path_params_table() {
    let max_plus_one = (i64::MAX as i128 + 1).to_string();
    let min_minus_one = (i64::MIN as i128 - 1).to_string();
    let min = i64::MIN.to_string();
    let max = i64::MAX.to_string();
    let good = ["1", "-1", "0", "-0", "007", min.as_str(), max.as_str(), "00000000000000000000000000001"];
    let bad = [
        "", "-", "+1", "1.0", "1e3", " 1", "1 ", "abc", "--1", "0x1", "1_000", "١", max_plus_one.as_str(), min_minus_one.as_str(),
        "99999999999999999999999999999",
    ];
    for id in good {
        assert_eq!(check_path_params(id, id), Ok(()), "{id:?}");
    }
    for id in bad {
        assert_eq!(
            found(check_path_params(id, "1")),
            want(&[(F::CompanyId, C::Integer, "companyId")]),
            "{id:?}"
        );
        assert_eq!(
            found(check_path_params("1", id)),
            want(&[(F::ContactId, C::Integer, "contactId")]),
            "{id:?}"
        );
    }
    let both = check_path_params("x", "y").unwrap_err();
    assert_eq!(both[0].location, Location::Path("companyId"));
    assert_eq!(both[1].location, Location::Path("contactId"));
}

// ----- headers -----

fn headers(name: &str, values: &[&[u8]]) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("x-other", HeaderValue::from_static("1"));
    for value in values {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    map
}

fn codes(result: Result<(), Vec<HeaderProblem>>, header: &str) -> Vec<&'static str> {
    match result {
        Ok(()) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| {
                assert_eq!(p.header, header);
                p.code
            })
            .collect(),
    }
}

#[test]
fn the_b64token_class_by_compares_is_the_table() {
    for b in 0..=255u8 {
        assert_eq!(
            b64token_char_by_compares(b),
            is_b64token_char(b),
            "{b:#04x}"
        );
    }
}

#[rustfmt::skip]
#[test]
fn authorization_table() {
    let t4096 = format!("Bearer {}", "A".repeat(4096));
    let t4097 = format!("Bearer {}", "A".repeat(4097));
    let t4096_pad = format!("Bearer {}==", "A".repeat(4094));
    let cases: &[(&[&[u8]], &[&str])] = &[
        (&[b"Bearer SECRETtoken"], &[]),
        (&[b"bearer SECRETtoken"], &[]),
        (&[b"BEARER SECRETtoken"], &[]),
        (&[b"bEaReR SECRETtoken"], &[]),
        (&[b"Bearer    SECRETtoken"], &[]),
        (&[b"Bearer aZ09-._~+/SECRET=="], &[]),
        (&[b"Bearer SECRET="], &[]),
        (&[b"Bearer e30.e30.SECRET"], &[]),
        (&[t4096.as_bytes()], &[]),
        (&[t4096_pad.as_bytes()], &[]),
        (&[], &["missing"]),
        (&[b"Bearer SECRETtoken", b"Bearer SECRETtoken"], &["repeated"]),
        (&[b"Bearer SECRETtoken", b"Bearer other"], &["repeated"]),
        (&[t4097.as_bytes()], &[]),
        (&[b""], &["malformed"]),
        (&[b"Basic SECRETtoken"], &["malformed"]),
        (&[b"Bearer"], &["malformed"]),
        (&[b"Bearer "], &["malformed"]),
        (&[b"Bearer    "], &["malformed"]),
        (&[b"Bearer\tSECRETtoken"], &["malformed"]),
        (&[b"Bearer \tSECRETtoken"], &["malformed"]),
        (&[b"BearerSECRETtoken"], &["malformed"]),
        (&[b"Bearer: SECRETtoken"], &["malformed"]),
        (&[b" Bearer SECRETtoken"], &["malformed"]),
        (&[b"Bearer SECRETtoken "], &["malformed"]),
        (&[b"Bearer SECRET token"], &["malformed"]),
        (&[b"Bearer SECRET=token"], &["malformed"]),
        (&[b"Bearer =SECRETtoken"], &["malformed"]),
        (&[b"Bearer =="], &["malformed"]),
        (&[b"Bearer SECRET$token"], &["malformed"]),
        (&[b"Bearer SECRET,token"], &["malformed"]),
        (&[b"Bearer \"SECRETtoken\""], &["malformed"]),
        (&[b"Bearer SECRET\xfftoken"], &["malformed"]),
        (&[b"Bearer SECRET\xc3\xa9token"], &["malformed"]),
        (&[b"B\xc3\xa9arer SECRETtoken"], &["malformed"]),
    ];
    for &(values, expected) in cases {
        let result = check_authorization(&headers("authorization", values));
        if let Err(problems) = &result {
            for p in problems {
                assert!(!p.detail.contains("SECRET"), "{p:?}");
                assert!(!p.detail.contains("AAAA"), "{p:?}");
            }
        }
        assert_eq!(codes(result, "Authorization"), expected, "{values:?}");
    }
}

#[rustfmt::skip]
#[test]
fn session_token_table() {
    let t4096 = "A".repeat(4096);
    let t4097 = "A".repeat(4097);
    let cases: &[(&[&[u8]], &[&str])] = &[
        (&[b"SECRETtoken"], &[]),
        (&[b"e30.e30.SECRET-_"], &[]),
        (&[b"!SECRET~"], &[]),
        (&[b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~SECRET"], &[]),
        (&[t4096.as_bytes()], &[]),
        (&[], &["missing"]),
        (&[b"SECRETtoken", b"SECRETtoken"], &["repeated"]),
        (&[b""], &["malformed"]),
        (&[t4097.as_bytes()], &["too_long"]),
        (&[b"SECRET token"], &["malformed"]),
        (&[b"SECRET\ttoken"], &["malformed"]),
        (&[b"SECRET\xfftoken"], &["malformed"]),
        (&[b"SECRET\xc3\xa9"], &["malformed"]),
    ];
    for &(values, expected) in cases {
        let result = check_session_token(&headers("x-session-token", values));
        if let Err(problems) = &result {
            for p in problems {
                assert!(!p.detail.contains("SECRET"), "{p:?}");
                assert!(!p.detail.contains("AAAA"), "{p:?}");
            }
        }
        assert_eq!(codes(result, "X-Session-Token"), expected, "{values:?}");
    }
}

#[rustfmt::skip]
#[test]
fn content_type_table() {
    let cases: &[(&[&[u8]], &[&str])] = &[
        (&[b"application/json"], &[]),
        (&[b"Application/JSON"], &[]),
        (&[b"APPLICATION/JSON"], &[]),
        (&[b"application/json; charset=utf-8"], &[]),
        (&[b"application/json;charset=UTF-8"], &[]),
        (&[b"application/json;charset=\"UTF-8\""], &[]),
        (&[b"application/json; charset=\"utf\\-8\""], &[]),
        (&[b"application/json ; CHARSET=Utf-8 ;\tfoo=\"a;b \\\" c\""], &[]),
        (&[b"application/json; foo=bar"], &[]),
        (&[b"application/json;"], &[]),
        (&[b"application/json; ;"], &[]),
        (&[b" application/json "], &[]),
        (&[b"application/json", b"application/json"], &[]),
        (&[], &["missing"]),
        (&[b"application/json", b"application/json; charset=utf-8"], &["repeated"]),
        (&[b"application/json; charset=latin1"], &["unsupported"]),
        (&[b"application/json; charset=\"latin1\""], &["unsupported"]),
        (&[b"application/json; charset=utf8"], &["unsupported"]),
        (&[b"application/json; charset=utf-8; charset=latin1"], &["unsupported"]),
        (&[b"text/plain"], &["unsupported"]),
        (&[b"text/json"], &["unsupported"]),
        (&[b"application/jsonx"], &["unsupported"]),
        (&[b"application/json-patch+json"], &["unsupported"]),
        (&[b"application/problem+json"], &["unsupported"]),
        (&[b"application/x-www-form-urlencoded"], &["unsupported"]),
        (&[b""], &["malformed"]),
        (&[b"application"], &["malformed"]),
        (&[b"application/"], &["malformed"]),
        (&[b"/json"], &["malformed"]),
        (&[b"application / json"], &["malformed"]),
        (&[b"application/json charset=utf-8"], &["malformed"]),
        (&[b"application/json; charset"], &["malformed"]),
        (&[b"application/json; charset="], &["malformed"]),
        (&[b"application/json; charset = utf-8"], &["malformed"]),
        (&[b"application/json; =utf-8"], &["malformed"]),
        (&[b"application/json; charset=\"utf-8"], &["malformed"]),
        (&[b"application/json; charset=\"utf-8\"x"], &["malformed"]),
        (&[b"application/json; charset=utf-8,"], &["malformed"]),
        (&[b"application/json\xff"], &["malformed"]),
        (&[b"application/j\xc3\xa9son"], &["malformed"]),
    ];
    for &(values, expected) in cases {
        let result = check_content_type(&headers("content-type", values));
        assert_eq!(codes(result, "Content-Type"), expected, "{values:?}");
    }
}

#[test]
fn content_type_echo_is_capped() {
    let long = format!("text/{}", "p".repeat(1000));
    let problems = check_content_type(&headers("content-type", &[long.as_bytes()])).unwrap_err();
    assert_eq!(problems[0].code, "unsupported");
    assert!(problems[0].detail.len() < 200, "{}", problems[0].detail);
    assert!(problems[0].detail.contains("text/ppp"));
}

proptest::proptest! {
    #[test]
    fn visible_ascii_check_agrees_with_the_plain_one(
        mut value in proptest::collection::vec(0x21u8..=0x7e, 0..100),
        odd in proptest::option::of((proptest::num::usize::ANY, proptest::prop_oneof![0u8..=0x20, 0x7fu8..=0xff])),
    ) {
        if let Some((at, b)) = odd {
            value.insert(at % (value.len() + 1), b);
        }
        proptest::prop_assert_eq!(
            all_visible_ascii(&value),
            value.iter().all(|b| (0x21..=0x7e).contains(b))
        );
    }
}

// ----- nesting -----

#[test]
fn nesting_of_exactly_128_passes_and_129_is_a_syntax_error() {
    use super::engine::MAX_NESTING;
    // The body object is level 1: `levels - 1` arrays, or objects, inside it.
    let arrays = |levels: usize| {
        format!(
            r#"{{"notify":true,"x":{}{}}}"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    };
    let objects = |levels: usize| {
        format!(
            r#"{{"notify":true,"x":{}1{}}}"#,
            r#"{"a":"#.repeat(levels - 1),
            "}".repeat(levels - 1)
        )
    };
    for (name, text) in [
        ("arrays", &arrays as &dyn Fn(usize) -> String),
        ("objects", &objects),
    ] {
        let at = text(MAX_NESTING);
        assert_eq!(
            found(check_body(at.as_bytes(), UnknownFields::Allow)),
            want(&[]),
            "{name} at {MAX_NESTING}"
        );
        let beyond = text(MAX_NESTING + 1);
        assert_eq!(
            found(check_body(beyond.as_bytes(), UnknownFields::Allow)),
            want(&[(F::Document, C::Syntax, "")]),
            "{name} beyond {MAX_NESTING}"
        );
        // Under a typed property the walk is schema-directed (`phones` is an array of strings).
        let typed = format!(
            r#"{{"notify":true,"phones":[{}{}]}}"#,
            "[".repeat(MAX_NESTING - 1),
            "]".repeat(MAX_NESTING - 1)
        );
        assert_eq!(
            found(check_body(typed.as_bytes(), UnknownFields::Allow))
                .iter()
                .filter(|(_, code, _)| *code == C::Syntax)
                .count(),
            1,
            "{name}: phones nested beyond {MAX_NESTING}"
        );
    }
    // A top-level array counts from 1 as well.
    let top = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    assert_eq!(
        found(check_body(
            top(MAX_NESTING).as_bytes(),
            UnknownFields::Allow
        )),
        want(&[(F::Document, C::Type, "")])
    );
    assert_eq!(
        found(check_body(
            top(MAX_NESTING + 1).as_bytes(),
            UnknownFields::Allow
        )),
        want(&[(F::Document, C::Syntax, "")])
    );
}

// ----- the fast reader -----

#[test]
fn the_fast_reader_takes_the_usual_bodies_and_agrees_with_serde_json() {
    let example = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/shared/contract/examples/update-contact.request.json"
    ));
    let taken = [
        example,
        r#"{"notify":"yes"}"#,
        r#" { "notify" : true , "phones" : [ ] } "#,
        r#"{"notify":true,"phones":["1","2","3","4","5","6"],"name":7}"#,
        r#"{"notify":true,"x":{"a":[0,{"b":null}],"a":false},"notify":1}"#,
        r#"{"notify":null,"email":"a@b","comment":"é😀"}"#,
        "{}",
        "[]",
        "123456789012345678",
        "\"text\"",
    ];
    for text in taken {
        let fast = builtin_by_fast_reader(text).unwrap_or_else(|| panic!("not taken: {text}"));
        let (by_str, _) = builtin_by_both_readers(text, UnknownFields::Reject);
        assert_eq!(fast, by_str, "{text}");
    }
    let left_to_serde = [
        r#"{"notify":"y\u00e9s"}"#,
        r#"{"notify":"a\"b"}"#,
        "{\"notify\":\"\t\"}",
        r#"{"notify":-1}"#,
        r#"{"notify":1.0}"#,
        r#"{"notify":1e3}"#,
        r#"{"notify":01}"#,
        "1234567890123456789",
        r#"{"notify":true,}"#,
        "[1,]",
        "[1 2]",
        r#"{"notify" true}"#,
        r#"{notify:true}"#,
        r#"{"notify":tru}"#,
        r#"{"notify":truex}"#,
        "true false",
        "",
        "{",
        r#"{"a":"#,
        r#"{"a"#,
    ];
    for text in left_to_serde {
        assert!(builtin_by_fast_reader(text).is_none(), "{text}");
    }
}
