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
use vega_entity::{ScanStatus, scans};

use crate::context::principal::Principal;
use crate::context::trail::{self, Action, Audit};
use crate::db::page::limit_clause;
use crate::db::sql::{is_postgres, now, statement};
use crate::db::validate;
use crate::error::{Error, Result};
use crate::queue::scans::Scans;

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
    /// The fence every worker write carries, its three values pushed onto `values`: the scan
    /// is still `running` under this worker and attempt. The one place it is written.
    pub(crate) fn fenced(&self, values: &mut Vec<Value>) -> String {
        values.extend([
            self.scan_id.into(),
            self.worker_id.clone().into(),
            self.attempt.into(),
        ]);
        let n = values.len();
        format!(
            "id = ${} AND status = 'running' AND claimed_by = ${} AND attempt = ${n}",
            n - 2,
            n - 1
        )
    }

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

/// A scan whose lease expired, as handled by [`Scans::rescue_expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescued {
    /// The scan.
    pub scan_id: Uuid,
    /// `Queued` (will be retried after the backoff) or `Failed` (out of attempts).
    pub status: ScanStatus,
}

impl Scans<'_> {
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
        let lease = lease_duration("lease_for", lease_for)?;
        let limit = limit_clause(limit.into());
        let bind = |now: DateTime<FixedOffset>| -> Vec<Value> {
            vec![now.into(), worker_id.clone().into(), (now + lease).into()]
        };
        let mut claimed = if is_postgres(self.cx.db()) {
            let mut values = bind(now());
            // The CTE is an optimisation fence: the planner cannot turn the LIMITed,
            // SKIP LOCKED subquery into a join that locks more rows than it claims. The
            // claim logs its own `scan.claimed` events: one statement, one round trip.
            let actor = trail::bind_actor(self.cx.who, Action::ScanClaimed, &mut values);
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
                columns = trail::EVENT_COLUMNS,
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
            // The clock is read once the writer is this claim's: a claim that queued for it
            // takes what became due while it waited.
            let values = bind(now());
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
            trail::record(&unit, self.cx.who, events).await?;
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
        trail::record(
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
        let mut values = vec![now.into(), expires.into()];
        let fenced = lease.fenced(&mut values);
        let row = self
            .cx
            .db()
            .query_one_raw(statement(
                self.cx.db(),
                &format!(
                    "UPDATE scans SET heartbeat_at = $1, lease_expires_at = $2, updated_at = $1 \
                      WHERE {fenced} RETURNING cancel_requested_at"
                ),
                values,
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
        let mut values = vec![
            status.as_str().into(),
            now.into(),
            error_code.into(),
            error_message.into(),
        ];
        let fenced = lease.fenced(&mut values);
        let scan = scans::Model::find_by_statement(statement(
            &unit,
            &format!(
                "UPDATE scans SET status = $1, finished_at = $2, lease_expires_at = NULL, \
                        error_code = $3, error_message = $4, updated_at = $2 \
                  WHERE {fenced} RETURNING *"
            ),
            values,
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
        trail::record(&unit, self.cx.who, vec![event]).await?;
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
        trail::record(&unit, self.cx.who, events).await?;
        unit.commit().await?;
        Ok(rescued)
    }
}

/// Checks the lease inside a transaction and returns the scan. On Postgres the UPDATE also
/// locks the row, so a rescuer that runs concurrently waits for this transaction and then
/// finds the scan no longer running.
pub(crate) async fn fence(txn: &impl ConnectionTrait, lease: &Lease) -> Result<scans::Model> {
    let mut values = vec![now().into()];
    let fenced = lease.fenced(&mut values);
    scans::Model::find_by_statement(statement(
        txn,
        &format!("UPDATE scans SET updated_at = $1 WHERE {fenced} RETURNING *"),
        values,
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
