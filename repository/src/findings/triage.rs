//! Triage: the transitions a person makes on a finding (dismiss, confirm, reopen, a severity
//! override) and the expiry of time-boxed dismissals, each fenced on the current state and
//! recorded on the trail.

use chrono::{DateTime, FixedOffset};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{DismissReason, FindingStatus, Severity, findings};

use crate::context::principal::{Table, and_reach};
use crate::context::trail::{self, Action, Audit};
use crate::db::page::{limit_clause, page_size};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};
use crate::findings::reads::Findings;

/// A finding's triage state, as people see it: the stored status, with a confirmed open
/// finding told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriageState {
    /// Open on the default branch, not yet triaged.
    Open,
    /// Open, and a person confirmed it is real.
    Confirmed,
    /// Dismissed by a person (or by the tool's suppression).
    Dismissed,
    /// No longer seen by a full scan of the default branch.
    Fixed,
}

impl TriageState {
    /// The state of a stored finding.
    pub fn of(finding: &findings::Model) -> Self {
        match finding.status.as_str() {
            s if s == FindingStatus::Dismissed.as_str() => TriageState::Dismissed,
            s if s == FindingStatus::Fixed.as_str() => TriageState::Fixed,
            _ if finding.confirmed_at.is_some() => TriageState::Confirmed,
            _ => TriageState::Open,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            TriageState::Open => "open",
            TriageState::Confirmed => "confirmed",
            TriageState::Dismissed => "dismissed",
            TriageState::Fixed => "fixed",
        }
    }
}

/// Input for [`Findings::dismiss`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dismissal {
    /// Why.
    pub reason: DismissReason,
    /// What the person said, up to 4,000 characters.
    pub comment: Option<String>,
    /// When the dismissal lapses and the finding reopens by itself (see
    /// [`Findings::expire_dismissals`]); must be in the future.
    pub until: Option<DateTime<FixedOffset>>,
}

impl Dismissal {
    /// A dismissal with this reason, no comment and no expiry.
    pub fn because(reason: DismissReason) -> Self {
        Self {
            reason,
            comment: None,
            until: None,
        }
    }
}

