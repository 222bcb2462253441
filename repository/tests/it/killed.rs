//! A process killed in the middle of a transaction leaves neither its rows nor its events, on
//! both engines: the test re-runs its own binary as the child, which opens a session
//! transaction, writes, says so, and waits to be killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use sea_orm::{ConnectionTrait, Statement};
use vega_migration::{Migrator, MigratorTrait};
use vega_repository::{NewProject, NewUser, Principal, Store};
use vega_tests::TestDb;

use crate::common;

const CHILD_URL: &str = "VEGA_KILLED_CHILD_URL";

/// The child: only when the parent sets `VEGA_KILLED_CHILD_URL`.
#[tokio::test]
async fn child_process() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let store = Store::connect(&common::settings(&url, Default::default()))
        .await
        .unwrap();
    let system = Principal::system("doomed");
    let tx = store.session(&system).begin().await.unwrap();
    let user = tx
        .users()
        .create(NewUser {
            email: "doomed@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await
        .unwrap();
    tx.projects()
        .create(NewProject {
            owner_id: user.id,
            name: "Doomed".into(),
            slug: "doomed".into(),
            description: None,
        })
        .await
        .unwrap();
    println!("READY");
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    tx.commit().await.unwrap();
}

/// Runs the child against `url`, kills it once it has written, and checks what is left.
async fn killed_mid_transaction(url: &str, check: &impl ConnectionTrait) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &common::test_name(module_path!(), "child_process"),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_URL, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("READY"))
    });
    assert!(ready.await.unwrap(), "the child never wrote");
    child.kill().unwrap();
    child.wait().unwrap();
    for table in ["users", "projects", "events"] {
        let row = check
            .query_one_raw(Statement::from_string(
                check.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0, "{table}");
    }
}

#[tokio::test]
async fn a_killed_process_leaves_no_rows_or_events_postgres() {
    let db = TestDb::postgres().await;
    killed_mid_transaction(db.url(), db.conn()).await;
}

#[tokio::test]
async fn a_killed_process_leaves_no_rows_or_events_sqlite() {
    let dir = std::env::temp_dir().join(format!("vega-killed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("vega.sqlite3").display());
    let conn = sea_orm::Database::connect(&url).await.unwrap();
    Migrator::up(&conn, None).await.unwrap();
    killed_mid_transaction(&url, &conn).await;
    conn.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
