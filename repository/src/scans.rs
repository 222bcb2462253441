//! The scan queue. A scan is claimed by one worker at a time under a *lease*: the worker's id
//! and the claim's attempt number, valid until `lease_expires_at`. Every write a worker makes
//! is fenced on `(claimed_by, attempt, status = 'running')`, so a worker whose lease expired
//! and was rescued can no longer change the scan: it gets [`Error::LeaseLost`] instead.

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QuerySelect, Value,
};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{ScanKind, ScanStatus, TriggerKind, scans};

use crate::artifacts::Deletion;
use crate::audit::{self, Action, Audit};
use crate::db::retry_conflicts;
use crate::page::{Page, limit_clause, page_size};
use crate::principal::{Table, and_reach};
use crate::session::Cx;
use crate::sql::{is_postgres, now, statement};
use crate::{Error, NewFinding, Principal, Result, ingest, validate};

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

/// A worker's right to write to one scan: valid while the scan is `running` under this
/// worker and attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The scan.
    pub scan_id: Uuid,
    /// The worker holding it.
    pub worker_id: String,
    /// The claim's attempt number: the fencing token.
    pub attempt: i16,
}

impl Lease {
    /// The lease with its worker id checked as a claim checks it, so that text a claim would
    /// refuse (a NUL, a control character) is refused here too instead of reaching SQL, and
    /// checked against the acting principal: only workers (and the system) hold leases, and a
    /// worker only its own, so another worker's lease is as lost as an expired one.
    pub(crate) fn validated(&self, who: &Principal, action: &'static str) -> Result<Lease> {
        let lease = Lease {
            scan_id: self.scan_id,
            worker_id: validate::text("lease.worker_id", &self.worker_id, 1, 200)?,
            attempt: self.attempt,
        };
        match who.require_worker(action)? {
            Some(name) if name != lease.worker_id => Err(Error::LeaseLost {
                scan_id: lease.scan_id,
            }),
            _ => Ok(lease),
        }
    }
}

/// A scan claimed by [`Scans::claim_next`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Claim {
    /// The scan as claimed.
    pub scan: scans::Model,
    /// The lease to pass to every later call about it.
    pub lease: Lease,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The new expiry.
    pub lease_expires_at: DateTime<FixedOffset>,
    /// Someone asked to cancel the scan: stop, then call [`Scans::acknowledge_cancel`].
    pub cancel_requested: bool,
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

/// A scan whose lease expired, as handled by [`Scans::rescue_expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescued {
    /// The scan.
    pub scan_id: Uuid,
    /// `Queued` (will be retried after the backoff) or `Failed` (out of attempts).
    pub status: ScanStatus,
}

