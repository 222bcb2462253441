//! The Postgres advisory lock that serialises migration runners.
//!
//! The lock is taken by polling `pg_try_advisory_lock` with backoff, never by the blocking
//! `pg_advisory_lock`: a runner blocked inside that call holds an open statement, and a
//! `CREATE INDEX CONCURRENTLY` in the lock holder then waits for it forever (Atlas, goose and
//! Flyway poll for the same reason). Advisory locks are scoped to one database, so runners on
//! different databases of one cluster never wait for each other. SQLite needs no lock: it is
//! embedded, and each migration's transaction already excludes other writers.

use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, Postgres, pool::PoolConnection};
use sea_orm::{DatabaseConnection, DbBackend};

/// The advisory lock key: the bytes of "vegamigr", fixed so every build of `vega-migrate`
/// contends for the same lock.
pub const LOCK_KEY: i64 = 0x7665_6761_6d69_6772;

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another runner held the lock for longer than the allowed wait.
    #[error(
        "another vega-migrate held the migration lock for {waited:?}; it may still be running \
         (see pg_stat_activity), or raise --lock-wait"
    )]
    Timeout {
        /// How long this runner waited.
        waited: Duration,
    },
    /// The database failed while taking or releasing the lock.
    #[error("migration lock: {0}")]
    Database(#[from] sqlx::Error),
}

/// A held migration lock; [`MigrationLock::release`] gives it back. Dropping it without
/// releasing closes nothing early: the lock ends with its connection, which the pool closes.
pub struct MigrationLock {
    conn: Option<PoolConnection<Postgres>>,
}

impl MigrationLock {
    /// Takes the lock, waiting at most `wait`. On SQLite this returns at once with a lock that
    /// holds nothing.
    pub async fn acquire(db: &DatabaseConnection, wait: Duration) -> Result<Self, LockError> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(Self { conn: None });
        }
        // One dedicated session: advisory locks belong to the session that took them.
        let mut conn = db.get_postgres_connection_pool().acquire().await?;
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if locked {
                return Ok(Self { conn: Some(conn) });
            }
            let waited = started.elapsed();
            if waited >= wait {
                return Err(LockError::Timeout { waited });
            }
            tracing::info!(?waited, "waiting for another vega-migrate to finish");
            tokio::time::sleep(backoff.min(wait - waited)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Releases the lock.
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(mut conn) = self.conn.take() {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        // Not released (an error path): close the session rather than return a connection that
        // still holds the lock to the pool.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
