//! Event archives: the objects that retention writes when it moves old events out of the
//! `events` table, one gzipped JSON-lines object per project, day and batch. A row follows the
//! row/object protocol of `artifacts` (written `pending` before its upload, `committed` with
//! size and SHA-256 in the transaction that deletes the events it holds), so a crash leaves a
//! pending row or an object no row knows, both of which gc removes.
//!
//! Retention reads the log oldest first, so `events` gains an index on `(created_at, id)`.
//!
//! It is not an `artifacts` row because the audit log outlives projects: artifacts cascade
//! with their project, while archived events, like live ones, have no foreign key and may
//! belong to no project at all.

use sea_orm_migration::prelude::*;

use crate::ddl::{
    check, create, drop, index, one_of, status, timestamp, timestamp_null, unique, uuid_pk,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        const T: &str = "event_archives";
        create(
            manager,
            vec![
                Table::create()
                    .table(T)
                    .col(uuid_pk())
                    .col(ColumnDef::new("project_id").uuid().null())
                    .col(ColumnDef::new("object_key").text().not_null())
                    .col(ColumnDef::new("event_count").big_integer().not_null())
                    // The first and last archived event in (created_at, id) order.
                    .col(timestamp("first_created_at"))
                    .col(ColumnDef::new("first_event_id").big_integer().not_null())
                    .col(timestamp("last_created_at"))
                    .col(ColumnDef::new("last_event_id").big_integer().not_null())
                    .col(ColumnDef::new("size_bytes").big_integer().null())
                    .col(ColumnDef::new("sha256").blob().null())
                    .col(status("state", "pending"))
                    .col(timestamp("created_at"))
                    .col(timestamp_null("committed_at"))
                    .index(unique(T, "object_key").col("object_key"))
                    .check(one_of(T, "state", &["pending", "committed"]))
                    .check(check(T, "size_bytes", "size_bytes >= 0"))
                    .check(check(T, "sha256", "length(sha256) = 32"))
                    .check(check(T, "event_count", "event_count > 0"))
                    .check(check(
                        T,
                        "committed",
                        "state = 'pending' OR (size_bytes IS NOT NULL AND sha256 IS NOT NULL \
                         AND committed_at IS NOT NULL)",
                    ))
                    .take(),
            ],
            vec![
                // Retention walks the log oldest first. IF NOT EXISTS: on a large `events`
                // table an operator builds it CONCURRENTLY first (README, Migrations), since
                // building it here blocks event appends until it is done.
                index("events", "created")
                    .col("created_at")
                    .col("id")
                    .if_not_exists()
                    .take(),
                // Export: a project's archives in time order.
                index(T, "project")
                    .col("project_id")
                    .col("first_created_at")
                    .take(),
                // gc: uploads that never committed.
                index(T, "pending")
                    .col("created_at")
                    .and_where(Expr::cust("state = 'pending'"))
                    .take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("events_created_idx")
                    .table("events")
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        drop(manager, &["event_archives"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
