//! How far a SARIF import has got, for a progress display: the log's results, counted when it
//! is checked, and those ingested so far. The import updates it; a caller reads it from
//! another task ([`Reports::with_progress`](crate::Reports::with_progress)).

use std::sync::atomic::{AtomicU64, Ordering};

/// A SARIF import's progress, shared with the import. Reading it never waits.
#[derive(Debug, Default)]
pub struct ImportProgress {
    /// Results of the log plus one, so that 0 means "not checked yet".
    total: AtomicU64,
    done: AtomicU64,
}

impl ImportProgress {
    /// The log's results, once the import has checked the log.
    pub fn total(&self) -> Option<u64> {
        self.total.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Results read into the completion so far (a retried completion starts again from 0).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub(crate) fn checked(&self, results: u64) {
        self.total
            .store(results.saturating_add(1), Ordering::Relaxed);
    }

    pub(crate) fn restart(&self) {
        self.done.store(0, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, results: u64) {
        self.done.fetch_add(results, Ordering::Relaxed);
    }
}
