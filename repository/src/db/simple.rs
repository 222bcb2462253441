//! Statements behind a transaction-mode pooler (`VEGA_DB_POOLER=transaction`): one simple
//! query each, with the values written into the SQL as typed literals.
//!
//! A transaction-mode pooler may hand each transaction another server connection, so nothing
//! prepared may outlive a transaction, and PgBouncer before 1.21 tracks no prepared
//! statements. With the extended protocol that leaves an unnamed statement per call: a parse
//! round trip, then a bind and execute round trip, inside a `BEGIN` … `COMMIT` that carries
//! the timeouts: five round trips for one read, against one on a direct connection with
//! sqlx's statement cache. Here a call is one round trip: `SELECT set_config(…, true); <the
//! statement>` runs as one implicit transaction, the timeouts holding for the statement and
//! ending with it; a transaction's `BEGIN` carries them the same way. This is what pgx calls
//! `QueryExecModeSimpleProtocol`.
//!
//! A literal is `('<text>'::<type>)`, the type the extended protocol would have declared for
//! the value (sqlx's), so the server resolves the statement exactly as it would a bound
//! parameter. The text is an `E''` string with `\` and `'` escaped, which means the same
//! whatever `standard_conforming_strings` is. A value with no literal form here (a text with a
//! NUL, which would end the query message; a year outside 1–9999; a type Vega does not bind) is
//! sent the extended way instead, unnamed, inside a transaction: slower, never wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use futures::TryStreamExt;
use sea_orm::sea_query::ArrayType;
use sea_orm::sqlx::postgres::{PgConnection, PgPool, PgQueryResult, PgRow};
use sea_orm::sqlx::{self, AssertSqlSafe, Either, Postgres};
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr,
    Statement, Value, Values,
};
use sea_query_sqlx::SqlxValues;
use tokio::sync::Mutex;

use crate::db::sql::{hex, replace_placeholders};

/// The pool behind a transaction-mode pooler: each call one simple query that starts with the
/// timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Simple {
    pool: PgPool,
    /// `SELECT set_config(…, true), …`: the timeouts of one transaction.
    settings: Arc<str>,
}

impl Simple {
    pub(crate) fn new(pool: PgPool, settings: String) -> Self {
        Self {
            pool,
            settings: settings.into(),
        }
    }

    /// Opens a transaction whose first round trip is `BEGIN` and the timeouts.
    pub(crate) async fn begin(&self) -> Result<SimpleTx, DbErr> {
        let begin = format!("BEGIN; {}", self.settings);
        let tx = self
            .pool
            .begin_with(AssertSqlSafe(begin))
            .await
            .map_err(acquire_error)?;
        Ok(SimpleTx {
            shared: Arc::new(Shared {
                tx: Mutex::new(Some(tx)),
                undo: std::sync::Mutex::default(),
                savepoints: AtomicU32::new(0),
            }),
            savepoint: None,
            open: true,
        })
    }

    /// Runs `stmt` in one round trip, or in a transaction of its own when a value has no
    /// literal form.
    async fn run(&self, stmt: Statement, kind: Kind) -> Result<Outcome, DbErr> {
        let Some(sql) = inline(&stmt) else {
            let tx = self.begin().await?;
            let outcome = tx.run(stmt, kind).await?;
            tx.commit().await?;
            return Ok(outcome);
        };
        self.one_query(&sql, kind).await
    }

    /// `sql` after the timeouts, as one simple query.
    async fn one_query(&self, sql: &str, kind: Kind) -> Result<Outcome, DbErr> {
        let mut conn = self.pool.acquire().await.map_err(acquire_error)?;
        let query = format!("{}; {sql}", self.settings);
        simple(&mut conn, query, 1).await.map_err(kind.error())
    }
}

