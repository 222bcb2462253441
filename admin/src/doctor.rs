//! `vega-admin doctor`: the debugging checklist, run in order, one verdict per check.
//!
//! Each check depends on the ones before it (no connection means no migration status), so a
//! failure turns the checks after it that need it into skips rather than a cascade of errors
//! that all say the same thing. Nothing here writes to the database; the blob probe writes one
//! small object under `_doctor/` and deletes it.

use std::fmt::Write as _;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use vega_blobstore::{BlobStore, ObjectKey};
use vega_config::{Backend, ConnectError, DatabaseSettings, Settings};
use vega_migration::catalog;
use vega_migration::status::SchemaStatus;

/// The checks that need a database connection, in the order they run.
const CONNECTED: &[&str] = &[
    "pooler",
    "migrations",
    "fk-indexes",
    "partitions",
    "timeouts",
    "reader",
];

/// How long one network step (TCP connect, a blob request) may take before it is a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed; `fix` says what to do.
    Fail,
    /// Not run because a check it needs failed.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short, stable name (`settings`, `tcp`, `connect`, `pooler`, `migrations`, `fk-indexes`,
    /// `timeouts`, `reader`, `blobs`).
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check, in the order run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when every check passed.
    pub ok: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// The human form: one line per check, the fix indented under a failure.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let verdict = match check.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            let _ = writeln!(out, "{verdict} {:<11} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                let _ = writeln!(out, "     {:<11} fix: {fix}", "");
            }
        }
        let count = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        let _ = write!(
            out,
            "{} passed, {} failed, {} skipped",
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Skip)
        );
        out
    }
}

struct Checks(Vec<Check>);

impl Checks {
    fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Verdict::Pass, detail.into(), None);
    }

    fn fail(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Verdict::Fail, detail.into(), Some(fix.into()));
    }

    fn skip(&mut self, names: &[&'static str], because: &str) {
        for name in names {
            self.push(name, Verdict::Skip, format!("not run: {because}"), None);
        }
    }

    fn push(&mut self, name: &'static str, verdict: Verdict, detail: String, fix: Option<String>) {
        self.0.push(Check {
            name,
            verdict,
            detail,
            fix,
        });
    }
}

/// Runs every check against `settings`; a settings error is itself the first, failed check.
pub async fn run(settings: Result<Settings, vega_config::ConfigError>) -> Report {
    let mut checks = Checks(Vec::new());
    let settings = match settings {
        Ok(settings) => settings,
        Err(err) => {
            checks.fail(
                "settings",
                err.to_string(),
                "correct the variable named above; see the README's Configuration section",
            );
            checks.skip(
                &[&["tcp", "connect"], CONNECTED, &["blobs"]].concat(),
                "the settings are invalid",
            );
            return finish(checks);
        }
    };
    let db = &settings.database;
    checks.pass(
        "settings",
        format!(
            "backend {} ({}); database {} (URL {}); blobs {}",
            db.backend,
            db.backend_source,
            db.target(),
            db.url_source,
            describe_blobs(&settings.blob),
        ),
    );

    // Behind a transaction-mode pooler, every transaction starts as the application's do
    // (clearing prepared statements other clients left on the server connection).
    let preamble = db.transaction_preamble(&settings.pool);
    match database_checks(db, preamble.as_deref(), &mut checks).await {
        Some(conn) => {
            // One transaction, so that a transaction-mode pooler keeps the checks on one
            // server connection.
            match begin(&conn, preamble.as_deref()).await {
                Ok(txn) => {
                    pooler_check(db, &txn, &mut checks).await;
                    migration_check(&txn, &mut checks).await;
                    foreign_key_check(&txn, &mut checks).await;
                    partitions_check(&txn, &mut checks).await;
                    let _ = txn.rollback().await;
                }
                Err(err) => {
                    checks.fail("pooler", err.to_string(), db.connection_hint());
                    checks.skip(
                        &["migrations", "fk-indexes", "partitions"],
                        "no transaction could be opened",
                    );
                }
            }
            let _ = conn.close().await;
            timeouts_check(&settings, &mut checks).await;
            reader_check(&settings, &mut checks).await;
        }
        None => checks.skip(CONNECTED, "no database connection"),
    }
    blob_check(&settings, &mut checks).await;
    finish(checks)
}

