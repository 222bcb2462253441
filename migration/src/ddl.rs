//! Small builders that keep the migrations reading like the table specs in ARCHITECTURE.md.
//!
//! Every statement is a sea-query builder, so one definition renders for Postgres and SQLite
//! (`uuid` / `uuid_text`, `timestamp with time zone` / `timestamp_with_timezone_text`, ...).
//! CHECK expressions are plain SQL that both engines accept (`length()`, `IN`, `IS NOT NULL`).
//! Constraints and indexes are named `{table}_{what}_{key|fkey|check|idx}` so an error message
//! from either database points straight at the rule that fired.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

/// The UUIDv7 primary key every API-visible table uses; the value is generated in Rust so an
/// object key can be built before the row exists.
pub fn uuid_pk() -> ColumnDef {
    ColumnDef::new("id").uuid().not_null().primary_key().take()
}

/// A `bigint` identity primary key, for high-volume append-only tables.
pub fn bigint_pk() -> ColumnDef {
    ColumnDef::new("id")
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .take()
}

/// A required `timestamptz`, always written as UTC by the application (no database default:
/// SQLite's `CURRENT_TIMESTAMP` text would not sort with RFC 3339 text).
pub fn timestamp(name: &'static str) -> ColumnDef {
    ColumnDef::new(name)
        .timestamp_with_time_zone()
        .not_null()
        .take()
}

/// An optional `timestamptz`.
pub fn timestamp_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(name)
        .timestamp_with_time_zone()
        .null()
        .take()
}

/// A required `text` status column with a default; pair it with [`one_of`].
pub fn status(name: &'static str, default: &'static str) -> ColumnDef {
    ColumnDef::new(name)
        .text()
        .not_null()
        .default(default)
        .take()
}

/// A required `smallint` severity ordinal: 0 unknown, 1 info, 2 low, 3 medium, 4 high, 5 critical.
pub fn severity(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).small_integer().not_null().take()
}

/// A required counter that starts at zero.
pub fn counter(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).integer().not_null().default(0).take()
}

/// `CHECK (column IN (...))`, named `{table}_{column}_check`.
pub fn one_of(table: &str, column: &str, values: &[&str]) -> Check {
    let list = values
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    check(table, column, format!("{column} IN ({list})"))
}

/// A named CHECK constraint, `{table}_{name}_check`, from SQL that both engines accept.
pub fn check(table: &str, name: &str, sql: impl Into<String>) -> Check {
    Check::named(
        Alias::new(format!("{table}_{name}_check")),
        Expr::cust(sql.into()),
    )
}

/// A foreign key `{table}_{column}_fkey` to `parent(id)`. The delete rule is required: every
/// foreign key states what happens when its parent goes.
pub fn fk(
    table: &'static str,
    column: &'static str,
    parent: &'static str,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("{table}_{column}_fkey"))
        .from(table, column)
        .to(parent, "id")
        .on_delete(on_delete)
        .on_update(ForeignKeyAction::NoAction)
        .take()
}

/// A plain index named `{table}_{name}_idx`.
pub fn index(table: &'static str, name: &str) -> IndexCreateStatement {
    Index::create()
        .name(format!("{table}_{name}_idx"))
        .table(table)
        .take()
}

/// A unique index named `{table}_{name}_key`.
pub fn unique(table: &'static str, name: &str) -> IndexCreateStatement {
    Index::create()
        .name(format!("{table}_{name}_key"))
        .table(table)
        .unique()
        .take()
}

/// A descending index column, for "newest first" and "worst first" scans.
pub fn desc(column: &'static str) -> (&'static str, IndexOrder) {
    (column, IndexOrder::Desc)
}

/// Creates the tables, then their indexes, in order.
pub async fn create(
    manager: &SchemaManager<'_>,
    tables: Vec<TableCreateStatement>,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    for table in tables {
        manager.create_table(table).await?;
    }
    for index in indexes {
        manager.create_index(index).await?;
    }
    Ok(())
}

/// Drops the tables in the order given (children first).
pub async fn drop(manager: &SchemaManager<'_>, tables: &[&'static str]) -> Result<(), DbErr> {
    for table in tables {
        manager
            .drop_table(Table::drop().table(*table).take())
            .await?;
    }
    Ok(())
}