/// A transaction opened by [`Simple::begin`], or a savepoint in one. Dropped uncommitted, it
/// rolls back: the transaction when its connection goes back to the pool (sqlx queues the
/// `ROLLBACK`), a savepoint before the transaction's next statement.
pub(crate) struct SimpleTx {
    shared: Arc<Shared>,
    /// The savepoint's name; `None` for the transaction itself.
    savepoint: Option<String>,
    open: bool,
}

/// What a transaction and its savepoints share.
struct Shared {
    /// `None` once the transaction has ended.
    tx: Mutex<Option<sqlx::Transaction<'static, Postgres>>>,
    /// What the transaction must run before its next statement: the rollback of savepoints
    /// dropped uncommitted. Locked only to append or take, never across an await, so a drop
    /// can always append.
    undo: std::sync::Mutex<String>,
    savepoints: AtomicU32,
}

impl Shared {
    fn undo(&self) -> std::sync::MutexGuard<'_, String> {
        self.undo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The transaction's connection, with dropped savepoints undone first.
async fn connection<'t>(
    tx: &'t mut Option<sqlx::Transaction<'static, Postgres>>,
    shared: &Shared,
) -> Result<&'t mut PgConnection, DbErr> {
    let tx = tx.as_mut().ok_or_else(ended)?;
    let undo = std::mem::take(&mut *shared.undo());
    if !undo.is_empty() {
        execute(tx, undo).await?;
    }
    Ok(&mut **tx)
}

impl std::fmt::Debug for SimpleTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimpleTx")
            .field("savepoint", &self.savepoint)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl SimpleTx {
    /// A nested transaction: a `SAVEPOINT`.
    pub(crate) async fn savepoint(&self) -> Result<SimpleTx, DbErr> {
        let mut tx = self.shared.tx.lock().await;
        let n = self.shared.savepoints.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("vega_savepoint_{n}");
        let conn = connection(&mut tx, &self.shared).await?;
        execute(conn, format!("SAVEPOINT {name}")).await?;
        Ok(SimpleTx {
            shared: self.shared.clone(),
            savepoint: Some(name),
            open: true,
        })
    }

    /// Commits the transaction, or releases the savepoint.
    pub(crate) async fn commit(mut self) -> Result<(), DbErr> {
        self.open = false;
        let mut tx = self.shared.tx.lock().await;
        let conn = connection(&mut tx, &self.shared).await?;
        match &self.savepoint {
            Some(name) => execute(conn, format!("RELEASE SAVEPOINT {name}")).await,
            None => {
                let tx = tx.take().ok_or_else(ended)?;
                tx.commit().await.map_err(Kind::Execute.error())
            }
        }
    }

    /// Rolls back the transaction, or the work since the savepoint.
    pub(crate) async fn rollback(mut self) -> Result<(), DbErr> {
        self.open = false;
        let mut tx = self.shared.tx.lock().await;
        match &self.savepoint {
            Some(name) => {
                let conn = connection(&mut tx, &self.shared).await?;
                execute(conn, undo_savepoint(name)).await
            }
            None => {
                self.shared.undo().clear();
                let tx = tx.take().ok_or_else(ended)?;
                tx.rollback().await.map_err(Kind::Execute.error())
            }
        }
    }

    async fn run(&self, stmt: Statement, kind: Kind) -> Result<Outcome, DbErr> {
        let mut tx = self.shared.tx.lock().await;
        let conn = connection(&mut tx, &self.shared).await?;
        let result = match inline(&stmt) {
            Some(sql) => simple(conn, sql, 0).await,
            None => extended(conn, stmt, kind).await,
        };
        result.map_err(kind.error())
    }
}

impl Drop for SimpleTx {
    fn drop(&mut self) {
        if let Some(name) = self.savepoint.as_deref().filter(|_| self.open) {
            let mut undo = self.shared.undo();
            undo.push_str(&undo_savepoint(name));
            undo.push_str("; ");
        }
    }
}

fn undo_savepoint(name: &str) -> String {
    format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
}

