//! Violations and header problems: what a check finds, with the closed label sets of gateway.md §3.

use std::collections::HashSet;

/// What to do with body members the contract does not name (`validation.unknown_fields`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    #[default]
    Reject,
    Allow,
}

/// What to do with query parameters the operation does not declare (`validation.unknown_query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownQuery {
    #[default]
    Allow,
    Reject,
}

/// Metric label `field` (gateway.md §3): a body's top-level property or a parameter as the document
/// spells it, `document` or `unknown`. A copyable interned name, so a violation stays cheap to make
/// and the label set is closed by the loaded document, never by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Field(&'static str);

// The names of the built-in document's labels keep the spelling of the enum they replace.
#[allow(non_upper_case_globals)]
impl Field {
    pub const Notify: Field = Field("notify");
    pub const Name: Field = Field("name");
    pub const Email: Field = Field("email");
    pub const Phones: Field = Field("phones");
    pub const Comment: Field = Field("comment");
    pub const CompanyId: Field = Field("companyId");
    pub const ContactId: Field = Field("contactId");
    pub const Document: Field = Field("document");
    pub const Unknown: Field = Field("unknown");

    /// The labels of the built-in document (`Api::field_labels` gives those of any document).
    #[cfg(test)] // Metrics take the labels from the loaded document, never from this list.
    pub(crate) const ALL: [Field; 9] = [
        Field::Notify,
        Field::Name,
        Field::Email,
        Field::Phones,
        Field::Comment,
        Field::CompanyId,
        Field::ContactId,
        Field::Document,
        Field::Unknown,
    ];

