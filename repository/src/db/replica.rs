//! The read replica and the rule that sends a read to it.
//!
//! A repository method marked as a *replica read* (it takes `cx.replica()`; its docs say so)
//! may be served by the reader. Every other statement, every transaction and every write goes
//! to the writer. A replica read goes to the writer instead when:
//!
//! - the reader is down (a probe or a read failed; re-admitted when a probe answers), or lags
//!   the writer by more than `VEGA_DB_READER_MAX_LAG`;
//! - the session wrote something the reader has not replayed yet (read-your-writes).
//!
//! **Read-your-writes.** A session ([`Track`]) notes that it wrote when a write statement or a
//! transaction of its own commits; its next replica read first asks the writer for its
//! position (`pg_current_wal_insert_lsn()`, on Aurora the highest durable LSN), once, and keeps
//! it as the session's floor. The reader serves the session only once its replay position (on
//! Aurora the lowest durable LSN of all instances, so any replica behind the reader endpoint
//! will do) has reached the floor. A handler carries the floor across requests as a
//! [`WritePosition`] (`Session::write_position`, `Session::read_after`).
//!
//! On the embedded SQLite default the "reader" is a small pool of read-only connections on the
//! same file: WAL readers see every committed write, so only health decides.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, Connection, Row};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use vega_config::PoolOptions;

use crate::db::connection::Db;
use crate::error::{Error, Result};
use crate::metrics;

/// A place in the writer's log that a session's reads must see: what a handler carries from
/// one request to the next (a header or cookie) so that a user who wrote and then reads in
/// the next request sees the write. Written and parsed as a decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WritePosition(u64);

impl WritePosition {
    pub(crate) fn from_raw(position: u64) -> Self {
        WritePosition(position)
    }

    /// The position as a number (what [`std::fmt::Display`] writes).
    pub fn into_inner(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for WritePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for WritePosition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        s.trim()
            .parse::<u64>()
            .map(WritePosition)
            .map_err(|_| Error::invalid("write position", format!("{s:?} is not a position")))
    }
}

/// Which server family the replica belongs to: what its positions are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaKind {
    /// A streaming standby or an RDS read replica: WAL positions.
    Postgres,
    /// An Aurora reader: the cluster's durable LSNs.
    Aurora,
    /// The embedded default's read-only connections on the same file.
    Sqlite,
}

impl ReplicaKind {
    /// The writer's position now, as text.
    fn write_position_sql(self) -> &'static str {
        match self {
            ReplicaKind::Aurora => {
                "SELECT max(durable_lsn)::text AS p FROM aurora_global_db_instance_status()"
            }
            ReplicaKind::Postgres | ReplicaKind::Sqlite => {
                "SELECT (pg_current_wal_insert_lsn() - '0/0')::text AS p"
            }
        }
    }

    /// The reader's replayed position, as text (for Aurora the least of its replicas').
    fn replayed_sql(self) -> &'static str {
        match self {
            ReplicaKind::Aurora => {
                "SELECT min(durable_lsn)::text AS p FROM aurora_global_db_instance_status()"
            }
            ReplicaKind::Postgres | ReplicaKind::Sqlite => {
                "SELECT (pg_last_wal_replay_lsn() - '0/0')::text AS p"
            }
        }
    }

    /// The probe: in recovery, replayed position, lag in milliseconds.
    fn probe_sql(self) -> &'static str {
        match self {
            ReplicaKind::Aurora => {
                "SELECT pg_is_in_recovery()::text AS recovering, \
                 (SELECT min(durable_lsn) FROM aurora_global_db_instance_status())::text AS replayed, \
                 (SELECT coalesce(max(visibility_lag_in_msec), 0) \
                    FROM aurora_global_db_instance_status() \
                   WHERE session_id <> 'MASTER_SESSION_ID')::bigint::text AS lag_ms"
            }
            // Caught up with everything received: no lag, however old the last commit. (After
            // a restart the received position restarts at a segment's start, behind the
            // replayed one.)
            ReplicaKind::Postgres | ReplicaKind::Sqlite => {
                "SELECT pg_is_in_recovery()::text AS recovering, \
                 (pg_last_wal_replay_lsn() - '0/0')::text AS replayed, \
                 (CASE WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0 \
                  ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) \
                                * 1000, 0) END)::bigint::text AS lag_ms"
            }
        }
    }
}