fn ended() -> DbErr {
    DbErr::Custom("the transaction has already ended".into())
}

/// Whether a statement's failure is a query's or an execution's, as sea-orm tells them apart.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Query,
    Execute,
}

impl Kind {
    fn error(self) -> impl Fn(sqlx::Error) -> DbErr {
        move |err| {
            let err = RuntimeErr::SqlxError(Arc::new(err));
            match self {
                Kind::Query => DbErr::Query(err),
                Kind::Execute => DbErr::Exec(err),
            }
        }
    }
}

/// Taking a connection failed: sea-orm's mapping, so callers classify it the same way.
fn acquire_error(err: sqlx::Error) -> DbErr {
    match err {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        err => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))),
    }
}

/// A statement's rows and what it changed.
#[derive(Default)]
struct Outcome {
    rows: Vec<PgRow>,
    done: PgQueryResult,
}

/// Runs `sql` as one simple query, keeping what follows its first `skip` statements.
async fn simple(conn: &mut PgConnection, sql: String, skip: usize) -> sqlx::Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut done = 0;
    let mut results = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(conn);
    while let Some(result) = results.try_next().await? {
        match result {
            Either::Left(finished) => {
                if done >= skip {
                    outcome.done.extend([finished]);
                }
                done += 1;
            }
            Either::Right(row) if done >= skip => outcome.rows.push(row),
            Either::Right(_) => {}
        }
    }
    Ok(outcome)
}

/// Runs `stmt` with the extended protocol as an unnamed statement, which ends with the
/// transaction.
async fn extended(conn: &mut PgConnection, stmt: Statement, kind: Kind) -> sqlx::Result<Outcome> {
    let values = stmt.values.unwrap_or_else(|| Values(Vec::new()));
    let query = sqlx::query_with(AssertSqlSafe(stmt.sql), SqlxValues(values)).persistent(false);
    Ok(match kind {
        Kind::Query => Outcome {
            rows: query.fetch_all(conn).await?,
            done: PgQueryResult::default(),
        },
        Kind::Execute => Outcome {
            rows: Vec::new(),
            done: query.execute(conn).await?,
        },
    })
}

async fn execute(conn: &mut PgConnection, sql: String) -> Result<(), DbErr> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(Kind::Execute.error())
}

macro_rules! simple_connection {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl ConnectionTrait for $ty {
            fn get_database_backend(&self) -> DbBackend {
                DbBackend::Postgres
            }

            async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
                Ok(ExecResult::from(self.run(stmt, Kind::Execute).await?.done))
            }

            async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
                let stmt = Statement::from_string(DbBackend::Postgres, sql);
                self.execute_raw(stmt).await
            }

            async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
                let outcome = self.run(stmt, Kind::Query).await?;
                Ok(outcome.rows.into_iter().next().map(QueryResult::from))
            }

            async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
                let outcome = self.run(stmt, Kind::Query).await?;
                Ok(outcome.rows.into_iter().map(QueryResult::from).collect())
            }
        }
    };
}

simple_connection!(Simple);
simple_connection!(SimpleTx);

/// `stmt`'s SQL with each `$n` replaced by its value as a typed literal; `None` when a value
/// has no literal form here (see the module docs).
pub(crate) fn inline(stmt: &Statement) -> Option<String> {
    let values = stmt.values.as_ref().map_or(&[][..], |v| &v.0[..]);
    if values.is_empty() {
        return Some(stmt.sql.clone());
    }
    replace_placeholders(&stmt.sql, |n, out| {
        literal(values.get(n.checked_sub(1)?)?, out)
    })
}

