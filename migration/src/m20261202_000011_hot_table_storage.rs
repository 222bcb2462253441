//! Storage settings for the tables every scan rewrites, so vacuum keeps pace with the work in
//! flight whatever the history holds (Postgres only; SQLite has no such settings).
//!
//! Postgres vacuums a table once its dead rows pass 20% of it (`autovacuum_vacuum_scale_factor`
//! 0.2). `scans` is both the record of every scan and the queue: each claim and completion
//! leaves a dead row, and with 10M finished scans vacuum would wait for 2M of them, while the
//! claim walks the dead entries at the head of `scans_ready_idx` (the worker loop fell to
//! 0.64× its first minute's rate in ten minutes: BENCHMARKS.md, "The queue at scale"). A fixed
//! threshold with no scale factor vacuums after the same amount of work at any size, without
//! throttling (the table's pages touched since the last vacuum are few; the visibility map
//! skips the rest); inserts trigger vacuum by count too, so the visibility map stays current.
//! A fillfactor below 100 leaves room on each page for the HOT updates heartbeats make (no
//! column a heartbeat writes is indexed).

use sea_orm_migration::prelude::*;

use crate::ddl::{reset_storage, set_storage};

/// `scans`: the queue's rows and the history's.
const SCANS: &[(&str, &str)] = &[
    ("fillfactor", "90"),
    ("autovacuum_vacuum_scale_factor", "0"),
    ("autovacuum_vacuum_threshold", "5000"),
    ("autovacuum_vacuum_insert_scale_factor", "0"),
    ("autovacuum_vacuum_insert_threshold", "100000"),
    ("autovacuum_analyze_scale_factor", "0"),
    ("autovacuum_analyze_threshold", "100000"),
    ("autovacuum_vacuum_cost_delay", "0"),
];

/// `worker_heartbeats`: a row per live worker, rewritten on every beat.
const HEARTBEATS: &[(&str, &str)] = &[
    ("fillfactor", "50"),
    ("autovacuum_vacuum_scale_factor", "0"),
    ("autovacuum_vacuum_threshold", "1000"),
    ("autovacuum_vacuum_cost_delay", "0"),
];

/// `api_keys`: `last_used_at` touched (throttled) on authentication; `projects`:
/// `latest_scan_id` and counts rewritten by every completion.
const TOUCHED: &[(&str, &str)] = &[
    ("fillfactor", "80"),
    ("autovacuum_vacuum_scale_factor", "0"),
    ("autovacuum_vacuum_threshold", "1000"),
];

const TABLES: &[(&str, &[(&str, &str)])] = &[
    ("scans", SCANS),
    ("worker_heartbeats", HEARTBEATS),
    ("api_keys", TOUCHED),
    ("projects", TOUCHED),
];

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, options) in TABLES {
            set_storage(manager, table, options).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, options) in TABLES {
            reset_storage(manager, table, options).await?;
        }
        Ok(())
    }
}
