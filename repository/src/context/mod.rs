//! What every repository holds beside the connection: who acts and what they may reach
//! (`principal.rs`), the context a repository struct carries (`cx.rs`), and the audit trail
//! each state-changing method appends to in its own transaction (`trail.rs`).

pub(crate) mod cx;
pub(crate) mod principal;
pub(crate) mod trail;