fn finish(checks: Checks) -> Report {
    Report {
        ok: checks.0.iter().all(|c| c.verdict == Verdict::Pass),
        checks: checks.0,
    }
}

fn describe_blobs(blob: &vega_config::BlobSettings) -> String {
    match blob {
        vega_config::BlobSettings::Fs { root, root_source } => {
            format!("fs:{} ({root_source})", root.display())
        }
        vega_config::BlobSettings::S3 { bucket, prefix, .. } => match prefix {
            Some(prefix) => format!("s3://{bucket}/{prefix}"),
            None => format!("s3://{bucket}"),
        },
    }
}

/// The `pg_isready` question, then a real connection. Returns the connection when both pass.
async fn database_checks(
    db: &DatabaseSettings,
    preamble: Option<&str>,
    checks: &mut Checks,
) -> Option<DatabaseConnection> {
    match (db.backend, db.host(), db.port()) {
        (Backend::Postgres, Some(host), Some(port)) => {
            let dial = tokio::net::TcpStream::connect((host.as_str(), port));
            match tokio::time::timeout(STEP_TIMEOUT, dial).await {
                Ok(Ok(_)) => checks.pass("tcp", format!("{host}:{port} accepts connections")),
                Ok(Err(err)) => {
                    checks.fail(
                        "tcp",
                        format!("cannot reach {host}:{port}: {err}"),
                        db.connection_hint(),
                    );
                    checks.skip(&["connect"], "the database is not reachable");
                    return None;
                }
                Err(_) => {
                    checks.fail(
                        "tcp",
                        format!("no answer from {host}:{port} in {STEP_TIMEOUT:?}"),
                        format!(
                            "a silent timeout is usually a firewall: in AWS, allow the task's \
                             security group into the database's on {port}"
                        ),
                    );
                    checks.skip(&["connect"], "the database is not reachable");
                    return None;
                }
            }
        }
        (Backend::Postgres, _, _) => checks.pass("tcp", "Unix socket; tested by connecting"),
        (Backend::Sqlite, _, _) => checks.pass("tcp", "embedded SQLite; no network"),
    }

    let mut options = db.connect_options();
    options
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(STEP_TIMEOUT);
    if db.backend == Backend::Postgres {
        db.apply_session_settings(&mut options, Vec::new(), false, |o| o);
    }
    match db.connect(options).await {
        Ok(conn) => {
            let version = server_version(&conn, preamble).await.unwrap_or_default();
            checks.pass("connect", format!("connected to {} {version}", db.target()));
            Some(conn)
        }
        Err(ConnectError::Connect { source, hint, .. }) => {
            checks.fail("connect", source.to_string(), hint);
            None
        }
        Err(err) => {
            checks.fail("connect", err.to_string(), "make the directory writable");
            None
        }
    }
}

/// Opens a transaction, sending `preamble` first when the pooler needs one.
async fn begin(
    conn: &DatabaseConnection,
    preamble: Option<&str>,
) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    let txn = conn.begin().await?;
    if let Some(preamble) = preamble {
        txn.execute_unprepared(preamble).await?;
    }
    Ok(txn)
}

async fn server_version(
    conn: &DatabaseConnection,
    preamble: Option<&str>,
) -> Result<String, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT current_setting('server_version') AS v",
        _ => "SELECT sqlite_version() AS v",
    };
    // In a transaction, as every statement behind a transaction-mode pooler must be.
    let txn = begin(conn, preamble).await?;
    let row = txn
        .query_one_raw(Statement::from_string(backend, sql))
        .await?;
    txn.rollback().await?;
    Ok(row
        .map(|r| r.try_get::<String>("", "v"))
        .transpose()?
        .map(|v| format!("(server {v})"))
        .unwrap_or_default())
}

