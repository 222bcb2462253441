//! The read side of findings (the open list, counts, a scan's findings, the pull-request
//! comparison, the overdue list, a finding's history) and the triage transitions; ingestion
//! is `ingest.rs`.
//!
//! A finding's status is its status on its repository's default branch (see `ingest::Role`):
//! `open` (a person may have *confirmed* it, `confirmed_at`), `dismissed` (with a reason,
//! comment and optional expiry) or `fixed`. The reads of "open findings" are those of the
//! default branch: open, and seen there (`on_default_branch`).

use chrono::{DateTime, FixedOffset};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{DismissReason, FindingStatus, ScanKind, ScanStatus, Severity, events};
use vega_entity::{finding_occurrences, findings, projects, scans};

use crate::audit::{self, Action, Audit};
use crate::events::EventCursor;
use crate::page::{Page, limit_clause, page_size};
use crate::principal::{Table, and_project_reach, and_reach};
use crate::session::Cx;
use crate::sql::{now, statement};
use crate::{Error, Result, validate};

/// The default-branch, open-findings predicate of the partial indexes behind these reads.
const OPEN_ON_DEFAULT: &str = "status = 'open' AND on_default_branch";

/// Findings counted by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SeverityCounts {
    /// Critical.
    pub critical: i64,
    /// High.
    pub high: i64,
    /// Medium.
    pub medium: i64,
    /// Low.
    pub low: i64,
    /// Informational.
    pub info: i64,
    /// Unknown.
    pub unknown: i64,
}

impl SeverityCounts {
    pub(crate) fn add(&mut self, severity: Severity, n: i64) {
        let slot = match severity {
            Severity::Critical => &mut self.critical,
            Severity::High => &mut self.high,
            Severity::Medium => &mut self.medium,
            Severity::Low => &mut self.low,
            Severity::Info => &mut self.info,
            Severity::Unknown => &mut self.unknown,
        };
        *slot += n;
    }

    /// All findings.
    pub fn total(&self) -> i64 {
        self.critical + self.high + self.medium + self.low + self.info + self.unknown
    }
}

/// The keyset cursor of the open and overdue lists: worst first (severity descending), then
/// oldest first (`first_seen_at`, then id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FindingCursor {
    /// The last row's severity ordinal.
    pub severity: i16,
    /// The last row's first sighting.
    pub first_seen_at: DateTime<FixedOffset>,
    /// The last row's id.
    pub id: Uuid,
}

impl FindingCursor {
    fn of(f: &findings::Model) -> Self {
        Self {
            severity: f.severity,
            first_seen_at: f.first_seen_at,
            id: f.id,
        }
    }

    /// Binds the cursor's values and returns the condition "in the cursor's severity, after
    /// it": `severity = $s AND (first_seen_at, id) > ($t, $i)`, and the severity's placeholder.
    fn same_severity_after(self, values: &mut Vec<Value>) -> Result<(String, String)> {
        values.push(self.severity.into());
        values.push(validate::timestamp("after.first_seen_at", self.first_seen_at)?.into());
        values.push(self.id.into());
        let n = values.len();
        let s = format!("${}", n - 2);
        Ok((
            format!(
                "severity = {s} AND (first_seen_at, id) > (${}, ${n})",
                n - 1
            ),
            s,
        ))
    }
}

/// The order of the open and overdue lists: worst, then oldest.
const WORST_FIRST: &str = "severity DESC, first_seen_at, id";

/// A page of `rows` findings in [`WORST_FIRST`] order among those matching `filter` and one of
/// `arms` (none: `filter` alone), the arms given in that order.
///
/// `(severity, first_seen_at, id)` after a cursor mixes directions, so no single row
/// comparison bounds `findings_default_open_idx` (`project_id, severity DESC, first_seen_at,
/// id`) and an `OR` of the two cases walks the index from its start. Each arm is instead a
/// range of that index, read in index order for what the arms before it left of the page: a
/// deep page reads what the first does, and an arm the page does not reach reads nothing.
fn worst_first_page(filter: &str, arms: &[String], rows: u64) -> String {
    let select = |arm: &str, limit: &str| {
        format!("SELECT * FROM findings WHERE {filter}{arm} ORDER BY {WORST_FIRST} LIMIT {limit}")
    };
    match arms {
        [] => select("", &rows.to_string()),
        [arm] => select(&format!(" AND {arm}"), &rows.to_string()),
        _ => {
            let ctes = arms
                .iter()
                .enumerate()
                .map(|(i, arm)| {
                    let limit = if i == 0 {
                        rows.to_string()
                    } else {
                        let done = (0..i)
                            .map(|j| format!("SELECT id FROM arm{j}"))
                            .collect::<Vec<_>>()
                            .join(" UNION ALL ");
                        format!("(SELECT {rows} - count(*) FROM ({done}) AS done)")
                    };
                    format!("arm{i} AS ({})", select(&format!(" AND {arm}"), &limit))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let union = (0..arms.len())
                .map(|i| format!("SELECT * FROM arm{i}"))
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            format!("WITH {ctes} {union} ORDER BY {WORST_FIRST}")
        }
    }
}

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

/// Which part of a comparison [`Findings::compare`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delta {
    /// Seen by the scan and not known on the default branch (never seen there, or fixed
    /// there): what the pull request introduces.
    Introduced,
    /// Open on the default branch and not seen by the scan (a full scan only): what the
    /// pull request no longer has.
    Absent,
    /// Seen by the scan and known on the default branch (open or dismissed there).
    Unchanged,
}

impl Delta {
    /// The value stored in `scan_deltas.delta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delta::Introduced => "introduced",
            Delta::Absent => "absent",
            Delta::Unchanged => "unchanged",
        }
    }
}

