//! SeaORM entities for Vega's tables, one module per table.
//!
//! Everything under `generated/` is written by `scripts/generate-entities` (sea-orm-cli run
//! against a freshly migrated Postgres database) and checked for drift by `scripts/test`:
//! change the schema in `migration/`, regenerate, commit both. Hand-written helpers belong in
//! files beside `generated/`, which regeneration never touches.
//!
//! Column conventions that the types alone do not show (see ARCHITECTURE.md):
//! ids are UUIDv7 generated in Rust (`events` and `usage_records` use `bigint` identities);
//! timestamps are written as UTC; statuses are text checked by the database; severity is an
//! ordinal from 0 (unknown) to 5 (critical); hashes are raw 32-byte SHA-256 values.

#[allow(missing_docs)] // generated code; the columns are documented in the migrations
mod generated;

pub use generated::*;

mod values;

pub use values::*;
