//! `vega-admin doctor` as a process: a healthy setup on each backend, and each failure it
//! diagnoses, against the real Postgres and the in-process S3 server.

use std::process::Command;

use sea_orm::ConnectionTrait;
use serde_json::Value;
use vega_migration::MigratorTrait;
use vega_tests::TestDb;
use vega_tests::s3::{BUCKET, S3Server};

/// Runs `vega-admin --json doctor` with only `vars` set among Vega's and AWS's variables.
fn doctor(vars: &[(&str, &str)]) -> (Option<i32>, Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vega-admin"));
    command.args(["--json", "doctor"]).env("RUST_LOG", "off");
    for (key, _) in std::env::vars() {
        if key.starts_with("VEGA_") || key.starts_with("AWS_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    let blobs = std::env::temp_dir().join(format!("vega-doctor-{}", uuid::Uuid::now_v7()));
    command.env("VEGA_BLOB_DIR", &blobs);
    command.envs(vars.iter().copied());
    let out = command.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(blobs);
    (out.status.code(), report)
}

/// The verdict of check `name`, and its detail and fix joined, for assertions.
fn check<'a>(report: &'a Value, name: &str) -> (&'a str, String) {
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"));
    let text = format!(
        "{} {}",
        check["detail"].as_str().unwrap_or_default(),
        check["fix"].as_str().unwrap_or_default()
    );
    (check["verdict"].as_str().unwrap(), text)
}

/// A migrated SQLite file the child process can open (an in-memory database is per process).
async fn sqlite_file() -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new();
    let url = format!("sqlite://{}/vega.sqlite3?mode=rwc", dir.0.display());
    let conn = sea_orm::Database::connect(&url).await.unwrap();
    vega_migration::Migrator::up(&conn, None).await.unwrap();
    conn.close().await.unwrap();
    (dir, url)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("vega-doctor-db-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn postgres(url: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("VEGA_PERSISTENCE_BACKEND", "postgres"),
        ("VEGA_DATABASE_URL", url),
    ]
}

#[tokio::test]
async fn healthy_postgres_with_fs_blobs_passes_every_check() {
    let db = TestDb::postgres().await;
    let (code, report) = doctor(&postgres(db.url()));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    for name in [
        "settings",
        "tcp",
        "connect",
        "pooler",
        "migrations",
        "fk-indexes",
        "partitions",
        "timeouts",
        "reader",
        "blobs",
    ] {
        assert_eq!(check(&report, name).0, "pass", "{name}: {report:#}");
    }
    let (_, timeouts) = check(&report, "timeouts");
    assert!(timeouts.contains("statement_timeout 30s"), "{timeouts}");
    let (_, settings) = check(&report, "settings");
    assert!(
        settings.contains("from VEGA_PERSISTENCE_BACKEND"),
        "{settings}"
    );
}

/// Next month's partition of `events` missing (`maintain` has not run): the partitions check
/// fails, says appends fail when the month turns, and names the job that creates it.
#[tokio::test]
async fn a_missing_month_of_events_is_named_with_the_job_that_creates_it() {
    let db = TestDb::postgres().await;
    let next = (chrono::Utc::now() + chrono::Months::new(1))
        .format("events_%Y_%m")
        .to_string();
    db.conn()
        .execute_unprepared(&format!(
            "ALTER TABLE events DETACH PARTITION {next}; DROP TABLE {next}"
        ))
        .await
        .unwrap();
    let (code, report) = doctor(&postgres(db.url()));
    assert_eq!(code, Some(1), "{report:#}");
    let (verdict, text) = check(&report, "partitions");
    assert_eq!(verdict, "fail", "{report:#}");
    assert!(text.contains(&format!("{next} is missing")), "{text}");
    assert!(text.contains("fail when the month turns"), "{text}");
    assert!(text.contains("vega-admin maintain"), "{text}");
    assert_eq!(check(&report, "migrations").0, "pass");
}

