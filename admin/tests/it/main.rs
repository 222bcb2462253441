//! vega-admin's integration tests, one binary: a module per command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod common;
mod doctor;
mod maintain;
