//! SARIF 2.1.0 in and out: [`Reports`](import::Reports). `import.rs` completes a scan from a
//! log; `read.rs` is the streaming reader over the wire model of `wire.rs`, and `map.rs` maps
//! a result to a finding, taking the deviations of `warnings.rs` with a fallback; `progress.rs`
//! is what an import shares with a progress display; `export.rs` writes findings as a log.

pub(crate) mod export;
pub(crate) mod import;
pub(crate) mod map;
pub(crate) mod progress;
pub(crate) mod read;
pub(crate) mod warnings;
pub(crate) mod wire;