/// Whether a pooler or proxy answers in front of Postgres (the server listens on another port
/// than the URL dials), and whether `VEGA_DB_POOLER` says so.
async fn pooler_check(db: &DatabaseSettings, conn: &impl ConnectionTrait, checks: &mut Checks) {
    if db.backend != Backend::Postgres {
        checks.pass("pooler", "embedded SQLite; no pooler");
        return;
    }
    let sql = "SELECT coalesce(inet_server_port()::text, '') AS port";
    let row = conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await;
    let server_port = match row {
        Ok(Some(row)) => row.try_get::<String>("", "port").unwrap_or_default(),
        Ok(None) => String::new(),
        Err(err) => {
            let hint = db
                .pooler_hint(&err.to_string())
                .unwrap_or_else(|| db.connection_hint());
            checks.fail("pooler", err.to_string(), hint);
            return;
        }
    };
    let url_port = db.port().unwrap_or(5432).to_string();
    let seen = !server_port.is_empty() && server_port != url_port;
    let mode = format!("VEGA_DB_POOLER={}", db.pooler);
    match (seen, db.pooler) {
        (true, vega_config::Pooler::None) => checks.fail(
            "pooler",
            format!(
                "a pooler or proxy answers on {url_port}; the server behind it listens on \
                 {server_port}, and {mode}"
            ),
            "set VEGA_DB_POOLER to its pool mode (`session` or `transaction`): the application \
             sends its timeouts in startup options, which PgBouncer and RDS Proxy refuse",
        ),
        (true, _) => checks.pass(
            "pooler",
            format!("a pooler answers on {url_port} for the server on {server_port}; {mode}"),
        ),
        (false, _) => checks.pass(
            "pooler",
            format!(
                "the server answers on the URL's port {url_port} (a proxy on the same port, \
                 such as RDS Proxy, cannot be told apart); {mode}"
            ),
        ),
    }
}

