use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::{Backend, DatabaseSettings, Pooler, UNDECLARED_TRANSACTION_POOLER};

/// A database that could not be reached, with the checks that usually find the cause.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The directory for the SQLite file could not be created.
    #[error("cannot create the directory for the SQLite database {path}: {source}")]
    SqliteDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The driver failed to connect.
    #[error("cannot connect to {target}: {source}\n{hint}")]
    Connect {
        /// Backend, host, port and database (never the password).
        target: String,
        /// The driver's error.
        source: DbErr,
        /// What to check next.
        hint: String,
    },
}

impl DatabaseSettings {
    /// Connects with `options` (start from [`DatabaseSettings::connect_options`]), creating the
    /// SQLite file's directory first. A failure says what was dialled and what to check, in the
    /// order the checks usually find the cause.
    pub async fn connect(
        &self,
        options: ConnectOptions,
    ) -> Result<DatabaseConnection, ConnectError> {
        self.prepare_sqlite_dir()
            .map_err(|source| ConnectError::SqliteDir {
                path: self
                    .sqlite_path()
                    .and_then(|p| p.parent().map(|d| d.display().to_string()))
                    .unwrap_or_default(),
                source,
            })?;
        Database::connect(options)
            .await
            .map_err(|source| ConnectError::Connect {
                target: self.target(),
                hint: self
                    .pooler_hint(&source.to_string())
                    .unwrap_or_else(|| self.connection_hint()),
                source,
            })
    }

    /// What a connection dials, for messages: `postgres user@host:port/db` or the SQLite path.
    pub fn target(&self) -> String {
        match self.backend {
            Backend::Postgres => format!(
                "postgres {}@{}:{}/{}",
                self.user().unwrap_or_default(),
                self.host().unwrap_or_else(|| "<unix socket>".into()),
                self.port().unwrap_or(5432),
                self.database_name().unwrap_or_default(),
            ),
            Backend::Sqlite => match self.sqlite_path() {
                Some(path) => format!("sqlite {}", path.display()),
                None => "sqlite (in memory)".into(),
            },
        }
    }

    /// The fix when `error` (a driver's message) comes from a pooler rather than from
    /// Postgres: a refused startup parameter (PgBouncer, RDS Proxy), or a prepared statement
    /// that a transaction-mode pool lost or duplicated.
    pub fn pooler_hint(&self, error: &str) -> Option<String> {
        let refused = [
            "unsupported startup parameter",
            "doesn't support command-line options",
        ];
        if refused.iter().any(|r| error.contains(r)) {
            return Some(format!(
                "a connection pooler (PgBouncer or RDS Proxy) refused a startup parameter; it is \
                 not Postgres that is down. Set VEGA_DB_POOLER to its pool mode (`session` or \
                 `transaction`; now `{}`), so that Vega sends its timeouts as SQL, and list \
                 extra_float_digits in PgBouncer's ignore_startup_parameters",
                self.pooler
            ));
        }
        let statement = error.contains("prepared statement")
            && (error.contains("already exists") || error.contains("does not exist"));
        (statement && self.pooler != Pooler::Transaction).then(|| {
            format!(
                "{UNDECLARED_TRANSACTION_POOLER} (VEGA_DB_POOLER is `{}` now)",
                self.pooler
            )
        })
    }

    /// What to check when the database cannot be reached, in the order the checks usually
    /// find the cause: the server, the URL and where it came from, the network in AWS.
    pub fn connection_hint(&self) -> String {
        match self.backend {
            Backend::Postgres => {
                let host = self.host().unwrap_or_else(|| "localhost".into());
                let port = self.port().unwrap_or(5432);
                format!(
                    "check: 1. is Postgres running? (pg_isready -h {host} -p {port}) \
                     2. is the database URL right? ({} {}; backend {}) \
                     3. in AWS: does the task's security group reach the database's on {port}?",
                    self.url, self.url_source, self.backend_source
                )
            }
            Backend::Sqlite => format!(
                "check that the file's directory is writable (URL {}, {})",
                self.url, self.url_source
            ),
        }
    }
}
