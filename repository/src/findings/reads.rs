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
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{ScanKind, ScanStatus, Severity, events};
use vega_entity::{findings, scans};

use crate::activity::events::EventCursor;
use crate::context::cx::Cx;
use crate::context::principal::{Table, and_project_reach, and_reach};
use crate::db::page::{Page, limit_clause, page_size};
use crate::db::sql::statement;
use crate::db::validate;
use crate::error::{Error, Result};
use crate::findings::runs::{CHANGE_AT_SCAN_1, SEEN_BY_SCAN_1};

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
    pub(super) fn of(f: &findings::Model) -> Self {
        Self {
            severity: f.severity,
            first_seen_at: f.first_seen_at,
            id: f.id,
        }
    }

    /// Binds the cursor's values and returns the condition "in the cursor's severity, after
    /// it": `severity = $s AND (first_seen_at, id) > ($t, $i)`, and the severity's placeholder.
    pub(super) fn same_severity_after(self, values: &mut Vec<Value>) -> Result<(String, String)> {
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

/// What one scan saw of a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The scan.
    pub scan_id: Uuid,
    /// The finding.
    pub finding_id: Uuid,
    /// The finding's project.
    pub project_id: Uuid,
    /// The severity the scanner gave it.
    pub severity: i16,
    /// `new`, `existing` or `reopened` ([`vega_entity::OccurrenceChange`]).
    pub change: String,
    /// Where the scan saw it.
    pub file_path: Option<String>,
    /// First line.
    pub start_line: Option<i32>,
    /// Last line.
    pub end_line: Option<i32>,
}

/// A finding as seen by one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanFinding {
    /// The scan's sighting: severity, location and whether it was new.
    pub occurrence: Sighting,
    /// The finding.
    pub finding: findings::Model,
}

