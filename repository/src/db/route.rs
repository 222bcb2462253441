//! Where a repository's statement goes: the writer's pool, the read replica's, or a
//! caller's transaction ([`Conn`]), and the units of work methods open on it ([`Unit`]).
//! The rule that sends a replica read to the reader is `db/replica.rs`'s; this module applies
//! it to each statement and notes each write in the session's [`Track`].

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, Statement};

use crate::db::connection::{Db, Tx};
use crate::db::replica::{Fallback, Reader, Track};
use crate::error::{Error, Result};

/// The writer's pool and, when one is configured, the read replica's beside it.
#[derive(Debug, Clone)]
pub(crate) struct Pools {
    pub(crate) writer: Db,
    reader: Option<Arc<Reader>>,
}

impl Pools {
    pub(crate) fn new(writer: Db, reader: Option<Reader>) -> Self {
        Self {
            writer,
            reader: reader.map(Arc::new),
        }
    }

    /// The read replica, if any.
    pub(crate) fn reader(&self) -> Option<&Reader> {
        self.reader.as_deref()
    }
}

/// Where a repository's statements go: the pool, or a transaction a caller opened (the way
/// Lemmy's `DbPool` is a pool or a connection). On the pool, the session's [`Track`] notes its
/// writes; a replica read (`Cx::replica`) may be served by the read replica.
#[derive(Debug, Clone)]
pub(crate) enum Conn<'a> {
    Pool(&'a Pools, Track),
    Replica(&'a Pools, Track),
    Tx(&'a Tx),
}

impl<'a> Conn<'a> {
    /// Opens a unit of work for a method of several statements: a transaction of its own on
    /// the pool; inside a caller's transaction, that transaction, which the unit aborts if it
    /// is dropped uncommitted (the method failed part-way and cannot undo what it wrote).
    pub(crate) async fn unit(&self) -> Result<Unit<'a>> {
        Ok(match self {
            Conn::Pool(pools, track) | Conn::Replica(pools, track) => {
                Unit::Own(pools.writer.begin().await?, track.clone())
            }
            Conn::Tx(tx) => Unit::Joined(Joined { tx, armed: true }),
        })
    }

    /// Runs a statement that may not run in a transaction block (`… CONCURRENTLY`) on the
    /// writer's pool; inside a caller's transaction it is refused.
    pub(crate) async fn outside_transaction(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Pool(pools, _) | Conn::Replica(pools, _) => {
                Ok(pools.writer.outside_transaction(sql).await?)
            }
            Conn::Tx(_) => Err(Error::invalid(
                "transaction",
                "this call runs statements that cannot run inside a transaction; call it on the session",
            )),
        }
    }

    /// True when a method may repeat its whole transaction after a conflict: only when it owns
    /// that transaction. Inside a caller's, the caller decides.
    pub(crate) fn owns_transactions(&self) -> bool {
        !matches!(self, Conn::Tx(_))
    }

    /// The same place for a replica read: the pool's statements may go to the reader; a
    /// caller's transaction stays what it is.
    pub(crate) fn replica(&self) -> Conn<'a> {
        match self {
            Conn::Pool(pools, track) | Conn::Replica(pools, track) => {
                Conn::Replica(pools, track.clone())
            }
            Conn::Tx(tx) => Conn::Tx(tx),
        }
    }
}

/// A method's unit of work (see [`Conn::unit`]).
pub(crate) enum Unit<'a> {
    /// A transaction of the method's own, and the session whose write it is.
    Own(Tx, Track),
    /// The caller's transaction.
    Joined(Joined<'a>),
}

/// A caller's transaction joined by a method: aborted if the method drops it uncommitted.
pub(crate) struct Joined<'a> {
    tx: &'a Tx,
    armed: bool,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.tx.abort();
        }
    }
}

impl Unit<'_> {
    fn tx(&self) -> &Tx {
        match self {
            Unit::Own(own, _) => own,
            Unit::Joined(joined) => joined.tx,
        }
    }

    /// Ends the unit: commits a transaction of its own; inside a caller's, leaves the commit
    /// to the caller.
    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Unit::Own(own, track) => {
                // Marked even when the commit's answer is lost: it may have committed.
                let result = own.commit().await;
                track.wrote();
                result
            }
            Unit::Joined(mut joined) => {
                joined.armed = false;
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Unit<'_> {
    fn get_database_backend(&self) -> DbBackend {
        self.tx().get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.tx().execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.tx().execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.tx().query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.tx().query_all_raw(stmt).await
    }
}

