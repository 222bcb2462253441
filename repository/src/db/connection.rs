//! The connection every repository uses: a pool handle whose every call is bounded, whose
//! failures are classified, and which condemns the pool's old connections when one of them
//! proves dead.
//!
//! - **Bounded.** Each statement gets the client's own deadline (`statement_timeout`, plus the
//!   acquire timeout when it must first take a connection from the pool). The server enforces
//!   the same `statement_timeout`, but a frozen server or a half-open connection enforces
//!   nothing; the client deadline holds whatever the server does.
//! - **Self-healing.** A failure that shows the connection dead or on a read-only server
//!   records the moment ([`Health::condemn`]); the pool's `before_acquire` hook (`pool.rs`)
//!   then discards every connection opened before it, so one restart or failover costs at
//!   most the calls that were in flight, not one failed call per pooled connection.
//! - **Retried where safe.** [`retry_conflicts`] repeats a whole transaction that lost a
//!   deadlock or serialization check, with jittered backoff, a bounded number of times.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, RuntimeErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait, sqlx,
};

use crate::db::simple::{Simple, SimpleTx};
use crate::error::{Error, Result};
use crate::metrics::{self, Claim, Demand};

/// Transactions that lose a deadlock or serialization check are run at most this many times.
const CONFLICT_ATTEMPTS: u32 = 5;

/// When the pool last saw a connection die, so that connections older than that are not
/// handed out again, and when the server was last found gone, so that calls still waiting on
/// it are abandoned. Shared by [`Db`], the pool's `before_acquire` hook and the failure
/// monitor (`monitor.rs`).
#[derive(Debug)]
pub(crate) struct Health {
    opened: Instant,
    /// Nanoseconds after `opened` of the last condemning failure; 0 for none.
    condemned_at: AtomicU64,
    /// Counts the times the server was found gone ([`Health::fail_over`]); a call watches it.
    failovers: tokio::sync::watch::Sender<u64>,
    /// Who wants a connection, for the pool's waiters gauge.
    pub(crate) demand: Demand,
}

impl Health {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            condemned_at: AtomicU64::new(0),
            failovers: tokio::sync::watch::Sender::new(0),
            demand: Demand::default(),
        })
    }

    /// Records that connections opened before now are suspect.
    pub(crate) fn condemn(&self) {
        let now = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.condemned_at.fetch_max(now.max(1), Ordering::Relaxed);
    }

    /// Records that the server the pool's connections reach is gone (it stopped answering,
    /// or the endpoint now leads to another): they are condemned, and every call still
    /// waiting on one is abandoned with a retryable error.
    pub(crate) fn fail_over(&self, why: &str) {
        self.condemn();
        self.failovers.send_modify(|n| *n += 1);
        metrics::failover();
        tracing::warn!(
            why,
            "abandoning the calls in flight on the old server's connections"
        );
    }

    /// True when a connection of this age was opened before the last condemning failure.
    pub(crate) fn is_condemned(&self, age: Duration) -> bool {
        let condemned_at = self.condemned_at.load(Ordering::Relaxed);
        if condemned_at == 0 {
            return false;
        }
        let opened_at = self.opened.elapsed().saturating_sub(age);
        u64::try_from(opened_at.as_nanos()).unwrap_or(u64::MAX) < condemned_at
    }
}

/// The bounds of [`Db`]'s calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub statement: Duration,
    pub acquire: Duration,
}

/// The pool, as the repositories use it (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Db {
    conn: Pool,
    bounds: Bounds,
    health: Arc<Health>,
}

impl Db {
    /// `settings` gives each transaction its timeouts behind a transaction-mode pooler
    /// ([`vega_config::DatabaseSettings::transaction_settings`]), where statements go through
    /// [`Simple`].
    pub(crate) fn new(
        conn: DatabaseConnection,
        bounds: Bounds,
        health: Arc<Health>,
        settings: Option<String>,
    ) -> Self {
        let simple = settings.map(|s| Simple::new(conn.get_postgres_connection_pool().clone(), s));
        Self {
            conn: Pool { conn, simple },
            bounds,
            health,
        }
    }