/// Adds columns to an existing table, one `ALTER TABLE` each (SQLite takes one per statement).
pub async fn add_columns(
    manager: &SchemaManager<'_>,
    table: &'static str,
    columns: Vec<ColumnDef>,
) -> Result<(), DbErr> {
    for mut column in columns {
        manager
            .alter_table(Table::alter().table(table).add_column(&mut column).take())
            .await?;
    }
    Ok(())
}

/// Drops columns from a table, one `ALTER TABLE` each.
pub async fn drop_columns(
    manager: &SchemaManager<'_>,
    table: &'static str,
    columns: &[&'static str],
) -> Result<(), DbErr> {
    for column in columns {
        manager
            .alter_table(Table::alter().table(table).drop_column(*column).take())
            .await?;
    }
    Ok(())
}

/// Sets Postgres storage options on `table` (`ALTER TABLE … SET (…)`): fillfactor and
/// per-table autovacuum settings. SQLite has no such options; there it does nothing.
pub async fn set_storage(
    manager: &SchemaManager<'_>,
    table: &str,
    options: &[(&str, &str)],
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres || options.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = options.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    manager
        .get_connection()
        .execute_unprepared(&format!("ALTER TABLE {table} SET ({})", list.join(", ")))
        .await
        .map(|_| ())
}

/// Resets the options [`set_storage`] set to the server's defaults (Postgres only).
pub async fn reset_storage(
    manager: &SchemaManager<'_>,
    table: &str,
    options: &[(&str, &str)],
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres || options.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
    manager
        .get_connection()
        .execute_unprepared(&format!("ALTER TABLE {table} RESET ({})", names.join(", ")))
        .await
        .map(|_| ())
}

/// Replaces the CHECK constraint `name` on `table`, whose expression is `old`, with `new`: for
/// a constraint that a new migration widens (another allowed value), so rows that met `old`
/// meet `new`.
///
/// Postgres drops the constraint and adds the new one `NOT VALID`: every stored row met the
/// narrower rule, so there is nothing to validate, and the table is not scanned under the
/// migration's lock (validating in the same transaction would hold that lock for the scan). SQLite cannot alter a constraint; its documented
/// procedure for a change that leaves every stored row valid is to edit the table's schema
/// text (`writable_schema`) and bump the schema version so that other connections reload it.
/// The edit must change exactly one place, or nothing is changed.
pub async fn widen_check(
    manager: &SchemaManager<'_>,
    table: &str,
    name: &str,
    old: &str,
    new: &str,
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    if manager.get_database_backend() == DbBackend::Postgres {
        for sql in [
            format!("ALTER TABLE {table} DROP CONSTRAINT {name}"),
            format!("ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({new}) NOT VALID"),
        ] {
            db.execute_unprepared(&sql).await?;
        }
        return Ok(());
    }
    let quote = |s: &str| s.replace('\'', "''");
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!(
                "SELECT sql, (SELECT schema_version FROM pragma_schema_version) AS version \
                   FROM sqlite_schema WHERE type = 'table' AND name = '{}'",
                quote(table)
            ),
        ))
        .await?
        .ok_or_else(|| DbErr::Custom(format!("no table {table}")))?;
    let sql: String = row.try_get("", "sql")?;
    let version: i64 = row.try_get("", "version")?;
    let old_clause = format!("CONSTRAINT \"{name}\" CHECK ({old})");
    if sql.matches(&old_clause).count() != 1 {
        return Err(DbErr::Custom(format!(
            "{table}: expected one `{old_clause}` in its schema"
        )));
    }
    let edited = sql.replace(&old_clause, &format!("CONSTRAINT \"{name}\" CHECK ({new})"));
    for statement in [
        "PRAGMA writable_schema = ON".to_owned(),
        format!(
            "UPDATE sqlite_schema SET sql = '{}' WHERE type = 'table' AND name = '{}'",
            quote(&edited),
            quote(table)
        ),
        format!("PRAGMA schema_version = {}", version + 1),
        "PRAGMA writable_schema = OFF".to_owned(),
    ] {
        db.execute_unprepared(&statement).await?;
    }
    Ok(())
}

