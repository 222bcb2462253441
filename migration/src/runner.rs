//! The run order of every command that changes the schema, in one place:
//! take the lock, refuse a database that has versions this build does not know, apply each
//! migration (timing it, naming it if it fails), release the lock.

use std::time::{Duration, Instant};

use sea_orm::{DatabaseConnection, DbErr};
use sea_orm_migration::MigratorTrait;

use crate::Migrator;
use crate::lock::{LockError, MigrationLock};
use crate::status::SchemaStatus;

/// One migration applied or rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The migration's version.
    pub version: String,
    /// How long it took.
    pub duration: Duration,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The migration lock was not available in time.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The database was migrated by a build that knows more migrations than this one.
    #[error(
        "the database has applied migrations this build does not know: {}. It was migrated by a \
         newer vega-migrate; run that build, or deploy code that includes these migrations",
        versions.join(", ")
    )]
    UnknownVersions {
        /// The versions in `schema_migrations` without a migration here.
        versions: Vec<String>,
    },
    /// One migration failed; its transaction was rolled back and later ones were not run.
    #[error("migration {version} failed: {source}")]
    Migration {
        /// The migration that failed.
        version: String,
        /// The database's error.
        source: DbErr,
    },
    /// Reading the schema state failed.
    #[error("reading schema_migrations: {0}")]
    Database(#[from] DbErr),
}

/// Which direction a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Apply pending migrations (all, or the first `n`).
    Up(Option<u32>),
    /// Roll back the last `n` applied migrations.
    Down(u32),
    /// Drop every table in the schema, then apply everything.
    Fresh,
    /// Roll back everything, then apply everything.
    Refresh,
    /// Roll back everything and drop the tracking table.
    Reset,
}

/// Runs `plan` under the migration lock, calling `on_step` after each migration. Returns the
/// steps taken; an empty list means there was nothing to do.
pub async fn run(
    db: &DatabaseConnection,
    plan: Plan,
    lock_wait: Duration,
    mut on_step: impl FnMut(&Step),
) -> Result<Vec<Step>, RunError> {
    let lock = MigrationLock::acquire(db, lock_wait).await?;
    let result = run_locked(db, plan, &mut on_step).await;
    let released = lock.release().await;
    let steps = result?;
    released?;
    Ok(steps)
}

async fn run_locked(
    db: &DatabaseConnection,
    plan: Plan,
    on_step: &mut impl FnMut(&Step),
) -> Result<Vec<Step>, RunError> {
    // Read under the lock: another runner may have just finished.
    let status = SchemaStatus::read(db).await?;
    if !status.unknown.is_empty() && plan != Plan::Fresh {
        return Err(RunError::UnknownVersions {
            versions: status.unknown,
        });
    }
    let mut steps = Vec::new();
    let mut record = |version: &str, started: Instant, result: Result<(), DbErr>| {
        result.map_err(|source| RunError::Migration {
            version: version.to_owned(),
            source,
        })?;
        let step = Step {
            version: version.to_owned(),
            duration: started.elapsed(),
        };
        on_step(&step);
        steps.push(step);
        Ok::<_, RunError>(())
    };
    match plan {
        Plan::Up(limit) => {
            let limit = limit.map_or(usize::MAX, |n| n as usize);
            for version in status.pending.iter().take(limit) {
                let started = Instant::now();
                record(version, started, Migrator::up(db, Some(1)).await)?;
            }
        }
        Plan::Down(n) => {
            for version in status.applied.iter().rev().take(n as usize) {
                let started = Instant::now();
                record(version, started, Migrator::down(db, Some(1)).await)?;
            }
        }
        Plan::Fresh => {
            let started = Instant::now();
            record("fresh", started, Migrator::fresh(db).await)?;
        }
        Plan::Refresh => {
            let started = Instant::now();
            record("refresh", started, Migrator::refresh(db).await)?;
        }
        Plan::Reset => {
            let started = Instant::now();
            record("reset", started, Migrator::reset(db).await)?;
        }
    }
    Ok(steps)
}
