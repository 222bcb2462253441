use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::ConnectOptions;
use sea_orm::sqlx::{
    self,
    postgres::PgPoolOptions,
    sqlite::{SqliteJournalMode, SqliteSynchronous},
};

use crate::{ConfigError, PoolOptions, Pooler, Source, parts, pooler};

const BACKEND_VAR: &str = "VEGA_PERSISTENCE_BACKEND";
const URL_VARS: [&str; 2] = ["VEGA_DATABASE_URL", "DATABASE_URL"];

/// The embedded default: a file under `.vega/` in the working directory, created on first use.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://.vega/vega.sqlite3?mode=rwc";

const REDACTED: &str = "********";

/// Which database engine holds the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL, the production backend.
    Postgres,
    /// SQLite, the embedded default that needs nothing installed.
    Sqlite,
}

impl Backend {
    /// The name used in `VEGA_PERSISTENCE_BACKEND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    fn expected_url(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres://user:password@host:5432/database",
            Backend::Sqlite => "sqlite://path/to/file.sqlite3?mode=rwc or sqlite::memory:",
        }
    }

    fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "sqlite" => Some(Backend::Sqlite),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database URL that keeps its password out of every `Debug` and `Display` rendering.
/// Only [`DatabaseUrl::expose`] returns the real text, for handing to the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL; it is not validated here (see [`DatabaseSettings`]).
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the database driver only. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password (in the user-info part or a `password=` parameter) replaced by
    /// asterisks. A URL that does not parse is shown as its scheme only.
    pub fn redacted(&self) -> String {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            let scheme = self.0.split(':').next().unwrap_or_default();
            return format!("{scheme}:{REDACTED}");
        };
        if url.password().is_some() {
            // Only fails for URLs that cannot have a password, which this one just had.
            let _ = url.set_password(Some(REDACTED));
        }
        if url.query_pairs().any(|(k, _)| is_secret_param(&k)) {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret_param(&k) {
                        REDACTED.into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

fn is_secret_param(key: &str) -> bool {
    matches!(key, "password" | "sslpassword")
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The metadata database: which backend, which URL, and where each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// The engine.
    pub backend: Backend,
    /// Where [`Self::backend`] came from.
    pub backend_source: Source,
    /// The connection URL (password redacted when printed).
    pub url: DatabaseUrl,
    /// Where [`Self::url`] came from.
    pub url_source: Source,
    /// The pooler between Vega and Postgres, if any (`VEGA_DB_POOLER`).
    pub pooler: Pooler,
}

impl DatabaseSettings {
    /// Settings for an explicit URL, with the backend taken from its scheme; for tools and tests
    /// that are handed a URL rather than an environment.
    pub fn for_url(url: impl Into<String>) -> Result<Self, ConfigError> {
        let url = url.into();
        let scheme = url.split(':').next().unwrap_or_default();
        let backend = Backend::from_scheme(scheme).ok_or_else(|| ConfigError::InvalidUrl {
            var: "the database URL",
            reason: format!("unknown scheme {scheme:?}"),
            expected: Backend::Postgres.expected_url(),
        })?;
        let settings = Self {
            backend,
            backend_source: Source::Given,
            url: DatabaseUrl::new(url),
            url_source: Source::Given,
            pooler: Pooler::None,
        };
        settings.validate("the database URL")?;
        Ok(settings)
    }

    pub(crate) fn from_lookup(
        lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let mut found = None;
        for var in URL_VARS {
            if let Some(url) = lookup(var)? {
                found = Some((url, var));
                break;
            }
        }
        let inferred = found.as_ref().and_then(|(url, var)| {
            let scheme = url.trim().split(':').next().unwrap_or_default();
            Backend::from_scheme(scheme).map(|backend| (backend, Source::Inferred(var)))
        });
        let (backend, backend_source) = match lookup(BACKEND_VAR)? {
            None => inferred.unwrap_or((Backend::Sqlite, Source::Default)),
            Some(value) => {
                let backend = match value.trim().to_ascii_lowercase().as_str() {
                    "postgres" | "postgresql" => Backend::Postgres,
                    "sqlite" => Backend::Sqlite,
                    _ => return Err(ConfigError::UnknownBackend { value }),
                };
                (backend, Source::Env(BACKEND_VAR))
            }
        };

        let part = parts::first_set(lookup)?;
        let (url, url_source) = match (found, part, backend) {
            (Some((_, url_var)), Some(part_var), _) => {
                return Err(ConfigError::TwoDatabaseSources { url_var, part_var });
            }
            (Some((url, var)), None, _) => (url, Source::Env(var)),
            (None, Some(part_var), Backend::Postgres) => (
                parts::url_from_parts(lookup, part_var)?,
                Source::DatabaseParts,
            ),
            (None, Some(part_var), Backend::Sqlite) => {
                return Err(ConfigError::PartsNeedPostgres {
                    part_var,
                    backend_source,
                });
            }
            (None, None, Backend::Sqlite) => (DEFAULT_SQLITE_URL.to_owned(), Source::Default),
            (None, None, Backend::Postgres) => return Err(ConfigError::MissingDatabaseUrl),
        };

        let settings = Self {
            backend,
            backend_source,
            url: DatabaseUrl::new(url.trim()),
            url_source,
            pooler: Pooler::from_lookup(lookup)?,
        };
        let var = match url_source {
            Source::Env(var) => var,
            Source::DatabaseParts => parts::HOST_VAR,
            Source::Default | Source::Given | Source::Inferred(_) => "the default database URL",
        };
        settings.validate(var)?;
        Ok(settings)
    }

    pub(crate) fn validate(&self, var: &'static str) -> Result<(), ConfigError> {
        let raw = self.url.expose();
        let invalid = |reason: String| ConfigError::InvalidUrl {
            var,
            reason,
            expected: self.backend.expected_url(),
        };
        let Some((scheme, _)) = raw.split_once(':') else {
            return Err(invalid("it has no scheme".into()));
        };
        match Backend::from_scheme(scheme) {
            Some(b) if b == self.backend => {}
            Some(_) => {
                return Err(ConfigError::SchemeMismatch {
                    var,
                    scheme: scheme.to_owned(),
                    backend: self.backend.as_str(),
                    backend_source: self.backend_source,
                });
            }
            None => return Err(invalid(format!("unknown scheme {scheme:?}"))),
        }
        if self.backend == Backend::Postgres {
            let url = url::Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
            if url.path().trim_start_matches('/').is_empty() {
                return Err(invalid("it names no database".into()));
            }
        }
        Ok(())
    }

    /// Host name of a Postgres URL (`None` for SQLite or a Unix-socket URL).
    pub fn host(&self) -> Option<String> {
        let url = self.parsed()?;
        let host = url.host_str().filter(|h| !h.is_empty())?;
        Some(host.to_owned())
    }

    /// Port of a Postgres URL (5432 when the URL leaves it out).
    pub fn port(&self) -> Option<u16> {
        let url = self.parsed()?;
        Some(url.port().unwrap_or(5432))
    }

    /// Database name of a Postgres URL.
    pub fn database_name(&self) -> Option<String> {
        let url = self.parsed()?;
        Some(url.path().trim_start_matches('/').to_owned())
    }

    /// User name of a Postgres URL.
    pub fn user(&self) -> Option<String> {
        let url = self.parsed()?;
        Some(url.username().to_owned()).filter(|u| !u.is_empty())
    }

    fn parsed(&self) -> Option<url::Url> {
        match self.backend {
            Backend::Postgres => url::Url::parse(self.url.expose()).ok(),
            Backend::Sqlite => None,
        }
    }

    /// The SQLite file behind the URL; `None` for Postgres and in-memory databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let rest = self.url.expose().strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
            return None;
        }
        Some(PathBuf::from(path))
    }

    /// True when the database is on this machine: SQLite, or a Postgres host that is
    /// `localhost`, a loopback address, or a Unix socket. Destructive commands check this.
    pub fn is_local(&self) -> bool {
        match self.backend {
            Backend::Sqlite => true,
            Backend::Postgres => match self.host() {
                None => true,
                Some(host) => {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    host == "localhost"
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
            },
        }
    }

    /// Creates the directory that will hold a SQLite file, so the embedded default works from a
    /// fresh checkout. Does nothing for Postgres or in-memory databases.
    pub fn prepare_sqlite_dir(&self) -> std::io::Result<()> {
        match self.sqlite_path().as_deref().and_then(|p| p.parent()) {
            Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
            _ => Ok(()),
        }
    }

    /// Connection options shared by every Vega binary: statement logging off (our own `tracing`
    /// spans cover repository calls, and sqlx's logger would print every statement at INFO),
    /// and for SQLite, WAL with foreign keys enforced and a busy timeout so a second process
    /// waits instead of failing.
    pub fn connect_options(&self) -> ConnectOptions {
        self.options_with_busy_timeout(Duration::from_secs(5))
    }

    /// [`Self::connect_options`] for application connections, every wait bounded by `pool`.
    ///
    /// On Postgres reached directly, the session's `statement_timeout`, `lock_timeout` and
    /// `idle_in_transaction_session_timeout` ride in the startup packet, which costs no round
    /// trip, with TCP keepalives so the server drops a vanished client's session (and its
    /// locks) within about 25 s. Behind a pooler, which refuses startup `options`, see
    /// [`Pooler`]: session mode sets them once per new connection; transaction mode has no
    /// statement cache, and the repository layer opens each transaction with
    /// [`Self::transaction_settings`]. On SQLite the busy timeout is
    /// [`PoolOptions::sqlite_write_wait`]. `hooks`
    /// adds the caller's own to the sqlx pool's options (the repository layer's release
    /// check); the pool's size and liveness checks are the repository layer's.
    pub fn app_connect_options(
        &self,
        pool: &PoolOptions,
        hooks: impl Fn(PgPoolOptions) -> PgPoolOptions + Send + Sync + 'static,
    ) -> ConnectOptions {
        let busy_timeout = match self.backend {
            Backend::Postgres => pool.lock_timeout,
            Backend::Sqlite => pool.sqlite_write_wait(),
        };
        let mut options = self.options_with_busy_timeout(busy_timeout);
        options.connect_timeout(pool.acquire_timeout);
        if self.backend == Backend::Postgres {
            let timeouts = pooler::timeouts(pool).to_vec();
            self.apply_session_settings(&mut options, timeouts, true, hooks);
        }
        options
    }

    /// The statement an application transaction must send first, when the pooler needs one
    /// (transaction mode; see [`Pooler`]), for a client that prepares statements through
    /// sea-orm: it drops the names other clients left on the server connection.
    pub fn transaction_preamble(&self, pool: &PoolOptions) -> Option<String> {
        self.behind_transaction_pooler()
            .then(|| pooler::transaction_preamble(pool))
    }

    /// The `SELECT set_config(…, true)` that gives one transaction the pool's timeouts, when
    /// the pooler is in transaction mode: the repository layer folds it into the transaction's
    /// first round trip, and prepares nothing.
    pub fn transaction_settings(&self, pool: &PoolOptions) -> Option<String> {
        self.behind_transaction_pooler()
            .then(|| pooler::transaction_settings(pool))
    }

    fn behind_transaction_pooler(&self) -> bool {
        self.backend == Backend::Postgres && self.pooler == Pooler::Transaction
    }

    /// Gives every new Postgres connection `settings` the way the pooler lets them through: in
    /// the startup packet (with server-side keepalives, when `keepalives`) when there is none,
    /// a `SET` after connecting in session mode. Transaction mode turns the statement cache
    /// off; its settings are per transaction (see [`Self::transaction_preamble`]). `hooks` is
    /// applied to the sqlx pool's options after this method's own.
    pub fn apply_session_settings(
        &self,
        options: &mut ConnectOptions,
        mut settings: Vec<(&'static str, String)>,
        keepalives: bool,
        hooks: impl Fn(PgPoolOptions) -> PgPoolOptions + Send + Sync + 'static,
    ) {
        let mut setup: Option<Arc<str>> = None;
        match self.pooler {
            Pooler::None => {
                if keepalives {
                    settings.extend([
                        ("tcp_keepalives_idle", "10".to_owned()),
                        ("tcp_keepalives_interval", "5".to_owned()),
                        ("tcp_keepalives_count", "3".to_owned()),
                    ]);
                }
                if !settings.is_empty() {
                    options.map_sqlx_postgres_opts(move |o| o.options(settings.clone()));
                }
            }
            Pooler::Session if !settings.is_empty() => {
                setup = Some(pooler::set_session(&settings).into());
            }
            Pooler::Session => {}
            Pooler::Transaction => {
                options.map_sqlx_postgres_opts(|o| o.statement_cache_capacity(0));
            }
        }
        options.map_sqlx_postgres_pool_opts(move |o| {
            let Some(sql) = setup.clone() else {
                return hooks(o);
            };
            hooks(o.after_connect(move |conn, _| {
                let sql = sql.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(sql))
                        .await
                        .map(|_| ())
                })
            }))
        });
    }

    fn options_with_busy_timeout(&self, busy_timeout: Duration) -> ConnectOptions {
        let mut options = ConnectOptions::new(self.url.expose());
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(5));
        if self.backend == Backend::Sqlite {
            options.map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(busy_timeout)
            });
        }
        options
    }

    /// Prints these settings once through `tracing`, password redacted.
    pub fn log_effective(&self) {
        tracing::info!(
            backend = %self.backend,
            backend_source = %self.backend_source,
            url = %self.url,
            url_source = %self.url_source,
            pooler = %self.pooler,
            "database settings"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&'static str, &str)]) -> Result<DatabaseSettings, ConfigError> {
        let map: HashMap<&str, String> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        DatabaseSettings::from_lookup(&|k| Ok(map.get(k).cloned()))
    }

    #[test]
    fn defaults_to_embedded_sqlite_file() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.backend, Backend::Sqlite);
        assert_eq!(s.backend_source, Source::Default);
        assert_eq!(s.url.expose(), DEFAULT_SQLITE_URL);
        assert_eq!(s.sqlite_path(), Some(PathBuf::from(".vega/vega.sqlite3")));
    }

    #[test]
    fn vega_url_wins_over_database_url() {
        let s = settings(&[
            ("VEGA_PERSISTENCE_BACKEND", "postgres"),
            ("VEGA_DATABASE_URL", "postgres://a@db1/vega"),
            ("DATABASE_URL", "postgres://b@db2/other"),
        ])
        .unwrap();
        assert_eq!(s.url_source, Source::Env("VEGA_DATABASE_URL"));
        assert_eq!(s.host().as_deref(), Some("db1"));
    }

    #[test]
    fn database_url_is_accepted_without_prefix() {
        let s = settings(&[
            ("VEGA_PERSISTENCE_BACKEND", "postgres"),
            ("DATABASE_URL", "postgresql://u:p@db.internal:6432/vega"),
        ])
        .unwrap();
        assert_eq!(s.url_source, Source::Env("DATABASE_URL"));
        assert_eq!(s.port(), Some(6432));
        assert_eq!(s.database_name().as_deref(), Some("vega"));
        assert_eq!(s.user().as_deref(), Some("u"));
        assert!(!s.is_local());
    }

    #[test]
    fn url_can_be_built_from_separate_variables() {
        let s = settings(&[
            ("VEGA_PERSISTENCE_BACKEND", "postgres"),
            (
                "VEGA_DATABASE_HOST",
                "vega.cluster-x.eu-west-1.rds.amazonaws.com",
            ),
            ("VEGA_DATABASE_NAME", "vega"),
            ("VEGA_DATABASE_USER", "vega_app"),
            ("VEGA_DATABASE_PASSWORD", "s3cr@t/!"),
        ])
        .unwrap();
        assert_eq!(s.url_source, Source::DatabaseParts);
        assert_eq!(s.user().as_deref(), Some("vega_app"));
        assert_eq!(s.port(), Some(5432));
        assert!(!format!("{s:?}").contains("s3cr"));

        let err = settings(&[
            ("VEGA_PERSISTENCE_BACKEND", "postgres"),
            ("DATABASE_URL", "postgres://u@h/v"),
            ("VEGA_DATABASE_PASSWORD", "x"),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            ConfigError::TwoDatabaseSources {
                url_var: "DATABASE_URL",
                part_var: "VEGA_DATABASE_PASSWORD"
            }
        );
        let err = settings(&[("VEGA_DATABASE_HOST", "db")]).unwrap_err();
        assert!(
            err.to_string().contains("VEGA_PERSISTENCE_BACKEND"),
            "{err}"
        );
    }

    #[test]
    fn postgres_without_url_names_both_variables() {
        let err = settings(&[("VEGA_PERSISTENCE_BACKEND", "postgres")]).unwrap_err();
        assert_eq!(err, ConfigError::MissingDatabaseUrl);
        let msg = err.to_string();
        assert!(
            msg.contains("VEGA_DATABASE_URL") && msg.contains("DATABASE_URL"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_backend_is_named() {
        let err = settings(&[("VEGA_PERSISTENCE_BACKEND", "json")]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownBackend { ref value } if value == "json"));
        let msg = err.to_string();
        assert!(
            msg.contains("VEGA_PERSISTENCE_BACKEND") && msg.contains("postgres"),
            "{msg}"
        );
    }

    #[test]
    fn scheme_contradicting_backend_is_refused() {
        let err = settings(&[
            ("VEGA_PERSISTENCE_BACKEND", "postgres"),
            ("VEGA_DATABASE_URL", "sqlite://x.db"),
        ])
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::SchemeMismatch {
                var: "VEGA_DATABASE_URL",
                backend: "postgres",
                ..
            }
        ));

        let err = settings(&[
            ("VEGA_PERSISTENCE_BACKEND", "sqlite"),
            ("DATABASE_URL", "postgres://u:secret@h/db"),
        ])
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("DATABASE_URL") && msg.contains("VEGA_PERSISTENCE_BACKEND"),
            "{msg}"
        );
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn a_lone_url_chooses_the_backend_by_its_scheme() {
        let s = settings(&[("DATABASE_URL", "postgres://u:secret@h/db")]).unwrap();
        assert_eq!(s.backend, Backend::Postgres);
        assert_eq!(s.backend_source, Source::Inferred("DATABASE_URL"));
        assert_eq!(
            s.backend_source.to_string(),
            "inferred from the scheme of DATABASE_URL"
        );
        let s = settings(&[("VEGA_DATABASE_URL", "sqlite://x.db?mode=rwc")]).unwrap();
        assert_eq!(
            (s.backend, s.backend_source),
            (Backend::Sqlite, Source::Inferred("VEGA_DATABASE_URL"))
        );
        let err = settings(&[("DATABASE_URL", "mysql://h/db")]).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn malformed_urls_are_invalid_without_echoing_them() {
        for url in [
            "postgres://u:hunter2@[bad/vega",
            "postgres://u:hunter2@host",
            "nonsense",
        ] {
            let err = settings(&[
                ("VEGA_PERSISTENCE_BACKEND", "postgres"),
                ("VEGA_DATABASE_URL", url),
            ])
            .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("VEGA_DATABASE_URL"), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
    }

    #[test]
    fn password_never_appears_in_debug_or_display() {
        let s = settings(&[
            ("VEGA_PERSISTENCE_BACKEND", "postgres"),
            (
                "VEGA_DATABASE_URL",
                "postgres://vega:hunter2@db/vega?sslmode=require&password=hunter3",
            ),
        ])
        .unwrap();
        for rendered in [
            format!("{s:?}"),
            format!("{}", s.url),
            format!("{:?}", s.url),
        ] {
            assert!(!rendered.contains("hunter2"), "{rendered}");
            assert!(!rendered.contains("hunter3"), "{rendered}");
            assert!(
                rendered.contains("vega@db") || rendered.contains("vega:"),
                "{rendered}"
            );
        }
        assert!(s.url.expose().contains("hunter2"));
    }

    #[test]
    fn locality_of_hosts() {
        for (url, local) in [
            ("postgres://u@localhost/v", true),
            ("postgres://u@127.0.0.1:5432/v", true),
            ("postgres://u@[::1]/v", true),
            ("postgres:///v?host=/var/run/postgresql", true),
            ("postgres://u@db.prod.internal/v", false),
            ("postgres://u@10.0.0.5/v", false),
        ] {
            assert_eq!(
                DatabaseSettings::for_url(url).unwrap().is_local(),
                local,
                "{url}"
            );
        }
        assert!(
            DatabaseSettings::for_url("sqlite::memory:")
                .unwrap()
                .is_local()
        );
        assert_eq!(
            DatabaseSettings::for_url("sqlite::memory:")
                .unwrap()
                .sqlite_path(),
            None
        );
    }
}
