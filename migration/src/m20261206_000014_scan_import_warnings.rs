//! What a SARIF import took with a fallback instead of refusing the log (a result with no
//! rule id, a fingerprint that is an object, an unusable `security-severity`): one entry per
//! kind, `{kind, pointer, count}`, written in the completion's transaction. `NULL` for a scan
//! completed without a log or from one that follows the spec. Adding a nullable column
//! rewrites nothing, on either engine.

use sea_orm_migration::prelude::*;

use crate::ddl::{add_columns, drop_columns};

#[derive(DeriveMigrationName)]
pub struct Migration;

const T: &str = "scans";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            T,
            vec![
                ColumnDef::new("import_warnings")
                    .json_binary()
                    .null()
                    .take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(manager, T, &["import_warnings"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