/// Drops columns that table constraints refer to (a foreign key, a CHECK): for a column a new
/// design no longer needs. `clauses` are how those constraints begin in SQLite's schema text
/// (`CONSTRAINT "t_x_check"`; a foreign key is unnamed there: `FOREIGN KEY ("x")`).
///
/// Postgres drops a column's constraints with it. SQLite refuses to drop a column that a
/// constraint names, and cannot drop a constraint; as in [`widen_check`], the clauses are cut
/// from the table's schema text (each must appear exactly once, or nothing is changed) before
/// the columns are dropped. A clause that is not there is nothing to cut (a table rebuilt by a
/// migration's `down` may lack it). Indexes on the columns are the caller's to drop first, on
/// both engines.
pub async fn drop_columns_and_constraints(
    manager: &SchemaManager<'_>,
    table: &'static str,
    columns: &[&'static str],
    clauses: &[&str],
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        let db = manager.get_connection();
        let quote = |s: &str| s.replace('\'', "''");
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!(
                    "SELECT sql, (SELECT schema_version FROM pragma_schema_version) AS version \
                       FROM sqlite_schema WHERE type = 'table' AND name = '{}'",
                    quote(table)
                ),
            ))
            .await?
            .ok_or_else(|| DbErr::Custom(format!("no table {table}")))?;
        let mut sql: String = row.try_get("", "sql")?;
        let version: i64 = row.try_get("", "version")?;
        for clause in clauses {
            sql = without_clause(&sql, clause).ok_or_else(|| {
                DbErr::Custom(format!("{table}: expected at most one `{clause}`"))
            })?;
        }
        for statement in [
            "PRAGMA writable_schema = ON".to_owned(),
            format!(
                "UPDATE sqlite_schema SET sql = '{}' WHERE type = 'table' AND name = '{}'",
                quote(&sql),
                quote(table)
            ),
            format!("PRAGMA schema_version = {}", version + 1),
            "PRAGMA writable_schema = OFF".to_owned(),
        ] {
            db.execute_unprepared(&statement).await?;
        }
    }
    drop_columns(manager, table, columns).await
}

/// `create` (a `CREATE TABLE` statement) without the clause that begins `, {clause}` and ends
/// at the next comma or closing parenthesis outside parentheses: unchanged when there is no
/// such clause, `None` when there are several.
fn without_clause(create: &str, clause: &str) -> Option<String> {
    let marker = format!(", {clause}");
    match create.matches(&marker).count() {
        0 => return Some(create.to_owned()),
        1 => {}
        _ => return None,
    }
    let start = create.find(&marker)?;
    let mut depth = 0usize;
    for (i, c) in create[start + marker.len()..].char_indices() {
        match c {
            ')' | ',' if depth == 0 => {
                // The space before the table's closing parenthesis stays.
                let end = start + create[start..start + marker.len() + i].trim_end().len();
                return Some(format!("{}{}", &create[..start], &create[end..]));
            }
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::without_clause;

    #[test]
    fn a_clause_is_cut_up_to_its_end_outside_parentheses() {
        let create = "CREATE TABLE \"t\" ( \"a\" int, CONSTRAINT \"t_a_check\" CHECK (a IN (1, 2)), \
                      CONSTRAINT \"t_b_fkey\" FOREIGN KEY (\"b\") REFERENCES \"u\" (\"id\") )";
        assert_eq!(
            without_clause(create, "CONSTRAINT \"t_a_check\"").as_deref(),
            Some(
                "CREATE TABLE \"t\" ( \"a\" int, CONSTRAINT \"t_b_fkey\" FOREIGN KEY (\"b\") \
                 REFERENCES \"u\" (\"id\") )"
            )
        );
        assert_eq!(
            without_clause(create, "CONSTRAINT \"t_b_fkey\"").as_deref(),
            Some("CREATE TABLE \"t\" ( \"a\" int, CONSTRAINT \"t_a_check\" CHECK (a IN (1, 2)) )")
        );
        assert_eq!(
            without_clause(create, "CONSTRAINT \"t_c_check\"").as_deref(),
            Some(create)
        );
        let twice = "CREATE TABLE t ( a int, CHECK (a > 0), CHECK (a > 0) )";
        assert_eq!(without_clause(twice, "CHECK (a > 0)"), None);
        assert_eq!(
            without_clause(
                "CREATE TABLE t ( a int, b int, FOREIGN KEY (\"b\") REFERENCES u (id) )",
                "FOREIGN KEY (\"b\")"
            )
            .as_deref(),
            Some("CREATE TABLE t ( a int, b int )")
        );
    }
}
