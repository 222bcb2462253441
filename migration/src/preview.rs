//! `vega-migrate sql`: the statements migrations would run, rendered without a database.
//!
//! Each migration's `up` runs against sea-orm's mock connection, which logs every statement and
//! executes nothing. The preview is therefore what `up` sends, produced by the same code, rather
//! than a second description of the schema that could drift. A migration that reads the
//! database cannot be previewed this way (the mock has no rows to give it) and says so.

use std::fmt;

use sea_orm::{DatabaseConnection, DbBackend, DbErr, MockDatabase, MockExecResult};
use sea_orm_migration::prelude::*;

use crate::{MIGRATION_TABLE, Migrator};

/// The SQL of one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSql {
    /// The migration's version.
    pub version: String,
    /// Whether the runner wraps it in a transaction.
    pub transactional: bool,
    /// Its statements, in order, without trailing semicolons.
    pub statements: Vec<String>,
}

/// A rendered script: the tracking table, then each migration with the row that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The dialect the statements are rendered in.
    pub backend: DbBackend,
    /// Session settings the runner applies before any migration (Postgres timeouts).
    pub session: Vec<(String, String)>,
    /// `CREATE TABLE IF NOT EXISTS schema_migrations`, run before the first migration.
    pub install: Vec<String>,
    /// The migrations, in the order they would apply.
    pub migrations: Vec<MigrationSql>,
}

/// A migration whose SQL could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("cannot render migration {version}: {source}")]
pub struct PreviewError {
    /// The migration.
    pub version: String,
    /// Why (a migration that reads the database reports that here).
    pub source: DbErr,
}

/// More statements than any migration runs; the mock fails a statement past its scripted results.
const MAX_STATEMENTS: usize = 10_000;

/// Renders `versions` (in migration order; unknown names are ignored) for `backend`.
pub async fn render(
    backend: DbBackend,
    versions: &[String],
    session: Vec<(String, String)>,
) -> Result<Script, PreviewError> {
    let install = record(backend, MIGRATION_TABLE, async |db| {
        Migrator::install(db).await
    })
    .await?;
    let mut migrations = Vec::new();
    for migration in Migrator::migrations() {
        let version = migration.name().to_owned();
        if !versions.contains(&version) {
            continue;
        }
        let statements = record(backend, &version, async |db| {
            migration.up(&SchemaManager::new(db)).await
        })
        .await?;
        migrations.push(MigrationSql {
            transactional: migration
                .use_transaction()
                .unwrap_or(backend == DbBackend::Postgres),
            version,
            statements,
        });
    }
    Ok(Script {
        backend,
        session,
        install,
        migrations,
    })
}

/// Runs `f` on a fresh mock connection and returns the SQL it sent, values inlined.
async fn record(
    backend: DbBackend,
    version: &str,
    f: impl AsyncFnOnce(&DatabaseConnection) -> Result<(), DbErr>,
) -> Result<Vec<String>, PreviewError> {
    let db = MockDatabase::new(backend)
        .append_exec_results(std::iter::repeat_n(
            MockExecResult::default(),
            MAX_STATEMENTS,
        ))
        .into_connection();
    f(&db).await.map_err(|source| PreviewError {
        version: version.to_owned(),
        // The mock answers every query with an error (it has no rows to give); running out
        // of scripted exec results is an Exec error and keeps its own message.
        source: match source {
            DbErr::Query(_) => DbErr::Custom(format!(
                "it reads the database, so its SQL depends on the data and cannot be previewed \
                 ({source})"
            )),
            other => other,
        },
    })?;
    Ok(db
        .into_transaction_log()
        .iter()
        .flat_map(|t| t.statements().iter().map(ToString::to_string))
        .collect())
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "-- vega-migrate sql: {} migration(s) for {:?}; nothing was applied.",
            self.migrations.len(),
            self.backend
        )?;
        if !self.session.is_empty() {
            writeln!(
                f,
                "-- Session settings vega-migrate applies to its connection:"
            )?;
            for (name, value) in &self.session {
                writeln!(f, "SET {name} = '{}';", value.replace('\'', "''"))?;
            }
        }
        writeln!(f)?;
        for statement in &self.install {
            writeln!(f, "{statement};")?;
        }
        let now = match self.backend {
            DbBackend::Postgres => "extract(epoch from now())::bigint",
            _ => "CAST(strftime('%s', 'now') AS INTEGER)",
        };
        for migration in &self.migrations {
            writeln!(f, "\n-- {}", migration.version)?;
            if migration.transactional {
                writeln!(f, "BEGIN;")?;
            }
            for statement in &migration.statements {
                writeln!(f, "{statement};")?;
            }
            writeln!(
                f,
                "INSERT INTO \"{MIGRATION_TABLE}\" (\"version\", \"applied_at\") VALUES ('{}', {now});",
                migration.version
            )?;
            if migration.transactional {
                writeln!(f, "COMMIT;")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::known_versions;

    #[tokio::test]
    async fn renders_every_migration_for_postgres_in_order() {
        let versions = known_versions();
        let script = render(
            DbBackend::Postgres,
            &versions,
            vec![("lock_timeout".into(), "5s".into())],
        )
        .await
        .unwrap();
        let rendered: Vec<_> = script
            .migrations
            .iter()
            .map(|m| m.version.clone())
            .collect();
        assert_eq!(rendered, versions);
        assert!(script.install[0].contains("CREATE TABLE IF NOT EXISTS \"schema_migrations\""));
        let text = script.to_string();
        assert!(text.contains("SET lock_timeout = '5s';"));
        assert!(text.contains("CREATE TABLE \"findings\""), "{text}");
        assert!(text.contains("timestamp with time zone"));
        assert_eq!(text.matches("BEGIN;").count(), versions.len());
    }

    #[tokio::test]
    async fn renders_only_the_versions_asked_for() {
        let versions = known_versions();
        let last = versions[versions.len() - 1..].to_vec();
        // Postgres: the newest migration may be one that does nothing on SQLite.
        let script = render(DbBackend::Postgres, &last, Vec::new())
            .await
            .unwrap();
        assert_eq!(script.migrations.len(), 1);
        assert_eq!(script.migrations[0].version, last[0]);
        assert!(!script.migrations[0].statements.is_empty());
    }
}
