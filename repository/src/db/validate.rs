//! Input checks shared by the repositories. They run before any statement, so a bad input
//! writes nothing and the error names the field.

use crate::error::{Error, Result};

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
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
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

/// Text that reaches SQL unchanged (a lookup key, a free-form message): refused when it holds
/// U+0000, which Postgres cannot store in `text` and SQLite would, so both engines answer
/// alike.
pub(crate) fn no_nul<'v>(field: &str, value: &'v str) -> Result<&'v str> {
    if value.contains('\0') {
        return Err(Error::invalid(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    Ok(value)
}

/// A free-form message: trimmed, cut to `max` characters, and refused when it holds U+0000.
pub(crate) fn message(field: &str, value: &str, max: usize) -> Result<String> {
    Ok(no_nul(field, value)?.trim().chars().take(max).collect())
}

/// A JSON value stored as `jsonb` (Postgres) or text (SQLite): refused when any string or
/// object key, at any depth, holds U+0000, which `jsonb` cannot store. The error names the
/// path (`details.tags[2]`).
pub(crate) fn json(field: &str, value: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    let refuse = |path: String| {
        Err(Error::invalid(
            &path,
            "must not contain the NUL character (U+0000) in a string or key",
        ))
    };
    match value {
        Value::String(s) if s.contains('\0') => refuse(field.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| json(&format!("{field}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return refuse(format!("{field} (a key)"));
            }
            json(&format!("{field}.{k}"), v)
        }),
        _ => Ok(()),
    }
}

/// A caller's timestamp as stored: in UTC, at microsecond precision (what Postgres keeps, so
/// both engines read back the value written), and within years 1 to 9999 (Postgres refuses
/// some earlier years, and SQLite compares timestamps as text, which needs four-digit years).
pub(crate) fn timestamp(
    field: &str,
    value: chrono::DateTime<chrono::FixedOffset>,
) -> Result<chrono::DateTime<chrono::FixedOffset>> {
    use chrono::{Datelike, SubsecRound, Utc};
    let utc = value.with_timezone(&Utc);
    if !(1..=9999).contains(&utc.year()) {
        return Err(Error::invalid(
            field,
            "must be between the years 1 and 9999",
        ));
    }
    Ok(utc.trunc_subsecs(6).fixed_offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nul_is_named_by_its_path() {
        let field = |v: serde_json::Value| match json("findings[3].details", &v) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(serde_json::json!({"a": "x\u{0}"})),
            "findings[3].details.a"
        );
        assert_eq!(
            field(serde_json::json!({"a": [1, {"b\u{0}": 2}]})),
            "findings[3].details.a[1] (a key)"
        );
        assert_eq!(field(serde_json::json!("\u{0}")), "findings[3].details");
        assert!(json("d", &serde_json::json!({"a": ["ok", 1.5, null]})).is_ok());
    }
}
