//! Purge claims its work. Each outbox entry gets a lease and a retry schedule:
//!
//! - `lease_id`: the purge run that holds the entry; only that run may remove it or record its
//!   failure, so concurrent purges never count one object twice;
//! - `not_before`: when the entry may next be claimed (the lease's end while it is held, the
//!   backoff's end after a failure; `NULL` for a new entry);
//! - `attempts` and `last_error`: what failed, for the report and for the backoff.

use sea_orm_migration::prelude::*;

use crate::ddl::{add_columns, counter, drop_columns, timestamp_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

const T: &str = "object_deletions";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            T,
            vec![
                ColumnDef::new("lease_id").uuid().null().take(),
                timestamp_null("not_before"),
                counter("attempts"),
                ColumnDef::new("last_error").text().null().take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(
            manager,
            T,
            &["last_error", "attempts", "not_before", "lease_id"],
        )
        .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
