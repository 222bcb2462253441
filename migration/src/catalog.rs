//! The schema as the database's own catalog describes it: foreign keys and the indexes that
//! can serve them. `vega-admin doctor` reports foreign keys no index leads with; the schema
//! tests assert there are none.

use std::collections::BTreeSet;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement};

/// A foreign key: its table, its columns in key order, the table it references, and its
/// delete rule (`CASCADE`, `SET NULL`, `RESTRICT`, `NO ACTION`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The referencing table.
    pub table: String,
    /// Its key columns, in order.
    pub columns: Vec<String>,
    /// The referenced table.
    pub parent: String,
    /// What a delete of the parent row does.
    pub on_delete: String,
}

/// A non-partial index (primary keys and unique constraints included): its table and its key
/// columns in order. Partial indexes are left out: a parent's delete must find every child
/// row, not only those matching a predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The indexed table.
    pub table: String,
    /// Its key columns, in order.
    pub columns: Vec<String>,
}

impl ForeignKey {
    /// True when `index` can serve lookups on this key: its leading columns are exactly the
    /// key's columns, in any order.
    pub fn is_led_by(&self, index: &Index) -> bool {
        let n = self.columns.len();
        index.table == self.table
            && index.columns.len() >= n
            && index.columns[..n].iter().collect::<BTreeSet<_>>()
                == self.columns.iter().collect::<BTreeSet<_>>()
    }
}

/// Every foreign key of the current schema.
pub async fn foreign_keys(db: &impl ConnectionTrait) -> Result<Vec<ForeignKey>, DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT c.conrelid::regclass::text AS tbl, c.conname AS name, a.attname::text AS col,
                    c.confrelid::regclass::text AS parent,
                    CASE c.confdeltype WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT'
                         WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END
                        AS on_delete
               FROM pg_constraint c
               CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
              WHERE c.contype = 'f'
                AND c.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
              ORDER BY tbl, name, k.ord"
        }
        _ => {
            "SELECT m.name AS tbl, CAST(f.id AS TEXT) AS name, f.\"from\" AS col,
                    f.\"table\" AS parent, f.on_delete AS on_delete
               FROM sqlite_master m, pragma_foreign_key_list(m.name) f
              WHERE m.type = 'table'
              ORDER BY tbl, name, f.seq"
        }
    };
    grouped(db, sql, |row, columns| {
        Ok(ForeignKey {
            table: row.try_get("", "tbl")?,
            columns,
            parent: row.try_get("", "parent")?,
            on_delete: row.try_get("", "on_delete")?,
        })
    })
    .await
}

/// Every non-partial index of the current schema.
pub async fn full_indexes(db: &impl ConnectionTrait) -> Result<Vec<Index>, DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT i.indrelid::regclass::text AS tbl, i.indexrelid::regclass::text AS name,
                    coalesce(a.attname::text, '(expression)') AS col
               FROM pg_index i
               JOIN pg_class t ON t.oid = i.indrelid
               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indpred IS NULL
                AND t.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
              ORDER BY tbl, name, k.ord"
        }
        _ => {
            "SELECT m.name AS tbl, l.name AS name, coalesce(ii.name, '(expression)') AS col
               FROM sqlite_master m, pragma_index_list(m.name) l, pragma_index_info(l.name) ii
              WHERE m.type = 'table' AND l.partial = 0
              ORDER BY tbl, name, ii.seqno"
        }
    };
    grouped(db, sql, |row, columns| {
        Ok(Index {
            table: row.try_get("", "tbl")?,
            columns,
        })
    })
    .await
}

/// Runs `sql`, which returns one row per key column ordered by (`tbl`, `name`, position), and
/// builds one item per (`tbl`, `name`) from its first row and its `col` values in order.
async fn grouped<T>(
    db: &impl ConnectionTrait,
    sql: &str,
    build: impl Fn(&QueryResult, Vec<String>) -> Result<T, DbErr>,
) -> Result<Vec<T>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let mut groups: Vec<((String, String), &QueryResult, Vec<String>)> = Vec::new();
    for row in &rows {
        let key = (row.try_get("", "tbl")?, row.try_get("", "name")?);
        let column = row.try_get("", "col")?;
        match groups.last_mut() {
            Some((last, _, columns)) if *last == key => columns.push(column),
            _ => groups.push((key, row, vec![column])),
        }
    }
    groups
        .into_iter()
        .map(|(_, first, columns)| build(first, columns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(columns: &[&str]) -> ForeignKey {
        ForeignKey {
            table: "t".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            parent: "p".into(),
            on_delete: "CASCADE".into(),
        }
    }

    fn index(table: &str, columns: &[&str]) -> Index {
        Index {
            table: table.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn an_index_serves_a_key_only_through_its_leading_columns() {
        assert!(fk(&["a"]).is_led_by(&index("t", &["a"])));
        assert!(fk(&["a"]).is_led_by(&index("t", &["a", "b"])));
        assert!(fk(&["a", "b"]).is_led_by(&index("t", &["b", "a", "c"])));
        assert!(!fk(&["a"]).is_led_by(&index("t", &["b", "a"])));
        assert!(!fk(&["a"]).is_led_by(&index("u", &["a"])));
        assert!(!fk(&["a", "b"]).is_led_by(&index("t", &["a"])));
    }
}