/// A "replica" that is a writer (the URL points at the primary): the reader check fails and
/// says what to point it at; every other check passes, and the application would read from
/// the writer.
#[tokio::test]
async fn a_reader_that_is_not_a_replica_is_named() {
    let db = TestDb::postgres().await;
    let mut vars = postgres(db.url());
    vars.push(("VEGA_DATABASE_READER_URL", db.url()));
    let (code, report) = doctor(&vars);
    assert_eq!(code, Some(1), "{report:#}");
    let (verdict, text) = check(&report, "reader");
    assert_eq!(verdict, "fail", "{report:#}");
    assert!(text.contains("not in recovery"), "{text}");
    assert!(text.contains("VEGA_DATABASE_READER_URL"), "{text}");
    assert_eq!(check(&report, "timeouts").0, "pass", "{report:#}");
}

// Multi-threaded: the S3 server runs on this runtime while the test blocks on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_sqlite_with_s3_blobs_passes_every_check() {
    let (_dir, url) = sqlite_file().await;
    let s3 = S3Server::start().await;
    let env = s3.aws_env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend([
        ("VEGA_DATABASE_URL", url.as_str()),
        ("VEGA_BLOB_BACKEND", "s3"),
        ("VEGA_S3_BUCKET", BUCKET),
    ]);
    let (code, report) = doctor(&vars);
    assert_eq!(code, Some(0), "{report:#}");
    let (_, blobs) = check(&report, "blobs");
    assert!(blobs.contains("s3://vega-test"), "{blobs}");
    // The probe cleaned up after itself.
    assert!(walk(s3.root()).iter().all(|p| !p.contains("_doctor")));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path.display().to_string()]
            }
        })
        .collect()
}

#[tokio::test]
async fn stopped_postgres_fails_tcp_with_the_pg_isready_hint_and_skips_the_rest() {
    // A port nobody listens on is what a stopped server looks like to a client.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://vega:hunter2@127.0.0.1:{port}/vega");
    let (code, report) = doctor(&postgres(&url));
    assert_eq!(code, Some(1));
    let (verdict, text) = check(&report, "tcp");
    assert_eq!(verdict, "fail");
    assert!(
        text.contains(&format!("pg_isready -h 127.0.0.1 -p {port}")),
        "{text}"
    );
    assert!(text.contains("security group"), "{text}");
    for name in ["connect", "migrations", "fk-indexes", "partitions"] {
        assert_eq!(check(&report, name).0, "skip", "{name}");
    }
    // The blob store does not depend on the database.
    assert_eq!(check(&report, "blobs").0, "pass");
    assert!(!report.to_string().contains("hunter2"));
}

#[tokio::test]
async fn wrong_database_in_the_url_fails_connect() {
    let db = TestDb::postgres().await;
    let url = db.url().rsplit_once('/').unwrap().0.to_owned() + "/no_such_database";
    let (code, report) = doctor(&postgres(&url));
    assert_eq!(code, Some(1));
    assert_eq!(check(&report, "tcp").0, "pass");
    let (verdict, text) = check(&report, "connect");
    assert_eq!(verdict, "fail");
    assert!(text.contains("no_such_database"), "{text}");
    assert_eq!(check(&report, "migrations").0, "skip");
}

#[tokio::test]
async fn invalid_settings_fail_first_and_name_the_variable() {
    let (code, report) = doctor(&[("VEGA_PERSISTENCE_BACKEND", "json")]);
    assert_eq!(code, Some(1));
    let (verdict, text) = check(&report, "settings");
    assert_eq!(verdict, "fail");
    assert!(text.contains("VEGA_PERSISTENCE_BACKEND"), "{text}");
    assert_eq!(check(&report, "blobs").0, "skip");
}

#[tokio::test]
async fn pending_migrations_are_listed_with_the_command_that_applies_them() {
    let db = TestDb::postgres_empty().await;
    let (code, report) = doctor(&postgres(db.url()));
    assert_eq!(code, Some(1));
    let (verdict, text) = check(&report, "migrations");
    assert_eq!(verdict, "fail");
    let pending = vega_migration::status::known_versions().len();
    assert!(
        text.contains(&format!("0 applied, {pending} pending")),
        "{text}"
    );
    assert!(
        text.contains("m20261123_000001_accounts_and_projects"),
        "{text}"
    );
    assert!(
        text.contains("vega-migrate up") && text.contains("run-migrations.sh"),
        "{text}"
    );
}