/// Why a replica read went to the writer (the `cause` of `vega_db_read_fallbacks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The reader failed a probe or a read.
    Down,
    /// The reader lags past `VEGA_DB_READER_MAX_LAG`.
    Lagging,
    /// The reader is not a replica (not in recovery): perhaps promoted, perhaps misconfigured.
    NotReplica,
    /// The reader has not replayed the session's last write yet.
    BehindSession,
    /// The read failed on the reader (then succeeded or failed on the writer).
    Error,
}

impl Fallback {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fallback::Down => "down",
            Fallback::Lagging => "lagging",
            Fallback::NotReplica => "not_replica",
            Fallback::BehindSession => "behind_session",
            Fallback::Error => "error",
        }
    }
}

/// The longest a replica read waits for a look at the reader's replayed position before it
/// goes to the writer instead: a few round trips.
const LOOK_BOUND: Duration = Duration::from_millis(50);

const UP: u8 = 0;
const DOWN: u8 = 1;
const LAGGING: u8 = 2;
const NOT_REPLICA: u8 = 3;

/// What the routing knows about the reader, shared with its monitor.
#[derive(Debug)]
struct State {
    kind: ReplicaKind,
    /// `UP`, `DOWN`, `LAGGING` or `NOT_REPLICA`.
    status: AtomicU8,
    /// The position the reader had replayed at the last probe or check.
    replayed: AtomicU64,
    lag_ms: AtomicU64,
    /// Looks at the replayed position ended ([`Reader::caught_up`]), and the one in flight.
    looks: AtomicU64,
    looking: tokio::sync::Mutex<()>,
    on_reader: AtomicU64,
    on_writer: AtomicU64,
    fallbacks: AtomicU64,
}

/// The read replica: its pool (bounded like the writer's) and what is known of it.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    pub(crate) db: Db,
    state: Arc<State>,
}

/// A session's place in the writer's log, for read-your-writes; nothing when no reader is
/// configured, so a writer-only store pays nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Track(Option<Arc<Position>>);

#[derive(Debug, Default)]
struct Position {
    /// The position the session's reads must see (0: none).
    floor: AtomicU64,
    /// The session wrote since `floor` was read.
    wrote: AtomicBool,
}

impl Track {
    /// A fresh session's track: something only when there is a Postgres reader to track for.
    pub(crate) fn for_reader(reader: Option<&Reader>) -> Self {
        Track(
            reader
                .filter(|r| r.state.kind != ReplicaKind::Sqlite)
                .map(|_| Arc::default()),
        )
    }

    /// The session wrote (a write statement or a commit ended without error).
    pub(crate) fn wrote(&self) {
        if let Some(p) = &self.0 {
            p.wrote.store(true, Ordering::Release);
        }
    }

    /// Raises the floor to `position` (one carried from an earlier request).
    pub(crate) fn read_after(&self, position: WritePosition) {
        if let Some(p) = &self.0 {
            p.floor.fetch_max(position.0, Ordering::AcqRel);
        }
    }

    /// The session's floor, first asking the writer for its position if the session wrote.
    pub(crate) async fn floor(&self, writer: &Db, kind: ReplicaKind) -> Result<u64> {
        let Some(p) = &self.0 else {
            return Ok(0);
        };
        // Cleared before asking: a write that ends while the question is in flight sets it
        // again, so its position is asked for next time.
        if p.wrote.swap(false, Ordering::AcqRel) {
            match write_position(writer, kind).await {
                Ok(now) => {
                    p.floor.fetch_max(now, Ordering::AcqRel);
                }
                Err(err) => {
                    p.wrote.store(true, Ordering::Release);
                    return Err(err);
                }
            }
        }
        Ok(p.floor.load(Ordering::Acquire))
    }
}

async fn write_position(writer: &Db, kind: ReplicaKind) -> Result<u64> {
    let row = writer
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            kind.write_position_sql(),
        ))
        .await?;
    let text: Option<String> = match row {
        Some(row) => row.try_get("", "p")?,
        None => None,
    };
    Ok(text.and_then(|t| t.parse().ok()).unwrap_or(0))
}

impl Reader {
    /// A reader on `db`, whose kind was detected at connect time.
    pub(crate) fn new(db: Db, kind: ReplicaKind) -> Self {
        let state = State {
            kind,
            // A Postgres reader serves nothing before its first probe.
            status: AtomicU8::new(if kind == ReplicaKind::Sqlite {
                UP
            } else {
                DOWN
            }),
            replayed: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            looks: AtomicU64::new(0),
            looking: tokio::sync::Mutex::new(()),
            on_reader: AtomicU64::new(0),
            on_writer: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        };
        Self {
            db,
            state: Arc::new(state),
        }
    }

