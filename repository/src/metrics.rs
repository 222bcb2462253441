//! What the repositories measure, through the `metrics` facade: free until a binary installs a
//! recorder (`vega-telemetry` installs the Prometheus one). Imported by the connection layer
//! and the store; it imports no repository.
//!
//! - `vega_db_statement_seconds{method}`: every statement's time, pool acquire included,
//!   labelled with the repository method's tracing span (`scans.claim_next`);
//! - `vega_db_errors_total{kind}`: failed statements by [`Error::kind`];
//! - `vega_db_pool_acquire_seconds`: time to open a transaction (taking a connection and its
//!   `BEGIN`);
//! - `vega_db_failovers_total`: times the failure monitor found the server gone and abandoned
//!   the calls in flight on its connections;
//! - `vega_db_reads_total{target}`: replica reads by the server that served them (`reader`,
//!   `writer`), `vega_db_read_fallbacks_total{cause}` those sent to the writer and why (`down`,
//!   `lagging`, `not_replica`, `behind_session`, `error`), and `vega_db_reader_lag_seconds`
//!   the reader's lag at its last probe;
//! - gauges sampled at scrape time ([`crate::Store::record_gauges`]): the pool's connections
//!   by state, its maximum and its waiters; the queue's depth by status and priority, the age
//!   of the oldest due scan and the expired leases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sea_orm::DbErr;

use crate::error::Error;

/// Records one statement (or `BEGIN`/`COMMIT`) that took `elapsed`.
pub(crate) fn statement<T>(elapsed: Duration, result: &Result<T, DbErr>) {
    let method = tracing::Span::current()
        .metadata()
        .map_or("unknown", |m| m.name());
    metrics::histogram!("vega_db_statement_seconds", "method" => method)
        .record(elapsed.as_secs_f64());
    if let Err(err) = result {
        metrics::counter!("vega_db_errors_total", "kind" => Error::from(err.clone()).kind())
            .increment(1);
    }
}

/// Records the time a transaction took to open.
pub(crate) fn acquire(elapsed: Duration) {
    metrics::histogram!("vega_db_pool_acquire_seconds").record(elapsed.as_secs_f64());
}

/// Counts one failover seen by the failure monitor.
pub(crate) fn failover() {
    metrics::counter!("vega_db_failovers_total").increment(1);
}

/// Counts a replica read by the server that served it (`writer`, `reader`).
pub(crate) fn read(target: &'static str) {
    metrics::counter!("vega_db_reads_total", "target" => target).increment(1);
}

/// Counts a replica read sent to the writer, by cause.
pub(crate) fn read_fallback(cause: &'static str) {
    metrics::counter!("vega_db_read_fallbacks_total", "cause" => cause).increment(1);
}

/// The read replica's lag at its last probe.
pub(crate) fn reader_lag(lag: Duration) {
    metrics::gauge!("vega_db_reader_lag_seconds").set(lag.as_secs_f64());
}

/// Sets the pool's gauges.
pub(crate) fn pool(open: u32, idle: u32, max: u32, waiters: i64) {
    metrics::gauge!("vega_db_pool_connections", "state" => "idle").set(f64::from(idle));
    metrics::gauge!("vega_db_pool_connections", "state" => "in_use")
        .set(f64::from(open.saturating_sub(idle)));
    metrics::gauge!("vega_db_pool_max_connections").set(f64::from(max));
    metrics::gauge!("vega_db_pool_waiters").set(waiters as f64);
}

/// The queue's gauges: scans by `(status, priority)`, and the summary's scalars.
pub(crate) fn queue(
    depth: &[(String, i16, i64)],
    oldest_due_seconds: f64,
    scheduled_later: u64,
    expired_leases: u64,
) {
    // A status and priority that emptied has no row in the summary: its gauge goes to 0
    // rather than keep its last value.
    static SEEN: Mutex<BTreeSet<(String, i16)>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    let now: BTreeMap<(String, i16), i64> = depth
        .iter()
        .map(|(status, priority, scans)| ((status.clone(), *priority), *scans))
        .collect();
    seen.extend(now.keys().cloned());
    for key in seen.iter() {
        let (status, priority) = key;
        metrics::gauge!(
            "vega_queue_scans",
            "status" => status.clone(),
            "priority" => priority.to_string()
        )
        .set(now.get(key).copied().unwrap_or(0) as f64);
    }
    metrics::gauge!("vega_queue_oldest_due_seconds").set(oldest_due_seconds);
    metrics::gauge!("vega_queue_scheduled_later").set(scheduled_later as f64);
    metrics::gauge!("vega_queue_expired_leases").set(expired_leases as f64);
}

/// Who wants a pooled connection: calls on the pool in flight and open transactions. With the
/// pool's own count of connections in use, the difference is the callers still waiting.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    calls: AtomicI64,
    transactions: AtomicI64,
}

impl Demand {
    /// Connections wanted now beyond those `in_use`: the waiters.
    pub(crate) fn waiters(&self, in_use: u32) -> i64 {
        let wanted = self.calls.load(Ordering::Relaxed) + self.transactions.load(Ordering::Relaxed);
        (wanted - i64::from(in_use)).max(0)
    }

    pub(crate) fn call(&self) -> Claim<'_> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Claim(&self.calls)
    }

    pub(crate) fn transaction_opened(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn transaction_closed(&self) {
        self.transactions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call on the pool in flight, counted until dropped.
pub(crate) struct Claim<'a>(&'a AtomicI64);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
