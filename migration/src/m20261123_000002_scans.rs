//! Scans: the record of each scan, the work queue workers claim from, the lease that fences a
//! worker's writes, and the severity counts written once when the scan completes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::ddl::{
    check, counter, create, desc, drop, fk, index, one_of, status, timestamp, timestamp_null,
    uuid_pk,
};

/// The constraint Postgres adds after the fact; see `projects()` in the first migration.
const LATEST_SCAN_FK: &str = "projects_latest_scan_id_fkey";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(
            manager,
            vec![scans()],
            vec![
                // The claim query reads the head of this index; it only holds queued rows, so
                // it stays small however long the history grows.
                index("scans", "ready")
                    .col("priority")
                    .col("scheduled_at")
                    .col("id")
                    .and_where(Expr::cust("status = 'queued'"))
                    .take(),
                // Rescue and "what does worker X hold". No column that a heartbeat writes is
                // indexed, so heartbeats stay HOT updates on Postgres.
                index("scans", "running")
                    .col("claimed_by")
                    .col("claimed_at")
                    .and_where(Expr::cust("status = 'running'"))
                    .take(),
                index("scans", "project")
                    .col("project_id")
                    .col(desc("id"))
                    .take(),
                index("scans", "repository")
                    .col("repository_id")
                    .col(desc("id"))
                    .take(),
                index("scans", "snapshot").col("snapshot_id").take(),
                index("scans", "requested_by_user")
                    .col("requested_by_user_id")
                    .take(),
                index("scans", "requested_by_api_key")
                    .col("requested_by_api_key_id")
                    .take(),
            ],
        )
        .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .create_foreign_key(
                    ForeignKey::create()
                        .name(LATEST_SCAN_FK)
                        .from("projects", "latest_scan_id")
                        .to("scans", "id")
                        .on_delete(ForeignKeyAction::SetNull)
                        .on_update(ForeignKeyAction::NoAction)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .drop_foreign_key(
                    ForeignKey::drop()
                        .name(LATEST_SCAN_FK)
                        .table("projects")
                        .to_owned(),
                )
                .await?;
        }
        drop(manager, &["scans"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

fn scans() -> TableCreateStatement {
    const T: &str = "scans";
    Table::create()
        .table(T)
        .col(uuid_pk())
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(ColumnDef::new("repository_id").uuid().not_null())
        .col(ColumnDef::new("snapshot_id").uuid().null())
        .col(ColumnDef::new("kind").text().not_null().default("full"))
        .col(ColumnDef::new("trigger_kind").text().not_null())
        .col(ColumnDef::new("requested_by_user_id").uuid().null())
        .col(ColumnDef::new("requested_by_api_key_id").uuid().null())
        .col(ColumnDef::new("ref_name").text().null())
        .col(ColumnDef::new("commit_sha").text().null())
        // Only a full scan of the tracked branch may mark findings fixed.
        .col(
            ColumnDef::new("tracks_default_branch")
                .boolean()
                .not_null()
                .default(false),
        )
        .col(status("status", "queued"))
        .col(
            ColumnDef::new("priority")
                .small_integer()
                .not_null()
                .default(2),
        )
        .col(timestamp("scheduled_at"))
        // Incremented on every claim; with claimed_by it is the fencing token.
        .col(
            ColumnDef::new("attempt")
                .small_integer()
                .not_null()
                .default(0),
        )
        .col(
            ColumnDef::new("max_attempts")
                .small_integer()
                .not_null()
                .default(3),
        )
        // A worker id by value, not a foreign key: a scan outlives the heartbeat row.
        .col(ColumnDef::new("claimed_by").text().null())
        .col(timestamp_null("claimed_at"))
        .col(timestamp_null("heartbeat_at"))
        .col(timestamp_null("lease_expires_at"))
        .col(timestamp_null("cancel_requested_at"))
        .col(timestamp_null("started_at"))
        .col(timestamp_null("finished_at"))
        .col(ColumnDef::new("error_code").text().null())
        .col(ColumnDef::new("error_message").text().null())
        .col(counter("count_critical"))
        .col(counter("count_high"))
        .col(counter("count_medium"))
        .col(counter("count_low"))
        .col(counter("count_info"))
        .col(counter("count_unknown"))
        .col(counter("findings_total"))
        .col(counter("findings_new"))
        .col(counter("findings_fixed"))
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
        // History survives the expiry of the snapshot a scan read.
        .foreign_key(&mut fk(
            T,
            "snapshot_id",
            "snapshots",
            ForeignKeyAction::SetNull,
        ))
        .foreign_key(&mut fk(
            T,
            "requested_by_user_id",
            "users",
            ForeignKeyAction::SetNull,
        ))
        .foreign_key(&mut fk(
            T,
            "requested_by_api_key_id",
            "api_keys",
            ForeignKeyAction::SetNull,
        ))
        .check(one_of(
            T,
            "kind",
            &["full", "sast", "secrets", "sca", "iac"],
        ))
        .check(one_of(
            T,
            "trigger_kind",
            &["manual", "api", "schedule", "webhook"],
        ))
        .check(one_of(
            T,
            "status",
            &["queued", "running", "succeeded", "failed", "canceled"],
        ))
        .check(check(T, "priority", "priority BETWEEN 1 AND 4"))
        .check(check(
            T,
            "attempt",
            "attempt >= 0 AND attempt <= max_attempts",
        ))
        .check(check(T, "max_attempts", "max_attempts > 0"))
        .check(check(T, "commit_sha", "length(commit_sha) IN (40, 64)"))
        .check(check(T, "error_message", "length(error_message) <= 4000"))
        .check(check(
            T,
            "finished",
            "(status IN ('succeeded', 'failed', 'canceled')) = (finished_at IS NOT NULL)",
        ))
        .check(check(
            T,
            "lease",
            "status <> 'running' OR (claimed_by IS NOT NULL AND lease_expires_at IS NOT NULL)",
        ))
        .check(check(
            T,
            "counts",
            "count_critical >= 0 AND count_high >= 0 AND count_medium >= 0 AND count_low >= 0 \
             AND count_info >= 0 AND count_unknown >= 0 AND findings_total >= 0 \
             AND findings_new >= 0 AND findings_fixed >= 0",
        ))
        .take()
}
