//! Scans: the records of the queue. Enqueue, read, cancel, retry, history and delete; a
//! worker's side (claim, lease, heartbeat, fail) is `lease.rs`, and completion `complete.rs`.

use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{ScanKind, ScanStatus, TriggerKind, scans};

use crate::context::cx::Cx;
use crate::context::principal::{Table, and_reach};
use crate::context::trail::{self, Action, Audit};
use crate::db::page::{Page, limit_clause, page_size};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};
use crate::objects::cascade;

/// Claims a retried scan is allowed beyond those it has used ([`Scans::retry`]).
pub const RETRY_ATTEMPTS: i16 = 3;

/// Input for [`Scans::enqueue`].
#[derive(Debug, Clone)]
pub struct NewScan {
    /// The repository to scan (its project is taken from it).
    pub repository_id: Uuid,
    /// Which scanners run.
    pub kind: ScanKind,
    /// What asked for it.
    pub trigger: TriggerKind,
    /// The snapshot to scan, when it already exists.
    pub snapshot_id: Option<Uuid>,
    /// Branch or tag; `None` is the default branch. Only a full scan of the repository's
    /// default branch marks findings fixed, reopens them and becomes the project's latest.
    pub ref_name: Option<String>,
    /// Commit, 40 or 64 hex digits.
    pub commit_sha: Option<String>,
    /// 1 (first) to 4 (last).
    pub priority: i16,
    /// Claims allowed before the scan fails for good (1 to 10).
    pub max_attempts: i16,
    /// The user who asked, if any.
    pub requested_by_user_id: Option<Uuid>,
    /// The API key that asked, if any.
    pub requested_by_api_key_id: Option<Uuid>,
}

impl NewScan {
    /// A full scan of `ref_name` with default priority and attempts.
    pub fn full(repository_id: Uuid, trigger: TriggerKind, ref_name: Option<String>) -> Self {
        Self {
            repository_id,
            kind: ScanKind::Full,
            trigger,
            snapshot_id: None,
            ref_name,
            commit_sha: None,
            priority: 2,
            max_attempts: 3,
            requested_by_user_id: None,
            requested_by_api_key_id: None,
        }
    }
}

/// What [`Scans::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The scan was queued and is now canceled.
    Canceled,
    /// The scan is running; its worker learns of the request at its next heartbeat.
    Requested,
    /// The scan had already finished with this status.
    AlreadyFinished(ScanStatus),
}

