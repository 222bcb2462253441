//! Worker credentials: the service credentials scan workers authenticate with (`vgw_`
//! tokens), apart from any user's API keys. A worker claims scans under its credential's
//! `name`; only the token's SHA-256 is stored, as for API keys.

use sea_orm_migration::prelude::*;

use crate::ddl::{check, create, drop, timestamp, timestamp_null, unique, uuid_pk};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        const T: &str = "worker_credentials";
        create(
            manager,
            vec![
                Table::create()
                    .table(T)
                    .col(uuid_pk())
                    .col(ColumnDef::new("name").text().not_null())
                    .col(ColumnDef::new("token_hash").blob().not_null())
                    .col(ColumnDef::new("token_prefix").text().not_null())
                    .col(ColumnDef::new("token_last4").text().not_null())
                    .col(timestamp("created_at"))
                    .col(timestamp_null("last_used_at"))
                    .col(ColumnDef::new("last_used_ip").text().null())
                    .col(timestamp_null("revoked_at"))
                    .index(unique(T, "token_hash").col("token_hash"))
                    .check(check(T, "name", "length(name) BETWEEN 1 AND 100"))
                    .check(check(T, "token_hash", "length(token_hash) = 32"))
                    .check(check(T, "token_last4", "length(token_last4) = 4"))
                    .take(),
            ],
            // One live credential per name: a revoked name can be issued again.
            vec![
                unique(T, "live_name")
                    .col("name")
                    .and_where(Expr::cust("revoked_at IS NULL"))
                    .take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(manager, &["worker_credentials"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
