//! What sits between Vega and Postgres (`VEGA_DB_POOLER`), and how each connection's timeouts
//! reach the server through it.
//!
//! PgBouncer (before 1.20) and RDS Proxy refuse the startup packet's `options`, which is where
//! a direct connection carries its `statement_timeout`, `lock_timeout` and
//! `idle_in_transaction_session_timeout` at no cost. Behind a pooler they travel as SQL instead:
//!
//! - **session** mode gives a client one server connection for as long as it is connected, so
//!   one `SET` per new connection holds for all its statements;
//! - **transaction** mode hands each transaction whichever server connection is free, so a
//!   session `SET` would land on someone else's connection, and nothing prepared may outlive a
//!   transaction. The repository layer sends each statement as one simple query that starts
//!   with `SELECT set_config(…, true)` for the three timeouts ([`transaction_settings`]: `SET
//!   LOCAL`, ending with the implicit transaction, and RDS Proxy does not pin a session for a
//!   function call as it does for `SET`), and opens each transaction with `BEGIN` and the same
//!   call in one round trip. Clients that prepare statements through sea-orm (doctor) start
//!   their transactions with [`transaction_preamble`], which adds `DEALLOCATE ALL`, and keep no
//!   statement cache: sqlx names its prepared statements per client connection, and a name
//!   left on a server connection by another client would collide (PgBouncer before 1.21 does
//!   not track prepared statements).

use std::fmt;
use std::time::Duration;

use crate::{ConfigError, PoolOptions};

const POOLER_VAR: &str = "VEGA_DB_POOLER";

/// What a prepared statement that is missing on the server, or already there, means: a
/// transaction-mode pooler that the settings do not declare. The fix, for error messages.
pub const UNDECLARED_TRANSACTION_POOLER: &str = "a transaction-mode pooler (PgBouncer \
    `pool_mode = transaction`, or RDS Proxy) hands each transaction another server connection, \
    which does not have this connection's prepared statements; set VEGA_DB_POOLER=transaction \
    or put the pooler in session mode";

/// The connection pooler in front of Postgres, if any (`VEGA_DB_POOLER`, default `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Pooler {
    /// Postgres itself: timeouts ride in the startup packet.
    #[default]
    None,
    /// A pooler that gives each client connection one server connection (PgBouncer
    /// `pool_mode = session`).
    Session,
    /// A pooler that hands each transaction any server connection (PgBouncer
    /// `pool_mode = transaction`, RDS Proxy).
    Transaction,
}

impl Pooler {
    /// The name used in `VEGA_DB_POOLER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Session => "session",
            Pooler::Transaction => "transaction",
        }
    }

    /// Reads `VEGA_DB_POOLER` from the process environment (for tools handed a URL, which
    /// still reach the database through the same pooler).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&crate::env_lookup)
    }

    pub(crate) fn from_lookup(
        lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let Some(value) = lookup(POOLER_VAR)? else {
            return Ok(Pooler::None);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Pooler::None),
            "session" => Ok(Pooler::Session),
            "transaction" => Ok(Pooler::Transaction),
            _ => Err(ConfigError::InvalidSetting {
                var: POOLER_VAR,
                value,
                reason: "is not a pool mode; use `none` (Postgres itself), `session` (PgBouncer \
                         session mode) or `transaction` (PgBouncer transaction mode, RDS Proxy)"
                    .into(),
            }),
        }
    }
}

impl fmt::Display for Pooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The server-side timeouts of an application connection, as `(setting, milliseconds)`.
pub(crate) fn timeouts(pool: &PoolOptions) -> [(&'static str, String); 3] {
    let ms = |d: Duration| d.as_millis().to_string();
    [
        ("statement_timeout", ms(pool.statement_timeout)),
        ("lock_timeout", ms(pool.lock_timeout)),
        (
            "idle_in_transaction_session_timeout",
            ms(pool.idle_in_transaction_timeout),
        ),
    ]
}

/// `SET` statements for `settings`, as one simple query (one round trip).
pub(crate) fn set_session(settings: &[(&str, String)]) -> String {
    settings
        .iter()
        .map(|(name, value)| format!("SET {name} = '{}'", value.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The statement that gives one transaction the timeouts: `set_config(…, true)` for each.
pub(crate) fn transaction_settings(pool: &PoolOptions) -> String {
    let calls = timeouts(pool)
        .iter()
        .map(|(name, value)| format!("set_config('{name}', '{value}', true)"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {calls}")
}

/// What a transaction-mode transaction of a client with prepared statements sends first (see
/// the module docs).
pub(crate) fn transaction_preamble(pool: &PoolOptions) -> String {
    format!("DEALLOCATE ALL; {}", transaction_settings(pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooler(value: Option<&str>) -> Result<Pooler, ConfigError> {
        let value = value.map(str::to_owned);
        Pooler::from_lookup(&|_| Ok(value.clone()))
    }

    #[test]
    fn modes_parse_and_bad_ones_name_the_variable() {
        assert_eq!(pooler(None).unwrap(), Pooler::None);
        assert_eq!(pooler(Some("Session")).unwrap(), Pooler::Session);
        assert_eq!(pooler(Some("transaction")).unwrap(), Pooler::Transaction);
        let err = pooler(Some("statement")).unwrap_err().to_string();
        assert!(
            err.contains(POOLER_VAR) && err.contains("transaction"),
            "{err}"
        );
    }

    #[test]
    fn session_values_are_quoted() {
        assert_eq!(
            set_session(&[("lock_timeout", "10s".into()), ("x", "it's".into())]),
            "SET lock_timeout = '10s'; SET x = 'it''s'"
        );
    }

    #[test]
    fn the_preamble_sets_each_timeout_locally() {
        let sql = transaction_preamble(&PoolOptions::default());
        assert_eq!(
            sql,
            "DEALLOCATE ALL; SELECT set_config('statement_timeout', '30000', true), \
             set_config('lock_timeout', '10000', true), \
             set_config('idle_in_transaction_session_timeout', '60000', true)"
        );
    }
}
