use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use vega_blobstore::BlobStore;
use vega_config::{Backend, PoolOptions, Pooler, Settings};
use vega_migration::status::SchemaStatus;

use crate::accounts::api_keys::ApiKeys;
use crate::accounts::users::Users;
use crate::accounts::workers::Workers;
use crate::activity::events::Events;
use crate::activity::retention::EventArchives;
use crate::activity::usage::Usage;
use crate::context::principal::Principal;
use crate::db::connection::{Bounds, Db, Health};
use crate::db::replica::{self, Reader, ReaderStatus, ReplicaKind, Track};
use crate::db::route::Pools;
use crate::error::{Error, Result};
use crate::findings::reads::Findings;
use crate::leader_leases::LeaderLeases;
use crate::objects::artifacts::Artifacts;
use crate::queue::scans::Scans;
use crate::session::Session;
use crate::sources::projects::Projects;
use crate::sources::repositories::Repositories;
use crate::sources::snapshots::Snapshots;

/// The entry point: a cheap-to-clone handle on the database pool and the blob store.
///
/// Build one at start-up and share it (an axum `State`, an `Arc` in a worker); clones share
/// the pool. Handlers act through [`Store::session`], scoped to the request's principal. The
/// store's own accessors (`store.scans().claim_next(...)`) are unscoped: the system's, for
/// maintenance and operators' tools.
#[derive(Debug, Clone)]
pub struct Store {
    db: Pools,
    blobs: BlobStore,
    system: Principal,
    /// The system's sessions share one: they read what any of them wrote.
    system_track: Track,
}

impl Store {
    /// Connects with the given settings (the pool's size and bounds are `settings.pool`) and
    /// checks that the schema matches this build. On Postgres reached directly it also starts
    /// the failure monitor, which abandons the calls in flight on a server that stopped
    /// answering or was replaced (`VEGA_DB_PROBE_INTERVAL`, `VEGA_DB_PROBE_TIMEOUT`).
    ///
    /// Fails with [`Error::Unavailable`] (with the checks to run) when the database cannot be
    /// reached, and with [`Error::SchemaOutdated`] listing the versions when migrations are
    /// pending or the database was migrated by a newer build: the "migrations not applied"
    /// and "constraint violation after deploy" failures become one message at start-up.
    pub async fn connect(settings: &Settings) -> Result<Self> {
        settings.log_effective();
        let blobs = BlobStore::from_settings(&settings.blob).await?;
        let health = Health::new();
        let conn =
            crate::db::pool::open(&settings.database, &settings.pool, health.clone()).await?;
        // Behind a pooler its server connections are the pooler's to watch, and a probe may
        // queue for one of them under load: a wait that is not a failure.
        if settings.database.backend == Backend::Postgres
            && settings.database.pooler == Pooler::None
        {
            crate::db::monitor::spawn(&conn, &health, &settings.pool);
        }
        let timeouts = settings.database.transaction_settings(&settings.pool);
        let mut bounds = bounds(&settings.pool);
        if settings.database.backend == Backend::Sqlite {
            bounds.acquire = settings.pool.sqlite_write_wait();
        }
        let writer = Db::new(conn, bounds, health, timeouts);
        let reader = open_reader(settings, &writer).await?;
        Self::checked(Pools::new(writer, reader), blobs).await
    }

    /// Wraps an existing connection and blob store after checking the schema (tests, tools).
    /// Calls are bounded by [`PoolOptions::default`]'s timeouts; the connection's own pool
    /// settings are kept.
    pub async fn from_parts(db: DatabaseConnection, blobs: BlobStore) -> Result<Self> {
        let db = Db::new(db, bounds(&PoolOptions::default()), Health::new(), None);
        Self::checked(Pools::new(db, None), blobs).await
    }

    async fn checked(db: Pools, blobs: BlobStore) -> Result<Self> {
        let status = SchemaStatus::read(&db.writer).await?;
        if !status.is_current() {
            return Err(Error::SchemaOutdated {
                pending: status.pending,
                unknown: status.unknown,
            });
        }
        Ok(Self {
            system_track: Track::for_reader(db.reader()),
            db,
            blobs,
            system: Principal::system("store"),
        })
    }

