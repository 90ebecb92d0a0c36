//! Property tests of the body contract: bodies from the schema's valid space pass, and a single
//! mutation that breaks one rule gives exactly that rule's violation.

use companies_gateway::contract::{check_body, Code, Field, Location, UnknownFields, Violation};
use proptest::collection::vec;
use proptest::prelude::*;

/// Whitespace put between tokens.
const WS: [&str; 6] = ["", " ", "\n", "\t", "\r\n", "  \n\t "];
const KNOWN: [&str; 5] = ["notify", "name", "email", "phones", "comment"];

/// A body as members (key, JSON text of the value) plus the whitespace to put between tokens.
#[derive(Debug, Clone)]
struct Body {
    members: Vec<(String, String)>,
    ws: Vec<usize>,
}

impl Body {
    fn render(&self) -> String {
        let mut ws = self.ws.iter().cycle().map(|&i| WS[i % WS.len()]);
        let mut next = || ws.next().unwrap_or("");
        let mut out = String::from(next());
        out.push('{');
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push_str(next());
                out.push(',');
            }
            out.push_str(next());
            out.push_str(&plain(key));
            out.push_str(next());
            out.push(':');
            out.push_str(next());
            out.push_str(value);
        }
        out.push_str(next());
        out.push('}');
        out.push_str(next());
        out
    }

    fn set(&mut self, key: &str, value: String) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some(member) => member.1 = value,
            None => self.members.push((key.to_owned(), value)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.members.retain(|(k, _)| k != key);
    }
}

/// JSON text of a string as serde_json writes it (escapes only what must be).
fn plain(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// JSON text of a string with every non-ASCII or special character as `\uXXXX` (surrogate pairs
/// above the BMP).
fn escaped(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == ' ' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.push('"');
    out
}

/// Arbitrary Unicode scalar values, `min..=max` of them.
fn chars(min: usize, max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), min..=max).prop_map(String::from_iter)
}

/// The JSON text of a string of `min..=max` characters, written either way.
fn string_value(min: usize, max: usize) -> impl Strategy<Value = String> {
    (chars(min, max), any::<bool>()).prop_map(|(s, all)| if all { escaped(&s) } else { plain(&s) })
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn local_part() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-zA-Z0-9_+-]{1,10}){0,2}"
}

/// A plain addr-spec with a dotted domain.
fn email() -> impl Strategy<Value = String> {
    (local_part(), vec(label(), 2..=4))
        .prop_map(|(local, labels)| format!("{local}@{}", labels.join(".")))
}

fn array(items: Vec<String>) -> String {
    format!("[{}]", items.join(" , "))
}

fn valid_body() -> impl Strategy<Value = Body> {
    (
        any::<bool>(),
        proptest::option::of(string_value(0, 250)),
        proptest::option::of(prop_oneof![
            email().prop_map(|e| plain(&e)),
            Just("null".to_owned())
        ]),
        proptest::option::of(vec(string_value(0, 50), 0..=5).prop_map(array)),
        proptest::option::of(prop_oneof![string_value(0, 2500), Just("null".to_owned())]),
        vec(0..WS.len(), 0..24),
    )
        .prop_flat_map(|(notify, name, email, phones, comment, ws)| {
            let mut members = vec![("notify".to_owned(), notify.to_string())];
            for (key, value) in [
                ("name", name),
                ("email", email),
                ("phones", phones),
                ("comment", comment),
            ] {
                if let Some(value) = value {
                    members.push((key.to_owned(), value));
                }
            }
            (Just(members).prop_shuffle(), Just(ws))
        })
        .prop_map(|(members, ws)| Body { members, ws })
}

