//! The example API's integration tests, one binary. `metrics.rs` is its own binary: it installs the
//! process-wide metrics recorder and counts what every request did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod http;
mod poolers;
mod readers;
mod startup;
