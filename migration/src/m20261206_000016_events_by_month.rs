//! `events` partitioned by month on Postgres (ARCHITECTURE.md, "Retention by partition"), so
//! retention archives a whole month and drops it instead of deleting rows: declarative range
//! partitions on `created_at` (UTC months, named `events_YYYY_MM`), no default partition, and
//! the primary key `(created_at, id)` because a partitioned table's keys include its partition
//! key. The primary key also serves retention's oldest-first walk, so `events_created_idx`
//! goes.
//!
//! `create_event_partitions(since, until)` creates the missing months in a range; `vega-admin
//! maintain` calls it ahead of time, and so does this migration for the months the existing
//! events need and the next three. A new month's table is created on its own and attached,
//! which takes a SHARE UPDATE EXCLUSIVE lock on `events` and so does not block appends (a
//! `CREATE TABLE … PARTITION OF` would take an ACCESS EXCLUSIVE one).
//!
//! The existing rows are copied into the partitions in the migration's transaction, with
//! `events` locked: README, Migrations, says how to run it on a big table. SQLite keeps its
//! plain table, and the same API retires events there by batches.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::ddl::{desc, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Creates the monthly partitions of `events` that cover `[since, until)` and do not exist
/// yet, returning their names. A month another session created meanwhile is skipped.
const CREATE_EVENT_PARTITIONS: &str = r#"
CREATE FUNCTION create_event_partitions(since timestamptz, until timestamptz)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
  first_day timestamp := date_trunc('month', since AT TIME ZONE 'UTC');
  name text;
BEGIN
  WHILE first_day AT TIME ZONE 'UTC' < until LOOP
    name := 'events_' || to_char(first_day, 'YYYY_MM');
    IF to_regclass(quote_ident(name)) IS NULL THEN
      BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       name);
        EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       name, first_day AT TIME ZONE 'UTC',
                       (first_day + interval '1 month') AT TIME ZONE 'UTC');
        RETURN NEXT name;
      EXCEPTION WHEN duplicate_table THEN
        NULL;
      END;
    END IF;
    first_day := first_day + interval '1 month';
  END LOOP;
END
$$"#;

/// The feeds' indexes, as `m20261123_000005_activity` made them.
fn feed_indexes() -> Vec<IndexCreateStatement> {
    vec![
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
    ]
}

/// Moves the rows of `events` into a new `events` built by `create` (with an identity of its
/// own that continues the old one), then adds the primary key `key` and the feeds' indexes.
async fn rebuild(manager: &SchemaManager<'_>, create: &[&str], key: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for sql in [
        "ALTER TABLE events RENAME TO events_before",
        "ALTER SEQUENCE events_id_seq RENAME TO events_before_id_seq",
    ] {
        db.execute_unprepared(sql).await?;
    }
    for sql in create {
        db.execute_unprepared(sql).await?;
    }
    for sql in [
        "INSERT INTO events SELECT * FROM events_before",
        "SELECT setval('events_id_seq', nextval('events_before_id_seq'), false)",
        "DROP TABLE events_before",
        &format!("ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY ({key})"),
    ] {
        db.execute_unprepared(sql).await?;
    }
    for index in feed_indexes() {
        manager.create_index(index).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        rebuild(
            manager,
            &[
                "CREATE TABLE events (LIKE events_before INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
                                INCLUDING IDENTITY) PARTITION BY RANGE (created_at)",
                CREATE_EVENT_PARTITIONS,
                "SELECT count(*) FROM create_event_partitions( \
                   LEAST((SELECT min(created_at) FROM events_before), now()), \
                   now() + interval '3 months')",
            ],
            "created_at, id",
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        rebuild(
            manager,
            &[
                "CREATE TABLE events (LIKE events_before INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
                                INCLUDING IDENTITY)",
                "DROP FUNCTION create_event_partitions(timestamptz, timestamptz)",
            ],
            "id",
        )
        .await?;
        manager
            .create_index(
                index("events", "created")
                    .col("created_at")
                    .col("id")
                    .take(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