/// Days to fix a finding, per severity, counted from its first sighting; `None` is no
/// deadline. Projects override the global defaults per severity
/// ([`crate::Projects::set_sla`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlaPolicy {
    /// Critical.
    pub critical: Option<i32>,
    /// High.
    pub high: Option<i32>,
    /// Medium.
    pub medium: Option<i32>,
    /// Low.
    pub low: Option<i32>,
}

impl SlaPolicy {
    /// The global defaults: 7, 30, 90 and 180 days; informational findings have none.
    pub const DEFAULT: SlaPolicy = SlaPolicy {
        critical: Some(7),
        high: Some(30),
        medium: Some(90),
        low: Some(180),
    };

    /// The days allowed for `severity`.
    pub fn days(&self, severity: Severity) -> Option<i32> {
        match severity {
            Severity::Critical => self.critical,
            Severity::High => self.high,
            Severity::Medium => self.medium,
            Severity::Low => self.low,
            Severity::Info | Severity::Unknown => None,
        }
    }

    /// This policy with a project's own settings over it.
    pub fn with_project(self, project: &projects::Model) -> Self {
        Self {
            critical: project.sla_critical_days.or(self.critical),
            high: project.sla_high_days.or(self.high),
            medium: project.sla_medium_days.or(self.medium),
            low: project.sla_low_days.or(self.low),
        }
    }
}

impl Default for SlaPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// An open finding past its SLA, from [`Findings::overdue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    /// The finding.
    pub finding: findings::Model,
    /// When it was due: its first sighting plus its severity's days.
    pub due_at: DateTime<FixedOffset>,
}

/// A finding as seen by one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanFinding {
    /// The scan's sighting: severity, location and whether it was new.
    pub occurrence: finding_occurrences::Model,
    /// The finding.
    pub finding: findings::Model,
}