/// A change that breaks exactly one rule.
#[derive(Debug, Clone)]
enum Mutation {
    LongName(String),
    SixPhones(Vec<String>),
    LongPhone(Vec<String>, usize, String),
    LongComment(String),
    DotlessEmail(String),
    NoNotify,
    NotifyString,
    Unknown(String, String),
    Duplicate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        string_value(251, 251).prop_map(Mutation::LongName),
        vec(string_value(0, 50), 6..=6).prop_map(Mutation::SixPhones),
        (
            vec(string_value(0, 50), 0..=4),
            any::<prop::sample::Index>(),
            string_value(51, 51)
        )
            .prop_map(|(items, at, long)| {
                let at = at.index(items.len() + 1);
                Mutation::LongPhone(items, at, long)
            }),
        string_value(2501, 2501).prop_map(Mutation::LongComment),
        (local_part(), label())
            .prop_map(|(local, host)| Mutation::DotlessEmail(format!("{local}@{host}"))),
        Just(Mutation::NoNotify),
        Just(Mutation::NotifyString),
        (
            "[a-zA-Z0-9_~/.é-]{0,12}",
            prop_oneof![
                Just("1".to_owned()),
                Just("null".to_owned()),
                string_value(0, 20)
            ]
        )
            .prop_filter("not a known member", |(key, _)| !KNOWN
                .contains(&key.as_str()))
            .prop_map(|(key, value)| Mutation::Unknown(key, value)),
        any::<usize>().prop_map(Mutation::Duplicate),
    ]
}

/// RFC 6901 pointer to a top-level member.
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// Applies the mutation; returns the one violation expected as (field, code, pointer).
fn apply(body: &mut Body, mutation: &Mutation) -> (Field, Code, String) {
    match mutation {
        Mutation::LongName(value) => {
            body.set("name", value.clone());
            (Field::Name, Code::MaxLength, "/name".into())
        }
        Mutation::SixPhones(items) => {
            body.set("phones", array(items.clone()));
            (Field::Phones, Code::MaxItems, "/phones".into())
        }
        Mutation::LongPhone(items, at, long) => {
            let mut items = items.clone();
            items.insert(*at, long.clone());
            body.set("phones", array(items));
            (Field::Phones, Code::MaxLength, format!("/phones/{at}"))
        }
        Mutation::LongComment(value) => {
            body.set("comment", value.clone());
            (Field::Comment, Code::MaxLength, "/comment".into())
        }
        Mutation::DotlessEmail(email) => {
            body.set("email", plain(email));
            (Field::Email, Code::Format, "/email".into())
        }
        Mutation::NoNotify => {
            body.remove("notify");
            (Field::Notify, Code::Required, "/notify".into())
        }
        Mutation::NotifyString => {
            body.set("notify", "\"true\"".into());
            (Field::Notify, Code::Type, "/notify".into())
        }
        Mutation::Unknown(key, value) => {
            body.members.push((key.clone(), value.clone()));
            (Field::Unknown, Code::UnknownField, pointer(key))
        }
        Mutation::Duplicate(which) => {
            let member = body.members[which % body.members.len()].clone();
            body.members.push(member);
            (Field::Document, Code::DuplicateKey, String::new())
        }
    }
}

fn summary(violations: &[Violation]) -> Vec<(Field, Code, String)> {
    violations
        .iter()
        .map(|v| match &v.location {
            Location::Pointer(p) => (v.field, v.code, p.clone()),
            other => panic!("a body violation must have a pointer: {other:?}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_bodies_pass(body in valid_body()) {
        let text = body.render();
        prop_assert_eq!(check_body(text.as_bytes(), UnknownFields::Reject), Ok(()), "{}", text);
        prop_assert_eq!(check_body(text.as_bytes(), UnknownFields::Allow), Ok(()), "{}", text);
    }

    #[test]
    fn one_mutation_gives_its_violation(mut body in valid_body(), mutation in mutation()) {
        let expected = apply(&mut body, &mutation);
        let text = body.render();
        let result = check_body(text.as_bytes(), UnknownFields::Reject);
        let violations = match result {
            Ok(()) => return Err(TestCaseError::fail(format!("accepted: {text}"))),
            Err(violations) => violations,
        };
        prop_assert_eq!(summary(&violations), vec![expected.clone()], "{}", text);
        // With unknown fields allowed, only that mutation passes.
        let allowed = check_body(text.as_bytes(), UnknownFields::Allow);
        if expected.1 == Code::UnknownField {
            prop_assert_eq!(allowed, Ok(()));
        } else {
            prop_assert_eq!(summary(&allowed.unwrap_err()), vec![expected]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for unknown in [UnknownFields::Reject, UnknownFields::Allow] {
            if let Err(violations) = check_body(&bytes, unknown) {
                prop_assert!(!violations.is_empty());
            }
        }
    }
}
