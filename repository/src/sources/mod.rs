//! What is scanned: projects (`projects.rs`), the source repositories they track
//! (`repositories.rs`), and snapshots of a repository's source (`snapshots.rs`).

pub(crate) mod projects;
pub(crate) mod repositories;
pub(crate) mod snapshots;
