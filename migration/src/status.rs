//! What the database has applied compared with what this build knows, read without writing.
//!
//! sea-orm-migration's own status creates the tracking table first and fails outright on a
//! version it does not know; a deploy gate and an application's start-up check need neither.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use sea_orm_migration::MigratorTrait;

use crate::{MIGRATION_TABLE, Migrator};

/// The schema's state relative to this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Versions applied in the database that this build knows, in migration order.
    pub applied: Vec<String>,
    /// Versions this build knows that the database has not applied, in migration order.
    pub pending: Vec<String>,
    /// Versions the database has applied that this build does not know: the database was
    /// migrated by a newer build (or a migration file was removed).
    pub unknown: Vec<String>,
}

impl SchemaStatus {
    /// Reads `schema_migrations` (treating a missing table as "nothing applied").
    pub async fn read(db: &impl ConnectionTrait) -> Result<Self, DbErr> {
        let in_db = applied_versions(db).await?;
        let known = known_versions();
        let (applied, pending) = known.iter().cloned().partition(|v| in_db.contains(v));
        let unknown = in_db.into_iter().filter(|v| !known.contains(v)).collect();
        Ok(Self {
            applied,
            pending,
            unknown,
        })
    }

    /// True when every known version is applied and no unknown one is.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty()
    }
}

/// The versions this build knows, in the order they apply.
pub fn known_versions() -> Vec<String> {
    Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

async fn applied_versions(db: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    let backend = db.get_database_backend();
    let exists_sql = match backend {
        DbBackend::Postgres => {
            format!("SELECT to_regclass('{MIGRATION_TABLE}') IS NOT NULL AS found")
        }
        _ => format!(
            "SELECT count(*) > 0 AS found FROM sqlite_master \
             WHERE type = 'table' AND name = '{MIGRATION_TABLE}'"
        ),
    };
    let found = db
        .query_one_raw(Statement::from_string(backend, exists_sql))
        .await?
        .map(|row| row.try_get::<bool>("", "found"))
        .transpose()?
        .unwrap_or(false);
    if !found {
        return Ok(Vec::new());
    }
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!("SELECT version FROM {MIGRATION_TABLE} ORDER BY version"),
        ))
        .await?;
    rows.iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect()
}
