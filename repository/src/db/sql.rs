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

/// A raw statement for `db`'s backend. Statements use `$1`-style placeholders, which sqlx
/// accepts for SQLite as well, so most SQL text is shared by both engines.
pub(crate) fn statement(
    db: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    Statement::from_sql_and_values(db.get_database_backend(), sql, values)
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

/// True on Postgres, where some statements have a better form (SKIP LOCKED, ...).
pub(crate) fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}