    pub(crate) fn kind(&self) -> ReplicaKind {
        self.state.kind
    }

    /// Whether a replica read of the session `track` may go to the reader, and if not why.
    pub(crate) async fn admits(&self, writer: &Db, track: &Track) -> Result<(), Fallback> {
        let state = &self.state;
        match state.status.load(Ordering::Acquire) {
            UP => {}
            LAGGING => return Err(Fallback::Lagging),
            NOT_REPLICA => return Err(Fallback::NotReplica),
            _ => return Err(Fallback::Down),
        }
        if state.kind == ReplicaKind::Sqlite {
            return Ok(());
        }
        let floor = track
            .floor(writer, state.kind)
            .await
            .map_err(|_| Fallback::Error)?;
        if floor <= state.replayed.load(Ordering::Acquire) {
            return Ok(());
        }
        // Behind the session as last seen: look again (once for every session behind it)
        // before giving the read to the writer.
        if self.caught_up(floor).await {
            return Ok(());
        }
        Err(Fallback::BehindSession)
    }

    /// Whether the reader has replayed `floor`, reading its position again unless another
    /// caller's look ended while this one waited for it: one look in flight, however many
    /// sessions are behind. Bounded by [`LOOK_BOUND`]; past it, not caught up.
    async fn caught_up(&self, floor: u64) -> bool {
        let state = &self.state;
        let looks = state.looks.load(Ordering::Acquire);
        let look = async {
            let _one = state.looking.lock().await;
            if state.looks.load(Ordering::Acquire) == looks {
                if let Some(replayed) = self.replayed().await {
                    state.replayed.fetch_max(replayed, Ordering::AcqRel);
                }
                state.looks.fetch_add(1, Ordering::AcqRel);
            }
        };
        tokio::time::timeout(LOOK_BOUND, look).await.is_ok()
            && floor <= state.replayed.load(Ordering::Acquire)
    }

    /// The reader's replayed position now; `None` when it does not answer it.
    async fn replayed(&self) -> Option<u64> {
        let sql = self.state.kind.replayed_sql();
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .ok()??;
        let replayed: String = row.try_get("", "p").ok()?;
        replayed.parse().ok()
    }