/// The `findings` table: deduplicated findings and their lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct Findings<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Findings<'_> {
    /// The finding with this id.
    #[instrument(name = "findings.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<findings::Model> {
        self.cx
            .select_one::<findings::Entity>(Table::Findings, "x.id = $1", vec![id.into()])
            .await?
            .ok_or_else(|| Error::not_found("finding", id))
    }

    /// The project's open findings on its repositories' default branches, counted by
    /// severity (confirmed ones included; an index-only scan of the open-findings index).
    #[instrument(name = "findings.open_counts", skip(self))]
    pub async fn open_counts(&self, project_id: Uuid) -> Result<SeverityCounts> {
        let mut values = vec![project_id.into()];
        let reach = and_project_reach(self.cx.who, Table::Findings, "$1", &mut values);
        let rows = self
            .cx
            .db()
            .query_all_raw(statement(
                self.cx.db(),
                &format!(
                    "SELECT severity, COUNT(*) AS n FROM findings \
                      WHERE project_id = $1 AND {OPEN_ON_DEFAULT}{reach} GROUP BY severity"
                ),
                values,
            ))
            .await?;
        let mut counts = SeverityCounts::default();
        for row in &rows {
            let severity: i16 = row.try_get("", "severity")?;
            let n: i64 = row.try_get("", "n")?;
            counts.add(Severity::from_i16(severity).unwrap_or(Severity::Unknown), n);
        }
        Ok(counts)
    }

    /// Up to `rows` of the project's open findings (`values[0]`, bound as `$1`) in
    /// [`WORST_FIRST`] order that match one of `arms` ([`worst_first_page`]).
    async fn worst_first(
        &self,
        arms: &[String],
        mut values: Vec<Value>,
        rows: u64,
    ) -> Result<Vec<findings::Model>> {
        let reach = and_project_reach(self.cx.who, Table::Findings, "$1", &mut values);
        let filter = format!("project_id = $1 AND {OPEN_ON_DEFAULT}{reach}");
        let sql = worst_first_page(&filter, arms, rows);
        Ok(
            findings::Model::find_by_statement(statement(self.cx.db(), &sql, values))
                .all(self.cx.db())
                .await?,
        )
    }

    /// The project's open findings on its default branches, worst first, then oldest first,
    /// keyset-paginated.
    #[instrument(name = "findings.list_open", skip(self))]
    pub async fn list_open(
        &self,
        project_id: Uuid,
        after: Option<FindingCursor>,
        limit: u64,
    ) -> Result<Page<findings::Model, FindingCursor>> {
        let limit = page_size(limit)?;
        let mut values = vec![project_id.into()];
        // After a cursor: the rest of its severity, then every lower one.
        let arms = match after {
            Some(c) => {
                let (same, s) = c.same_severity_after(&mut values)?;
                vec![same, format!("severity < {s}")]
            }
            None => Vec::new(),
        };
        let rows = self.worst_first(&arms, values, limit + 1).await?;
        Ok(Page::from_rows(rows, limit, FindingCursor::of))
    }

    /// The project's open findings past their SLA (`policy` under the project's own
    /// settings), worst first, then most overdue first, keyset-paginated.
    #[instrument(name = "findings.overdue", skip(self))]
    pub async fn overdue(
        &self,
        project_id: Uuid,
        policy: SlaPolicy,
        after: Option<FindingCursor>,
        limit: u64,
    ) -> Result<Page<Overdue, FindingCursor>> {
        let limit = page_size(limit)?;
        let project = self
            .cx
            .select_one::<projects::Entity>(Table::Projects, "x.id = $1", vec![project_id.into()])
            .await?
            .ok_or_else(|| Error::not_found("project", project_id))?;
        let policy = policy.with_project(&project);
        let now = now();
        let mut values: Vec<Value> = vec![project_id.into()];
        // One arm per severity that has a deadline, worst first, from the cursor's on: the
        // cutoff bound in Rust (the same SQL on both engines) and each arm a range of the
        // open-findings index.
        let mut arms = Vec::new();
        for &severity in Severity::ALL.iter().rev() {
            let Some(days) = policy.days(severity) else {
                continue;
            };
            let ordinal = severity.as_i16();
            let rest = match after {
                Some(c) if ordinal > c.severity => continue,
                Some(c) if ordinal == c.severity => c.same_severity_after(&mut values)?.0,
                _ => {
                    values.push(ordinal.into());
                    format!("severity = ${}", values.len())
                }
            };
            values.push((now - chrono::Duration::days(days.into())).into());
            arms.push(format!("{rest} AND first_seen_at < ${}", values.len()));
        }
        if arms.is_empty() {
            return Ok(Page::from_rows(Vec::new(), limit, |o: &Overdue| {
                FindingCursor::of(&o.finding)
            }));
        }
        let rows = self.worst_first(&arms, values, limit + 1).await?;
        let rows = rows
            .into_iter()
            .filter_map(|finding| {
                let days = policy.days(Severity::from_i16(finding.severity)?)?;
                Some(Overdue {
                    due_at: finding.first_seen_at + chrono::Duration::days(days.into()),
                    finding,
                })
            })
            .collect();
        Ok(Page::from_rows(rows, limit, |o: &Overdue| {
            FindingCursor::of(&o.finding)
        }))
    }

    /// What one scan saw, by finding id, keyset-paginated.
    #[instrument(name = "findings.of_scan", skip(self))]
    pub async fn of_scan(
        &self,
        scan_id: Uuid,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<ScanFinding, Uuid>> {
        let limit = page_size(limit)?;
        let mut values = vec![scan_id.into()];
        let cursor = match after {
            Some(after) => {
                values.push(after.into());
                " AND o.finding_id > $2"
            }
            None => "",
        };
        let reach = and_reach(self.cx.who, Table::Findings, "o", &mut values);
        // The finding's columns as they are, the occurrence's under `o_` names. The page is
        // cut before the join: joined first, Postgres may merge-join it with `findings_pkey`
        // walked from its first id, reading every finding before the page.
        let sql = format!(
            "SELECT f.*, page.severity AS o_severity, page.change AS o_change, \
                    page.file_path AS o_file_path, page.start_line AS o_start_line, \
                    page.end_line AS o_end_line \
               FROM (SELECT * FROM finding_occurrences o \
                      WHERE o.scan_id = $1{cursor}{reach} ORDER BY o.finding_id {}) AS page \
               JOIN findings f ON f.id = page.finding_id ORDER BY page.finding_id",
            limit_clause(limit + 1)
        );
        let rows = self
            .cx
            .db()
            .query_all_raw(statement(self.cx.db(), &sql, values))
            .await?;
        let rows = rows
            .iter()
            .map(|row| {
                let finding = findings::Model::from_query_result(row, "")?;
                Ok(ScanFinding {
                    occurrence: finding_occurrences::Model {
                        scan_id,
                        finding_id: finding.id,
                        project_id: finding.project_id,
                        severity: row.try_get("", "o_severity")?,
                        change: row.try_get("", "o_change")?,
                        file_path: row.try_get("", "o_file_path")?,
                        start_line: row.try_get("", "o_start_line")?,
                        end_line: row.try_get("", "o_end_line")?,
                    },
                    finding,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(rows, limit, |f: &ScanFinding| f.finding.id))
    }

    /// One part of the comparison of a scan of another ref (typically a pull request's
    /// branch) with its repository's default branch as it stood when the scan completed,
    /// by finding id, keyset-paginated. [`Delta::Absent`] needs a full scan (a partial one
    /// does not see everything); the scan must have succeeded. The parts are kept at
    /// completion (`scan_deltas`), so a page costs one index range whatever the overlap.
    #[instrument(name = "findings.compare", skip(self))]
    pub async fn compare(
        &self,
        scan_id: Uuid,
        delta: Delta,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<findings::Model, Uuid>> {
        let limit = page_size(limit)?;
        let scan = self
            .cx
            .select_one::<scans::Entity>(Table::Scans, "x.id = $1", vec![scan_id.into()])
            .await?
            .ok_or_else(|| Error::not_found("scan", scan_id))?;
        if scan.status != ScanStatus::Succeeded.as_str() {
            return Err(Error::Conflict {
                constraint: "scans_status".into(),
                message: format!(
                    "the scan is {}; only a succeeded scan compares",
                    scan.status
                ),
            });
        }
        if delta == Delta::Absent && scan.kind != ScanKind::Full.as_str() {
            return Err(Error::invalid(
                "delta",
                format!("absent needs a full scan; this one is {}", scan.kind),
            ));
        }
        if scan.tracks_default_branch {
            return Err(Error::invalid(
                "scan",
                "is of the default branch; compare a scan of another ref",
            ));
        }
        let mut values: Vec<Value> = vec![scan.id.into(), delta.as_str().into()];
        let cursor = match after {
            Some(after) => {
                values.push(after.into());
                format!(" AND d.finding_id > ${}", values.len())
            }
            None => String::new(),
        };
        // The page is cut before the join, as in `of_scan`. The scan is in reach, so its
        // deltas are; the findings carry the reach all the same.
        let reach = and_reach(self.cx.who, Table::Findings, "f", &mut values);
        let sql = format!(
            "SELECT f.* FROM (SELECT d.finding_id FROM scan_deltas d \
                               WHERE d.scan_id = $1 AND d.delta = $2{cursor} \
                               ORDER BY d.finding_id {}) AS page \
               JOIN findings f ON f.id = page.finding_id{reach} ORDER BY page.finding_id",
            limit_clause(limit + 1)
        );
        let rows = findings::Model::find_by_statement(statement(self.cx.db(), &sql, values))
            .all(self.cx.db())
            .await?;
        Ok(Page::from_rows(rows, limit, |f: &findings::Model| f.id))
    }

    /// A finding's history, oldest first: every triage transition and severity change with
    /// its actor, keyset-paginated.
    #[instrument(name = "findings.history", skip(self))]
    pub async fn history(
        &self,
        id: Uuid,
        after: Option<EventCursor>,
        limit: u64,
    ) -> Result<Page<events::Model, EventCursor>> {
        let limit = page_size(limit)?;
        self.get(id).await?;
        let mut values: Vec<Value> = vec![id.into()];
        let cursor = EventCursor::condition(after, ">", &mut values)?;
        let reach = and_reach(self.cx.who, Table::Events, "e", &mut values);
        let rows = events::Model::find_by_statement(statement(
            self.cx.db(),
            &format!(
                "SELECT e.* FROM events e \
                      WHERE e.subject_type = 'finding' AND e.subject_id = $1{cursor}{reach} \
                      ORDER BY e.created_at, e.id {}",
                limit_clause(limit + 1)
            ),
            values,
        ))
        .all(self.cx.db())
        .await?;
        Ok(Page::from_rows(rows, limit, EventCursor::of))
    }

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
                    crate::sql::placeholders(2, due.len())
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
        audit::record(&unit, self.cx.who, events).await?;
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
        audit::record(
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
