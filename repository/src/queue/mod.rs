//! The scan queue: scans and their records (`scans.rs`), a worker's claim and the lease it
//! holds, with the one fence every worker write passes (`lease.rs`), the one completion unit
//! (`complete.rs`), and the operators' view of the queue (`view.rs`).

pub(crate) mod complete;
pub(crate) mod lease;
pub(crate) mod scans;
pub(crate) mod view;
