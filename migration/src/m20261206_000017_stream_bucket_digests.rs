//! A stream's scan digest per bucket of fingerprints (ARCHITECTURE.md, "Sightings"): a rescan
//! compares only the buckets whose digest differs from the previous scan's, so a rescan with
//! 1% changed reads about the findings of those buckets instead of all of them. Eight bytes
//! of SHA-256 per bucket, in one nullable column (a stream whose last scan came streamed has
//! none, and its next scan compares everything).

use sea_orm_migration::prelude::*;

use crate::ddl::{add_columns, drop_columns};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            "scan_streams",
            vec![ColumnDef::new("bucket_digests").blob().null().take()],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(manager, "scan_streams", &["bucket_digests"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
