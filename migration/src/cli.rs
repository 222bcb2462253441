//! The `vega-migrate` command line.
//!
//! Exit codes: 0 success; 1 failure; 2 bad arguments; [`EXIT_PENDING`] when `check` finds
//! pending migrations; [`EXIT_UNKNOWN`] when the database has versions this build does not
//! know; [`EXIT_LOCKED`] when another runner held the lock for the whole `--lock-wait`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sea_orm::{DatabaseConnection, DbBackend};
use vega_config::{DatabaseSettings, Settings};

use crate::lock::LockError;
use crate::runner::{self, Plan, RunError, Step};
use crate::status::SchemaStatus;

/// `check`: the database is behind this build.
pub const EXIT_PENDING: u8 = 3;
/// `check` or a migrating command: the database is ahead of this build.
pub const EXIT_UNKNOWN: u8 = 4;
/// Another runner held the migration lock for the whole wait (EX_TEMPFAIL: retry later).
pub const EXIT_LOCKED: u8 = 75;

/// Applies Vega's schema migrations to the configured database.
///
/// The database comes from VEGA_PERSISTENCE_BACKEND and VEGA_DATABASE_URL (then DATABASE_URL),
/// defaulting to the embedded SQLite file .vega/vega.sqlite3; --database-url overrides them.
#[derive(Debug, Parser)]
#[command(name = "vega-migrate", version)]
pub struct Cli {
    /// Database URL, instead of the environment's (postgres://... or sqlite://...).
    #[arg(short = 'u', long, global = true)]
    database_url: Option<String>,

    /// Postgres lock_timeout for each migration statement: a migration waiting this long for a
    /// table lock fails instead of queueing every other query behind it.
    #[arg(
        long,
        env = "VEGA_MIGRATE_LOCK_TIMEOUT",
        default_value = "5s",
        global = true
    )]
    lock_timeout: String,

    /// Postgres statement_timeout for each migration statement (0 disables it).
    #[arg(
        long,
        env = "VEGA_MIGRATE_STATEMENT_TIMEOUT",
        default_value = "15min",
        global = true
    )]
    statement_timeout: String,

    /// How long to wait for another vega-migrate holding the migration lock.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    lock_wait: Duration,

    /// Allow fresh, refresh, reset and down against a database that is not on this machine.
    #[arg(long, global = true)]
    allow_destructive: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations (the default command).
    Up {
        /// Apply only the first N pending migrations.
        #[arg(short = 'n', long = "num")]
        num: Option<u32>,
    },
    /// Roll back applied migrations, newest first.
    Down {
        /// How many to roll back.
        #[arg(short = 'n', long = "num", default_value_t = 1)]
        num: u32,
    },
    /// Show applied, pending and unknown migrations without writing to the database.
    Status,
    /// Exit 0 when the database is up to date, 3 with the pending versions when it is behind,
    /// 4 when it has versions this build does not know. Writes nothing (for deploy gates).
    Check,
    /// Print the SQL that `up` would run, without applying it: the pending migrations of the
    /// configured database, or with --all every migration (no database needed).
    Sql {
        /// Every migration, not only the pending ones; does not connect.
        #[arg(long)]
        all: bool,
        /// The SQL dialect (default: the configured backend's).
        #[arg(long, value_enum)]
        dialect: Option<Dialect>,
    },
    /// Drop every table in the schema, then apply all migrations.
    Fresh,
    /// Roll back all migrations, then apply them again.
    Refresh,
    /// Roll back all migrations and drop schema_migrations.
    Reset,
    /// Create a new migration file in the migration crate and register it.
    Generate {
        /// The migration's name, e.g. add_scan_labels (no hyphens).
        name: String,
        /// Timestamp the file in local time instead of UTC.
        #[arg(long)]
        local_time: bool,
        /// The migration crate's directory.
        #[arg(long, env = "MIGRATION_DIR", default_value = "./migration")]
        migration_dir: String,
    },
}

/// The SQL dialect `sql` renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dialect {
    Postgres,
    Sqlite,
}

/// Why the command failed, mapped to an exit code by [`CliError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad setting.
    #[error(transparent)]
    Config(#[from] vega_config::ConfigError),
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] vega_config::ConnectError),
    /// A destructive command against a remote database without `--allow-destructive`.
    #[error(
        "refusing to run `{command}` against {target}, which is not on this machine; \
         pass --allow-destructive if you mean it"
    )]
    Destructive {
        /// The command.
        command: &'static str,
        /// What it would have run against.
        target: String,
    },
    /// A migration run failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// `sql` could not render a migration.
    #[error(transparent)]
    Preview(#[from] crate::preview::PreviewError),
    /// `generate` failed.
    #[error("generate: {0}")]
    Generate(String),
    /// Migrations cannot run through a transaction-mode pooler.
    #[error(
        "VEGA_DB_POOLER=transaction: vega-migrate needs one server session for the whole run \
         (its advisory lock, and CREATE INDEX CONCURRENTLY outside a transaction), which a \
         transaction-mode pool does not give; point vega-migrate at Postgres itself or at a \
         session-mode pool (VEGA_DB_POOLER=session or none, with that URL)"
    )]
    TransactionPooler,
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Run(RunError::UnknownVersions { .. }) => EXIT_UNKNOWN,
            CliError::Run(RunError::Lock(LockError::Timeout { .. })) => EXIT_LOCKED,
            _ => 1,
        }
    }
}

