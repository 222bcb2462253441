use std::time::Duration;

use chrono::{DateTime, FixedOffset, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use vega_blobstore::BlobStore;
use vega_config::{Backend, Settings};
use vega_migration::status::SchemaStatus;

use crate::{
    ApiKeys, Artifacts, Error, Events, Findings, Projects, Repositories, Result, Scans, Snapshots,
    Usage, Users, Workers,
};

/// Connection-pool settings for [`Store::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections open at once (Postgres; SQLite always uses one, its single writer).
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing with
    /// [`Error::Unavailable`].
    pub acquire_timeout: Duration,
    /// Statements slower than this are logged at WARN.
    pub slow_statement: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            slow_statement: Duration::from_secs(1),
        }
    }
}

/// The entry point for application handlers: a cheap-to-clone handle on the database pool,
/// from which each table's repository is reached (`store.scans().claim_next(...)`).
///
/// Build one at start-up and share it (an axum `State`, an `Arc` in a worker); clones share
/// the pool.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    blobs: BlobStore,
}

impl Store {
    /// Connects with the given settings and checks that the schema matches this build.
    ///
    /// Fails with [`Error::Unavailable`] (with the checks to run) when the database cannot be
    /// reached, and with [`Error::SchemaOutdated`] listing the versions when migrations are
    /// pending or the database was migrated by a newer build: the "migrations not applied"
    /// and "constraint violation after deploy" failures become one message at start-up.
    pub async fn connect(settings: &Settings, pool: &PoolOptions) -> Result<Self> {
        settings.log_effective();
        let blobs = BlobStore::from_settings(&settings.blob).await?;
        let settings = &settings.database;
        let mut options = settings.connect_options();
        // Statements are logged at TRACE (free unless enabled), slow ones at WARN; sea-orm only
        // honours the slow-statement threshold when statement logging is on.
        options
            .acquire_timeout(pool.acquire_timeout)
            .sqlx_logging(true)
            .sqlx_logging_level(log::LevelFilter::Trace)
            .sqlx_slow_statements_logging_settings(log::LevelFilter::Warn, pool.slow_statement);
        match settings.backend {
            // The ping sqlx sends before handing out a connection costs a round trip per call;
            // a dead connection surfaces as an error on first use instead.
            Backend::Postgres => {
                options
                    .max_connections(pool.max_connections)
                    .test_before_acquire(false);
            }
            Backend::Sqlite => {
                options.max_connections(1);
            }
        }
        let db = settings
            .connect(options)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Self::from_parts(db, blobs).await
    }

    /// Wraps an existing connection and blob store after checking the schema (tests, tools).
    pub async fn from_parts(db: DatabaseConnection, blobs: BlobStore) -> Result<Self> {
        let status = SchemaStatus::read(&db).await?;
        if !status.is_current() {
            return Err(Error::SchemaOutdated {
                pending: status.pending,
                unknown: status.unknown,
            });
        }
        Ok(Self { db, blobs })
    }

    /// The underlying connection, for queries no repository covers yet.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The blob store, for objects no repository covers yet.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Stored objects: source archives, reports, event logs, debug bundles.
    pub fn artifacts(&self) -> Artifacts<'_> {
        Artifacts {
            db: &self.db,
            blobs: &self.blobs,
        }
    }

    /// Users.
    pub fn users(&self) -> Users<'_> {
        Users { db: &self.db }
    }

    /// Projects and the project list.
    pub fn projects(&self) -> Projects<'_> {
        Projects { db: &self.db }
    }

    /// Source repositories tracked by projects.
    pub fn repositories(&self) -> Repositories<'_> {
        Repositories { db: &self.db }
    }

    /// Source snapshots.
    pub fn snapshots(&self) -> Snapshots<'_> {
        Snapshots { db: &self.db }
    }

    /// Scans and the scan queue.
    pub fn scans(&self) -> Scans<'_> {
        Scans { db: &self.db }
    }

    /// Findings.
    pub fn findings(&self) -> Findings<'_> {
        Findings { db: &self.db }
    }

    /// The event log.
    pub fn events(&self) -> Events<'_> {
        Events { db: &self.db }
    }

    /// API keys.
    pub fn api_keys(&self) -> ApiKeys<'_> {
        ApiKeys { db: &self.db }
    }

    /// Usage records.
    pub fn usage(&self) -> Usage<'_> {
        Usage { db: &self.db }
    }

    /// Worker heartbeats.
    pub fn workers(&self) -> Workers<'_> {
        Workers { db: &self.db }
    }
}

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
