//! Vega storage settings, read once from the environment.
//!
//! Every binary and the repository layer build their connections from [`Settings`], so a
//! setting means the same thing everywhere. The rules:
//!
//! - `VEGA_PERSISTENCE_BACKEND` is `postgres` or `sqlite`; unset, the database URL's scheme
//!   chooses (so a lone `DATABASE_URL=postgres://…` works), and without a URL it is `sqlite`,
//!   the embedded mode;
//! - the database URL comes from `VEGA_DATABASE_URL`, then `DATABASE_URL`; or, for postgres,
//!   is built from `VEGA_DATABASE_HOST`, `_PORT` (5432), `_NAME`, `_USER`, `_PASSWORD`,
//!   `_SSLMODE` and `_SSLROOTCERT` (the shape an ECS task gets from the RDS-managed secret; setting both a URL and
//!   these is an error); the sqlite backend defaults to `sqlite://.vega/vega.sqlite3?mode=rwc`,
//!   the postgres backend has no default;
//! - `VEGA_BLOB_BACKEND` is `fs` (default, rooted at `VEGA_BLOB_DIR`, default `.vega/blobs`) or
//!   `s3` (`VEGA_S3_BUCKET` required, `VEGA_S3_PREFIX` optional, every call bounded by
//!   `VEGA_S3_*_TIMEOUT` and `VEGA_S3_MAX_ATTEMPTS` ([`S3Timeouts`]), streams spooled under
//!   `VEGA_SPOOL_DIR`; region, endpoint and credentials come from the AWS SDK's own variables);
//! - the application pool's size and timeouts come from `VEGA_DB_*` ([`PoolOptions`]), and
//!   `VEGA_DB_POOLER` says whether PgBouncer or RDS Proxy sits in front of Postgres and in
//!   which pool mode ([`Pooler`]);
//! - a read replica is optional: `VEGA_DATABASE_READER_URL`, or `VEGA_DATABASE_READER_HOST`
//!   with the writer's other parts (Postgres only); `VEGA_DB_READER_MAX_LAG` bounds how stale
//!   the reads it serves may be.
//!
//! A wrong setting is a [`ConfigError`] naming the variable and the fix, never a silent fallback:
//! a postgres backend whose URL says `sqlite:` is refused rather than quietly run on a file.
//! Passwords never leave this crate in `Debug` or `Display` output: [`DatabaseUrl`] redacts them,
//! and [`Settings::log_effective`] prints the redacted form once at start-up.

mod blob;
mod connect;
mod database;
mod error;
mod parts;
mod pool;
mod pooler;
mod reader;
mod vars;

pub use blob::{BlobSettings, S3Timeouts, default_spool_dir};
pub use connect::ConnectError;
pub use database::{Backend, DatabaseSettings, DatabaseUrl};
pub use error::ConfigError;
pub use pool::PoolOptions;
pub use pooler::{Pooler, UNDECLARED_TRANSACTION_POOLER};

/// Where a setting's value came from, printed beside it so that "which variable won?" is never a
/// guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the named environment variable.
    Env(&'static str),
    /// Not set anywhere; the built-in default applies.
    Default,
    /// Built from `VEGA_DATABASE_HOST`, `_PORT`, `_NAME`, `_USER`, `_PASSWORD`, `_SSLMODE` and
    /// `_SSLROOTCERT`.
    DatabaseParts,
    /// Passed in directly (a command-line flag or a test), not read from the environment.
    Given,
    /// Not set, and taken from the scheme of the URL in the named variable (a lone
    /// `DATABASE_URL=postgres://…` selects the postgres backend).
    Inferred(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Env(var) => write!(f, "from {var}"),
            Source::DatabaseParts => f.write_str("from VEGA_DATABASE_HOST/_PORT/_NAME/_USER"),
            Source::Default => f.write_str("default"),
            Source::Given => f.write_str("given explicitly"),
            Source::Inferred(var) => write!(f, "inferred from the scheme of {var}"),
        }
    }
}

/// All of Vega storage's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The metadata database.
    pub database: DatabaseSettings,
    /// The read replica, if any (`VEGA_DATABASE_READER_URL` or `VEGA_DATABASE_READER_HOST`):
    /// reads that may be stale go there, everything else to [`Self::database`].
    pub reader: Option<DatabaseSettings>,
    /// The object store.
    pub blob: BlobSettings,
    /// The application connection pool: its size and the bound on every wait.
    pub pool: PoolOptions,
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(env_lookup)
    }

    /// Reads the settings through `lookup`, which returns a variable's value or `None` when it is
    /// unset. Tests pass a map here instead of mutating the process environment.
    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let database = DatabaseSettings::from_lookup(&lookup)?;
        Ok(Self {
            reader: reader::from_lookup(&lookup, &database)?,
            database,
            blob: BlobSettings::from_lookup(&lookup)?,
            pool: PoolOptions::from_lookup(&lookup)?,
        })
    }

    /// Prints the effective settings once through `tracing`, passwords redacted.
    pub fn log_effective(&self) {
        self.database.log_effective();
        if let Some(reader) = &self.reader {
            tracing::info!(url = %reader.url, url_source = %reader.url_source, "read replica");
        }
        self.blob.log_effective();
    }
}

/// Reads one variable from the process environment; empty counts as unset, and a value that is
/// not UTF-8 is an error naming the variable rather than a silent fallback to the default.
pub fn env_lookup(var: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(var) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode { var }),
    }
}
