//! What a scan of another ref changes against the default branch, kept when the scan
//! completes: each finding it introduces (not open on the default branch), leaves unchanged,
//! or no longer sees (open there and absent here; full scans only). Reading the pull-request
//! view is then a keyset walk of one primary key, however the three sets interleave in id
//! order; computed per page, the first page of a 100,000-finding branch had to pass every
//! shared finding before the first introduced one (ARCHITECTURE.md, "Findings").

use sea_orm_migration::prelude::*;

use crate::ddl::{create, drop, fk, index, one_of};

#[derive(DeriveMigrationName)]
pub struct Migration;

const T: &str = "scan_deltas";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(
            manager,
            vec![
                Table::create()
                    .table(T)
                    .col(ColumnDef::new("scan_id").uuid().not_null())
                    .col(ColumnDef::new("delta").text().not_null())
                    .col(ColumnDef::new("finding_id").uuid().not_null())
                    .primary_key(
                        Index::create()
                            .col("scan_id")
                            .col("delta")
                            .col("finding_id"),
                    )
                    .foreign_key(&mut fk(T, "scan_id", "scans", ForeignKeyAction::Cascade))
                    .foreign_key(&mut fk(
                        T,
                        "finding_id",
                        "findings",
                        ForeignKeyAction::Cascade,
                    ))
                    .check(one_of(T, "delta", &["introduced", "absent", "unchanged"]))
                    .take(),
            ],
            // Behind the finding_id foreign key: deleting a finding finds its rows here.
            vec![index(T, "finding").col("finding_id").take()],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(manager, &[T]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