/// The `scans` table: scan records and the work queue.
#[derive(Debug, Clone, Copy)]
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
        audit::record(
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

    /// Claims up to `limit` queued scans that are due, highest priority first, for `worker_id`,
    /// leasing each for `lease_for`, and appends `scan.claimed` for each. Workers (claiming
    /// under their credential's name) and the system only. Each scan is claimed by exactly one caller however many
    /// claim at once: Postgres skips rows another claimer has locked (`FOR UPDATE SKIP
    /// LOCKED`), and SQLite's single writer runs the one-statement claim atomically.
    #[instrument(name = "scans.claim_next", skip(self))]
    pub async fn claim_next(
        &self,
        worker_id: &str,
        limit: u32,
        lease_for: Duration,
    ) -> Result<Vec<Claim>> {
        let worker_id = validate::text("worker_id", worker_id, 1, 200)?;
        if !(1..=100).contains(&limit) {
            return Err(Error::invalid("limit", "must be between 1 and 100"));
        }
        if let Some(name) = self.cx.who.require_worker("claim scans")?
            && name != worker_id
        {
            return Err(Error::invalid(
                "worker_id",
                format!("must be this worker's name, `{name}`"),
            ));
        }
        let now = now();
        let expires = now + lease_duration("lease_for", lease_for)?;
        let limit = limit_clause(limit.into());
        let mut values: Vec<Value> = vec![now.into(), worker_id.clone().into(), expires.into()];
        let mut claimed = if is_postgres(self.cx.db()) {
            // The CTE is an optimisation fence: the planner cannot turn the LIMITed,
            // SKIP LOCKED subquery into a join that locks more rows than it claims. The
            // claim logs its own `scan.claimed` events: one statement, one round trip.
            let actor = audit::bind_actor(self.cx.who, Action::ScanClaimed, &mut values);
            let sql = format!(
                "WITH next AS ( \
                     SELECT id FROM scans WHERE status = 'queued' AND scheduled_at <= $1 \
                      ORDER BY priority, scheduled_at, id {limit} FOR UPDATE SKIP LOCKED), \
                 claimed AS ( \
                   UPDATE scans s SET status = 'running', attempt = s.attempt + 1, claimed_by = $2, \
                          claimed_at = $1, heartbeat_at = $1, lease_expires_at = $3, \
                          started_at = COALESCE(s.started_at, $1), updated_at = $1 \
                     FROM next WHERE s.id = next.id RETURNING s.*), \
                 logged AS ( \
                   INSERT INTO events ({columns}) \
                   SELECT $1, c.project_id, {actor}, 'scan', c.id, \
                          jsonb_build_object('worker_id', c.claimed_by, 'attempt', c.attempt) \
                     FROM claimed c) \
                 SELECT * FROM claimed",
                columns = audit::EVENT_COLUMNS,
            );
            scans::Model::find_by_statement(statement(self.cx.db(), &sql, values))
                .all(self.cx.db())
                .await?
        } else {
            let sql = format!(
                "UPDATE scans SET status = 'running', attempt = attempt + 1, claimed_by = $2, \
                        claimed_at = $1, heartbeat_at = $1, lease_expires_at = $3, \
                        started_at = COALESCE(started_at, $1), updated_at = $1 \
                  WHERE id IN (SELECT id FROM scans WHERE status = 'queued' AND scheduled_at <= $1 \
                                ORDER BY priority, scheduled_at, id {limit}) \
                 RETURNING *"
            );
            let unit = self.cx.db().unit().await?;
            let claimed = scans::Model::find_by_statement(statement(&unit, &sql, values))
                .all(&unit)
                .await?;
            let events = claimed
                .iter()
                .map(|scan| {
                    Audit::new(Action::ScanClaimed, ("scan", scan.id))
                        .project(scan.project_id)
                        .data(json!({ "worker_id": worker_id, "attempt": scan.attempt }))
                })
                .collect();
            audit::record(&unit, self.cx.who, events).await?;
            unit.commit().await?;
            claimed
        };
        claimed.sort_by(|a, b| {
            (a.priority, a.scheduled_at, a.id).cmp(&(b.priority, b.scheduled_at, b.id))
        });
        Ok(claimed
            .into_iter()
            .map(|scan| Claim {
                lease: Lease {
                    scan_id: scan.id,
                    worker_id: worker_id.clone(),
                    attempt: scan.attempt,
                },
                scan,
            })
            .collect())
    }

    /// Claims this queued scan for `worker_id` (the system only: an operator's import runs
    /// one scan end to end), leasing it for `lease_for`, and appends `scan.claimed`. A scan
    /// that is not queued is [`Error::Conflict`].
    #[instrument(name = "scans.claim", skip(self))]
    pub async fn claim(&self, id: Uuid, worker_id: &str, lease_for: Duration) -> Result<Claim> {
        let worker_id = validate::text("worker_id", worker_id, 1, 200)?;
        self.cx.who.require_system("claim a given scan")?;
        let now = now();
        let expires = now + lease_duration("lease_for", lease_for)?;
        let unit = self.cx.db().unit().await?;
        let claimed = scans::Model::find_by_statement(statement(
            &unit,
            "UPDATE scans SET status = 'running', attempt = attempt + 1, claimed_by = $2, \
                        claimed_at = $1, heartbeat_at = $1, lease_expires_at = $3, \
                        started_at = COALESCE(started_at, $1), updated_at = $1 \
                  WHERE id = $4 AND status = 'queued' RETURNING *",
            [
                now.into(),
                worker_id.clone().into(),
                expires.into(),
                id.into(),
            ],
        ))
        .one(&unit)
        .await?;
        let Some(scan) = claimed else {
            unit.commit().await?;
            let scan = self.get(id).await?;
            return Err(Error::Conflict {
                constraint: "scans_status".into(),
                message: format!("the scan is {}; only a queued scan is claimed", scan.status),
            });
        };
        audit::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::ScanClaimed, ("scan", scan.id))
                    .project(scan.project_id)
                    .data(json!({ "worker_id": worker_id, "attempt": scan.attempt })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(Claim {
            lease: Lease {
                scan_id: scan.id,
                worker_id,
                attempt: scan.attempt,
            },
            scan,
        })
    }

    /// Extends the lease by `lease_for` and reports whether cancellation was requested.
    /// [`Error::LeaseLost`] means the worker must stop: the scan is no longer its own.
    #[instrument(name = "scans.heartbeat", skip(self), fields(scan_id = %lease.scan_id))]
    pub async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<Heartbeat> {
        let lease = &lease.validated(self.cx.who, "heartbeat scans")?;
        let now = now();
        let expires = now + lease_duration("lease_for", lease_for)?;
        let row = self
            .cx
            .db()
            .query_one_raw(statement(
                self.cx.db(),
                "UPDATE scans SET heartbeat_at = $1, lease_expires_at = $2, updated_at = $1 \
                  WHERE id = $3 AND status = 'running' AND claimed_by = $4 AND attempt = $5 \
                 RETURNING cancel_requested_at",
                [
                    now.into(),
                    expires.into(),
                    lease.scan_id.into(),
                    lease.worker_id.clone().into(),
                    lease.attempt.into(),
                ],
            ))
            .await?
            .ok_or(Error::LeaseLost {
                scan_id: lease.scan_id,
            })?;
        let cancel_requested_at: Option<DateTime<FixedOffset>> =
            row.try_get("", "cancel_requested_at")?;
        Ok(Heartbeat {
            lease_expires_at: expires,
            cancel_requested: cancel_requested_at.is_some(),
        })
    }

    /// Completes the scan with its findings, in one transaction: deduplicates the findings
    /// against the repository's, records this scan's occurrences, marks fixed what a full scan
    /// of the tracked branch no longer sees, writes the scan's severity counts, succeeds the
    /// scan, points its project at it and appends `scan.completed`. Fenced on the lease:
    /// [`Error::LeaseLost`] writes nothing.
    #[instrument(name = "scans.complete", skip(self, findings), fields(scan_id = %lease.scan_id, findings = findings.len()))]
    pub async fn complete(&self, lease: &Lease, findings: Vec<NewFinding>) -> Result<scans::Model> {
        let lease = lease.validated(self.cx.who, "complete scans")?;
        let prepared = ingest::prepare(findings)?;
        if !self.cx.db().owns_transactions() {
            return self.complete_once(&lease, &prepared).await;
        }
        // Safe to repeat whole: each run re-reads the lease and everything it counts.
        retry_conflicts("scans.complete", || self.complete_once(&lease, &prepared)).await
    }

    async fn complete_once(
        &self,
        lease: &Lease,
        prepared: &[ingest::Prepared],
    ) -> Result<scans::Model> {
        let txn = self.cx.db().unit().await?;
        ingest::lock_repository_of(&txn, lease.scan_id).await?;
        let scan = fence(&txn, lease).await?;
        let mut ingest = ingest::Ingest::new(&txn, &scan);
        ingest.write(prepared).await?;
        let summary = ingest.finish().await?;
        let completed = self.succeed(&txn, lease, &scan, &summary).await?;
        txn.commit().await?;
        Ok(completed)
    }

    /// Succeeds a fenced scan with its ingest's summary, points its project at it when it is
    /// a full scan of the default branch (the project list shows that branch), and appends
    /// `scan.completed`.
    pub(crate) async fn succeed(
        &self,
        txn: &crate::db::Unit<'_>,
        lease: &Lease,
        scan: &scans::Model,
        summary: &ingest::IngestSummary,
    ) -> Result<scans::Model> {
        let now = now();
        let mut values: Vec<Value> = vec![
            now.into(),
            summary.counts.critical.into(),
            summary.counts.high.into(),
            summary.counts.medium.into(),
            summary.counts.low.into(),
            summary.counts.info.into(),
            summary.counts.unknown.into(),
            summary.total.into(),
            summary.new.into(),
            summary.fixed.into(),
            summary.dismissed.into(),
            scan.id.into(),
            (ingest::Role::of(scan) == ingest::Role::DefaultFull).into(),
        ];
        const SUCCEED: &str = "UPDATE scans SET status = 'succeeded', finished_at = $1, \
                    lease_expires_at = NULL, updated_at = $1, count_critical = $2, \
                    count_high = $3, count_medium = $4, count_low = $5, count_info = $6, \
                    count_unknown = $7, findings_total = $8, findings_new = $9, \
                    findings_fixed = $10, count_dismissed = $11 \
              WHERE id = $12 RETURNING *";
        // UUIDv7 order is creation order: a late completion of an older scan does not replace
        // a newer one.
        const LATEST: &str = "UPDATE projects SET latest_scan_id = $1, updated_at = $2 \
              WHERE id = $3 AND $4 AND (latest_scan_id IS NULL OR latest_scan_id < $1)";
        let completed = if is_postgres(txn) {
            // The scan, the project's pointer and the event in one statement: completions of
            // one repository run one after another under its lock, so every round trip saved
            // here is saved from the queue's serial section.
            let actor = audit::bind_actor(self.cx.who, Action::ScanCompleted, &mut values);
            let sql = format!(
                "WITH done AS ({SUCCEED}), \
                 latest AS ( \
                   UPDATE projects p SET latest_scan_id = d.id, updated_at = $1 FROM done d \
                    WHERE p.id = d.project_id AND $13 \
                      AND (p.latest_scan_id IS NULL OR p.latest_scan_id < d.id)), \
                 logged AS ( \
                   INSERT INTO events ({columns}) \
                   SELECT $1, d.project_id, {actor}, 'scan', d.id, \
                          jsonb_build_object('findings_total', d.findings_total, \
                                             'findings_new', d.findings_new, \
                                             'findings_fixed', d.findings_fixed) \
                     FROM done d) \
                 SELECT * FROM done",
                columns = audit::EVENT_COLUMNS,
            );
            scans::Model::find_by_statement(statement(txn, &sql, values))
                .one(txn)
                .await?
                .ok_or(Error::LeaseLost {
                    scan_id: lease.scan_id,
                })?
        } else {
            let latest = values.pop().unwrap_or_else(|| false.into());
            let completed = scans::Model::find_by_statement(statement(txn, SUCCEED, values))
                .one(txn)
                .await?
                .ok_or(Error::LeaseLost {
                    scan_id: lease.scan_id,
                })?;
            txn.execute_raw(statement(
                txn,
                LATEST,
                [scan.id.into(), now.into(), scan.project_id.into(), latest],
            ))
            .await?;
            audit::record(
                txn,
                self.cx.who,
                vec![
                    Audit::new(Action::ScanCompleted, ("scan", scan.id))
                        .project(scan.project_id)
                        .data(json!({
                            "findings_total": summary.total,
                            "findings_new": summary.new,
                            "findings_fixed": summary.fixed,
                        })),
                ],
            )
            .await?;
            completed
        };
        Ok(completed)
    }

    /// Fails the scan for good with an error code and message and appends `scan.failed`
    /// (fenced on the lease).
    #[instrument(name = "scans.fail", skip(self, message), fields(scan_id = %lease.scan_id))]
    pub async fn fail(
        &self,
        lease: &Lease,
        error_code: &str,
        message: &str,
    ) -> Result<scans::Model> {
        let error_code = validate::text("error_code", error_code, 1, 64)?;
        let message = validate::message("message", message, 4000)?;
        let lease = &lease.validated(self.cx.who, "fail scans")?;
        self.finish(lease, ScanStatus::Failed, Some(error_code), Some(message))
            .await
    }

    /// Records that the worker stopped after a cancel request and appends `scan.canceled`
    /// (fenced on the lease).
    #[instrument(name = "scans.acknowledge_cancel", skip(self), fields(scan_id = %lease.scan_id))]
    pub async fn acknowledge_cancel(&self, lease: &Lease) -> Result<scans::Model> {
        let lease = &lease.validated(self.cx.who, "acknowledge cancellations")?;
        self.finish(lease, ScanStatus::Canceled, None, None).await
    }

    async fn finish(
        &self,
        lease: &Lease,
        status: ScanStatus,
        error_code: Option<String>,
        error_message: Option<String>,
    ) -> Result<scans::Model> {
        let now = now();
        let action = match status {
            ScanStatus::Failed => Action::ScanFailed,
            _ => Action::ScanCanceled,
        };
        let data = json!({ "error_code": error_code });
        let unit = self.cx.db().unit().await?;
        let scan = scans::Model::find_by_statement(statement(
            &unit,
            "UPDATE scans SET status = $1, finished_at = $2, lease_expires_at = NULL, \
                        error_code = $3, error_message = $4, updated_at = $2 \
                  WHERE id = $5 AND status = 'running' AND claimed_by = $6 AND attempt = $7 \
                 RETURNING *",
            [
                status.as_str().into(),
                now.into(),
                error_code.into(),
                error_message.into(),
                lease.scan_id.into(),
                lease.worker_id.clone().into(),
                lease.attempt.into(),
            ],
        ))
        .one(&unit)
        .await?
        .ok_or(Error::LeaseLost {
            scan_id: lease.scan_id,
        })?;
        let event = Audit::new(action, ("scan", scan.id)).project(scan.project_id);
        let event = if status == ScanStatus::Failed {
            event.data(data)
        } else {
            event
        };
        audit::record(&unit, self.cx.who, vec![event]).await?;
        unit.commit().await?;
        Ok(scan)
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
        audit::record(
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
        audit::record(
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

    /// Finds running scans whose lease has expired (their worker died or stalled) and takes
    /// them back: re-queued after `backoff × attempt`, or failed with `lease_expired` once
    /// `max_attempts` claims have been used. Safe to run from several processes at once: each
    /// scan is taken back by a statement fenced on the attempt that expired.
    #[instrument(name = "scans.rescue_expired", skip(self))]
    pub async fn rescue_expired(&self, backoff: Duration) -> Result<Vec<Rescued>> {
        self.cx.who.require_system("rescue scans")?;
        let now = now();
        let expired = scans::Entity::find()
            .select_only()
            .column(scans::Column::Id)
            .column(scans::Column::Attempt)
            .column(scans::Column::MaxAttempts)
            .column(scans::Column::ProjectId)
            .filter(scans::Column::Status.eq(ScanStatus::Running.as_str()))
            .filter(scans::Column::LeaseExpiresAt.lt(now))
            .into_tuple::<(Uuid, i16, i16, Uuid)>()
            .all(self.cx.db())
            .await?;
        let mut rescued = Vec::with_capacity(expired.len());
        let mut events = Vec::with_capacity(expired.len());
        let unit = self.cx.db().unit().await?;
        for (id, attempt, max_attempts, project_id) in expired {
            let retry = attempt < max_attempts;
            let (status, scheduled_at, finished_at) = if retry {
                let delay = lease_duration(
                    "backoff",
                    backoff.saturating_mul(u32::try_from(attempt).unwrap_or(1)),
                )?;
                (ScanStatus::Queued, Some(now + delay), None)
            } else {
                (ScanStatus::Failed, None, Some(now))
            };
            let updated = unit
                .execute_raw(statement(
                    &unit,
                    "UPDATE scans SET status = $1, scheduled_at = COALESCE($2, scheduled_at), \
                            finished_at = $3, claimed_by = NULL, lease_expires_at = NULL, \
                            error_code = 'lease_expired', updated_at = $4 \
                      WHERE id = $5 AND attempt = $6 AND status = 'running' AND lease_expires_at < $4",
                    [
                        status.as_str().into(),
                        scheduled_at.into(),
                        finished_at.into(),
                        now.into(),
                        id.into(),
                        attempt.into(),
                    ],
                ))
                .await?;
            if updated.rows_affected() == 1 {
                tracing::warn!(scan_id = %id, attempt, %status, "rescued a scan whose lease expired");
                events.push(
                    Audit::new(Action::ScanRescued, ("scan", id))
                        .project(project_id)
                        .data(json!({ "status": status.as_str(), "attempt": attempt })),
                );
                rescued.push(Rescued {
                    scan_id: id,
                    status,
                });
            }
        }
        audit::record(&unit, self.cx.who, events).await?;
        unit.commit().await?;
        Ok(rescued)
    }

    /// The project's scans, newest first.
    #[instrument(name = "scans.history", skip(self))]
    pub async fn history(
        &self,
        project_id: Uuid,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<scans::Model, Uuid>> {
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
        let rows = self
            .cx
            .select::<scans::Entity>(Table::Scans, filter, values, &tail)
            .await?;
        Ok(Page::from_rows(rows, limit, |s: &scans::Model| s.id))
    }

    /// Deletes the scan with its occurrences and objects (queued for `purge` in the same
    /// transaction) and appends `scan.deleted`; findings it first or last saw keep existing.
    #[instrument(name = "scans.delete", skip(self))]
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        self.cx.who.refuse_worker("delete scans")?;
        let deletion = Deletion {
            table: "scans",
            reach: Table::Scans,
            artifact_column: "scan_id",
            project_column: "project_id",
            action: Action::ScanDeleted,
            subject: "scan",
        };
        if crate::artifacts::delete_with_objects(self.cx, &deletion, id).await? {
            Ok(())
        } else {
            Err(Error::not_found("scan", id))
        }
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

/// Checks the lease inside a transaction and returns the scan. On Postgres the UPDATE also
/// locks the row, so a rescuer that runs concurrently waits for this transaction and then
/// finds the scan no longer running.
pub(crate) async fn fence(txn: &impl ConnectionTrait, lease: &Lease) -> Result<scans::Model> {
    scans::Model::find_by_statement(statement(
        txn,
        "UPDATE scans SET updated_at = $1 \
              WHERE id = $2 AND status = 'running' AND claimed_by = $3 AND attempt = $4 \
             RETURNING *",
        [
            now().into(),
            lease.scan_id.into(),
            lease.worker_id.clone().into(),
            lease.attempt.into(),
        ],
    ))
    .one(txn)
    .await?
    .ok_or(Error::LeaseLost {
        scan_id: lease.scan_id,
    })
}

fn lease_duration(field: &str, d: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(d)
        .ok()
        .filter(|d| *d <= chrono::Duration::days(7))
        .ok_or_else(|| Error::invalid(field, "must be at most 7 days"))
}

fn stored_status(scan: &scans::Model) -> Result<ScanStatus> {
    scan.status.parse().map_err(|e: vega_entity::UnknownValue| {
        Error::Database(sea_orm::DbErr::Type(e.to_string()))
    })
}