    /// The repositories as `principal` sees them: scoped reads and writes, events with it as
    /// the actor, and transactions ([`Session::begin`]). Each session reads its own writes
    /// (see [`Session`] on read replicas).
    pub fn session<'s>(&'s self, principal: &'s Principal) -> Session<'s> {
        Session::new(
            &self.db,
            &self.blobs,
            principal,
            Track::for_reader(self.db.reader()),
        )
    }

    /// The unscoped session the store's own accessors use: the system acting as `"store"`.
    fn system(&self) -> Session<'_> {
        Session::new(
            &self.db,
            &self.blobs,
            &self.system,
            self.system_track.clone(),
        )
    }

    /// The read replica as routing sees it now: whether it serves, its lag, and the replica
    /// reads each server took. `None` when there is none (a writer-only store, in-memory
    /// SQLite).
    pub fn reader_status(&self) -> Option<ReaderStatus> {
        self.db.reader().map(Reader::status)
    }

    /// Samples the gauges of the pool and the queue into the installed metrics recorder (see
    /// the crate's metrics docs); a binary calls it before each scrape. Statement timings and
    /// error counts are recorded as they happen.
    pub async fn record_gauges(&self) -> Result<()> {
        let (open, idle, max) = self.db.writer.pool_state();
        crate::metrics::pool(
            open,
            idle,
            max,
            self.db.writer.waiters(open.saturating_sub(idle)),
        );
        let summary = self.scans().queue_summary().await?;
        let oldest = summary.oldest_due_since.map_or(0.0, |since| {
            (chrono::Utc::now() - since.to_utc())
                .num_milliseconds()
                .max(0) as f64
                / 1000.0
        });
        let depth: Vec<_> = summary
            .depth
            .iter()
            .map(|row| (row.status.clone(), row.priority, row.scans))
            .collect();
        crate::metrics::queue(
            &depth,
            oldest,
            summary.scheduled_later,
            summary.expired_leases,
        );
        Ok(())
    }

    /// The timeouts Postgres applies to this store's statements, read back through whatever
    /// pooler is in between (`VEGA_DB_POOLER`); `None` on SQLite, which has no such settings.
    /// A zero means the setting did not reach the server.
    #[tracing::instrument(name = "store.server_timeouts", skip(self))]
    pub async fn server_timeouts(&self) -> Result<Option<ServerTimeouts>> {
        if self.db.writer.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let sql = "SELECT (SELECT setting FROM pg_settings WHERE name = 'statement_timeout') AS s, \
                   (SELECT setting FROM pg_settings WHERE name = 'lock_timeout') AS l, \
                   (SELECT setting FROM pg_settings \
                     WHERE name = 'idle_in_transaction_session_timeout') AS i";
        let row = self
            .db
            .writer
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await?
            .ok_or_else(|| Error::NotFound {
                entity: "setting",
                key: "statement_timeout".into(),
            })?;
        let ms = |column: &str| -> Result<Duration> {
            let text: String = row.try_get("", column)?;
            text.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| Error::invalid(column, format!("{text:?} is not milliseconds")))
        };
        Ok(Some(ServerTimeouts {
            statement: ms("s")?,
            lock: ms("l")?,
            idle_in_transaction: ms("i")?,
        }))
    }

    /// The underlying connection, for the tests' own queries.
    #[cfg(feature = "test-support")]
    pub fn connection(&self) -> &DatabaseConnection {
        self.db.writer.connection()
    }

    /// Runs `stmt` on the writer's pool the way the repositories send theirs (behind a
    /// transaction-mode pooler: one simple query, values as literals), for the tests' own.
    #[cfg(feature = "test-support")]
    pub async fn query_all(&self, stmt: sea_orm::Statement) -> Result<Vec<sea_orm::QueryResult>> {
        use sea_orm::ConnectionTrait;
        Ok(self.db.writer.query_all_raw(stmt).await?)
    }

    /// The blob store, for the tests' own objects.
    #[cfg(feature = "test-support")]
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Stored objects: source archives, reports, event logs, debug bundles.
    pub fn artifacts(&self) -> Artifacts<'_> {
        self.system().artifacts()
    }

    /// SARIF reports in and out.
    pub fn reports(&self) -> crate::reports::import::Reports<'_> {
        self.system().reports()
    }

    /// Event retention and export.
    pub fn event_archives(&self) -> EventArchives<'_> {
        self.system().event_archives()
    }

    /// Users.
    pub fn users(&self) -> Users<'_> {
        self.system().users()
    }

    /// Projects and the project list.
    pub fn projects(&self) -> Projects<'_> {
        self.system().projects()
    }

    /// Source repositories tracked by projects.
    pub fn repositories(&self) -> Repositories<'_> {
        self.system().repositories()
    }

    /// Source snapshots.
    pub fn snapshots(&self) -> Snapshots<'_> {
        self.system().snapshots()
    }

    /// Leader leases of singleton jobs (`vega-admin maintain`).
    pub fn leader_leases(&self) -> LeaderLeases<'_> {
        self.system().leader_leases()
    }

    /// Scans and the scan queue.
    pub fn scans(&self) -> Scans<'_> {
        self.system().scans()
    }

    /// Findings.
    pub fn findings(&self) -> Findings<'_> {
        self.system().findings()
    }

    /// The event log.
    pub fn events(&self) -> Events<'_> {
        self.system().events()
    }

    /// API keys, and authentication.
    pub fn api_keys(&self) -> ApiKeys<'_> {
        self.system().api_keys()
    }

    /// Usage records.
    pub fn usage(&self) -> Usage<'_> {
        self.system().usage()
    }

    /// Workers: their credentials and heartbeats.
    pub fn workers(&self) -> Workers<'_> {
        self.system().workers()
    }
}

