//! The deletion outbox. Deleting a project, scan or snapshot removes its rows (artifacts
//! included, by cascade) and records their object keys here in the same transaction; `purge`
//! then deletes the objects and, only after that succeeds, these rows. An object is therefore
//! never deleted while a committed row references it, and never forgotten once no row does.

use sea_orm_migration::prelude::*;

use crate::ddl::{check, create, drop, index, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        const T: &str = "object_deletions";
        create(
            manager,
            vec![
                Table::create()
                    .table(T)
                    .col(ColumnDef::new("object_key").text().not_null().primary_key())
                    .col(timestamp("requested_at"))
                    .check(check(
                        T,
                        "object_key",
                        "length(object_key) BETWEEN 1 AND 1024",
                    ))
                    .take(),
            ],
            vec![index(T, "requested").col("requested_at").take()],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(manager, &["object_deletions"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
