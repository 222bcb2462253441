//! Objects: every object Vega writes, registered in a table beside it. `upload.rs` is the one
//! row/object protocol (pending row, create-only put, commit, abandon) that artifacts and
//! event archives both follow; `artifacts.rs` the `artifacts` repository; `cascade.rs` the
//! delete of a project, scan or snapshot with its objects (through the `object_deletions`
//! outbox); `maintenance.rs` purge, gc and the integrity check.

pub(crate) mod artifacts;
pub(crate) mod cascade;
pub(crate) mod maintenance;
pub(crate) mod upload;
