//! The repository's integration tests, one binary (one link) for all of them: a module per room
//! or concern of `src/`. `plans.rs` is its own binary: it installs a process-wide statement
//! capture.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod common;
mod concurrency;
mod failover;
mod faults;
mod findings;
mod interrupted;
mod killed;
mod leader_leases;
mod literals;
mod objects;
mod poolers;
mod queue;
mod readers;
mod reports;
mod retention;
mod sessions;
mod sightings;
mod store;
mod text;