/// True when `sql` may change rows: anything but a plain `SELECT` (or `SHOW`, `VALUES`). A
/// `WITH` counts as a write, since its parts may be.
fn may_write(sql: &str) -> bool {
    let first = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default();
    !["SELECT", "SHOW", "VALUES"]
        .iter()
        .any(|read| first.eq_ignore_ascii_case(read))
}

/// `$call` on the pool, the session noting a write when `$writes` and the call succeeded.
macro_rules! on_pool {
    ($db:expr, $track:expr, $writes:expr, $c:ident => $call:expr) => {{
        let $c: &Db = $db;
        let result = $call.await;
        if $writes && result.is_ok() {
            $track.wrote();
        }
        result
    }};
}

/// `$call` with `$c` bound to the reader when it may serve the session `$track`, else to the
/// writer `$db`; a read that fails on the reader for the reader's sake is read again on the
/// writer, so a reader going away costs no read.
macro_rules! routed {
    ($pools:expr, $track:expr, $c:ident => $call:expr) => {{
        let pools: &Pools = $pools;
        let db = &pools.writer;
        match pools.reader() {
            None => {
                let $c = db;
                $call.await
            }
            Some(reader) => match reader.admits(db, $track).await {
                Ok(()) => {
                    let result = {
                        let $c = &reader.db;
                        $call.await
                    };
                    match result {
                        Err(err) if reader_at_fault(&err) => {
                            reader.failed(&Error::from(err));
                            reader.served(false, Some(Fallback::Error));
                            let $c = db;
                            $call.await
                        }
                        result => {
                            reader.served(true, None);
                            result
                        }
                    }
                }
                Err(cause) => {
                    reader.served(false, Some(cause));
                    let $c = db;
                    $call.await
                }
            },
        }
    }};
}

/// True for a failure that is the server's, not the statement's: the writer may answer.
fn reader_at_fault(err: &DbErr) -> bool {
    matches!(Error::from(err.clone()), Error::Unavailable { .. })
}

#[async_trait::async_trait]
impl ConnectionTrait for Conn<'_> {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Conn::Pool(pools, _) | Conn::Replica(pools, _) => pools.writer.get_database_backend(),
            Conn::Tx(tx) => tx.get_database_backend(),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Conn::Pool(pools, track) | Conn::Replica(pools, track) => {
                on_pool!(&pools.writer, track, true, c => c.execute_raw(stmt))
            }
            Conn::Tx(tx) => tx.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Conn::Pool(pools, track) | Conn::Replica(pools, track) => {
                on_pool!(&pools.writer, track, true, c => c.execute_unprepared(sql))
            }
            Conn::Tx(tx) => tx.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Conn::Pool(pools, track) => {
                let writes = may_write(&stmt.sql);
                on_pool!(&pools.writer, track, writes, c => c.query_one_raw(stmt))
            }
            Conn::Replica(pools, track) => {
                routed!(pools, track, c => c.query_one_raw(stmt.clone()))
            }
            Conn::Tx(tx) => tx.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Conn::Pool(pools, track) => {
                let writes = may_write(&stmt.sql);
                on_pool!(&pools.writer, track, writes, c => c.query_all_raw(stmt))
            }
            Conn::Replica(pools, track) => {
                routed!(pools, track, c => c.query_all_raw(stmt.clone()))
            }
            Conn::Tx(tx) => tx.query_all_raw(stmt).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_reads_are_not_writes() {
        for read in [
            "SELECT 1",
            "  select x FROM t",
            "(SELECT 1) UNION (SELECT 2)",
            "SHOW x",
        ] {
            assert!(!may_write(read), "{read}");
        }
        for write in [
            "INSERT INTO t",
            "update t",
            "WITH x AS (DELETE FROM t) SELECT 1",
            "DELETE",
        ] {
            assert!(may_write(write), "{write}");
        }
    }
}