/// The `scans` table: scan records and the work queue.
#[derive(Debug, Clone)]
pub struct Scans<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Scans<'_> {
    /// Queues a scan of a repository in reach and appends `scan.enqueued`.
    /// `tracks_default_branch` is derived, not trusted: true when `ref_name` is the
    /// repository's default branch, or is not given (a scan of no named ref is of the
    /// repository's main line, as an uploaded snapshot is).
    #[instrument(name = "scans.enqueue", skip_all, fields(repository_id = %input.repository_id))]
    pub async fn enqueue(&self, input: NewScan) -> Result<scans::Model> {
        if !(1..=4).contains(&input.priority) {
            return Err(Error::invalid("priority", "must be between 1 and 4"));
        }
        if !(1..=10).contains(&input.max_attempts) {
            return Err(Error::invalid("max_attempts", "must be between 1 and 10"));
        }
        let ref_name = validate::optional_text("ref_name", input.ref_name.as_deref(), 255)?;
        let commit_sha = input
            .commit_sha
            .as_deref()
            .map(|sha| validate::commit_sha("commit_sha", sha))
            .transpose()?;
        self.cx.who.refuse_worker("enqueue scans")?;
        let now = now();
        let sql = "INSERT INTO scans (id, project_id, repository_id, snapshot_id, kind, trigger_kind, \
                                      requested_by_user_id, requested_by_api_key_id, ref_name, \
                                      commit_sha, tracks_default_branch, status, priority, \
                                      scheduled_at, attempt, max_attempts, created_at, updated_at) \
                   SELECT $1, r.project_id, r.id, $2, $3, $4, $5, $6, $7, $8, \
                          ($7 IS NULL OR COALESCE($7 = r.default_branch, false)), 'queued', $9, $10, 0, $11, $10, $10 \
                     FROM repositories r WHERE r.id = $12";
        let mut values: Vec<Value> = vec![
            Uuid::now_v7().into(),
            input.snapshot_id.into(),
            input.kind.as_str().into(),
            input.trigger.as_str().into(),
            input.requested_by_user_id.into(),
            input.requested_by_api_key_id.into(),
            ref_name.into(),
            commit_sha.into(),
            input.priority.into(),
            now.into(),
            input.max_attempts.into(),
            input.repository_id.into(),
        ];
        let reach = and_reach(self.cx.who, Table::Repositories, "r", &mut values);
        let unit = self.cx.db().unit().await?;
        let scan = scans::Model::find_by_statement(statement(
            &unit,
            &format!("{sql}{reach} RETURNING *"),
            values,
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("repository", input.repository_id))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::ScanEnqueued, ("scan", scan.id))
                    .project(scan.project_id)
                    .data(json!({
                        "repository_id": scan.repository_id,
                        "kind": scan.kind,
                        "ref_name": scan.ref_name,
                    })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(scan)
    }

    /// The scan with this id.
    #[instrument(name = "scans.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<scans::Model> {
        // Fixed SQL rather than `find_by_id`: rendering the 35-column select cost ~7 µs a call
        // (BENCHMARKS.md), 6% of this lookup's latency, for text that never changes.
        self.cx
            .select_one::<scans::Entity>(Table::Scans, "x.id = $1", vec![id.into()])
            .await?
            .ok_or_else(|| Error::not_found("scan", id))
    }

    /// Cancels a queued scan in reach at once (`scan.canceled`), or asks the worker running it
    /// to stop (`scan.cancel_requested`).
    #[instrument(name = "scans.cancel", skip(self))]
    pub async fn cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        self.cx.who.refuse_worker("cancel scans")?;
        let now = now();
        let mut values = vec![now.into(), id.into()];
        let reach = and_reach(self.cx.who, Table::Scans, "scans", &mut values);
        let unit = self.cx.db().unit().await?;
        let canceled = unit
            .query_one_raw(statement(
                &unit,
                &format!(
                    "UPDATE scans SET status = 'canceled', finished_at = $1, updated_at = $1 \
                      WHERE id = $2 AND status = 'queued'{reach} RETURNING project_id"
                ),
                values.clone(),
            ))
            .await?;
        let (outcome, action, row) = match canceled {
            Some(row) => (CancelOutcome::Canceled, Action::ScanCanceled, row),
            None => {
                let requested = unit
                    .query_one_raw(statement(
                        &unit,
                        &format!(
                            "UPDATE scans SET cancel_requested_at = COALESCE(cancel_requested_at, $1), \
                                    updated_at = $1 \
                              WHERE id = $2 AND status = 'running'{reach} RETURNING project_id"
                        ),
                        values,
                    ))
                    .await?;
                match requested {
                    Some(row) => (CancelOutcome::Requested, Action::ScanCancelRequested, row),
                    None => {
                        unit.commit().await?;
                        let scan = self.get(id).await?;
                        return Ok(CancelOutcome::AlreadyFinished(stored_status(&scan)?));
                    }
                }
            }
        };
        let project_id: Uuid = row.try_get("", "project_id")?;
        trail::record(
            &unit,
            self.cx.who,
            vec![Audit::new(action, ("scan", id)).project(project_id)],
        )
        .await?;
        unit.commit().await?;
        Ok(outcome)
    }

    /// Queues a failed or canceled scan in reach again and appends `scan.retried`. Its attempt
    /// count goes on (it is the lease's fencing token, so a worker from an earlier attempt
    /// still cannot write) with [`RETRY_ATTEMPTS`] more allowed; its error is cleared. A scan
    /// that is queued, running or succeeded is [`Error::Conflict`].
    #[instrument(name = "scans.retry", skip(self))]
    pub async fn retry(&self, id: Uuid) -> Result<scans::Model> {
        self.cx.who.refuse_worker("retry scans")?;
        let now = now();
        let mut values = vec![now.into(), id.into(), RETRY_ATTEMPTS.into()];
        let reach = and_reach(self.cx.who, Table::Scans, "scans", &mut values);
        let unit = self.cx.db().unit().await?;
        let retried = scans::Model::find_by_statement(statement(
                &unit,
                &format!(
                    "UPDATE scans SET status = 'queued', scheduled_at = $1, max_attempts = attempt + $3, \
                            claimed_by = NULL, claimed_at = NULL, heartbeat_at = NULL, \
                            lease_expires_at = NULL, cancel_requested_at = NULL, started_at = NULL, \
                            finished_at = NULL, error_code = NULL, error_message = NULL, updated_at = $1 \
                      WHERE id = $2 AND status IN ('failed', 'canceled'){reach} RETURNING *"
                ),
                values,
            ))
            .one(&unit)
            .await?;
        let Some(scan) = retried else {
            unit.commit().await?;
            let scan = self.get(id).await?;
            return Err(Error::Conflict {
                constraint: "scans_status".into(),
                message: format!(
                    "the scan is {}; only failed or canceled scans are retried",
                    scan.status
                ),
            });
        };
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::ScanRetried, ("scan", id))
                    .project(scan.project_id)
                    .data(json!({ "attempt": scan.attempt, "max_attempts": scan.max_attempts })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(scan)
    }

    /// The project's scans, newest first.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "scans.history", skip(self))]
    pub async fn history(
        &self,
        project_id: Uuid,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<scans::Model, Uuid>> {
        let cx = self.cx.replica();
        let limit = page_size(limit)?;
        let mut values = vec![project_id.into()];
        let filter = match before {
            Some(before) => {
                values.push(before.into());
                "x.project_id = $1 AND x.id < $2"
            }
            None => "x.project_id = $1",
        };
        let tail = format!("ORDER BY x.id DESC {}", limit_clause(limit + 1));
        let rows = cx
            .select::<scans::Entity>(Table::Scans, filter, values, &tail)
            .await?;
        Ok(Page::from_rows(rows, limit, |s: &scans::Model| s.id))
    }

    /// Deletes the scan with its objects (queued for `purge` in the same transaction) and
    /// appends `scan.deleted`; findings it first or last saw keep existing, and the runs of
    /// its stream, which the scans before and after it share, stay as they are (a finding's
    /// `times_seen` still counts it, as it did before runs).
    #[instrument(name = "scans.delete", skip(self))]
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        self.cx.who.refuse_worker("delete scans")?;
        cascade::delete(self.cx.clone(), &cascade::SCAN, id).await
    }

    /// The scans a worker holds right now.
    #[instrument(name = "scans.held_by", skip(self))]
    pub async fn held_by(&self, worker_id: &str) -> Result<Vec<scans::Model>> {
        let worker_id = validate::text("worker_id", worker_id, 1, 200)?;
        let values = vec![ScanStatus::Running.as_str().into(), worker_id.into()];
        self.cx
            .select::<scans::Entity>(
                Table::Scans,
                "x.status = $1 AND x.claimed_by = $2",
                values,
                "ORDER BY x.claimed_at",
            )
            .await
    }
}

fn stored_status(scan: &scans::Model) -> Result<ScanStatus> {
    scan.status.parse().map_err(|e: vega_entity::UnknownValue| {
        Error::Database(sea_orm::DbErr::Type(e.to_string()))
    })
}
