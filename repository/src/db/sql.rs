//! SQL helpers every repository uses: the stored clock, raw statements with shared
//! placeholders, array parameters and the backend test. Imported by the repositories, it
//! imports none of them.

use chrono::{DateTime, FixedOffset, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

/// The current time as stored: UTC, microsecond precision (what Postgres keeps), so a value
/// read back equals the value written on both engines.
pub(crate) fn now() -> DateTime<FixedOffset> {
    Utc::now().trunc_subsecs(6).fixed_offset()
}

/// A raw statement for `db`'s backend. Statements use `$1`-style placeholders, so most SQL
/// text is shared by both engines; on SQLite they become positional `?`s ([`positional`]).
pub(crate) fn statement(
    db: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    let backend = db.get_database_backend();
    let values: Vec<Value> = values.into_iter().collect();
    if backend == DbBackend::Sqlite
        && let Some((sql, values)) = positional(sql, &values)
    {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    Statement::from_sql_and_values(backend, sql, values)
}

/// SQLite's most bound parameters per statement (`SQLITE_MAX_VARIABLE_NUMBER`).
const SQLITE_MAX_VARIABLES: usize = 32_766;

/// `sql` with each `$n` outside quotes and comments replaced by `?`, and the values in the
/// order the `?`s take them (a value used twice is bound twice). SQLite keeps `$n` as a named
/// parameter and finds a name by walking the list of all of them, when it parses the
/// statement and again when sqlx asks each parameter's name to bind it: quadratic in the
/// parameters, three quarters of the CPU of a 1,000-row ingest chunk (15,000 parameters).
/// Anonymous `?`s have no names to walk. `None` (keep `$n`) when there is nothing to
/// replace, a number has no value, or the expanded list would pass SQLite's limit.
fn positional(sql: &str, values: &[Value]) -> Option<(String, Vec<Value>)> {
    let mut bound = Vec::new();
    let out = replace_placeholders(sql, |n, out| {
        bound.push(values.get(n.checked_sub(1)?)?.clone());
        out.push('?');
        Some(())
    })?;
    if bound.is_empty() || bound.len() > SQLITE_MAX_VARIABLES {
        return None;
    }
    Some((out, bound))
}

/// `sql` with each `$n` placeholder outside quotes and comments replaced by what `write` puts
/// in its place, given `n`. `None` when `write` refuses one, or a number does not parse.
pub(crate) fn replace_placeholders(
    sql: &str,
    mut write: impl FnMut(usize, &mut String) -> Option<()>,
) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = bytes[i + 1..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(bytes.len(), |n| i + 1 + n);
                let n: usize = sql[i + 1..end].parse().ok()?;
                out.push_str(&sql[copied..i]);
                write(n, &mut out)?;
                (i, copied) = (end, end);
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// `$first, $first+1, …`: `count` numbered placeholders, for an `IN (…)` list or a row.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One column of a chunk of rows as a Postgres array parameter, for `unnest`.
pub(crate) fn array<T, V>(rows: &[T], column: impl Fn(&T) -> V) -> Value
where
    Vec<V>: Into<Value>,
{
    rows.iter().map(column).collect::<Vec<_>>().into()
}

/// `bytes` as lowercase hex: bytea's text form after `\x`, and fingerprints as SARIF shows them.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// True on Postgres, where some statements have a better form (SKIP LOCKED, ...).
pub(crate) fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_positional_in_the_order_they_appear() {
        let values: Vec<Value> = vec![1i32.into(), "b".into(), 3i32.into()];
        let (sql, bound) = positional(
            "SELECT $3, '$1 stays', \"$2\" -- $1 too\n, $1 /* $2 */ WHERE x = $2 OR y = $1",
            &values,
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT ?, '$1 stays', \"$2\" -- $1 too\n, ? /* $2 */ WHERE x = ? OR y = ?"
        );
        assert_eq!(
            bound,
            vec![
                values[2].clone(),
                values[0].clone(),
                values[1].clone(),
                values[0].clone()
            ]
        );
    }

    #[test]
    fn a_statement_that_cannot_be_rewritten_is_kept() {
        let one: Vec<Value> = vec![1i32.into()];
        assert!(positional("SELECT 1", &one).is_none());
        assert!(positional("SELECT $2", &one).is_none());
        assert!(positional("SELECT $0", &one).is_none());
        let many = vec![Value::from(1i32); 2];
        let sql = vec!["$1, $2"; SQLITE_MAX_VARIABLES / 2 + 1].join(", ");
        assert!(positional(&sql, &many).is_none());
        assert!(positional("SELECT $1, 'unterminated $1", &one).is_some());
    }
}