    #[cfg(feature = "test-support")]
    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.conn.conn
    }

    /// A pool call has no transaction to mark when it fails.
    fn note<T>(&self, _: &Result<T, DbErr>) {}

    /// A pool call's bound: taking a connection, then one statement.
    fn call_bound(&self) -> Duration {
        self.bounds.acquire + self.bounds.statement
    }

    /// Runs one statement that may not run in a transaction block (`… CONCURRENTLY`) on a
    /// pool connection as it is, bounded like any pool call. Behind a transaction-mode pooler
    /// every other pool statement carries the timeouts in its implicit transaction; this one
    /// cannot, so the server's own timeouts apply to it.
    pub(crate) async fn outside_transaction(&self, sql: &str) -> Result<(), DbErr> {
        let _wanting = self.claim();
        bounded(
            &self.health,
            self.call_bound(),
            self.conn.conn.execute_unprepared(sql),
        )
        .await
        .map(|_| ())
    }

    /// Opens a transaction. On SQLite it is `BEGIN IMMEDIATE`: it takes the write lock at
    /// once (waiting up to the busy timeout), because a deferred transaction that reads and
    /// then writes fails at once with `SQLITE_BUSY` when another process wrote in between.
    pub(crate) async fn begin(&self) -> Result<Tx> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let started = Instant::now();
        let txn = {
            let _wanting = self.health.demand.call();
            bounded(&self.health, self.call_bound(), self.conn.begin(options)).await?
        };
        metrics::acquire(started.elapsed());
        Ok(Tx::new(txn, self.bounds, self.health.clone(), true))
    }

    /// The pool's connections now: (open, idle, maximum).
    pub(crate) fn pool_state(&self) -> (u32, u32, u32) {
        let conn = &self.conn.conn;
        match conn.get_database_backend() {
            DbBackend::Postgres => {
                let pool = conn.get_postgres_connection_pool();
                (
                    pool.size(),
                    to_u32(pool.num_idle()),
                    pool.options().get_max_connections(),
                )
            }
            DbBackend::Sqlite => {
                let pool = conn.get_sqlite_connection_pool();
                (
                    pool.size(),
                    to_u32(pool.num_idle()),
                    pool.options().get_max_connections(),
                )
            }
            _ => (0, 0, 0),
        }
    }

    /// Connections wanted beyond those in use: the callers waiting for one.
    pub(crate) fn waiters(&self, in_use: u32) -> i64 {
        self.health.demand.waiters(in_use)
    }

    /// A pool call wants a connection until it returns.
    fn claim(&self) -> Option<Claim<'_>> {
        Some(self.health.demand.call())
    }
}

/// The pool as one statement reaches it: through sea-orm, or behind a transaction-mode pooler
/// through [`Simple`] (the server connection may change between transactions, so nothing may
/// outlive one).
#[derive(Debug, Clone)]
struct Pool {
    conn: DatabaseConnection,
    simple: Option<Simple>,
}

impl Pool {
    async fn begin(&self, options: TransactionOptions) -> Result<Txn, DbErr> {
        Ok(match &self.simple {
            None => Txn::Orm(self.conn.begin_with_options(options).await?),
            Some(simple) => Txn::Simple(simple.begin().await?),
        })
    }
}

/// `$call` with `$c` bound to the pool's way of sending statements.
macro_rules! via {
    ($pool:expr, $c:ident => $call:expr) => {
        match &$pool.simple {
            None => {
                let $c = &$pool.conn;
                $call.await
            }
            Some($c) => $call.await,
        }
    };
}

#[async_trait::async_trait]
impl ConnectionTrait for Pool {
    fn get_database_backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        via!(self, c => c.execute_raw(stmt))
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        via!(self, c => c.execute_unprepared(sql))
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        via!(self, c => c.query_one_raw(stmt))
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        via!(self, c => c.query_all_raw(stmt))
    }
}

/// A transaction as [`Pool::begin`] opened it.
enum Txn {
    Orm(DatabaseTransaction),
    Simple(SimpleTx),
}

