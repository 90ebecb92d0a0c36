//! Stage 5: path, query and header parameters.

use super::*;

// ---------------------------------------------------------------------------------------------
// Stage 5: path parameters.

/// Stage 5 (path): `companyId` and `contactId` must be plain decimal integers within i64.
///
/// Accepted: an optional `-` then one or more ASCII digits whose value fits in i64. Leading zeros
/// (`007`) and `-0` are plain decimal integers with a value in range, so they pass (the schema
/// constrains the value, not its spelling). Refused: `+1`, spaces, decimals, exponents, empty.
pub fn check_path_params(company_id: &str, contact_id: &str) -> Result<(), Violations> {
    let mut violations = Violations::default();
    for (value, field, name) in [
        (company_id, Field::CompanyId, "companyId"),
        (contact_id, Field::ContactId, "contactId"),
    ] {
        if !is_decimal_i64(value) {
            violations.push(Violation {
                field,
                code: Code::Integer,
                location: Location::Parameter(name),
                detail: format!(
                    "{name} must be a decimal integer from {} to {}",
                    i64::MIN,
                    i64::MAX
                ),
            });
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

pub(crate) fn is_decimal_i64(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    // `str::parse` alone would also take a leading `+`.
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && value.parse::<i64>().is_ok()
}