/// Writes `value` as `('<text>'::<type>)`, or `(NULL::<type>)`.
fn literal(value: &Value, out: &mut String) -> Option<()> {
    let (text, ty) = match value {
        Value::Array(element, items) => {
            let ty = format!("{}[]", array_type(element)?);
            let text = match items {
                None => None,
                Some(items) => Some(array_text(items)?),
            };
            (text, ty)
        }
        value => (text(value)?, scalar_type(value)?.to_owned()),
    };
    out.push('(');
    match text {
        None => out.push_str("NULL"),
        Some(text) => quote(&text, out),
    }
    out.push_str("::");
    out.push_str(&ty);
    out.push(')');
    Some(())
}

/// `text` as an `E''` string.
fn quote(text: &str, out: &mut String) {
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// An array's text form, `{"…",NULL}`: each element quoted, `\` and `"` escaped.
fn array_text(items: &[Value]) -> Option<String> {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match text(item)? {
            None => out.push_str("NULL"),
            Some(text) => {
                out.push('"');
                for c in text.chars() {
                    if c == '\\' || c == '"' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    Some(out)
}

/// Postgres's text form of a scalar value: `Some(None)` for NULL, `None` when it has none here.
fn text(value: &Value) -> Option<Option<String>> {
    fn show<T: ToString>(v: &Option<T>) -> Option<Option<String>> {
        Some(v.as_ref().map(T::to_string))
    }
    match value {
        Value::Bool(v) => Some(v.map(|b| if b { "t" } else { "f" }.to_owned())),
        Value::SmallInt(v) => show(v),
        Value::Int(v) => show(v),
        Value::BigInt(v) => show(v),
        Value::TinyUnsigned(v) => show(v),
        Value::SmallUnsigned(v) => show(v),
        Value::Unsigned(v) => show(v),
        Value::BigUnsigned(v) => show(v),
        Value::Float(v) => show(v),
        Value::Double(v) => show(v),
        Value::String(v) => no_nul(v.clone()),
        Value::Char(v) => no_nul(v.map(String::from)),
        Value::Bytes(v) => Some(v.as_ref().map(|bytes| format!("\\x{}", hex(bytes)))),
        Value::Json(v) => no_nul(v.as_ref().map(|json| json.to_string())),
        Value::Uuid(v) => show(v),
        Value::ChronoDate(v) => dated(*v, |d| d, |d| d.format("%Y-%m-%d").to_string()),
        Value::ChronoTime(v) => match v {
            None => Some(None),
            Some(t) => {
                let micros = (*t - NaiveTime::MIN).num_microseconds()?;
                let t = NaiveTime::MIN + TimeDelta::microseconds(micros);
                Some(Some(t.format("%H:%M:%S%.6f").to_string()))
            }
        },
        Value::ChronoDateTime(v) => timestamp(v.as_ref().copied(), ""),
        Value::ChronoDateTimeUtc(v) => timestamp(v.map(|t| t.naive_utc()), "+00"),
        Value::ChronoDateTimeLocal(v) => timestamp(v.map(|t| t.naive_utc()), "+00"),
        Value::ChronoDateTimeWithTimeZone(v) => timestamp(v.map(|t| t.naive_utc()), "+00"),
        _ => None,
    }
}

fn no_nul(text: Option<String>) -> Option<Option<String>> {
    match text {
        Some(text) if text.contains('\0') => None,
        text => Some(text),
    }
}

/// A date-bearing value's text, for years 1–9999 only (what the text form spells plainly).
fn dated<T: Copy>(
    value: Option<T>,
    date: impl Fn(T) -> NaiveDate,
    format: impl Fn(T) -> String,
) -> Option<Option<String>> {
    use chrono::Datelike;
    match value {
        None => Some(None),
        Some(v) if (1..=9999).contains(&date(v).year()) => Some(Some(format(v))),
        Some(_) => None,
    }
}

/// A timestamp cut to whole microseconds the way sqlx encodes it (toward its epoch,
/// 2000-01-01), then written with `zone`.
fn timestamp(value: Option<NaiveDateTime>, zone: &str) -> Option<Option<String>> {
    let Some(value) = value else {
        return Some(None);
    };
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)?.and_time(NaiveTime::MIN);
    let micros = (value - epoch).num_microseconds()?;
    let value = epoch.checked_add_signed(TimeDelta::microseconds(micros))?;
    dated(
        Some(value),
        |t| t.date(),
        |t| format!("{}{zone}", t.format("%Y-%m-%d %H:%M:%S%.6f")),
    )
}

/// The type sqlx declares for a scalar value.
fn scalar_type(value: &Value) -> Option<&'static str> {
    Some(match value {
        Value::Bool(_) => "bool",
        Value::SmallInt(_) | Value::TinyUnsigned(_) => "int2",
        Value::Int(_) | Value::SmallUnsigned(_) => "int4",
        Value::BigInt(_) | Value::Unsigned(_) | Value::BigUnsigned(_) => "int8",
        Value::Float(_) => "float4",
        Value::Double(_) => "float8",
        Value::String(_) | Value::Char(_) => "text",
        Value::Bytes(_) => "bytea",
        Value::Json(_) => "jsonb",
        Value::Uuid(_) => "uuid",
        Value::ChronoDate(_) => "date",
        Value::ChronoTime(_) => "time",
        Value::ChronoDateTime(_) => "timestamp",
        Value::ChronoDateTimeUtc(_)
        | Value::ChronoDateTimeLocal(_)
        | Value::ChronoDateTimeWithTimeZone(_) => "timestamptz",
        _ => return None,
    })
}

/// The element type sqlx declares for an array.
fn array_type(element: &ArrayType) -> Option<&'static str> {
    Some(match element {
        ArrayType::Bool => "bool",
        ArrayType::SmallInt | ArrayType::TinyUnsigned => "int2",
        ArrayType::Int | ArrayType::SmallUnsigned => "int4",
        ArrayType::BigInt | ArrayType::Unsigned | ArrayType::BigUnsigned => "int8",
        ArrayType::Float => "float4",
        ArrayType::Double => "float8",
        ArrayType::String | ArrayType::Char => "text",
        ArrayType::Bytes => "bytea",
        ArrayType::Json => "jsonb",
        ArrayType::Uuid => "uuid",
        ArrayType::ChronoDate => "date",
        ArrayType::ChronoTime => "time",
        ArrayType::ChronoDateTime => "timestamp",
        ArrayType::ChronoDateTimeUtc
        | ArrayType::ChronoDateTimeLocal
        | ArrayType::ChronoDateTimeWithTimeZone => "timestamptz",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inlined(sql: &str, values: Vec<Value>) -> Option<String> {
        inline(&Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
    }

    #[test]
    fn placeholders_become_typed_literals_and_quoted_text_stays() {
        assert_eq!(
            inlined(
                "SELECT $2, '$1', $1 -- $2\nWHERE x = $2",
                vec![Value::from("it's \\"), Value::from(7i64)]
            )
            .unwrap(),
            "SELECT (E'7'::int8), '$1', (E'it''s \\\\'::text) -- $2\nWHERE x = (E'7'::int8)"
        );
        assert_eq!(
            inlined("SELECT $1", vec![Value::Uuid(None)]).unwrap(),
            "SELECT (NULL::uuid)"
        );
        assert_eq!(
            inlined("SELECT $1", vec![vec!["a\"b".to_owned()].into()]).unwrap(),
            "SELECT (E'{\"a\\\\\"b\"}'::text[])"
        );
    }

    #[test]
    fn values_with_no_literal_form_are_refused() {
        assert!(inlined("SELECT $1", vec![Value::from("a\0b")]).is_none());
        assert!(inlined("SELECT $1", vec![Value::TinyInt(Some(1))]).is_none());
        assert!(inlined("SELECT $2", vec![Value::from(1i32)]).is_none());
        let year_10000 = NaiveDate::from_ymd_opt(10_000, 1, 1).unwrap();
        assert!(inlined("SELECT $1", vec![year_10000.into()]).is_none());
    }
}
