//! Leader leases: one row per singleton job (`vega-admin maintain`), naming the process that
//! runs it and until when. A process holds the lease by renewing it before `expires_at`; any
//! other may take it once it has expired, so a dead leader is replaced within one lease.

use sea_orm_migration::prelude::*;

use crate::ddl::{check, create, drop, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        const T: &str = "leader_leases";
        create(
            manager,
            vec![
                Table::create()
                    .table(T)
                    .col(ColumnDef::new("name").text().not_null().primary_key())
                    .col(ColumnDef::new("holder").text().not_null())
                    .col(timestamp("acquired_at"))
                    .col(timestamp("expires_at"))
                    .check(check(T, "name", "length(name) BETWEEN 1 AND 100"))
                    .check(check(T, "holder", "length(holder) BETWEEN 1 AND 200"))
                    .take(),
            ],
            vec![],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(manager, &["leader_leases"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
