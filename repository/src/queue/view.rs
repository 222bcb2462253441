//! The operator's view of the queue (`vega-admin queue`): what waits, what runs where, what
//! is stuck, and what failed lately. Read-only, the system only. Each figure but the recent
//! failures is one statement over the partial indexes of queued and running scans, so its cost
//! follows the work in flight, not the history; the failures are found newest-first through
//! the audit log.

use chrono::{DateTime, FixedOffset};
use sea_orm::FromQueryResult;
use tracing::instrument;
use uuid::Uuid;

use crate::db::sql::{now, statement};
use crate::error::Result;
use crate::queue::scans::Scans;

/// How many recent failures [`Scans::queue_summary`] lists.
const RECENT_FAILURES: u64 = 10;

/// The queue at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueSummary {
    /// Queued and running scans by status and priority (highest priority first).
    pub depth: Vec<QueueDepth>,
    /// When the longest-waiting due scan became due (`None`: nothing is due).
    pub oldest_due_since: Option<DateTime<FixedOffset>>,
    /// Queued scans not yet due (backing off after a failed attempt, or scheduled later).
    pub scheduled_later: u64,
    /// Running scans per worker.
    pub running: Vec<WorkerLoad>,
    /// Running scans whose lease has expired: their worker died or stalled; the rescue
    /// re-queues them.
    pub expired_leases: u64,
    /// The latest failed scans, newest first.
    pub recent_failures: Vec<FailedScan>,
}

/// One row of [`QueueSummary::depth`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, FromQueryResult)]
pub struct QueueDepth {
    /// `queued` or `running`.
    pub status: String,
    /// The scans' priority.
    pub priority: i16,
    /// How many.
    pub scans: i64,
}

/// One row of [`QueueSummary::running`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, FromQueryResult)]
pub struct WorkerLoad {
    /// The worker's id (its credential's name, or `name/...`).
    pub worker: String,
    /// Scans it holds.
    pub scans: i64,
    /// When it claimed the oldest of them.
    pub oldest_claim: Option<DateTime<FixedOffset>>,
}

/// One row of [`QueueSummary::recent_failures`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, FromQueryResult)]
pub struct FailedScan {
    /// The scan.
    pub id: Uuid,
    /// Its project.
    pub project_id: Uuid,
    /// The worker that held it last.
    pub claimed_by: Option<String>,
    /// Claims used.
    pub attempt: i16,
    /// Why, as a code (`lease_expired`, the worker's own codes).
    pub error_code: Option<String>,
    /// Why, in words.
    pub error_message: Option<String>,
    /// When it failed.
    pub finished_at: Option<DateTime<FixedOffset>>,
}

#[derive(FromQueryResult)]
struct Waiting {
    oldest_due_since: Option<DateTime<FixedOffset>>,
    scheduled_later: i64,
}

#[derive(FromQueryResult)]
struct Count {
    n: i64,
}

impl Scans<'_> {
    /// The queue as an operator sees it (the system only).
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "scans.queue_summary", skip(self))]
    pub async fn queue_summary(&self) -> Result<QueueSummary> {
        let cx = self.cx.replica();
        cx.who.require_system("view the queue")?;
        let db = cx.db();
        let now = now();
        let depth = QueueDepth::find_by_statement(statement(
            db,
            "SELECT status, priority, count(*) AS scans FROM scans \
              WHERE status = 'queued' OR status = 'running' \
              GROUP BY status, priority ORDER BY status, priority DESC",
            [],
        ))
        .all(db)
        .await?;
        let waiting = Waiting::find_by_statement(statement(
            db,
            "SELECT min(CASE WHEN scheduled_at <= $1 THEN scheduled_at END) AS oldest_due_since, \
                    count(CASE WHEN scheduled_at > $1 THEN 1 END) AS scheduled_later \
               FROM scans WHERE status = 'queued'",
            [now.into()],
        ))
        .one(db)
        .await?;
        let running = WorkerLoad::find_by_statement(statement(
            db,
            "SELECT claimed_by AS worker, count(*) AS scans, min(claimed_at) AS oldest_claim \
               FROM scans WHERE status = 'running' GROUP BY claimed_by ORDER BY claimed_by",
            [],
        ))
        .all(db)
        .await?;
        let expired = Count::find_by_statement(statement(
            db,
            "SELECT count(*) AS n FROM scans WHERE status = 'running' AND lease_expires_at < $1",
            [now.into()],
        ))
        .one(db)
        .await?;
        // Newest failures through the audit log, read newest-first until enough are found,
        // rather than through every failed scan ever recorded.
        let recent_failures = FailedScan::find_by_statement(statement(
            db,
            &format!(
                "SELECT id, project_id, claimed_by, attempt, error_code, error_message, finished_at \
                   FROM scans \
                  WHERE status = 'failed' AND id IN ( \
                        SELECT subject_id FROM events \
                         WHERE action IN ('scan.failed', 'scan.rescued') AND subject_id IS NOT NULL \
                         ORDER BY id DESC LIMIT {}) \
                  ORDER BY finished_at DESC, id DESC LIMIT {RECENT_FAILURES}",
                RECENT_FAILURES * 4
            ),
            [],
        ))
        .all(db)
        .await?;
        Ok(QueueSummary {
            depth,
            oldest_due_since: waiting.as_ref().and_then(|w| w.oldest_due_since),
            scheduled_later: waiting
                .map(|w| u64::try_from(w.scheduled_later).unwrap_or_default())
                .unwrap_or_default(),
            running,
            expired_leases: expired
                .map(|c| u64::try_from(c.n).unwrap_or_default())
                .unwrap_or_default(),
            recent_failures,
        })
    }
}
