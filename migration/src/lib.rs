//! Vega's schema migrations and the machinery around them.
//!
//! The migrations are sea-orm-migration migrations written with sea-query builders, so one
//! definition runs on Postgres and on SQLite; each runs in its own transaction on both engines
//! and records its version in `schema_migrations` inside that transaction.
//!
//! sea-orm-migration applies migrations but takes no lock and has no read-only status, so this
//! crate adds:
//!
//! - [`lock::MigrationLock`], a Postgres advisory lock taken by polling, so concurrent runners
//!   (two deploys, N tasks starting together) apply each migration exactly once;
//! - [`status::SchemaStatus`], which reads applied, pending and unknown versions without writing;
//! - [`runner`], the run order: lock, refuse unknown versions, apply each with its duration,
//!   unlock;
//! - [`preview`], the SQL a set of migrations would run, rendered without a database;
//! - [`catalog`], foreign keys and indexes as the database's catalog lists them;
//! - the `vega-migrate` command line in [`cli`].

pub mod catalog;
#[cfg(feature = "cli")]
pub mod cli;
mod ddl;
pub mod lock;
#[cfg(feature = "cli")]
pub mod preview;
pub mod runner;
pub mod status;

mod m20261123_000001_accounts_and_projects;
mod m20261123_000002_scans;
mod m20261123_000003_findings;
mod m20261123_000004_artifacts;
mod m20261123_000005_activity;
mod m20261123_000006_object_deletions;
mod m20261202_000007_worker_credentials;
mod m20261202_000008_purge_leases;
mod m20261202_000009_leader_leases;
mod m20261202_000010_event_archives;
mod m20261202_000011_hot_table_storage;
mod m20261203_000012_findings_per_default_branch;
mod m20261204_000013_scan_deltas;
mod m20261206_000014_scan_import_warnings;
mod m20261206_000015_sighting_runs;
mod m20261206_000016_events_by_month;
mod m20261206_000017_stream_bucket_digests;

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

/// The name of the table that records applied versions.
pub const MIGRATION_TABLE: &str = "schema_migrations";

/// Every migration this build knows, in the order they apply.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        MIGRATION_TABLE.into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_accounts_and_projects::Migration),
            Box::new(m20261123_000002_scans::Migration),
            Box::new(m20261123_000003_findings::Migration),
            Box::new(m20261123_000004_artifacts::Migration),
            Box::new(m20261123_000005_activity::Migration),
            Box::new(m20261123_000006_object_deletions::Migration),
            Box::new(m20261202_000007_worker_credentials::Migration),
            Box::new(m20261202_000008_purge_leases::Migration),
            Box::new(m20261202_000009_leader_leases::Migration),
            Box::new(m20261202_000010_event_archives::Migration),
            Box::new(m20261202_000011_hot_table_storage::Migration),
            Box::new(m20261203_000012_findings_per_default_branch::Migration),
            Box::new(m20261204_000013_scan_deltas::Migration),
            Box::new(m20261206_000014_scan_import_warnings::Migration),
            Box::new(m20261206_000015_sighting_runs::Migration),
            Box::new(m20261206_000016_events_by_month::Migration),
            Box::new(m20261206_000017_stream_bucket_digests::Migration),
        ]
    }
}