/// The server-side timeouts of a store's statements ([`Store::server_timeouts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// `statement_timeout`.
    pub statement: Duration,
    /// `lock_timeout`.
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`.
    pub idle_in_transaction: Duration,
}

impl ServerTimeouts {
    /// What `pool` asks the server for.
    pub fn wanted(pool: &PoolOptions) -> Self {
        Self {
            statement: pool.statement_timeout,
            lock: pool.lock_timeout,
            idle_in_transaction: pool.idle_in_transaction_timeout,
        }
    }
}

/// The reader beside the writer `db`: the configured Postgres replica, with its monitor, or
/// the embedded SQLite file's read-only connections.
async fn open_reader(settings: &Settings, db: &Db) -> Result<Option<Reader>> {
    let pool = &settings.pool;
    match (&settings.reader, settings.database.backend) {
        (Some(reader), Backend::Postgres) => {
            // The writer answers for the cluster: Aurora's status function exists on both.
            let kind = replica::detect(db).await?;
            let health = Health::new();
            let conn = crate::db::pool::open_replica(reader, pool, health.clone()).await?;
            let options = (*conn.get_postgres_connection_pool().connect_options()).clone();
            let timeouts = reader.transaction_settings(pool);
            let reader = Reader::new(Db::new(conn, bounds(pool), health, timeouts), kind);
            reader.spawn_monitor(options, pool);
            Ok(Some(reader))
        }
        (_, Backend::Sqlite) => {
            let Some(conn) = crate::db::pool::open_sqlite_reader(&settings.database, pool).await?
            else {
                return Ok(None);
            };
            let reader = Db::new(conn, bounds(pool), Health::new(), None);
            Ok(Some(Reader::new(reader, ReplicaKind::Sqlite)))
        }
        (None, Backend::Postgres) => Ok(None),
    }
}

fn bounds(pool: &PoolOptions) -> Bounds {
    Bounds {
        statement: pool.statement_timeout,
        acquire: pool.acquire_timeout,
    }
}