impl Findings<'_> {
    /// Dismisses an open (or confirmed) finding in reach, by the session's user, and appends
    /// `finding.dismissed`. Later scans that see it leave it dismissed until a person reopens
    /// it or its expiry passes.
    #[instrument(name = "findings.dismiss", skip(self, dismissal), fields(reason = %dismissal.reason))]
    pub async fn dismiss(&self, id: Uuid, dismissal: Dismissal) -> Result<findings::Model> {
        let comment = validate::optional_text("comment", dismissal.comment.as_deref(), 4000)?;
        let now = now();
        let until = match dismissal.until {
            Some(until) => {
                let until = validate::timestamp("until", until)?;
                if until <= now {
                    return Err(Error::invalid("until", "must be in the future"));
                }
                Some(until)
            }
            None => None,
        };
        let data = json!({
            "reason": dismissal.reason.as_str(),
            "comment": comment,
            "until": until,
        });
        self.transition(
            id,
            None,
            "UPDATE findings SET status = 'dismissed', dismissed_at = $1, dismissed_reason = $2, \
                    dismissed_by_user_id = $3, dismissed_comment = $4, dismissed_until = $5, \
                    confirmed_at = NULL, updated_at = $1 \
              WHERE id = $6 AND status = 'open'",
            vec![
                now.into(),
                dismissal.reason.as_str().into(),
                self.cx.who.user_id().into(),
                comment.into(),
                until.into(),
                id.into(),
            ],
            "only an open finding can be dismissed",
            Action::FindingDismissed,
            data,
        )
        .await
    }

    /// Confirms an open finding in reach (a person checked it is real) and appends
    /// `finding.confirmed`.
    #[instrument(name = "findings.confirm", skip(self))]
    pub async fn confirm(&self, id: Uuid) -> Result<findings::Model> {
        self.transition(
            id,
            None,
            "UPDATE findings SET confirmed_at = $1, updated_at = $1 \
              WHERE id = $2 AND status = 'open' AND confirmed_at IS NULL",
            vec![now().into(), id.into()],
            "only an open, unconfirmed finding can be confirmed",
            Action::FindingConfirmed,
            json!({}),
        )
        .await
    }

    /// Reopens a dismissed finding, or takes back a confirmation, and appends
    /// `finding.reopened`.
    #[instrument(name = "findings.reopen", skip(self))]
    pub async fn reopen(&self, id: Uuid) -> Result<findings::Model> {
        self.transition(
            id,
            None,
            "UPDATE findings SET status = 'open', dismissed_at = NULL, dismissed_reason = NULL, \
                    dismissed_by_user_id = NULL, dismissed_comment = NULL, \
                    dismissed_until = NULL, confirmed_at = NULL, updated_at = $1 \
              WHERE id = $2 AND (status = 'dismissed' OR (status = 'open' AND confirmed_at IS NOT NULL))",
            vec![now().into(), id.into()],
            "only a dismissed or confirmed finding can be reopened",
            Action::FindingReopened,
            json!({}),
        )
        .await
    }

    /// Sets a finding's severity, whatever the tool says in later scans, with the person's
    /// reason, and appends `finding.severity_overridden`.
    #[instrument(name = "findings.override_severity", skip(self, reason))]
    pub async fn override_severity(
        &self,
        id: Uuid,
        severity: Severity,
        reason: &str,
    ) -> Result<findings::Model> {
        let reason = validate::text("reason", reason, 1, 4000)?;
        let current = self.get(id).await?;
        let (was, data) = (
            current.severity,
            json!({ "from": severity_name(current.severity), "to": severity.as_str(), "reason": reason }),
        );
        self.transition(
            id,
            Some(current),
            "UPDATE findings SET severity = $1, severity_overridden = true, severity_reason = $2, \
                    updated_at = $3 \
              WHERE id = $4 AND severity = $5",
            vec![
                severity.as_i16().into(),
                reason.into(),
                now().into(),
                id.into(),
                was.into(),
            ],
            "its severity changed meanwhile; read it again",
            Action::FindingSeverityOverridden,
            data,
        )
        .await
    }

    /// Gives an overridden finding back the tool's severity and appends
    /// `finding.severity_restored`.
    #[instrument(name = "findings.clear_severity_override", skip(self))]
    pub async fn clear_severity_override(&self, id: Uuid) -> Result<findings::Model> {
        let current = self.get(id).await?;
        let data = json!({
            "from": severity_name(current.severity),
            "to": severity_name(current.scanner_severity),
        });
        self.transition(
            id,
            Some(current),
            "UPDATE findings SET severity = scanner_severity, severity_overridden = false, \
                    severity_reason = NULL, updated_at = $1 \
              WHERE id = $2 AND severity_overridden",
            vec![now().into(), id.into()],
            "its severity is not overridden",
            Action::FindingSeverityRestored,
            data,
        )
        .await
    }

    /// Reopens up to `limit` dismissed findings whose expiry has passed, each with
    /// `finding.dismissal_expired` (the system only; `vega-admin maintain` runs it). Returns
    /// how many reopened; call again while it returns `limit`.
    #[instrument(name = "findings.expire_dismissals", skip(self))]
    pub async fn expire_dismissals(&self, limit: u64) -> Result<u64> {
        self.cx.who.require_system("expire dismissals")?;
        let limit = page_size(limit)?;
        let now = now();
        let unit = self.cx.db().unit().await?;
        let due = findings::Model::find_by_statement(statement(
            &unit,
            &format!(
                "SELECT * FROM findings \
                      WHERE status = 'dismissed' AND dismissed_until IS NOT NULL \
                        AND dismissed_until <= $1 ORDER BY dismissed_until, id {}",
                limit_clause(limit)
            ),
            [now.into()],
        ))
        .all(&unit)
        .await?;
        if due.is_empty() {
            unit.commit().await?;
            return Ok(0);
        }
        // One statement for the batch, fenced on the expiry still being past, so a person's
        // change since the read (reopened, or dismissed again until later) wins.
        let mut values: Vec<Value> = vec![now.into()];
        values.extend(due.iter().map(|f| Value::from(f.id)));
        let reopened = unit
            .query_all_raw(statement(
                &unit,
                &format!(
                    "UPDATE findings SET status = 'open', dismissed_at = NULL, \
                            dismissed_reason = NULL, dismissed_by_user_id = NULL, \
                            dismissed_comment = NULL, dismissed_until = NULL, updated_at = $1 \
                      WHERE id IN ({}) AND status = 'dismissed' AND dismissed_until <= $1 \
                     RETURNING id",
                    crate::db::sql::placeholders(2, due.len())
                ),
                values,
            ))
            .await?
            .iter()
            .map(|row| row.try_get::<Uuid>("", "id"))
            .collect::<std::result::Result<std::collections::HashSet<_>, _>>()?;
        let events: Vec<_> = due
            .iter()
            .filter(|f| reopened.contains(&f.id))
            .map(|finding| {
                Audit::new(Action::FindingDismissalExpired, ("finding", finding.id))
                    .project(finding.project_id)
                    .data(json!({
                        "reason": finding.dismissed_reason,
                        "until": finding.dismissed_until,
                    }))
            })
            .collect();
        let reopened = events.len() as u64;
        trail::record(&unit, self.cx.who, events).await?;
        unit.commit().await?;
        Ok(reopened)
    }

    /// A change fenced on the current state, with its event (its data gains the state it
    /// left, `from`); the statement's own `WHERE` carries the reach. `before` is the finding
    /// as the caller already read it, if it did.
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        id: Uuid,
        before: Option<findings::Model>,
        sql: &str,
        mut values: Vec<Value>,
        refused: &str,
        action: Action,
        mut data: serde_json::Value,
    ) -> Result<findings::Model> {
        self.cx.who.refuse_worker("triage findings")?;
        let before = match before {
            Some(before) => before,
            None => self.get(id).await?,
        };
        let reach = and_reach(self.cx.who, Table::Findings, "findings", &mut values);
        let unit = self.cx.db().unit().await?;
        let changed = findings::Model::find_by_statement(statement(
            &unit,
            &format!("{sql}{reach} RETURNING *"),
            values,
        ))
        .one(&unit)
        .await?;
        let Some(finding) = changed else {
            unit.commit().await?;
            let current = self.get(id).await?;
            return Err(Error::Conflict {
                constraint: "findings_status".into(),
                message: format!("{refused} (it is {})", TriageState::of(&current).as_str()),
            });
        };
        if let Some(map) = data.as_object_mut() {
            map.entry("from")
                .or_insert_with(|| TriageState::of(&before).as_str().into());
        }
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(action, ("finding", finding.id))
                    .project(finding.project_id)
                    .data(data),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(finding)
    }
}

fn severity_name(ordinal: i16) -> &'static str {
    Severity::from_i16(ordinal)
        .unwrap_or(Severity::Unknown)
        .as_str()
}