/// `$call` with `$c` bound to the transaction, whichever kind.
macro_rules! either {
    ($txn:expr, $c:ident => $call:expr) => {
        match $txn {
            Txn::Orm($c) => $call.await,
            Txn::Simple($c) => $call.await,
        }
    };
}

impl Txn {
    async fn savepoint(&self) -> Result<Txn, DbErr> {
        Ok(match self {
            Txn::Orm(txn) => Txn::Orm(txn.begin().await?),
            Txn::Simple(txn) => Txn::Simple(txn.savepoint().await?),
        })
    }

    async fn commit(self) -> Result<(), DbErr> {
        either!(self, c => c.commit())
    }

    async fn rollback(self) -> Result<(), DbErr> {
        either!(self, c => c.rollback())
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Txn {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Txn::Orm(txn) => txn.get_database_backend(),
            Txn::Simple(txn) => txn.get_database_backend(),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        either!(self, c => c.execute_raw(stmt))
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        either!(self, c => c.execute_unprepared(sql))
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        either!(self, c => c.query_one_raw(stmt))
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        either!(self, c => c.query_all_raw(stmt))
    }
}

/// A transaction opened by [`Db::begin`] (or a savepoint, [`Tx::savepoint`]), its statements
/// bounded like the pool's. Dropped without [`Tx::commit`], it rolls back.
///
/// A statement that fails marks it *aborted*: on Postgres the server refuses everything after
/// a failed statement anyway, and SQLite does not, so the mark makes both engines agree that a
/// transaction with a failed step cannot commit half of its work. A savepoint has a mark of its
/// own: rolling it back leaves its parent usable.
pub(crate) struct Tx {
    txn: Txn,
    bounds: Bounds,
    health: Arc<Health>,
    aborted: AtomicBool,
    /// For a transaction opened on the pool (not a savepoint): its connection, counted as
    /// wanted until it is dropped.
    _holding: Option<Holding>,
}

/// An open transaction's hold on a pooled connection, for the waiters gauge.
struct Holding(Arc<Health>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.demand.transaction_closed();
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("aborted", &self.is_aborted())
            .finish_non_exhaustive()
    }
}

impl Tx {
    fn new(txn: Txn, bounds: Bounds, health: Arc<Health>, top: bool) -> Self {
        Self {
            txn,
            bounds,
            _holding: top.then(|| {
                health.demand.transaction_opened();
                Holding(health.clone())
            }),
            health,
            aborted: AtomicBool::new(false),
        }
    }