    /// The label of a property or parameter named in a document.
    pub(crate) fn named(name: &str) -> Field {
        Field(intern(name))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// One shared copy of each name a loaded document uses as a label, parameter or header. Names are
/// few and come only from documents the operator loads (never from a request), so keeping them for
/// the life of the process bounds the memory by the distinct names ever loaded, and lets violations,
/// locations and labels stay `Copy` across reloads.
pub(crate) fn intern(name: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    // A poisoned lock only means another thread panicked mid-insert; the set is still valid.
    let mut names = names
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Metric label `code` (gateway.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    Required,
    Type,
    MaxLength,
    MinLength,
    MaxItems,
    MinItems,
    UniqueItems,
    Format,
    Integer,
    Pattern,
    Enum,
    Const,
    Minimum,
    Maximum,
    MultipleOf,
    MinProperties,
    MaxProperties,
    OneOf,
    AnyOf,
    Not,
    ReadOnly,
    UnknownField,
    DuplicateKey,
    Syntax,
}

impl Code {
    pub(crate) const ALL: [Code; 24] = [
        Code::Required,
        Code::Type,
        Code::MaxLength,
        Code::MinLength,
        Code::MaxItems,
        Code::MinItems,
        Code::UniqueItems,
        Code::Format,
        Code::Integer,
        Code::Pattern,
        Code::Enum,
        Code::Const,
        Code::Minimum,
        Code::Maximum,
        Code::MultipleOf,
        Code::MinProperties,
        Code::MaxProperties,
        Code::OneOf,
        Code::AnyOf,
        Code::Not,
        Code::ReadOnly,
        Code::UnknownField,
        Code::DuplicateKey,
        Code::Syntax,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Required => "required",
            Code::Type => "type",
            Code::MaxLength => "max_length",
            Code::MinLength => "min_length",
            Code::MaxItems => "max_items",
            Code::MinItems => "min_items",
            Code::UniqueItems => "unique_items",
            Code::Format => "format",
            Code::Integer => "integer",
            Code::Pattern => "pattern",
            Code::Enum => "enum",
            Code::Const => "const",
            Code::Minimum => "minimum",
            Code::Maximum => "maximum",
            Code::MultipleOf => "multiple_of",
            Code::MinProperties => "min_properties",
            Code::MaxProperties => "max_properties",
            Code::OneOf => "one_of",
            Code::AnyOf => "any_of",
            Code::Not => "not",
            Code::ReadOnly => "read_only",
            Code::UnknownField => "unknown_field",
            Code::DuplicateKey => "duplicate_key",
            Code::Syntax => "syntax",
        }
    }
}

/// Where a violation is: an RFC 6901 pointer into the body (no leading `#`), a path or query
/// parameter, or a header. Path and query both render as a problem's `parameter`; they are kept
/// apart for the `reason` label (`path`, `query`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Pointer(String),
    Path(&'static str),
    Query(&'static str),
    Header(&'static str),
}

/// One contract violation of the path or body (stage 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: Field,
    pub code: Code,
    pub location: Location,
    pub detail: String,
}

/// Most violations one answer lists in full. The rest are still counted, by field and code, for
/// the metrics and the answer's `detail`: a small body cannot make a large answer.
pub(crate) const MAX_LISTED: usize = 100;

/// Every violation of one request (stage 5), in order: the first `MAX_LISTED` in full, the rest as
/// counts. Reads as the slice of the listed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    listed: Vec<Violation>,
    unlisted: Vec<(Field, Code, u64)>,
}

impl Violations {
    pub(crate) fn push(&mut self, v: Violation) {
        let Violation {
            field,
            code,
            location,
            detail,
        } = v;
        self.push_with(field, code, || (location, detail));
    }

    /// Like `push`, but the location and detail are built only if the violation is listed.
    pub(crate) fn push_with(
        &mut self,
        field: Field,
        code: Code,
        build: impl FnOnce() -> (Location, String),
    ) {
        if self.listed.len() < MAX_LISTED {
            let (location, detail) = build();
            self.listed.push(Violation {
                field,
                code,
                location,
                detail,
            });
        } else {
            self.count(field, code, 1);
        }
    }

    /// Puts `v` at `at` among the listed; a violation pushed past the limit becomes a count.
    pub(crate) fn insert(&mut self, at: usize, v: Violation) {
        self.listed.insert(at.min(self.listed.len()), v);
        if self.listed.len() > MAX_LISTED {
            if let Some(last) = self.listed.pop() {
                self.count(last.field, last.code, 1);
            }
        }
    }

    fn count(&mut self, field: Field, code: Code, n: u64) {
        match self
            .unlisted
            .iter_mut()
            .find(|(f, c, _)| *f == field && *c == code)
        {
            Some((_, _, count)) => *count += n,
            None => self.unlisted.push((field, code, n)),
        }
    }

    /// `other`'s violations after these.
    pub(crate) fn append(&mut self, other: Violations) {
        for v in other.listed {
            self.push(v);
        }
        for (field, code, n) in other.unlisted {
            self.count(field, code, n);
        }
    }

    /// How many there are, listed or not.
    pub fn total(&self) -> u64 {
        self.listed.len() as u64 + self.unlisted()
    }

    /// How many are only counted.
    pub fn unlisted(&self) -> u64 {
        self.unlisted.iter().map(|(_, _, n)| n).sum()
    }

    /// `(field, code, how many)` over all of them, for the metrics.
    pub fn counts(&self) -> impl Iterator<Item = (Field, Code, u64)> + '_ {
        self.listed
            .iter()
            .map(|v| (v.field, v.code, 1))
            .chain(self.unlisted.iter().copied())
    }
}

impl std::ops::Deref for Violations {
    type Target = [Violation];
    fn deref(&self) -> &[Violation] {
        &self.listed
    }
}

impl From<Vec<Violation>> for Violations {
    fn from(list: Vec<Violation>) -> Violations {
        let mut out = Violations::default();
        for v in list {
            out.push(v);
        }
        out
    }
}

impl IntoIterator for Violations {
    type Item = Violation;
    type IntoIter = std::vec::IntoIter<Violation>;
    /// The listed ones.
    fn into_iter(self) -> Self::IntoIter {
        self.listed.into_iter()
    }
}

/// One header problem (stages 1-3). `code` is a short snake_case word: missing, repeated, malformed, too_long, unsupported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderProblem {
    pub header: &'static str,
    pub code: &'static str,
    pub detail: String,
}