#[tokio::test]
async fn foreign_key_without_a_leading_index_is_named() {
    let db = TestDb::postgres().await;
    only_the_dropped_index_is_reported(db.url(), &postgres(db.url())).await;
}

#[tokio::test]
async fn foreign_key_without_a_leading_index_is_named_on_sqlite_too() {
    let (_dir, url) = sqlite_file().await;
    only_the_dropped_index_is_reported(&url, &[("VEGA_DATABASE_URL", url.as_str())]).await;
}

/// Drops the one full index on findings.project_id (a partial one remains, which cannot serve
/// a parent's delete) and expects doctor to name exactly that key and nothing else.
async fn only_the_dropped_index_is_reported(url: &str, vars: &[(&str, &str)]) {
    let conn = sea_orm::Database::connect(url).await.unwrap();
    conn.execute_unprepared("DROP INDEX findings_project_idx")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (code, report) = doctor(vars);
    assert_eq!(code, Some(1));
    let (verdict, text) = check(&report, "fk-indexes");
    assert_eq!(verdict, "fail");
    assert!(text.contains("findings(project_id) -> projects"), "{text}");
    assert!(
        !text.contains("scans("),
        "only the dropped index is reported: {text}"
    );
    assert_eq!(check(&report, "migrations").0, "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_and_stopped_s3_fail_the_blob_check() {
    let db = TestDb::postgres().await;
    let s3 = S3Server::start().await;
    let env = s3.aws_env();
    let mut vars: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| match *k {
            "AWS_SECRET_ACCESS_KEY" => (*k, "not-the-secret"),
            _ => (*k, v.as_str()),
        })
        .collect();
    vars.extend(postgres(db.url()));
    vars.extend([("VEGA_BLOB_BACKEND", "s3"), ("VEGA_S3_BUCKET", BUCKET)]);
    let (code, report) = doctor(&vars);
    assert_eq!(code, Some(1));
    let (verdict, text) = check(&report, "blobs");
    assert_eq!(verdict, "fail");
    assert!(
        text.contains("cannot write") && text.contains("credentials"),
        "{text}"
    );
    assert_eq!(check(&report, "connect").0, "pass");

    s3.stop();
    let vars: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(postgres(db.url()))
        .chain([("VEGA_BLOB_BACKEND", "s3"), ("VEGA_S3_BUCKET", BUCKET)])
        .collect();
    let (code, report) = doctor(&vars);
    assert_eq!(code, Some(1));
    let (verdict, text) = check(&report, "blobs");
    assert_eq!(verdict, "fail", "{report:#}");
    assert!(text.contains("AWS_ENDPOINT_URL"), "{text}");
}

/// Behind PgBouncer in transaction mode: told nothing, doctor finds the pooler and names the
/// setting; told the mode, every check passes and the timeouts are the server's own reading.
#[tokio::test]
async fn a_pooler_in_the_path_is_found_and_its_mode_checked() {
    use vega_tests::pgbouncer::{PgBouncer, PoolMode};
    let db = TestDb::postgres().await;
    let upstream = url::Url::parse(db.url()).unwrap();
    let name = upstream.path().trim_start_matches('/').to_owned();
    let bouncer = PgBouncer::start(upstream.port().unwrap_or(5432), PoolMode::Transaction, 2);
    let url = bouncer.url(&name);

    let (code, report) = doctor(&postgres(&url));
    assert_eq!(code, Some(1), "{report:#}");
    let (verdict, pooler) = check(&report, "pooler");
    assert_eq!(verdict, "fail", "{report:#}");
    assert!(pooler.contains("VEGA_DB_POOLER"), "{pooler}");

    let mut vars = postgres(&url);
    vars.push(("VEGA_DB_POOLER", "transaction"));
    vars.push(("VEGA_DB_LOCK_TIMEOUT", "4s"));
    let (code, report) = doctor(&vars);
    assert_eq!(code, Some(0), "{report:#}");
    let (_, timeouts) = check(&report, "timeouts");
    assert!(timeouts.contains("lock_timeout 4s"), "{timeouts}");
}
