//! Findings: the reads (`reads.rs`: open findings, counts, what a scan saw, the comparison
//! of a branch, a finding's history and sightings), triage (`triage.rs`), SLA (`sla.rs`), a
//! finding's identity (`fingerprint.rs`), the set-based engine that writes a completion's
//! findings (`ingest.rs`), and sightings as runs of a stream of scans (`runs.rs`).

pub(crate) mod fingerprint;
pub(crate) mod ingest;
pub(crate) mod reads;
pub(crate) mod runs;
pub(crate) mod sla;
pub(crate) mod triage;