/// The timeouts the server applies to the application's statements, read back through the
/// application's own pool, against the `VEGA_DB_*` settings.
/// The read replica as the application's store sees it once its monitor has probed it:
/// reachable, in recovery, and lagging less than `VEGA_DB_READER_MAX_LAG`.
async fn reader_check(settings: &Settings, checks: &mut Checks) {
    use vega_repository::ReplicaState;
    let Some(reader) = &settings.reader else {
        let detail = match settings.database.backend {
            Backend::Sqlite => "SQLite: read-only connections on the same file",
            Backend::Postgres => "none configured: every read goes to the writer",
        };
        return checks.pass("reader", detail);
    };
    let first_probe = settings.pool.probe_timeout * 2 + Duration::from_secs(1);
    let read = async {
        let store = vega_repository::Store::connect(settings).await?;
        let started = std::time::Instant::now();
        loop {
            let status = store.reader_status();
            let probed = status.is_some_and(|s| s.state != ReplicaState::Down);
            if probed || started.elapsed() >= first_probe {
                return Ok::<_, vega_repository::Error>(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let status = match tokio::time::timeout(STEP_TIMEOUT, read).await {
        Ok(Ok(Some(status))) => status,
        Ok(Ok(None)) => return checks.pass("reader", "none"),
        Ok(Err(err)) => {
            return checks.skip(&["reader"], &format!("the application's store: {err}"));
        }
        Err(_) => {
            return checks.fail(
                "reader",
                format!("no answer in {STEP_TIMEOUT:?}"),
                settings.database.connection_hint(),
            );
        }
    };
    let target = reader.target();
    let lag = humantime::format_duration(status.lag);
    match status.state {
        ReplicaState::Serving => checks.pass(
            "reader",
            format!(
                "{target}: {:?} replica in recovery, {lag} behind",
                status.kind
            ),
        ),
        ReplicaState::Down => checks.fail(
            "reader",
            format!("{target}: no answer to the replica probe"),
            format!(
                "check VEGA_DATABASE_READER_URL (or _HOST) and that the replica admits this \
                 host; until then every read goes to the writer. {}",
                reader.connection_hint()
            ),
        ),
        ReplicaState::Lagging => checks.fail(
            "reader",
            format!(
                "{target}: {lag} behind the writer, past VEGA_DB_READER_MAX_LAG ({})",
                humantime::format_duration(settings.pool.reader_max_lag)
            ),
            "reads go to the writer until it catches up; check the replica's load and \
             replication",
        ),
        ReplicaState::NotReplica => checks.fail(
            "reader",
            format!("{target}: not in recovery, so not a replica"),
            "point VEGA_DATABASE_READER_URL at a read replica or the reader endpoint; a \
             promoted replica is a writer now",
        ),
    }
}

async fn timeouts_check(settings: &Settings, checks: &mut Checks) {
    if settings.database.backend != Backend::Postgres {
        checks.pass(
            "timeouts",
            format!(
                "SQLite: a write waits up to {} for the one writer",
                humantime::format_duration(settings.pool.sqlite_write_wait())
            ),
        );
        return;
    }
    let read = async {
        let store = vega_repository::Store::connect(settings).await?;
        store.server_timeouts().await
    };
    let seen = match tokio::time::timeout(STEP_TIMEOUT, read).await {
        Ok(Ok(Some(seen))) => seen,
        Ok(Ok(None)) => return checks.pass("timeouts", "no server-side timeouts"),
        Ok(Err(err)) => {
            return checks.skip(&["timeouts"], &format!("the application's store: {err}"));
        }
        Err(_) => {
            return checks.fail(
                "timeouts",
                format!("no answer in {STEP_TIMEOUT:?}"),
                settings.database.connection_hint(),
            );
        }
    };
    let wanted = vega_repository::ServerTimeouts::wanted(&settings.pool);
    let show = |t: &vega_repository::ServerTimeouts| {
        format!(
            "statement_timeout {}, lock_timeout {}, idle_in_transaction_session_timeout {}",
            humantime::format_duration(t.statement),
            humantime::format_duration(t.lock),
            humantime::format_duration(t.idle_in_transaction),
        )
    };
    if seen == wanted {
        checks.pass(
            "timeouts",
            format!("as the server sees them: {}", show(&seen)),
        );
    } else {
        checks.fail(
            "timeouts",
            format!(
                "the server sees {}; the settings ask for {}",
                show(&seen),
                show(&wanted)
            ),
            "behind a pooler, set VEGA_DB_POOLER to its pool mode so the timeouts are sent as \
             SQL; a role or database default (ALTER ROLE ... SET) does not override them",
        );
    }
}

async fn migration_check(conn: &impl ConnectionTrait, checks: &mut Checks) {
    let status = match SchemaStatus::read(conn).await {
        Ok(status) => status,
        Err(err) => {
            checks.fail(
                "migrations",
                format!("cannot read schema_migrations: {err}"),
                "check that the database user may read schema_migrations",
            );
            return;
        }
    };
    if !status.unknown.is_empty() {
        checks.fail(
            "migrations",
            format!(
                "{} applied, {} pending, unknown to this build: {}",
                status.applied.len(),
                status.pending.len(),
                status.unknown.join(", ")
            ),
            "the database was migrated by a newer build; deploy that build (this one is older \
             than the schema)",
        );
    } else if !status.pending.is_empty() {
        checks.fail(
            "migrations",
            format!(
                "{} applied, {} pending: {}",
                status.applied.len(),
                status.pending.len(),
                status.pending.join(", ")
            ),
            "run `vega-migrate up` (locally) or `scripts/aws/run-migrations.sh <env>` (AWS) \
             before deploying code that needs them",
        );
    } else {
        checks.pass(
            "migrations",
            format!("{} applied, none pending", status.applied.len()),
        );
    }
}

async fn foreign_key_check(conn: &impl ConnectionTrait, checks: &mut Checks) {
    let read = async {
        Ok::<_, DbErr>((
            catalog::foreign_keys(conn).await?,
            catalog::full_indexes(conn).await?,
        ))
    };
    let (fks, indexes) = match read.await {
        Ok(found) => found,
        Err(err) => {
            checks.fail(
                "fk-indexes",
                format!("cannot read the catalog: {err}"),
                "check that the database user may read the system catalog",
            );
            return;
        }
    };
    let missing: Vec<String> = fks
        .iter()
        .filter(|fk| !indexes.iter().any(|index| fk.is_led_by(index)))
        .map(|fk| format!("{}({}) -> {}", fk.table, fk.columns.join(", "), fk.parent))
        .collect();
    if missing.is_empty() {
        checks.pass(
            "fk-indexes",
            format!("all {} foreign keys have a leading index", fks.len()),
        );
    } else {
        checks.fail(
            "fk-indexes",
            format!(
                "foreign keys without a leading index: {}",
                missing.join("; ")
            ),
            "add an index whose leading columns are the key's in a new migration (on a live \
             Postgres, CREATE INDEX CONCURRENTLY in a migration without a transaction); \
             without one, joins and every delete of a parent row scan the child table",
        );
    }
}

/// The monthly partitions of `events` (Postgres): this month's and the next must be there,
/// or event appends, and so every audited write, fail now or when the month turns.
async fn partitions_check(conn: &impl ConnectionTrait, checks: &mut Checks) {
    if conn.get_database_backend() != DbBackend::Postgres {
        checks.pass("partitions", "SQLite keeps one events table");
        return;
    }
    let sql = "SELECT c.relname::text AS name, p.relkind::text AS kind \
                 FROM pg_class p \
                 LEFT JOIN pg_inherits i ON i.inhparent = p.oid AND NOT i.inhdetachpending \
                 LEFT JOIN pg_class c ON c.oid = i.inhrelid \
                WHERE p.oid = to_regclass('events')";
    let rows = match conn
        .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
    {
        Ok(rows) => rows,
        Err(err) => {
            checks.fail(
                "partitions",
                format!("cannot read the catalog: {err}"),
                "check that the database user may read the system catalog",
            );
            return;
        }
    };
    if rows
        .iter()
        .any(|r| r.try_get::<String>("", "kind").is_ok_and(|k| k != "p"))
    {
        checks.pass(
            "partitions",
            "events is one table (m20261206_000016_events_by_month not applied)",
        );
        return;
    }
    let names: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<Option<String>>("", "name").ok().flatten())
        .collect();
    let month = |ahead: u32| {
        (chrono::Utc::now() + chrono::Months::new(ahead))
            .format("events_%Y_%m")
            .to_string()
    };
    let ready = (0..120).take_while(|k| names.contains(&month(*k))).count();
    if ready >= 2 {
        checks.pass(
            "partitions",
            format!(
                "{ready} months ready from this one ({} to {})",
                month(0),
                month(u32::try_from(ready - 1).unwrap_or_default())
            ),
        );
    } else {
        checks.fail(
            "partitions",
            format!(
                "{} is missing: event appends {}",
                month(u32::try_from(ready).unwrap_or_default()),
                if ready == 0 {
                    "fail now"
                } else {
                    "fail when the month turns"
                }
            ),
            "run `vega-admin maintain` (its partitions job keeps three months ready), or \
             `vega-admin maintain --once` now",
        );
    }
}

/// Writes, reads back and deletes one small object under `_doctor/`.
async fn blob_check(settings: &Settings, checks: &mut Checks) {
    let fix = match &settings.blob {
        vega_config::BlobSettings::Fs { root, .. } => format!(
            "make {} writable by this user, or set VEGA_BLOB_DIR",
            root.display()
        ),
        vega_config::BlobSettings::S3 { bucket, .. } => format!(
            "check that bucket {bucket} exists in the configured region (AWS_REGION), that \
             AWS_ENDPOINT_URL is unset or right, and that the credentials allow s3:PutObject, \
             s3:GetObject and s3:DeleteObject on it"
        ),
    };
    match tokio::time::timeout(STEP_TIMEOUT * 3, probe(settings)).await {
        Ok(Ok(description)) => checks.pass("blobs", description),
        Ok(Err(err)) => checks.fail("blobs", err, fix),
        Err(_) => checks.fail("blobs", format!("no answer in {:?}", STEP_TIMEOUT * 3), fix),
    }
}

async fn probe(settings: &Settings) -> Result<String, String> {
    let store = BlobStore::from_settings(&settings.blob)
        .await
        .map_err(|e| format!("cannot open the blob store: {e}"))?;
    let where_ = store.describe();
    let key = ObjectKey::parse(format!("_doctor/{}.probe", uuid::Uuid::now_v7()))
        .map_err(|e| e.to_string())?;
    let body = format!("vega doctor probe {key}");
    let stored = store
        .put_reader(&key, body.as_bytes(), "text/plain")
        .await
        .map_err(|e| format!("cannot write {key} to {where_}: {e}"))?;
    let read = async {
        let mut reader = store.get(&key, stored.sha256, Some(stored.size)).await?;
        let mut back = Vec::new();
        reader.read_to_end(&mut back).await?;
        Ok::<_, vega_blobstore::BlobError>(back)
    }
    .await;
    // Delete whatever the read did, so a failing store is not left with probe objects.
    let deleted = store.delete(&key).await;
    let back = read.map_err(|e| format!("wrote {key} to {where_} but cannot read it back: {e}"))?;
    if back != body.as_bytes() {
        return Err(format!("{key} in {where_} read back different bytes"));
    }
    deleted.map_err(|e| format!("cannot delete {key} from {where_}: {e}"))?;
    Ok(format!("{where_}: wrote, read back and deleted {key}"))
}
