//! Opening the application pool: sizes and bounds from [`PoolOptions`], a `before_acquire`
//! check that keeps dead connections from being handed out without costing a busy pool a
//! round trip, and an `after_release` check that closes condemned connections as they come
//! back.
//!
//! A connection is checked before it is handed out only when it is suspect:
//! - opened before a failure that condemned the pool's connections ([`Health`]): closed,
//!   unasked (after a restart or failover they are all dead or on the old writer);
//! - idle for at least `idle_check_after`: pinged, under a deadline of its own, because a
//!   restart, a proxy or a NAT gateway may have dropped it while it sat unused. Connections
//!   in steady use are not pinged (sqlx's stock `test_before_acquire` pings every acquire).

use std::sync::Arc;

use sea_orm::sqlx::{self, Connection};
use sea_orm::{ConnectOptions, DatabaseConnection};
use vega_config::{Backend, DatabaseSettings, PoolOptions};

use crate::db::connection::Health;
use crate::error::{Error, Result, Transient};

/// Opens the pool described by `settings` and `pool`, sharing `health` with its hook.
pub(crate) async fn open(
    settings: &DatabaseSettings,
    pool: &PoolOptions,
    health: Arc<Health>,
) -> Result<DatabaseConnection> {
    open_with(settings, pool, health, false).await
}

async fn open_with(
    settings: &DatabaseSettings,
    pool: &PoolOptions,
    health: Arc<Health>,
    lazy: bool,
) -> Result<DatabaseConnection> {
    let released = health.clone();
    let mut options = settings.app_connect_options(pool, move |o| {
        let health = released.clone();
        // A connection handed back after its call was abandoned (deadline, failover) has a
        // reply pending from a server that may never send it: sqlx would ping it on release
        // with no deadline, holding a pool slot for good. Condemned ones are closed instead.
        o.after_release(move |_, meta| {
            let keep = !health.is_condemned(meta.age);
            Box::pin(async move { Ok(keep) })
        })
    });
    // Statements are logged at TRACE (free unless enabled), slow ones at WARN; sea-orm only
    // honours the slow-statement threshold when statement logging is on.
    options
        .acquire_timeout(pool.acquire_timeout)
        .sqlx_logging(true)
        .sqlx_logging_level(log::LevelFilter::Trace)
        .sqlx_slow_statements_logging_settings(log::LevelFilter::Warn, pool.slow_statement)
        .connect_lazy(lazy);
    match settings.backend {
        Backend::Postgres => {
            options
                .max_connections(pool.max_connections)
                .test_before_acquire(false);
            install_check(&mut options, pool, health);
        }
        Backend::Sqlite => {
            // One writer: every write queues for it (the readers are `open_sqlite_reader`'s).
            options
                .max_connections(1)
                .acquire_timeout(pool.sqlite_write_wait());
        }
    }
    settings
        .connect(options)
        .await
        .map_err(|e| Error::unavailable(Transient::Unreachable, e))
}

/// How many read-only connections the embedded SQLite default keeps beside its one writer:
/// WAL readers do not wait for the writer or for each other.
const SQLITE_READERS: u32 = 4;

/// Opens the read pool of the embedded SQLite file `settings` names: read-only connections
/// beside the writer. `None` for an in-memory database, which one connection holds alone.
pub(crate) async fn open_sqlite_reader(
    settings: &DatabaseSettings,
    pool: &PoolOptions,
) -> Result<Option<DatabaseConnection>> {
    if settings.sqlite_path().is_none() {
        return Ok(None);
    }
    let mut options = settings.app_connect_options(pool, |o| o);
    options
        .acquire_timeout(pool.acquire_timeout)
        .max_connections(SQLITE_READERS)
        .map_sqlx_sqlite_opts(|o| o.read_only(true));
    settings
        .connect(options)
        .await
        .map(Some)
        .map_err(|e| Error::unavailable(Transient::Unreachable, e))
}

/// Opens the pool of a Postgres read replica like the writer's, but lazily: a replica that is
/// down at start-up costs reads nothing (they go to the writer) and start-up no error.
pub(crate) async fn open_replica(
    settings: &DatabaseSettings,
    pool: &PoolOptions,
    health: Arc<Health>,
) -> Result<DatabaseConnection> {
    open_with(settings, pool, health, true).await
}

fn install_check(options: &mut ConnectOptions, pool: &PoolOptions, health: Arc<Health>) {
    let idle_check_after = pool.idle_check_after;
    let ping_timeout = pool.ping_timeout();
    options.map_sqlx_postgres_before_acquire(move |conn, meta| {
        let health = health.clone();
        Box::pin(async move {
            if health.is_condemned(meta.age) {
                return Ok(false);
            }
            if meta.idle_for < idle_check_after {
                return Ok(true);
            }
            let failure = match tokio::time::timeout(ping_timeout, conn.ping()).await {
                Ok(Ok(())) => return Ok(true),
                Ok(Err(err)) => err,
                Err(_) => sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("liveness ping unanswered after {ping_timeout:?}"),
                )),
            };
            // One idle connection found dead: its siblings of the same age are too.
            health.condemn();
            tracing::info!(error = %failure, idle_for = ?meta.idle_for, "discarding a dead pooled connection");
            Err(failure)
        })
    });
}
