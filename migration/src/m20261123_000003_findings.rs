//! Findings, deduplicated per repository by fingerprint, and each scan's sighting of them.

use sea_orm_migration::prelude::*;

use crate::ddl::{
    check, create, desc, drop, fk, index, one_of, severity, status, timestamp, timestamp_null,
    unique, uuid_pk,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(
            manager,
            vec![findings(), finding_occurrences()],
            vec![
                // Open counts by severity per project (index-only) and "open findings, worst
                // first" with a (severity, id) keyset.
                index("findings", "open_severity")
                    .col("project_id")
                    .col(desc("severity"))
                    .col(desc("id"))
                    .and_where(Expr::cust("status = 'open'"))
                    .take(),
                // The mark-fixed sweep when a full scan of the tracked branch completes.
                index("findings", "repository_open")
                    .col("repository_id")
                    .col("scanner")
                    .and_where(Expr::cust("status = 'open'"))
                    .take(),
                index("findings", "project")
                    .col("project_id")
                    .col(desc("id"))
                    .take(),
                index("findings", "first_seen_scan")
                    .col("first_seen_scan_id")
                    .take(),
                index("findings", "last_seen_scan")
                    .col("last_seen_scan_id")
                    .take(),
                index("findings", "fixed_in_scan")
                    .col("fixed_in_scan_id")
                    .take(),
                index("findings", "dismissed_by")
                    .col("dismissed_by_user_id")
                    .take(),
                index("finding_occurrences", "finding")
                    .col("finding_id")
                    .col(desc("scan_id"))
                    .take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(manager, &["finding_occurrences", "findings"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

fn findings() -> TableCreateStatement {
    const T: &str = "findings";
    Table::create()
        .table(T)
        .col(uuid_pk())
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(ColumnDef::new("repository_id").uuid().not_null())
        // SHA-256 of a versioned recipe that leaves line numbers out; see the repository crate.
        .col(ColumnDef::new("fingerprint").blob().not_null())
        .col(ColumnDef::new("scanner").text().not_null())
        .col(ColumnDef::new("category").text().not_null())
        .col(ColumnDef::new("rule_id").text().not_null())
        .col(ColumnDef::new("title").text().not_null())
        // Effective severity (indexed); scanner_severity is what the tool reported.
        .col(severity("severity"))
        .col(severity("scanner_severity"))
        .col(
            ColumnDef::new("severity_overridden")
                .boolean()
                .not_null()
                .default(false),
        )
        .col(ColumnDef::new("cwe").integer().null())
        .col(ColumnDef::new("cve").text().null())
        .col(ColumnDef::new("file_path").text().null())
        .col(ColumnDef::new("start_line").integer().null())
        .col(ColumnDef::new("end_line").integer().null())
        .col(ColumnDef::new("package_name").text().null())
        .col(ColumnDef::new("package_version").text().null())
        .col(status("status", "open"))
        .col(ColumnDef::new("dismissed_reason").text().null())
        .col(timestamp_null("dismissed_at"))
        .col(ColumnDef::new("dismissed_by_user_id").uuid().null())
        .col(ColumnDef::new("first_seen_scan_id").uuid().null())
        .col(ColumnDef::new("last_seen_scan_id").uuid().null())
        .col(ColumnDef::new("fixed_in_scan_id").uuid().null())
        .col(timestamp("first_seen_at"))
        .col(timestamp("last_seen_at"))
        .col(timestamp_null("fixed_at"))
        .col(ColumnDef::new("times_seen").integer().not_null().default(1))
        .col(ColumnDef::new("details").json_binary().null())
        .col(timestamp("created_at"))
        .col(timestamp("updated_at"))
        .foreign_key(&mut fk(
            T,
            "project_id",
            "projects",
            ForeignKeyAction::Cascade,
        ))
        .foreign_key(&mut fk(
            T,
            "repository_id",
            "repositories",
            ForeignKeyAction::Cascade,
        ))
        .foreign_key(&mut fk(
            T,
            "dismissed_by_user_id",
            "users",
            ForeignKeyAction::SetNull,
        ))
        .foreign_key(&mut fk(
            T,
            "first_seen_scan_id",
            "scans",
            ForeignKeyAction::SetNull,
        ))
        .foreign_key(&mut fk(
            T,
            "last_seen_scan_id",
            "scans",
            ForeignKeyAction::SetNull,
        ))
        .foreign_key(&mut fk(
            T,
            "fixed_in_scan_id",
            "scans",
            ForeignKeyAction::SetNull,
        ))
        // The dedup identity; also the index behind the repository_id foreign key.
        .index(
            unique(T, "identity")
                .col("repository_id")
                .col("fingerprint"),
        )
        .check(check(T, "fingerprint", "length(fingerprint) = 32"))
        .check(one_of(
            T,
            "category",
            &["sast", "secret", "dependency", "iac", "config"],
        ))
        .check(check(T, "title", "length(title) BETWEEN 1 AND 512"))
        .check(check(T, "severity", "severity BETWEEN 0 AND 5"))
        .check(check(
            T,
            "scanner_severity",
            "scanner_severity BETWEEN 0 AND 5",
        ))
        .check(check(
            T,
            "lines",
            "start_line >= 1 AND end_line >= start_line",
        ))
        .check(one_of(T, "status", &["open", "fixed", "dismissed"]))
        .check(one_of(
            T,
            "dismissed_reason",
            &[
                "false_positive",
                "accepted_risk",
                "not_applicable",
                "used_in_tests",
            ],
        ))
        .check(check(
            T,
            "fixed",
            "(status = 'fixed') = (fixed_at IS NOT NULL)",
        ))
        .check(check(
            T,
            "dismissed",
            "(status = 'dismissed') = (dismissed_at IS NOT NULL AND dismissed_reason IS NOT NULL)",
        ))
        .check(check(T, "times_seen", "times_seen >= 1"))
        .take()
}

fn finding_occurrences() -> TableCreateStatement {
    const T: &str = "finding_occurrences";
    Table::create()
        .table(T)
        .col(ColumnDef::new("scan_id").uuid().not_null())
        .col(ColumnDef::new("finding_id").uuid().not_null())
        // Tenant key for filtering without a join; its parents already carry the foreign key.
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(severity("severity"))
        .col(ColumnDef::new("change").text().not_null())
        .col(ColumnDef::new("file_path").text().null())
        .col(ColumnDef::new("start_line").integer().null())
        .col(ColumnDef::new("end_line").integer().null())
        // Also the index behind the scan_id foreign key and "findings of scan X".
        .primary_key(Index::create().col("scan_id").col("finding_id"))
        .foreign_key(&mut fk(T, "scan_id", "scans", ForeignKeyAction::Cascade))
        .foreign_key(&mut fk(
            T,
            "finding_id",
            "findings",
            ForeignKeyAction::Cascade,
        ))
        .check(check(T, "severity", "severity BETWEEN 0 AND 5"))
        .check(one_of(T, "change", &["new", "existing", "reopened"]))
        .check(check(
            T,
            "lines",
            "start_line >= 1 AND end_line >= start_line",
        ))
        .take()
}