impl Cli {
    /// Runs the parsed command, printing results on stdout and errors on stderr.
    pub async fn run(self) -> ExitCode {
        match self.execute().await {
            Ok(code) => ExitCode::from(code),
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(err.exit_code())
            }
        }
    }

    async fn execute(mut self) -> Result<u8, CliError> {
        let command = self.command.take().unwrap_or(Command::Up { num: None });
        if let Command::Generate {
            name,
            local_time,
            migration_dir,
        } = &command
        {
            sea_orm_cli::run_migrate_generate(migration_dir, name, !local_time)
                .map_err(|e| CliError::Generate(e.to_string()))?;
            return Ok(0);
        }

        let settings = match &self.database_url {
            Some(url) => DatabaseSettings {
                pooler: vega_config::Pooler::from_env()?,
                ..DatabaseSettings::for_url(url.clone())?
            },
            None => Settings::from_env()?.database,
        };
        settings.log_effective();
        let plan = match command {
            Command::Up { num } => Plan::Up(num),
            Command::Down { num } => Plan::Down(num),
            Command::Fresh => Plan::Fresh,
            Command::Refresh => Plan::Refresh,
            Command::Reset => Plan::Reset,
            Command::Status => return self.status(&settings).await,
            Command::Check => return self.check(&settings).await,
            Command::Sql { all, dialect } => return self.sql(&settings, all, dialect).await,
            Command::Generate { .. } => unreachable!("handled above"),
        };
        let destructive = match plan {
            Plan::Up(_) => None,
            Plan::Down(_) => Some("down"),
            Plan::Fresh => Some("fresh"),
            Plan::Refresh => Some("refresh"),
            Plan::Reset => Some("reset"),
        };
        if let Some(command) = destructive
            && !settings.is_local()
            && !self.allow_destructive
        {
            return Err(CliError::Destructive {
                command,
                target: settings.target(),
            });
        }

        let db = self.connect(&settings).await?;
        let verb = match plan {
            Plan::Up(_) => "applied",
            Plan::Down(_) => "rolled back",
            Plan::Fresh | Plan::Refresh | Plan::Reset => "ran",
        };
        let print = |step: &Step| {
            println!(
                "{verb} {} in {} ms",
                step.version,
                step.duration.as_millis()
            );
        };
        let steps = runner::run(&db, plan, self.lock_wait, print).await?;
        if steps.is_empty() {
            let status = SchemaStatus::read(&db).await.map_err(RunError::from)?;
            println!(
                "nothing to do: {} of {} migrations applied",
                status.applied.len(),
                status.applied.len() + status.pending.len()
            );
        }
        Ok(0)
    }

    async fn connect(&self, settings: &DatabaseSettings) -> Result<DatabaseConnection, CliError> {
        if settings.backend == vega_config::Backend::Postgres
            && settings.pooler == vega_config::Pooler::Transaction
        {
            return Err(CliError::TransactionPooler);
        }
        let mut options = settings.connect_options();
        // One session for the lock, one for the migrations.
        options.max_connections(2).min_connections(0);
        if settings.backend == vega_config::Backend::Postgres {
            settings.apply_session_settings(&mut options, self.session_settings(), false, |o| o);
        }
        Ok(settings.connect(options).await?)
    }

    /// The Postgres settings every migration session runs with.
    fn session_settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("lock_timeout", self.lock_timeout.clone()),
            ("statement_timeout", self.statement_timeout.clone()),
        ]
    }

    async fn sql(
        &self,
        settings: &DatabaseSettings,
        all: bool,
        dialect: Option<Dialect>,
    ) -> Result<u8, CliError> {
        let backend = match dialect {
            Some(Dialect::Postgres) => DbBackend::Postgres,
            Some(Dialect::Sqlite) => DbBackend::Sqlite,
            None => match settings.backend {
                vega_config::Backend::Postgres => DbBackend::Postgres,
                vega_config::Backend::Sqlite => DbBackend::Sqlite,
            },
        };
        let versions = if all {
            crate::status::known_versions()
        } else {
            self.known_status(settings).await?.pending
        };
        let session = match backend {
            DbBackend::Postgres => self
                .session_settings()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
            _ => Vec::new(),
        };
        let script = crate::preview::render(backend, &versions, session).await?;
        print!("{script}");
        Ok(0)
    }

    async fn status(&self, settings: &DatabaseSettings) -> Result<u8, CliError> {
        let db = self.connect(settings).await?;
        let status = SchemaStatus::read(&db).await.map_err(RunError::from)?;
        println!("{} ({})", settings.target(), backend_name(&db));
        for version in &status.applied {
            println!("  applied  {version}");
        }
        for version in &status.pending {
            println!("  pending  {version}");
        }
        for version in &status.unknown {
            println!("  unknown  {version}  (applied by a newer build)");
        }
        Ok(0)
    }

    /// The schema's status, refusing a database migrated by a newer build.
    async fn known_status(&self, settings: &DatabaseSettings) -> Result<SchemaStatus, CliError> {
        let db = self.connect(settings).await?;
        let status = SchemaStatus::read(&db).await.map_err(RunError::from)?;
        if !status.unknown.is_empty() {
            return Err(RunError::UnknownVersions {
                versions: status.unknown,
            }
            .into());
        }
        Ok(status)
    }

    async fn check(&self, settings: &DatabaseSettings) -> Result<u8, CliError> {
        let status = self.known_status(settings).await?;
        if status.pending.is_empty() {
            println!("up to date: {} migrations applied", status.applied.len());
            return Ok(0);
        }
        println!("{} pending migrations:", status.pending.len());
        for version in &status.pending {
            println!("  {version}");
        }
        Ok(EXIT_PENDING)
    }
}

fn backend_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Postgres => "postgres",
        DbBackend::Sqlite => "sqlite",
        _ => "other",
    }
}
