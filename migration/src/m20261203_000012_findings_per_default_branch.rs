//! Findings as security teams use them (see ARCHITECTURE.md, "Findings"):
//!
//! - a finding's status is its status on the repository's default branch. `on_default_branch`
//!   says whether a scan of that branch has seen it at all: a finding that only a pull
//!   request's branch has seen is open there and nowhere in the project's counts. Existing
//!   findings count as seen there, which is what the old rules assumed;
//! - triage: a dismissal gains a comment, an optional expiry (`dismissed_until`, after which
//!   the finding reopens by itself) and the reason `wont_fix`; a person may confirm an open
//!   finding (`confirmed_at`) and give a reason for a severity override;
//! - scans count the dismissed findings they saw apart from the open ones;
//! - projects may set their own SLA days per severity over the global defaults.
//!
//! The indexes behind the open-findings reads gain the `on_default_branch` predicate, and the
//! open list, the counts and the overdue list share one (severity, age) order. The new ones
//! are created `IF NOT EXISTS` and the old ones dropped `IF EXISTS`, so a deployment with a
//! large `findings` table builds and drops them `CONCURRENTLY` first (README, Migrations).

use sea_orm_migration::prelude::*;

use crate::ddl::{add_columns, counter, desc, drop_columns, index, timestamp_null, widen_check};

#[derive(DeriveMigrationName)]
pub struct Migration;

const OLD_REASONS: &str =
    "dismissed_reason IN ('false_positive', 'accepted_risk', 'not_applicable', 'used_in_tests')";
const NEW_REASONS: &str = "dismissed_reason IN ('false_positive', 'accepted_risk', \
     'not_applicable', 'used_in_tests', 'wont_fix')";

const SLA_COLUMNS: [&str; 4] = [
    "sla_critical_days",
    "sla_high_days",
    "sla_medium_days",
    "sla_low_days",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            "findings",
            vec![
                ColumnDef::new("on_default_branch")
                    .boolean()
                    .not_null()
                    .default(true)
                    .take(),
                ColumnDef::new("dismissed_comment")
                    .text()
                    .null()
                    .check(Expr::cust("length(dismissed_comment) <= 4000"))
                    .take(),
                timestamp_null("dismissed_until"),
                timestamp_null("confirmed_at"),
                ColumnDef::new("severity_reason")
                    .text()
                    .null()
                    .check(Expr::cust("length(severity_reason) <= 4000"))
                    .take(),
            ],
        )
        .await?;
        widen_check(
            manager,
            "findings",
            "findings_dismissed_reason_check",
            OLD_REASONS,
            NEW_REASONS,
        )
        .await?;
        add_columns(manager, "scans", vec![counter("count_dismissed")]).await?;
        add_columns(
            manager,
            "projects",
            SLA_COLUMNS
                .iter()
                .map(|name| {
                    ColumnDef::new(*name)
                        .integer()
                        .null()
                        .check(Expr::cust(format!("{name} BETWEEN 1 AND 3650")))
                        .take()
                })
                .collect(),
        )
        .await?;
        for name in ["findings_open_severity_idx", "findings_repository_open_idx"] {
            manager
                .drop_index(
                    Index::drop()
                        .name(name)
                        .table("findings")
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        let open_on_default = "status = 'open' AND on_default_branch";
        for mut statement in [
            // Counts by severity (index-only), the open list and the overdue list, worst and
            // oldest first.
            index("findings", "default_open")
                .col("project_id")
                .col(desc("severity"))
                .col("first_seen_at")
                .col("id")
                .and_where(Expr::cust(open_on_default))
                .take(),
            // The mark-fixed sweep and a comparison's "no longer seen", by id.
            index("findings", "repository_default_open")
                .col("repository_id")
                .col("id")
                .and_where(Expr::cust(open_on_default))
                .take(),
            // The dismissal-expiry job.
            index("findings", "dismissed_until")
                .col("dismissed_until")
                .and_where(Expr::cust(
                    "status = 'dismissed' AND dismissed_until IS NOT NULL",
                ))
                .take(),
        ] {
            manager
                .create_index(statement.if_not_exists().take())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [
            "findings_dismissed_until_idx",
            "findings_repository_default_open_idx",
            "findings_default_open_idx",
        ] {
            manager
                .drop_index(Index::drop().name(name).table("findings").to_owned())
                .await?;
        }
        for statement in [
            index("findings", "open_severity")
                .col("project_id")
                .col(desc("severity"))
                .col(desc("id"))
                .and_where(Expr::cust("status = 'open'"))
                .take(),
            index("findings", "repository_open")
                .col("repository_id")
                .col("scanner")
                .and_where(Expr::cust("status = 'open'"))
                .take(),
        ] {
            manager.create_index(statement).await?;
        }
        drop_columns(manager, "projects", &SLA_COLUMNS).await?;
        drop_columns(manager, "scans", &["count_dismissed"]).await?;
        widen_check(
            manager,
            "findings",
            "findings_dismissed_reason_check",
            NEW_REASONS,
            OLD_REASONS,
        )
        .await?;
        drop_columns(
            manager,
            "findings",
            &[
                "severity_reason",
                "confirmed_at",
                "dismissed_until",
                "dismissed_comment",
                "on_default_branch",
            ],
        )
        .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