/// The `findings` table: deduplicated findings and their lifecycle.
#[derive(Debug, Clone)]
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
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "findings.open_counts", skip(self))]
    pub async fn open_counts(&self, project_id: Uuid) -> Result<SeverityCounts> {
        let cx = self.cx.replica();
        let mut values = vec![project_id.into()];
        let reach = and_project_reach(cx.who, Table::Findings, "$1", &mut values);
        let rows = cx
            .db()
            .query_all_raw(statement(
                cx.db(),
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
    pub(super) async fn worst_first(
        cx: &Cx<'_>,
        arms: &[String],
        mut values: Vec<Value>,
        rows: u64,
    ) -> Result<Vec<findings::Model>> {
        let reach = and_project_reach(cx.who, Table::Findings, "$1", &mut values);
        let filter = format!("project_id = $1 AND {OPEN_ON_DEFAULT}{reach}");
        let sql = worst_first_page(&filter, arms, rows);
        Ok(
            findings::Model::find_by_statement(statement(cx.db(), &sql, values))
                .all(cx.db())
                .await?,
        )
    }

    /// The project's open findings on its default branches, worst first, then oldest first,
    /// keyset-paginated.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "findings.list_open", skip(self))]
    pub async fn list_open(
        &self,
        project_id: Uuid,
        after: Option<FindingCursor>,
        limit: u64,
    ) -> Result<Page<findings::Model, FindingCursor>> {
        let cx = self.cx.replica();
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
        let rows = Self::worst_first(&cx, &arms, values, limit + 1).await?;
        Ok(Page::from_rows(rows, limit, FindingCursor::of))
    }

    /// What one scan saw, by finding id, keyset-paginated.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "findings.of_scan", skip(self))]
    pub async fn of_scan(
        &self,
        scan_id: Uuid,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<ScanFinding, Uuid>> {
        let cx = self.cx.replica();
        let limit = page_size(limit)?;
        let mut values = vec![scan_id.into()];
        let cursor = match after {
            Some(after) => {
                values.push(after.into());
                " AND o.finding_id > $2"
            }
            None => "",
        };
        let reach = and_reach(cx.who, Table::Findings, "o", &mut values);
        // The finding's columns as they are, the sighting's under `o_` names. The page is
        // cut before the join: joined first, Postgres may merge-join it with `findings_pkey`
        // walked from its first id, reading every finding before the page.
        let sql = format!(
            "SELECT f.*, page.severity AS o_severity, page.change AS o_change, \
                    page.file_path AS o_file_path, page.start_line AS o_start_line, \
                    page.end_line AS o_end_line \
               FROM (SELECT o.finding_id, o.severity, {CHANGE_AT_SCAN_1} AS change, \
                            o.file_path, o.start_line, o.end_line \
                       FROM sighting_runs o \
                      WHERE {SEEN_BY_SCAN_1}{cursor}{reach} ORDER BY o.finding_id {}) AS page \
               JOIN findings f ON f.id = page.finding_id ORDER BY page.finding_id",
            limit_clause(limit + 1)
        );
        let rows = cx
            .db()
            .query_all_raw(statement(cx.db(), &sql, values))
            .await?;
        let rows = rows
            .iter()
            .map(|row| {
                let finding = findings::Model::from_query_result(row, "")?;
                Ok(ScanFinding {
                    occurrence: Sighting {
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
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "findings.compare", skip(self))]
    pub async fn compare(
        &self,
        scan_id: Uuid,
        delta: Delta,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<findings::Model, Uuid>> {
        let cx = self.cx.replica();
        let limit = page_size(limit)?;
        let scan = cx
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
        let reach = and_reach(cx.who, Table::Findings, "f", &mut values);
        let sql = format!(
            "SELECT f.* FROM (SELECT d.finding_id FROM scan_deltas d \
                               WHERE d.scan_id = $1 AND d.delta = $2{cursor} \
                               ORDER BY d.finding_id {}) AS page \
               JOIN findings f ON f.id = page.finding_id{reach} ORDER BY page.finding_id",
            limit_clause(limit + 1)
        );
        let rows = findings::Model::find_by_statement(statement(cx.db(), &sql, values))
            .all(cx.db())
            .await?;
        Ok(Page::from_rows(rows, limit, |f: &findings::Model| f.id))
    }

    /// A finding's history, oldest first: every triage transition and severity change with
    /// its actor, keyset-paginated.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "findings.history", skip(self))]
    pub async fn history(
        &self,
        id: Uuid,
        after: Option<EventCursor>,
        limit: u64,
    ) -> Result<Page<events::Model, EventCursor>> {
        let cx = self.cx.replica();
        let limit = page_size(limit)?;
        self.get(id).await?;
        let mut values: Vec<Value> = vec![id.into()];
        let cursor = EventCursor::condition(after, ">", &mut values)?;
        let reach = and_reach(cx.who, Table::Events, "e", &mut values);
        let rows = events::Model::find_by_statement(statement(
            cx.db(),
            &format!(
                "SELECT e.* FROM events e \
                      WHERE e.subject_type = 'finding' AND e.subject_id = $1{cursor}{reach} \
                      ORDER BY e.created_at, e.id {}",
                limit_clause(limit + 1)
            ),
            values,
        ))
        .all(cx.db())
        .await?;
        Ok(Page::from_rows(rows, limit, EventCursor::of))
    }
}

/// When and how often a finding was seen, derived from its runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sightings {
    /// Scans of the default branch that saw it, plus its first sighting when that was on
    /// another ref.
    pub times_seen: i64,
    /// The scan that saw it first (`None` once that scan is deleted).
    pub first_seen_scan_id: Option<Uuid>,
    /// When it was first seen.
    pub first_seen_at: DateTime<FixedOffset>,
    /// The latest scan of the default branch that saw it, or its first scan when none did
    /// (`None` once deleted).
    pub last_seen_scan_id: Option<Uuid>,
    /// When that scan completed.
    pub last_seen_at: DateTime<FixedOffset>,
}

impl Findings<'_> {
    /// When and how often the finding was seen. Derived from the runs of its repository's
    /// default-branch streams (a few primary-key probes), since no scan rewrites the finding
    /// to count itself.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "findings.sightings", skip(self))]
    pub async fn sightings(&self, id: Uuid) -> Result<Sightings> {
        let cx = self.cx.replica();
        let finding = self.get(id).await?;
        let db = cx.db();
        // One row per run in a default-branch stream (a few): its length, the scan it ends
        // at, and whether the finding's first scan was of the default branch (when that scan
        // still exists).
        let rows = db
            .query_all_raw(statement(
                db,
                "SELECT COALESCE(o.last_seq, st.last_seq) - o.first_seq + 1 AS n, \
                        s.id AS last_id, s.finished_at AS last_at, \
                        f.tracks_default_branch AS first_on_default \
                   FROM scan_streams st \
                   JOIN sighting_runs o ON o.project_id = st.project_id \
                    AND o.stream_id = st.id AND o.finding_id = $1 \
                   LEFT JOIN scans s ON s.stream_id = st.id \
                    AND s.stream_seq = COALESCE(o.last_seq, st.last_seq) \
                   LEFT JOIN scans f ON f.id = $4 \
                  WHERE st.repository_id = $2 AND st.project_id = $3 AND st.default_branch",
                [
                    id.into(),
                    finding.repository_id.into(),
                    finding.project_id.into(),
                    finding.first_seen_scan_id.into(),
                ],
            ))
            .await?;
        let (mut seen, mut first_on_default) = (0i64, rows.is_empty().then_some(false));
        let mut last: Option<(DateTime<FixedOffset>, Uuid)> = None;
        for row in &rows {
            seen += row.try_get::<i64>("", "n")?;
            first_on_default =
                first_on_default.or(row.try_get::<Option<bool>>("", "first_on_default")?);
            let ended = (
                row.try_get::<Option<DateTime<FixedOffset>>>("", "last_at")?,
                row.try_get::<Option<Uuid>>("", "last_id")?,
            );
            if let (Some(at), Some(scan)) = ended {
                last = last.max(Some((at, scan)));
            }
        }
        let (last_seen_at, last_seen_scan_id) = match last {
            Some((at, scan)) => (at, Some(scan)),
            None => (finding.first_seen_at, finding.first_seen_scan_id),
        };
        Ok(Sightings {
            times_seen: seen + i64::from(!first_on_default.unwrap_or(true)),
            first_seen_scan_id: finding.first_seen_scan_id,
            first_seen_at: finding.first_seen_at,
            last_seen_scan_id,
            last_seen_at,
        })
    }
}