    /// Counts a read by where it went.
    pub(crate) fn served(&self, on_reader: bool, fallback: Option<Fallback>) {
        let counter = if on_reader {
            &self.state.on_reader
        } else {
            &self.state.on_writer
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::read(if on_reader { "reader" } else { "writer" });
        if let Some(cause) = fallback {
            self.state.fallbacks.fetch_add(1, Ordering::Relaxed);
            metrics::read_fallback(cause.as_str());
        }
    }

    /// A read failed on the reader with an error that is the reader's (unreachable, timed
    /// out): it serves nothing until a probe answers.
    pub(crate) fn failed(&self, err: &Error) {
        if self.state.kind != ReplicaKind::Sqlite {
            self.state.status.store(DOWN, Ordering::Release);
        }
        tracing::warn!(error = %err, "the read replica failed a read; reads go to the writer");
    }

    /// What is known of the reader now.
    pub(crate) fn status(&self) -> ReaderStatus {
        let state = &self.state;
        ReaderStatus {
            kind: state.kind,
            state: match state.status.load(Ordering::Acquire) {
                UP => ReplicaState::Serving,
                LAGGING => ReplicaState::Lagging,
                NOT_REPLICA => ReplicaState::NotReplica,
                _ => ReplicaState::Down,
            },
            lag: Duration::from_millis(state.lag_ms.load(Ordering::Relaxed)),
            reads_on_reader: state.on_reader.load(Ordering::Relaxed),
            reads_on_writer: state.on_writer.load(Ordering::Relaxed),
            fallbacks: state.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Starts the monitor of a Postgres reader: a probe every `VEGA_DB_PROBE_INTERVAL` on a
    /// connection of its own, bounded by `VEGA_DB_PROBE_TIMEOUT`, against
    /// `VEGA_DB_READER_MAX_LAG`. It ends when the reader is dropped.
    pub(crate) fn spawn_monitor(&self, options: PgConnectOptions, pool: &PoolOptions) {
        let monitor = Monitor {
            state: Arc::downgrade(&self.state),
            options,
            interval: pool.probe_interval,
            timeout: pool.probe_timeout,
            max_lag: pool.reader_max_lag,
        };
        tokio::spawn(monitor.run());
    }
}

/// Whether the reader serves replica reads, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// It serves them (those of a session it has not caught up with excepted).
    Serving,
    /// A probe or a read failed, or no probe has answered yet.
    Down,
    /// It lags the writer past `VEGA_DB_READER_MAX_LAG`.
    Lagging,
    /// It is not in recovery: not a replica (promoted, or the wrong URL).
    NotReplica,
}

/// The reader as [`crate::Store::reader_status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderStatus {
    /// What the reader is.
    pub kind: ReplicaKind,
    /// Whether it serves reads now.
    pub state: ReplicaState,
    /// Its lag behind the writer at the last probe.
    pub lag: Duration,
    /// Replica reads it served since the store opened.
    pub reads_on_reader: u64,
    /// Replica reads the writer served instead.
    pub reads_on_writer: u64,
    /// Of those, the reads sent to the writer for a cause (down, lagging, behind the session).
    pub fallbacks: u64,
}

impl ReaderStatus {
    /// True when the reader serves replica reads now.
    pub fn serving(&self) -> bool {
        self.state == ReplicaState::Serving
    }
}

struct Monitor {
    state: std::sync::Weak<State>,
    options: PgConnectOptions,
    interval: Duration,
    timeout: Duration,
    max_lag: Duration,
}

/// What one probe found.
struct Seen {
    recovering: bool,
    replayed: Option<u64>,
    lag_ms: u64,
}

impl Monitor {
    async fn run(self) {
        let mut conn: Option<PgConnection> = None;
        loop {
            let Some(state) = self.state.upgrade() else {
                return;
            };
            let status = match self.probe(&mut conn, state.kind).await {
                None => DOWN,
                Some(seen) => {
                    if let Some(replayed) = seen.replayed {
                        state.replayed.fetch_max(replayed, Ordering::AcqRel);
                    }
                    state.lag_ms.store(seen.lag_ms, Ordering::Relaxed);
                    metrics::reader_lag(Duration::from_millis(seen.lag_ms));
                    if !seen.recovering {
                        NOT_REPLICA
                    } else if Duration::from_millis(seen.lag_ms) > self.max_lag {
                        LAGGING
                    } else {
                        UP
                    }
                }
            };
            let before = state.status.swap(status, Ordering::AcqRel);
            if before != status {
                tracing::info!(
                    status = ["serving", "down", "lagging", "not a replica"][usize::from(status)],
                    lag_ms = state.lag_ms.load(Ordering::Relaxed),
                    "read replica"
                );
            }
            drop(state);
            tokio::time::sleep(self.interval).await;
        }
    }

    async fn probe(&self, slot: &mut Option<PgConnection>, kind: ReplicaKind) -> Option<Seen> {
        if slot.is_none() {
            let opened =
                tokio::time::timeout(self.timeout, PgConnection::connect_with(&self.options)).await;
            *slot = Some(opened.ok()?.ok()?);
        }
        let conn = slot.as_mut()?;
        let answer = tokio::time::timeout(
            self.timeout,
            sqlx::raw_sql(kind.probe_sql()).fetch_one(conn),
        )
        .await;
        let Ok(Ok(row)) = answer else {
            *slot = None;
            return None;
        };
        let text = |column: &str| row.try_get::<Option<String>, _>(column).ok().flatten();
        Some(Seen {
            recovering: text("recovering").as_deref() == Some("true"),
            replayed: text("replayed").and_then(|r| r.parse().ok()),
            lag_ms: text("lag_ms").and_then(|l| l.parse().ok()).unwrap_or(0),
        })
    }
}

/// Which kind of Postgres replica `db` leads to: Aurora when the cluster's status function
/// exists there.
pub(crate) async fn detect(db: &Db) -> Result<ReplicaKind> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (to_regproc('aurora_global_db_instance_status') IS NOT NULL)::text AS aurora",
        ))
        .await?;
    let aurora: Option<String> = match row {
        Some(row) => row.try_get("", "aurora")?,
        None => None,
    };
    Ok(if aurora.as_deref() == Some("true") {
        ReplicaKind::Aurora
    } else {
        ReplicaKind::Postgres
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_position_reads_back_what_it_wrote() {
        let p: WritePosition = "123456789".parse().unwrap();
        assert_eq!(p.to_string().parse::<WritePosition>().unwrap(), p);
        assert!("16/B374D848".parse::<WritePosition>().is_err());
    }

    #[test]
    fn a_session_without_a_reader_tracks_nothing() {
        let track = Track::for_reader(None);
        track.wrote();
        track.read_after(WritePosition(7));
        assert!(track.0.is_none());
    }
}