    /// A transaction already holds its connection.
    fn claim(&self) -> Option<Claim<'_>> {
        None
    }

    fn statement_bound(&self) -> Duration {
        self.bounds.statement
    }

    /// Marks the transaction as unable to commit: part of a step may have been written.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    fn note<T>(&self, result: &Result<T, DbErr>) {
        if result.is_err() {
            self.abort();
        }
    }

    /// A nested transaction: a `SAVEPOINT`, rolled back to on drop.
    pub(crate) async fn savepoint(&self) -> Result<Tx> {
        let result = bounded(&self.health, self.bounds.statement, self.txn.savepoint()).await;
        self.note(&result);
        Ok(Tx::new(result?, self.bounds, self.health.clone(), false))
    }

    /// Rolls back, within one statement's bound.
    pub(crate) async fn rollback(self) -> Result<()> {
        Ok(bounded(&self.health, self.bounds.statement, self.txn.rollback()).await?)
    }

    /// Commits, within one statement's bound. An aborted transaction rolls back instead and
    /// fails with [`Error::Aborted`].
    pub(crate) async fn commit(self) -> Result<()> {
        if self.is_aborted() {
            bounded(&self.health, self.bounds.statement, self.txn.rollback()).await?;
            return Err(Error::Aborted);
        }
        Ok(bounded(&self.health, self.bounds.statement, self.txn.commit()).await?)
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Runs `call` within `limit`, recording a condemning failure in `health`. A call cut off by
/// the deadline fails like a socket read that timed out, which [`Error`] classifies as
/// [`crate::Transient::Timeout`].
async fn bounded<T>(
    health: &Health,
    limit: Duration,
    call: impl Future<Output = Result<T, DbErr>>,
) -> Result<T, DbErr> {
    let started = Instant::now();
    let mut failovers = health.failovers.subscribe();
    let io_error = |kind, message: String| {
        Err(DbErr::Query(RuntimeErr::SqlxError(Arc::new(
            sqlx::Error::Io(std::io::Error::new(kind, message)),
        ))))
    };
    let result = tokio::select! {
        result = tokio::time::timeout(limit, call) => match result {
            Ok(result) => result,
            Err(_) => {
                // Postgres ends a statement at statement_timeout itself; silence past the
                // client's deadline means the connection, not the statement, is stuck.
                health.condemn();
                io_error(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer from the database within {limit:?} \
                         (VEGA_DB_STATEMENT_TIMEOUT, VEGA_DB_ACQUIRE_TIMEOUT)"
                    ),
                )
            }
        },
        _ = failovers.changed() => io_error(
            std::io::ErrorKind::ConnectionAborted,
            "abandoned: the database server stopped answering or the endpoint moved to \
             another server (failure monitor, VEGA_DB_PROBE_TIMEOUT)"
                .to_owned(),
        ),
    };
    metrics::statement(started.elapsed(), &result);
    if let Err(err) = &result
        && let Error::Unavailable { cause, .. } = Error::from(err.clone())
        && cause.condemns_connections()
    {
        health.condemn();
    }
    result
}

macro_rules! bounded_connection {
    ($ty:ty, $inner:ident, $limit:expr, $note:expr, $claim:expr) => {
        #[async_trait::async_trait]
        impl ConnectionTrait for $ty {
            fn get_database_backend(&self) -> DbBackend {
                self.$inner.get_database_backend()
            }

            async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
                let _wanting = $claim(self);
                let result =
                    bounded(&self.health, $limit(self), self.$inner.execute_raw(stmt)).await;
                $note(self, &result);
                result
            }

            async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
                let _wanting = $claim(self);
                let result = bounded(
                    &self.health,
                    $limit(self),
                    self.$inner.execute_unprepared(sql),
                )
                .await;
                $note(self, &result);
                result
            }

            async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
                let _wanting = $claim(self);
                let result =
                    bounded(&self.health, $limit(self), self.$inner.query_one_raw(stmt)).await;
                $note(self, &result);
                result
            }

            async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
                let _wanting = $claim(self);
                let result =
                    bounded(&self.health, $limit(self), self.$inner.query_all_raw(stmt)).await;
                $note(self, &result);
                result
            }
        }
    };
}

bounded_connection!(Db, conn, Db::call_bound, Db::note, Db::claim);
bounded_connection!(Tx, txn, Tx::statement_bound, Tx::note, Tx::claim);

/// Runs `transaction` until it does not lose a deadlock or serialization check, at most [`CONFLICT_ATTEMPTS`] times, sleeping a jittered, doubling backoff between
/// runs. Only for transactions that are safe to repeat whole: each run must start from what is
/// committed and decide everything again (a fenced completion does).
pub(crate) async fn retry_conflicts<T, F, Fut>(what: &str, mut transaction: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(Error::Unavailable { cause, message })
                if cause.is_conflict() && attempt < CONFLICT_ATTEMPTS =>
            {
                let ceiling = 10u64 << attempt;
                let pause = Duration::from_millis(rand::random_range(ceiling / 2..=ceiling));
                tracing::info!(what, attempt, %cause, %message, ?pause, "retrying the transaction");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_opened_before_a_failure_are_condemned() {
        let health = Health::new();
        assert!(!health.is_condemned(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(5));
        health.condemn();
        // Opened at the pool's start: before the failure.
        assert!(health.is_condemned(health.opened.elapsed()));
        std::thread::sleep(Duration::from_millis(5));
        // Opened just now: after it.
        assert!(!health.is_condemned(Duration::ZERO));
    }
}
