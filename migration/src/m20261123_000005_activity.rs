//! Append-only activity: the audit/event log, metered usage, and worker heartbeats.
//!
//! None of these tables has a foreign key to the business tables except `usage_records` to its
//! billing account: audit and usage must outlive the projects and scans they mention.

use sea_orm_migration::prelude::*;

use crate::ddl::{bigint_pk, check, create, desc, drop, fk, index, one_of, timestamp, unique};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(
            manager,
            vec![events(), usage_records(), worker_heartbeats()],
            vec![
                // Keyset feeds on (created_at, id): identity values commit out of order, so
                // `id > n` would skip rows.
                index("events", "project")
                    .col("project_id")
                    .col(desc("created_at"))
                    .col(desc("id"))
                    .take(),
                index("events", "actor_user")
                    .col("actor_user_id")
                    .col(desc("created_at"))
                    .col(desc("id"))
                    .take(),
                index("events", "subject")
                    .col("subject_type")
                    .col("subject_id")
                    .col(desc("created_at"))
                    .col(desc("id"))
                    .take(),
                // Period sums read only this index: quantity is a trailing key column because
                // SQLite has no INCLUDE.
                index("usage_records", "period")
                    .col("account_id")
                    .col("meter")
                    .col("occurred_at")
                    .col("quantity")
                    .take(),
                index("worker_heartbeats", "last_seen")
                    .col("last_seen_at")
                    .take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(manager, &["worker_heartbeats", "usage_records", "events"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

fn events() -> TableCreateStatement {
    const T: &str = "events";
    Table::create()
        .table(T)
        .col(bigint_pk())
        .col(timestamp("created_at"))
        .col(ColumnDef::new("project_id").uuid().null())
        .col(ColumnDef::new("actor_type").text().not_null())
        .col(ColumnDef::new("actor_user_id").uuid().null())
        .col(ColumnDef::new("actor_api_key_id").uuid().null())
        // Who it was at the time (email, key prefix, worker id), kept even after they are gone.
        .col(ColumnDef::new("actor_label").text().not_null())
        .col(ColumnDef::new("action").text().not_null())
        .col(ColumnDef::new("subject_type").text().null())
        .col(ColumnDef::new("subject_id").uuid().null())
        .col(ColumnDef::new("request_id").text().null())
        .col(ColumnDef::new("ip_address").text().null())
        .col(ColumnDef::new("data").json_binary().not_null())
        .check(one_of(
            T,
            "actor_type",
            &["user", "api_key", "worker", "system"],
        ))
        .check(check(T, "action", "length(action) BETWEEN 1 AND 64"))
        .check(check(
            T,
            "subject",
            "(subject_type IS NULL) = (subject_id IS NULL)",
        ))
        .take()
}

fn usage_records() -> TableCreateStatement {
    const T: &str = "usage_records";
    Table::create()
        .table(T)
        .col(bigint_pk())
        .col(ColumnDef::new("account_id").uuid().not_null())
        .col(ColumnDef::new("project_id").uuid().null())
        .col(ColumnDef::new("scan_id").uuid().null())
        .col(ColumnDef::new("meter").text().not_null())
        .col(ColumnDef::new("quantity").big_integer().not_null())
        // Business time (may be back-dated) and insertion time.
        .col(timestamp("occurred_at"))
        .col(timestamp("received_at"))
        .col(ColumnDef::new("idempotency_key").text().not_null())
        .col(ColumnDef::new("properties").json_binary().not_null())
        // Billing records must not vanish with their account.
        .foreign_key(&mut fk(
            T,
            "account_id",
            "users",
            ForeignKeyAction::Restrict,
        ))
        // Records each increment once; also the index behind the account_id foreign key.
        .index(
            unique(T, "idempotency")
                .col("account_id")
                .col("idempotency_key"),
        )
        .check(one_of(
            T,
            "meter",
            &["scans", "scan_seconds", "loc_scanned", "storage_byte_hours"],
        ))
        .check(check(T, "quantity", "quantity >= 0"))
        .check(check(
            T,
            "idempotency_key",
            "length(idempotency_key) BETWEEN 1 AND 100",
        ))
        .take()
}

fn worker_heartbeats() -> TableCreateStatement {
    const T: &str = "worker_heartbeats";
    Table::create()
        .table(T)
        .col(ColumnDef::new("worker_id").text().not_null().primary_key())
        .col(ColumnDef::new("hostname").text().null())
        .col(ColumnDef::new("version").text().null())
        .col(ColumnDef::new("capacity").integer().not_null().default(1))
        .col(timestamp("started_at"))
        .col(timestamp("last_seen_at"))
        .check(check(T, "worker_id", "length(worker_id) BETWEEN 1 AND 200"))
        .check(check(T, "capacity", "capacity >= 0"))
        .take()
}
