//! How application connections wait: the pool's size and every bound on a wait.
//!
//! Each field has a `VEGA_DB_*` variable; durations are written as `humantime` spans
//! (`30s`, `1m 30s`, `250ms`), and a timeout of zero is refused (it would mean "no bound").

use std::time::Duration;

use crate::{ConfigError, vars};

/// Connection-pool settings for application connections (the repository layer's `Store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections open at once (`VEGA_DB_MAX_CONNECTIONS`, default 10). SQLite always
    /// uses one: it has a single writer.
    pub max_connections: u32,
    /// How long a call waits for a free connection, including opening one
    /// (`VEGA_DB_ACQUIRE_TIMEOUT`, default 5 s).
    pub acquire_timeout: Duration,
    /// Longest a statement may run (`VEGA_DB_STATEMENT_TIMEOUT`, default 30 s): Postgres'
    /// `statement_timeout`, and the client's own deadline on every statement, which also holds
    /// when the server cannot answer at all (frozen, or a half-open connection).
    pub statement_timeout: Duration,
    /// Longest a statement waits for a lock (`VEGA_DB_LOCK_TIMEOUT`, default 10 s): Postgres'
    /// `lock_timeout`. SQLite's writes wait [`Self::sqlite_write_wait`] instead.
    pub lock_timeout: Duration,
    /// Longest a transaction may sit idle between statements before Postgres ends the session
    /// (`VEGA_DB_IDLE_IN_TRANSACTION_TIMEOUT`, default 60 s), so a stuck caller cannot hold
    /// row locks for good.
    pub idle_in_transaction_timeout: Duration,
    /// A pooled connection idle at least this long is checked with a bounded ping before it is
    /// handed out (`VEGA_DB_IDLE_CHECK_AFTER`, default 1 s); busier connections are not, so a
    /// busy pool pays no round trip.
    pub idle_check_after: Duration,
    /// Statements slower than this are logged at WARN (`VEGA_DB_SLOW_STATEMENT`, default 1 s).
    pub slow_statement: Duration,
    /// How often the failure monitor asks the server whether it is still the live writer
    /// (`VEGA_DB_PROBE_INTERVAL`, default 1 s), on a connection of its own.
    pub probe_interval: Duration,
    /// How long a probe may go unanswered before the server is taken for gone
    /// (`VEGA_DB_PROBE_TIMEOUT`, default 2 s): the calls in flight on the pool's connections
    /// are then abandoned and the connections replaced, instead of each waiting out its
    /// statement deadline on a host that will never answer.
    pub probe_timeout: Duration,
    /// The read replica serves no reads while it lags the writer by more than this
    /// (`VEGA_DB_READER_MAX_LAG`, default 10 s); they go to the writer until it catches up.
    pub reader_max_lag: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(60),
            idle_check_after: Duration::from_secs(1),
            slow_statement: Duration::from_secs(1),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            reader_max_lag: Duration::from_secs(10),
        }
    }
}

impl PoolOptions {
    /// How long a write on the embedded SQLite default may wait for the one writer: for the
    /// process's writer connection, then for the file's write lock against other processes.
    /// Every write queues there, so the bound is sized for a queue of completions, not for a
    /// pool running dry: the longest of the statement, lock and acquire timeouts (30 s by
    /// default). A longer queue is refused as unavailable (retryable).
    pub fn sqlite_write_wait(&self) -> Duration {
        self.statement_timeout
            .max(self.lock_timeout)
            .max(self.acquire_timeout)
    }

    /// How long a liveness ping may take before the connection is taken for dead.
    pub fn ping_timeout(&self) -> Duration {
        self.acquire_timeout.min(Duration::from_secs(1))
    }

    pub(crate) fn from_lookup(
        lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let d = Self::default();
        let duration = |var, default| vars::duration(lookup, var, default, vars::DAY);
        let max_connections = vars::number(
            lookup,
            "VEGA_DB_MAX_CONNECTIONS",
            d.max_connections,
            1..=1000,
        )?;
        Ok(Self {
            max_connections,
            acquire_timeout: duration("VEGA_DB_ACQUIRE_TIMEOUT", d.acquire_timeout)?,
            statement_timeout: duration("VEGA_DB_STATEMENT_TIMEOUT", d.statement_timeout)?,
            lock_timeout: duration("VEGA_DB_LOCK_TIMEOUT", d.lock_timeout)?,
            idle_in_transaction_timeout: duration(
                "VEGA_DB_IDLE_IN_TRANSACTION_TIMEOUT",
                d.idle_in_transaction_timeout,
            )?,
            idle_check_after: duration("VEGA_DB_IDLE_CHECK_AFTER", d.idle_check_after)?,
            slow_statement: duration("VEGA_DB_SLOW_STATEMENT", d.slow_statement)?,
            probe_interval: duration("VEGA_DB_PROBE_INTERVAL", d.probe_interval)?,
            probe_timeout: duration("VEGA_DB_PROBE_TIMEOUT", d.probe_timeout)?,
            reader_max_lag: duration("VEGA_DB_READER_MAX_LAG", d.reader_max_lag)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn options(vars: &[(&'static str, &str)]) -> Result<PoolOptions, ConfigError> {
        let map: HashMap<&str, String> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        PoolOptions::from_lookup(&|k| Ok(map.get(k).cloned()))
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(options(&[]).unwrap(), PoolOptions::default());
        let o = options(&[
            ("VEGA_DB_STATEMENT_TIMEOUT", "2s"),
            ("VEGA_DB_LOCK_TIMEOUT", "500ms"),
            ("VEGA_DB_MAX_CONNECTIONS", "32"),
        ])
        .unwrap();
        assert_eq!(o.statement_timeout, Duration::from_secs(2));
        assert_eq!(o.lock_timeout, Duration::from_millis(500));
        assert_eq!(o.max_connections, 32);
        assert_eq!(o.acquire_timeout, PoolOptions::default().acquire_timeout);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("VEGA_DB_STATEMENT_TIMEOUT", "0s"),
            ("VEGA_DB_LOCK_TIMEOUT", "soon"),
            ("VEGA_DB_ACQUIRE_TIMEOUT", "2d"),
            ("VEGA_DB_MAX_CONNECTIONS", "0"),
        ] {
            let err = options(&[(var, value)]).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
