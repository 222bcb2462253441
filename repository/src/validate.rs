//! Input checks shared by the repositories. They run before any statement, so a bad input
//! writes nothing and the error names the field.

use crate::{Error, Result};

/// `value` trimmed, with its length in characters between `min` and `max`.
pub(crate) fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String> {
    let value = value.trim();
    let len = value.chars().count();
    if len < min || len > max {
        let reason = if min > 0 && len == 0 {
            "is required".to_owned()
        } else {
            format!("must be {min} to {max} characters (got {len})")
        };
        return Err(Error::invalid(field, reason));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// An optional text field: `None` and blank are both "absent".
pub(crate) fn optional_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => text(field, v, 1, max).map(Some),
    }
}

/// A URL slug: lower-case letters, digits and single hyphens, 1 to 100 characters.
pub(crate) fn slug(field: &str, value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && !value.starts_with('-')
        && !value.ends_with('-')
        && !value.contains("--")
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            field,
            "must be 1-100 lower-case letters, digits and single hyphens, e.g. `web-api`",
        ))
    }
}

/// An email address folded to lower case (the unique index is case-insensitive through this).
pub(crate) fn email(field: &str, value: &str) -> Result<String> {
    let value = value.trim().to_lowercase();
    let well_formed = value.len() <= 320
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !value.chars().any(char::is_whitespace);
    if well_formed {
        Ok(value)
    } else {
        Err(Error::invalid(field, "is not an email address"))
    }
}

/// A git commit id: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits.
pub(crate) fn commit_sha(field: &str, value: &str) -> Result<String> {
    let value = value.trim().to_ascii_lowercase();
    if matches!(value.len(), 40 | 64) && value.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(value)
    } else {
        Err(Error::invalid(field, "must be 40 or 64 hex digits"))
    }
}
