//! The read side of findings (the findings pages) and the triage transitions; ingestion is
//! `ingest.rs`.

use sea_orm::{ConnectionTrait, EntityTrait, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{DismissReason, Severity, finding_occurrences, findings};

use crate::audit::{self, Action, Audit};
use crate::page::{Page, limit_clause, page_size};
use crate::principal::{Table, and_project_reach, and_reach};
use crate::session::Cx;
use crate::sql::{now, statement};
use crate::{Error, Result};

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

/// The keyset cursor of the open-findings list (worst first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FindingCursor {
    /// The last row's severity ordinal.
    pub severity: i16,
    /// The last row's id.
    pub id: Uuid,
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

    /// The project's open findings counted by severity (an index-only scan of the open-findings
    /// index).
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
                      WHERE project_id = $1 AND status = 'open'{reach} GROUP BY severity"
                ),
                values,
            ))
            .await?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i16>("", "severity")?,
                    row.try_get::<i64>("", "n")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut counts = SeverityCounts::default();
        for (severity, n) in rows {
            counts.add(Severity::from_i16(severity).unwrap_or(Severity::Unknown), n);
        }
        Ok(counts)
    }

    /// The project's open findings, worst first (severity, then newest), keyset-paginated.
    #[instrument(name = "findings.list_open", skip(self))]
    pub async fn list_open(
        &self,
        project_id: Uuid,
        after: Option<FindingCursor>,
        limit: u64,
    ) -> Result<Page<findings::Model, FindingCursor>> {
        let limit = page_size(limit)?;
        let (cursor, mut values): (&str, Vec<Value>) = match after {
            Some(c) => (
                "AND (severity, id) < ($2, $3)",
                vec![c.severity.into(), c.id.into()],
            ),
            None => ("", vec![]),
        };
        values.insert(0, project_id.into());
        let reach = and_project_reach(self.cx.who, Table::Findings, "$1", &mut values);
        let rows = findings::Entity::find()
            .from_raw_sql(statement(
                self.cx.db(),
                &format!(
                    "SELECT * FROM findings WHERE project_id = $1 AND status = 'open' {cursor}{reach} \
                      ORDER BY severity DESC, id DESC {}",
                    limit_clause(limit + 1)
                ),
                values,
            ))
            .all(self.cx.db())
            .await?;
        Ok(Page::from_rows(rows, limit, |f: &findings::Model| {
            FindingCursor {
                severity: f.severity,
                id: f.id,
            }
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
        // The finding's columns as they are, the occurrence's under `o_` names.
        let sql = format!(
            "SELECT f.*, o.severity AS o_severity, o.change AS o_change, \
                    o.file_path AS o_file_path, o.start_line AS o_start_line, \
                    o.end_line AS o_end_line \
               FROM finding_occurrences o JOIN findings f ON f.id = o.finding_id \
              WHERE o.scan_id = $1{cursor}{reach} ORDER BY o.finding_id {}",
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

    /// Dismisses an open finding in reach and appends `finding.dismissed`. Later scans that see
    /// it leave it dismissed.
    #[instrument(name = "findings.dismiss", skip(self))]
    pub async fn dismiss(
        &self,
        id: Uuid,
        reason: DismissReason,
        by_user_id: Option<Uuid>,
    ) -> Result<findings::Model> {
        let now = now();
        self.transition(
            id,
            "UPDATE findings SET status = 'dismissed', dismissed_at = $1, dismissed_reason = $2, \
                    dismissed_by_user_id = $3, updated_at = $1 \
              WHERE id = $4 AND status = 'open'",
            vec![
                now.into(),
                reason.as_str().into(),
                by_user_id.into(),
                id.into(),
            ],
            "only an open finding can be dismissed",
            Action::FindingDismissed,
            json!({ "reason": reason.as_str() }),
        )
        .await
    }

    /// Reopens a dismissed finding in reach and appends `finding.reopened`.
    #[instrument(name = "findings.reopen", skip(self))]
    pub async fn reopen(&self, id: Uuid) -> Result<findings::Model> {
        self.transition(
            id,
            "UPDATE findings SET status = 'open', dismissed_at = NULL, dismissed_reason = NULL, \
                    dismissed_by_user_id = NULL, updated_at = $1 \
              WHERE id = $2 AND status = 'dismissed'",
            vec![now().into(), id.into()],
            "only a dismissed finding can be reopened",
            Action::FindingReopened,
            json!({}),
        )
        .await
    }

    /// A status change fenced on the current status, with its event; the statement's own
    /// `WHERE` carries the reach.
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        id: Uuid,
        sql: &str,
        mut values: Vec<Value>,
        refused: &str,
        action: Action,
        data: serde_json::Value,
    ) -> Result<findings::Model> {
        self.cx.who.refuse_worker("triage findings")?;
        let reach = and_reach(self.cx.who, Table::Findings, "findings", &mut values);
        let unit = self.cx.db().unit().await?;
        let changed = findings::Entity::find()
            .from_raw_sql(statement(
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
                message: format!("{refused} (it is {})", current.status),
            });
        };
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
