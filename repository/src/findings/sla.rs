//! SLA: days to fix a finding per severity, and the open findings past them.

use chrono::{DateTime, FixedOffset};
use sea_orm::Value;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{Severity, findings, projects};

use crate::context::principal::Table;
use crate::db::page::{Page, page_size};
use crate::db::sql::now;
use crate::error::{Error, Result};
use crate::findings::reads::{FindingCursor, Findings};

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

impl Findings<'_> {
    /// The project's open findings past their SLA (`policy` under the project's own
    /// settings), worst first, then most overdue first, keyset-paginated.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "findings.overdue", skip(self))]
    pub async fn overdue(
        &self,
        project_id: Uuid,
        policy: SlaPolicy,
        after: Option<FindingCursor>,
        limit: u64,
    ) -> Result<Page<Overdue, FindingCursor>> {
        let cx = self.cx.replica();
        let limit = page_size(limit)?;
        let project = cx
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
        let rows = Findings::worst_first(&cx, &arms, values, limit + 1).await?;
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
}
