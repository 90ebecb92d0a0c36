// Placeholder until the validator lands (types only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    #[default]
    Reject,
    Allow,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Notify,
    Name,
    Email,
    Phones,
    Comment,
    CompanyId,
    ContactId,
    Document,
    Unknown,
}
impl Field {
    pub const ALL: [Field; 9] = [
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
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Notify => "notify",
            Field::Name => "name",
            Field::Email => "email",
            Field::Phones => "phones",
            Field::Comment => "comment",
            Field::CompanyId => "companyId",
            Field::ContactId => "contactId",
            Field::Document => "document",
            Field::Unknown => "unknown",
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Required,
    Type,
    MaxLength,
    MaxItems,
    Format,
    Integer,
    UnknownField,
    DuplicateKey,
    Syntax,
}
impl Code {
    pub const ALL: [Code; 9] = [
        Code::Required,
        Code::Type,
        Code::MaxLength,
        Code::MaxItems,
        Code::Format,
        Code::Integer,
        Code::UnknownField,
        Code::DuplicateKey,
        Code::Syntax,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Required => "required",
            Code::Type => "type",
            Code::MaxLength => "max_length",
            Code::MaxItems => "max_items",
            Code::Format => "format",
            Code::Integer => "integer",
            Code::UnknownField => "unknown_field",
            Code::DuplicateKey => "duplicate_key",
            Code::Syntax => "syntax",
        }
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Pointer(String),
    Parameter(&'static str),
    Header(&'static str),
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: Field,
    pub code: Code,
    pub location: Location,
    pub detail: String,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderProblem {
    pub header: &'static str,
    pub code: &'static str,
    pub detail: String,
}
