//! `vega-migrate` as a process, against a real Postgres database and a SQLite file.

// Test helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use vega_migration::lock::LOCK_KEY;
use vega_migration::status::known_versions;
use vega_tests::TestDb;

fn migrate(url: &str, args: &[&str]) -> Output {
    migrate_through(url, "none", args)
}

/// `vega-migrate` with `VEGA_DB_POOLER` set to `pooler`.
fn migrate_through(url: &str, pooler: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vega-migrate"))
        .arg("--database-url")
        .arg(url)
        .args(args)
        .env_remove("VEGA_PERSISTENCE_BACKEND")
        .env_remove("VEGA_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("VEGA_DB_POOLER", pooler)
        .output()
        .expect("run vega-migrate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// The whole lifecycle: check and status on an empty database, up, check, down to zero, up.
fn lifecycle(url: &str) {
    let versions = known_versions();

    let out = migrate(url, &["check"]);
    assert_exit(&out, 3);
    for v in &versions {
        assert!(stdout(&out).contains(v.as_str()), "{}", stdout(&out));
    }
    let out = migrate(url, &["status"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).matches("pending").count(), versions.len());

    let out = migrate(url, &["up"]);
    assert_exit(&out, 0);
    for v in &versions {
        assert!(
            stdout(&out).contains(&format!("applied {v} in ")),
            "{}",
            stdout(&out)
        );
    }
    assert_exit(&migrate(url, &["check"]), 0);
    let out = migrate(url, &["up"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));

    let out = migrate(url, &["down", "-n", "2"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains(&format!("rolled back {}", versions[versions.len() - 1])));
    let out = migrate(url, &["check"]);
    assert_exit(&out, 3);
    assert!(stdout(&out).starts_with("2 pending"), "{}", stdout(&out));

    let n = versions.len().to_string();
    assert_exit(&migrate(url, &["down", "-n", &n]), 0);
    assert_exit(&migrate(url, &["check"]), 3);
    assert_exit(&migrate(url, &["up", "-n", "1"]), 0);
    assert_exit(&migrate(url, &["up"]), 0);
    assert_exit(&migrate(url, &["check"]), 0);
}

#[tokio::test]
async fn lifecycle_on_postgres() {
    let db = TestDb::postgres_empty().await;
    lifecycle(db.url());
}

#[test]
fn lifecycle_on_sqlite() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lifecycle-{}", std::process::id()));
    let url = format!("sqlite://{}/vega.sqlite3?mode=rwc", dir.display());
    lifecycle(&url);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn status_and_check_write_nothing() {
    let db = TestDb::postgres_empty().await;
    assert_exit(&migrate(db.url(), &["status"]), 0);
    assert_exit(&migrate(db.url(), &["check"]), 3);
    let tables = db
        .conn()
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        ))
        .await
        .unwrap();
    assert!(
        tables.is_empty(),
        "status/check created {} tables",
        tables.len()
    );
}

#[tokio::test]
async fn concurrent_runners_apply_each_migration_once() {
    let db = TestDb::postgres_empty().await;
    let runners: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_vega-migrate"))
                .args(["--database-url", db.url(), "up"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for runner in runners {
        let out = runner.wait_with_output().unwrap();
        assert_exit(&out, 0);
        applied += stdout(&out).matches("applied m").count();
    }
    assert_eq!(
        applied,
        known_versions().len(),
        "each migration applied by exactly one runner"
    );

    let rows = db
        .conn()
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY version",
        ))
        .await
        .unwrap();
    let recorded: Vec<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "version").unwrap(),
                r.try_get("", "n").unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = known_versions().into_iter().map(|v| (v, 1)).collect();
    assert_eq!(recorded, expected);

    let single = TestDb::postgres().await;
    assert_eq!(schema_of(db.conn()).await, schema_of(single.conn()).await);
}

#[tokio::test]
async fn unknown_versions_are_refused_with_their_own_exit_code() {
    let db = TestDb::postgres().await;
    db.conn()
        .execute_unprepared(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ('m29990101_000000_future', 0)",
        )
        .await
        .unwrap();
    for args in [&["check"][..], &["up"][..]] {
        let out = migrate(db.url(), args);
        assert_exit(&out, 4);
        assert!(
            stderr(&out).contains("m29990101_000000_future"),
            "{}",
            stderr(&out)
        );
    }
    let out = migrate(db.url(), &["status"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("unknown  m29990101_000000_future"));
}

#[test]
fn destructive_commands_refuse_remote_hosts() {
    for command in ["down", "fresh", "refresh", "reset"] {
        let out = migrate(
            "postgres://vega:hunter2@db.prod.invalid:5432/vega",
            &[command],
        );
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(
            err.contains("refusing") && err.contains("--allow-destructive"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[tokio::test]
async fn a_held_lock_makes_runners_wait_then_give_up() {
    let db = TestDb::postgres_empty().await;
    db.conn()
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_lock($1)",
            [LOCK_KEY.into()],
        ))
        .await
        .unwrap();
    let out = migrate(db.url(), &["up", "--lock-wait", "300ms"]);
    assert_exit(&out, 75);
    assert!(stderr(&out).contains("migration lock"), "{}", stderr(&out));
    assert_exit(&migrate(db.url(), &["check"]), 3);
}

#[test]
fn connection_failures_carry_the_checklist() {
    let out = migrate("postgres://vega:hunter2@127.0.0.1:1/vega", &["status"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("pg_isready -h 127.0.0.1 -p 1"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// Columns, constraints and indexes of the public schema, as comparable text.
async fn schema_of(db: &impl ConnectionTrait) -> Vec<String> {
    let sql = "
        SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
               || ' ' || coalesce(column_default, '') AS item
          FROM information_schema.columns WHERE table_schema = 'public'
        UNION ALL
        SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
        ORDER BY 1";
    db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("", "item").unwrap())
        .collect()
}

#[tokio::test]
async fn sql_previews_exactly_what_up_would_apply() {
    let previewed = TestDb::postgres_empty().await;
    assert_exit(&migrate(previewed.url(), &["up", "-n", "2"]), 0);
    let out = migrate(previewed.url(), &["sql"]);
    assert_exit(&out, 0);
    let script = stdout(&out);
    let versions = known_versions();
    assert!(
        !script.contains(&format!("-- {}\n", versions[1])),
        "{script}"
    );
    for v in &versions[2..] {
        assert!(script.contains(&format!("-- {v}\n")), "{script}");
    }
    // Previewing wrote nothing.
    assert_exit(&migrate(previewed.url(), &["check"]), 3);

    // The preview is runnable SQL that leaves the same schema as `up`.
    previewed.conn().execute_unprepared(&script).await.unwrap();
    assert_exit(&migrate(previewed.url(), &["check"]), 0);
    let migrated = TestDb::postgres().await;
    assert_eq!(
        schema_of(previewed.conn()).await,
        schema_of(migrated.conn()).await
    );
}

#[test]
fn sql_all_needs_no_database() {
    let out = migrate("postgres://vega@127.0.0.1:1/vega", &["sql", "--all"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("SET lock_timeout = '5s';"));
    assert_eq!(
        stdout(&out).matches("COMMIT;").count(),
        known_versions().len()
    );
}

/// Through Debian's PgBouncer as its users configure it: session mode migrates when told it
/// is there; told nothing, the refusal names the pooler and the setting; transaction mode is
/// refused before connecting, with the fix.
#[tokio::test]
async fn migrations_run_through_pgbouncer_in_session_mode() {
    use vega_tests::pgbouncer::{PgBouncer, PoolMode};
    let db = TestDb::postgres_empty().await;
    let upstream = url::Url::parse(db.url()).unwrap();
    let name = upstream.path().trim_start_matches('/').to_owned();
    let port = upstream.port().unwrap_or(5432);

    let session = PgBouncer::start(port, PoolMode::Session, 2);
    let out = migrate_through(&session.url(&name), "none", &["up"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("unsupported startup parameter"), "{err}");
    assert!(
        err.contains("VEGA_DB_POOLER") && !err.contains("pg_isready"),
        "{err}"
    );

    let out = migrate_through(&session.url(&name), "session", &["up"]);
    assert_exit(&out, 0);
    let out = migrate_through(&session.url(&name), "session", &["check"]);
    assert_exit(&out, 0);

    let transaction = PgBouncer::start(port, PoolMode::Transaction, 2);
    let out = migrate_through(&transaction.url(&name), "transaction", &["status"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("transaction-mode pool") && err.contains("VEGA_DB_POOLER=session"),
        "{err}"
    );
}
