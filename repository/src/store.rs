use chrono::{DateTime, FixedOffset, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use vega_blobstore::BlobStore;
use vega_config::{PoolOptions, Settings};
use vega_migration::status::SchemaStatus;

use crate::db::{Bounds, Db, Health};
use crate::{
    ApiKeys, Artifacts, Error, Events, Findings, Projects, Repositories, Result, Scans, Snapshots,
    Usage, Users, Workers,
};

/// The entry point for application handlers: a cheap-to-clone handle on the database pool,
/// from which each table's repository is reached (`store.scans().claim_next(...)`).
///
/// Build one at start-up and share it (an axum `State`, an `Arc` in a worker); clones share
/// the pool.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    blobs: BlobStore,
}

impl Store {
    /// Connects with the given settings (the pool's size and bounds are `settings.pool`) and
    /// checks that the schema matches this build.
    ///
    /// Fails with [`Error::Unavailable`] (with the checks to run) when the database cannot be
    /// reached, and with [`Error::SchemaOutdated`] listing the versions when migrations are
    /// pending or the database was migrated by a newer build: the "migrations not applied"
    /// and "constraint violation after deploy" failures become one message at start-up.
    pub async fn connect(settings: &Settings) -> Result<Self> {
        settings.log_effective();
        let blobs = BlobStore::from_settings(&settings.blob).await?;
        let health = Health::new();
        let conn = crate::pool::open(&settings.database, &settings.pool, health.clone()).await?;
        Self::checked(Db::new(conn, bounds(&settings.pool), health), blobs).await
    }

    /// Wraps an existing connection and blob store after checking the schema (tests, tools).
    /// Calls are bounded by [`PoolOptions::default`]'s timeouts; the connection's own pool
    /// settings are kept.
    pub async fn from_parts(db: DatabaseConnection, blobs: BlobStore) -> Result<Self> {
        let db = Db::new(db, bounds(&PoolOptions::default()), Health::new());
        Self::checked(db, blobs).await
    }

    async fn checked(db: Db, blobs: BlobStore) -> Result<Self> {
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
        self.db.connection()
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

fn bounds(pool: &PoolOptions) -> Bounds {
    Bounds {
        statement: pool.statement_timeout,
        acquire: pool.acquire_timeout,
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
