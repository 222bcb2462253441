//! The registry of every object Vega writes to the blob store. A row is written `pending` before
//! its upload starts and turns `committed` with the size and SHA-256 measured while streaming,
//! so a crash at any point leaves either a complete row and object or a pending row the sweeper
//! finds.

use sea_orm_migration::prelude::*;

use crate::ddl::{
    check, create, drop, fk, index, one_of, status, timestamp, timestamp_null, uuid_pk,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(
            manager,
            vec![artifacts()],
            vec![
                index("artifacts", "project").col("project_id").take(),
                index("artifacts", "snapshot").col("snapshot_id").take(),
                index("artifacts", "scan").col("scan_id").col("kind").take(),
                // Audit: uploads that never committed.
                index("artifacts", "pending")
                    .col("created_at")
                    .and_where(Expr::cust("state = 'pending'"))
                    .take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(manager, &["artifacts"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

fn artifacts() -> TableCreateStatement {
    const T: &str = "artifacts";
    Table::create()
        .table(T)
        .col(uuid_pk())
        // Every object belongs to a project, so a project's objects share one key prefix.
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(ColumnDef::new("snapshot_id").uuid().null())
        .col(ColumnDef::new("scan_id").uuid().null())
        .col(ColumnDef::new("kind").text().not_null())
        .col(ColumnDef::new("object_key").text().not_null())
        .col(ColumnDef::new("content_type").text().not_null())
        .col(ColumnDef::new("size_bytes").big_integer().null())
        .col(ColumnDef::new("sha256").blob().null())
        .col(status("state", "pending"))
        .col(timestamp("created_at"))
        .col(timestamp_null("committed_at"))
        .foreign_key(&mut fk(
            T,
            "project_id",
            "projects",
            ForeignKeyAction::Cascade,
        ))
        .foreign_key(&mut fk(
            T,
            "snapshot_id",
            "snapshots",
            ForeignKeyAction::Cascade,
        ))
        .foreign_key(&mut fk(T, "scan_id", "scans", ForeignKeyAction::Cascade))
        .index(crate::ddl::unique(T, "object_key").col("object_key"))
        .check(one_of(
            T,
            "kind",
            &["source_archive", "scan_report", "event_log", "debug_bundle"],
        ))
        .check(check(
            T,
            "owner",
            "(kind = 'source_archive') = (snapshot_id IS NOT NULL AND scan_id IS NULL) \
             AND (kind = 'source_archive' OR scan_id IS NOT NULL)",
        ))
        .check(check(
            T,
            "object_key",
            "length(object_key) BETWEEN 1 AND 1024",
        ))
        .check(check(T, "size_bytes", "size_bytes >= 0"))
        .check(check(T, "sha256", "length(sha256) = 32"))
        .check(one_of(T, "state", &["pending", "committed"]))
        .check(check(
            T,
            "committed",
            "(state = 'committed') = \
             (committed_at IS NOT NULL AND size_bytes IS NOT NULL AND sha256 IS NOT NULL)",
        ))
        .take()
}
