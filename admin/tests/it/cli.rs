//! `vega-admin` as a process against Postgres and a filesystem blob store.

use std::process::Command;

use sea_orm::ConnectionTrait;
use vega_tests::TestDb;

use crate::common;

#[tokio::test]
async fn gc_is_a_dry_run_unless_applied_and_audit_reports_by_exit_code() {
    let db = TestDb::postgres().await;
    let blobs = std::env::temp_dir().join(format!("vega-admin-{}", uuid::Uuid::new_v4()));
    let orphan = blobs.join("projects/p/scans/s/report.json");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"{}").unwrap();
    let admin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vega-admin"))
            .args(args)
            .env("VEGA_PERSISTENCE_BACKEND", "postgres")
            .env("VEGA_DATABASE_URL", db.url())
            .env("VEGA_BLOB_DIR", &blobs)
            .env_remove("VEGA_BLOB_BACKEND")
            .output()
            .unwrap()
    };

    let out = admin(&["gc", "--grace", "0s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("would remove"));
    assert!(orphan.exists());
    let out = admin(&["--json", "gc", "--grace", "0s", "--apply"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["orphans"], 1);
    assert!(!orphan.exists());

    assert_eq!(admin(&["audit"]).status.code(), Some(0));
    assert_eq!(admin(&["purge"]).status.code(), Some(0));
}

/// A migrated database a child process can open: the test's Postgres database, or a SQLite
/// file (an in-memory one dies with its connection).
async fn database(postgres: bool) -> (String, Option<TestDb>) {
    if postgres {
        let db = TestDb::postgres().await;
        return (db.url().to_owned(), Some(db));
    }
    let dir = std::env::temp_dir().join(format!("vega-admin-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/vega.sqlite3?mode=rwc", dir.display());
    let conn = sea_orm::Database::connect(&url).await.unwrap();
    <vega_migration::Migrator as vega_migration::MigratorTrait>::up(&conn, None)
        .await
        .unwrap();
    (url, None)
}

/// The store the commands write to, opened beside them to check what they did.
async fn store_at(url: &str) -> vega_repository::Store {
    let settings = vega_config::Settings {
        database: vega_config::DatabaseSettings::for_url(url).unwrap(),
        reader: None,
        blob: vega_config::BlobSettings::Fs {
            root: std::env::temp_dir().join("vega-admin-blobs"),
            root_source: vega_config::Source::Given,
        },
        pool: Default::default(),
    };
    vega_repository::Store::connect(&settings).await.unwrap()
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn admin_at(url: &str, args: &[&str]) -> Out {
    admin_through(url, "none", args)
}

/// `vega-admin` with `VEGA_DB_POOLER` set to `pooler`.
fn admin_through(url: &str, pooler: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_vega-admin"))
        .args(args)
        .env_remove("VEGA_PERSISTENCE_BACKEND")
        .env_remove("DATABASE_URL")
        .env("VEGA_DATABASE_URL", url)
        .env("VEGA_DB_POOLER", pooler)
        .env(
            "VEGA_BLOB_DIR",
            std::env::temp_dir().join("vega-admin-blobs"),
        )
        .env_remove("VEGA_BLOB_BACKEND")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn accounts_from_the_command_line(postgres: bool) {
    let (url, _db) = database(postgres).await;
    let run = |args: &[&str]| admin_at(&url, args);
    let ok = |args: &[&str]| {
        let out = run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        out.stdout
    };
    let fails = |args: &[&str], says: &str| {
        let out = run(args);
        assert_eq!(out.code, Some(1), "{args:?} should fail: {}", out.stdout);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    };
    let list_keys = || -> serde_json::Value {
        serde_json::from_str(&ok(&[
            "--json",
            "keys",
            "list",
            "--user",
            "ada@example.com",
        ]))
        .unwrap()
    };
    let store = store_at(&url).await;
    let authenticates = async |token: &str| store.api_keys().authenticate(token).await.unwrap();

    let created = ok(&[
        "users",
        "create",
        "--email",
        "Ada@Example.com",
        "--name",
        "Ada",
        "--admin",
    ]);
    assert!(
        created.starts_with("created user ada@example.com ("),
        "{created}"
    );
    fails(
        &["users", "create", "--email", "ada@example.com"],
        "already exists",
    );
    fails(
        &["users", "create", "--email", "not an email"],
        "invalid email",
    );
    let users: serde_json::Value = serde_json::from_str(&ok(&["--json", "users", "list"])).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(
        (users[0]["email"].as_str(), users[0]["is_admin"].as_bool()),
        (Some("ada@example.com"), Some(true))
    );

    let token = ok(&[
        "keys",
        "issue",
        "--user",
        "ada@example.com",
        "--name",
        "ci",
        "--scope",
        "projects:read",
        "--scope",
        "scans:write",
        "--expires",
        "30d",
    ]);
    assert_eq!(token.lines().count(), 1, "the token alone: {token}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("vgk_"), "{token}");
    let principal = authenticates(&token)
        .await
        .expect("the printed token authenticates");
    assert!(principal.has_scope("projects:read") && principal.has_scope("scans:write"));
    fails(
        &[
            "keys",
            "issue",
            "--user",
            "ada@example.com",
            "--name",
            "x",
            "--scope",
            "nope:nope",
        ],
        "`nope:nope` is not a scope",
    );
    fails(
        &[
            "keys",
            "issue",
            "--user",
            "nobody@example.com",
            "--name",
            "x",
            "--scope",
            "scans:read",
        ],
        "no user has the email",
    );
    fails(
        &["keys", "list", "--user", "nobody@example.com"],
        "no user has the email",
    );

    let keys = list_keys();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["state"], "live");
    assert!(
        keys[0].get("token").is_none() && keys[0].get("token_hash").is_none(),
        "no secret is listed"
    );
    let id = keys[0]["id"].as_str().unwrap().to_owned();

    let rotated = ok(&["keys", "rotate", &id]).trim().to_owned();
    assert!(rotated.starts_with("vgk_") && rotated != token);
    assert!(
        authenticates(&token).await.is_none(),
        "the rotated key is revoked"
    );
    assert!(authenticates(&rotated).await.is_some());
    fails(&["keys", "rotate", &id], "a revoked key cannot be rotated");
    let keys = list_keys();
    let new_id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ok(&["keys", "revoke", &new_id]).trim(),
        format!("key {new_id} is revoked")
    );
    assert!(authenticates(&rotated).await.is_none());
    fails(
        &["keys", "revoke", &uuid::Uuid::now_v7().to_string()],
        "not found",
    );

    assert_eq!(
        ok(&["users", "suspend", "ada@example.com"]).trim(),
        "user ada@example.com is suspended"
    );
    assert_eq!(
        ok(&["users", "activate", "ADA@example.com"]).trim(),
        "user ada@example.com is active"
    );
    fails(
        &["users", "suspend", "nobody@example.com"],
        "no user has the email",
    );

    let credential = ok(&["workers", "issue-credential", "scanner-1"])
        .trim()
        .to_owned();
    assert!(credential.starts_with("vgw_"), "{credential}");
    let worker = authenticates(&credential)
        .await
        .expect("the credential authenticates");
    assert!(matches!(
        worker.kind(),
        vega_repository::PrincipalKind::Worker { .. }
    ));
    assert_eq!(worker.label(), "scanner-1");
    fails(
        &["workers", "issue-credential", "scanner-1"],
        "already exists",
    );
    let issued: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "workers", "issue-credential", "scanner-2"])).unwrap();
    assert!(issued["token"].as_str().unwrap().starts_with("vgw_"));
}

#[tokio::test]
async fn accounts_from_the_command_line_on_postgres() {
    accounts_from_the_command_line(true).await;
}

#[tokio::test]
async fn accounts_from_the_command_line_on_sqlite() {
    accounts_from_the_command_line(false).await;
}

async fn the_queue_in_view(postgres: bool) {
    use vega_entity::TriggerKind;
    use vega_repository::NewScan;
    let (url, _db) = database(postgres).await;
    let store = store_at(&url).await;
    let repo = common::repository(&store).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let scan = NewScan::full(repo.id, TriggerKind::Api, Some("main".into()));
        ids.push(store.scans().enqueue(scan).await.unwrap().id);
    }
    // One claim whose worker dies (its lease runs out), one that fails, two still queued.
    let scans = store.scans();
    let dying = scans
        .claim_next("scanner-1", 1, std::time::Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    let failing = scans
        .claim_next("scanner-2", 1, std::time::Duration::from_secs(600))
        .await
        .unwrap()
        .remove(0);
    scans
        .fail(&failing.lease, "tool_crashed", "semgrep exited 139")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let run = |args: &[&str]| {
        let out = admin_at(&url, args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        out.stdout
    };
    let text = run(&["queue"]);
    println!("$ vega-admin queue\n{text}");
    assert!(
        text.contains("expired leases: 1 (`vega-admin scans rescue` takes them back)"),
        "{text}"
    );
    let queue: serde_json::Value = serde_json::from_str(&run(&["--json", "queue"])).unwrap();
    let depth = |status: &str| -> i64 {
        queue["depth"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["status"] == status)
            .map(|d| d["scans"].as_i64().unwrap())
            .sum()
    };
    assert_eq!((depth("queued"), depth("running")), (2, 1));
    assert_eq!(queue["expired_leases"], 1);
    assert_eq!(queue["running"][0]["worker"], "scanner-1");
    assert!(queue["oldest_due_since"].is_string());
    let failures = queue["recent_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{queue}");
    assert_eq!(failures[0]["id"], failing.scan.id.to_string());
    assert_eq!(failures[0]["error_code"], "tool_crashed");

    let rescued: serde_json::Value =
        serde_json::from_str(&run(&["--json", "scans", "rescue", "--backoff", "1s"])).unwrap();
    assert_eq!(rescued[0]["id"], dying.scan.id.to_string());
    assert_eq!(rescued[0]["status"], "queued");
    let queue: serde_json::Value = serde_json::from_str(&run(&["--json", "queue"])).unwrap();
    assert_eq!(
        (
            queue["expired_leases"].as_i64(),
            queue["scheduled_later"].as_i64()
        ),
        (Some(0), Some(1)),
        "{queue}"
    );

    let shown = run(&["scans", "show", &dying.scan.id.to_string()]);
    assert!(shown.contains("status: queued (attempt 1 of"), "{shown}");
    let queued = ids
        .iter()
        .find(|id| **id != dying.scan.id && **id != failing.scan.id)
        .unwrap()
        .to_string();
    assert_eq!(
        run(&["scans", "cancel", &queued]).trim(),
        format!("scan {queued} is canceled")
    );
    assert_eq!(
        run(&["scans", "cancel", &queued]).trim(),
        format!("scan {queued} had already finished: canceled")
    );
    let failed = failing.scan.id.to_string();
    assert_eq!(
        run(&["scans", "retry", &failed]).trim(),
        format!("scan {failed} is queued again (attempt 1 of 4 used)")
    );
    let twice = admin_at(&url, &["scans", "retry", &failed]);
    assert_eq!(twice.code, Some(1));
    assert!(
        twice
            .stderr
            .contains("only failed or canceled scans are retried"),
        "{}",
        twice.stderr
    );
    let missing = admin_at(&url, &["scans", "show", &uuid::Uuid::now_v7().to_string()]);
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
}

#[tokio::test]
async fn the_queue_in_view_on_postgres() {
    the_queue_in_view(true).await;
}

#[tokio::test]
async fn the_queue_in_view_on_sqlite() {
    the_queue_in_view(false).await;
}

/// The project's events as `vega-admin events export` prints them.
fn exported(url: &str, project: uuid::Uuid) -> Vec<serde_json::Value> {
    let out = admin_at(
        url,
        &["events", "export", "--project", &project.to_string()],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        out.stderr
            .contains(&format!("exported {} events", lines.len())),
        "{}",
        out.stderr
    );
    lines
}

async fn events_archived_and_exported(postgres: bool) {
    let (url, _db) = database(postgres).await;
    let store = store_at(&url).await;
    let project = common::repository(&store).await.project_id;
    // Retention takes whole months that have ended: the project's events move two months
    // back, into a month of their own.
    let now = chrono::Utc::now().fixed_offset();
    let past = now - chrono::TimeDelta::days(62);
    store
        .event_archives()
        .ensure_partitions(past, now)
        .await
        .unwrap();
    let conn = sea_orm::Database::connect(url.as_str()).await.unwrap();
    for (n, event) in store
        .events()
        .page(vega_repository::EventFeed::Project(project), None, 10)
        .await
        .unwrap()
        .items
        .iter()
        .enumerate()
    {
        conn.execute_raw(sea_orm::Statement::from_sql_and_values(
            conn.get_database_backend(),
            "UPDATE events SET created_at = $1 WHERE id = $2",
            [
                (past + chrono::TimeDelta::milliseconds(n as i64)).into(),
                event.id.into(),
            ],
        ))
        .await
        .unwrap();
    }
    let before = exported(&url, project);
    assert!(before.len() >= 2, "{before:?}");

    let out = admin_at(
        &url,
        &[
            "maintain",
            "--once",
            "--retain-events",
            "1ms",
            "--retention-batch",
            "1",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let live = store
        .events()
        .page(vega_repository::EventFeed::Project(project), None, 10)
        .await
        .unwrap();
    assert!(live.items.is_empty(), "{:?}", live.items);
    assert_eq!(exported(&url, project), before);

    let out = admin_at(
        &url,
        &[
            "events",
            "export",
            "--project",
            &project.to_string(),
            "--since",
            "last tuesday",
        ],
    );
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("neither an RFC 3339 time nor a date"),
        "{}",
        out.stderr
    );
    let out = admin_at(&url, &["maintain", "--once", "--retention-batch", "0"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}

#[tokio::test]
async fn events_archived_and_exported_on_postgres() {
    events_archived_and_exported(true).await;
}

#[tokio::test]
async fn events_archived_and_exported_on_sqlite() {
    events_archived_and_exported(false).await;
}

async fn sarif_imported_and_exported(postgres: bool) {
    let (url, _db) = database(postgres).await;
    let store = store_at(&url).await;
    let repo = common::repository(&store).await;
    let repository = repo.id.to_string();
    let fixtures = format!("{}/../repository/tests/sarif", env!("CARGO_MANIFEST_DIR"));
    let codeql = format!("{fixtures}/codeql.sarif");
    let trivy = format!("{fixtures}/trivy.sarif");

    let out = admin_at(
        &url,
        &[
            "--json",
            "scans",
            "import-sarif",
            "--repository",
            &repository,
            "--full",
            &codeql,
            &trivy,
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let scan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (
            scan["status"].as_str(),
            scan["findings_total"].as_i64(),
            scan["count_critical"].as_i64()
        ),
        (Some("succeeded"), Some(4), Some(1))
    );
    let project = store.projects().get(repo.project_id).await.unwrap();
    assert_eq!(
        project.latest_scan_id.map(|id| id.to_string()).as_deref(),
        scan["id"].as_str()
    );

    // A log a real tool wrote that deviates from SARIF imports, and says what it took.
    let gitleaks = format!("{fixtures}/real/gitleaks.sarif");
    let out = admin_at(
        &url,
        &[
            "scans",
            "import-sarif",
            "--repository",
            &repository,
            &gitleaks,
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stderr.contains(['\r', '\u{1b}']),
        "no progress drawn when stderr is not a terminal: {:?}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("warning: no_rule_id in 8 result(s), first at /runs/0/results/0/ruleId"),
        "{}",
        out.stdout
    );

    // A refused log exits 1, names the pointer, and leaves a failed scan, not a running one.
    let bad = std::env::temp_dir().join(format!("vega-bad-{}.sarif", uuid::Uuid::new_v4()));
    std::fs::write(&bad, r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x"}},"results":[{"level":"error"}]}]}"#).unwrap();
    let out = admin_at(
        &url,
        &[
            "scans",
            "import-sarif",
            "--repository",
            &repository,
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("/runs/0/results/0/ruleId"),
        "{}",
        out.stderr
    );
    let page = store
        .scans()
        .history(repo.project_id, None, 10)
        .await
        .unwrap();
    assert_eq!(
        (
            page.items[0].status.as_str(),
            page.items[0].error_code.as_deref()
        ),
        ("failed", Some("invalid_report"))
    );

    // Exported to standard output: the log alone.
    let out = admin_at(
        &url,
        &["scans", "export-sarif", scan["id"].as_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let log: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let results: usize = log["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["results"].as_array().unwrap().len())
        .sum();
    assert_eq!((log["version"].as_str(), results), (Some("2.1.0"), 4));
}

#[tokio::test]
async fn sarif_imported_and_exported_on_postgres() {
    sarif_imported_and_exported(true).await;
}

#[tokio::test]
async fn sarif_imported_and_exported_on_sqlite() {
    sarif_imported_and_exported(false).await;
}

/// The accounts commands through Debian's PgBouncer in transaction mode (fewer server
/// connections than the commands open, so their transactions change server connections), as
/// an operator runs them against a pooled RDS endpoint.
#[tokio::test]
async fn accounts_through_pgbouncer_in_transaction_mode() {
    use vega_tests::pgbouncer::{PgBouncer, PoolMode};
    let db = TestDb::postgres().await;
    let upstream = url::Url::parse(db.url()).unwrap();
    let name = upstream.path().trim_start_matches('/').to_owned();
    let bouncer = PgBouncer::start(upstream.port().unwrap_or(5432), PoolMode::Transaction, 2);
    let url = bouncer.url(&name);
    let admin = |args: &[&str]| {
        let out = admin_through(&url, "transaction", args);
        assert_eq!(
            out.code,
            Some(0),
            "{args:?}: {}\n{}",
            out.stderr,
            bouncer.log()
        );
        out.stdout
    };
    admin(&[
        "users",
        "create",
        "--email",
        "ada@example.com",
        "--name",
        "Ada",
    ]);
    let issued = admin(&[
        "keys",
        "issue",
        "--user",
        "ada@example.com",
        "--name",
        "ci",
        "--scope",
        "projects:read",
    ]);
    assert!(issued.contains("vgk_"), "{issued}");
    let keys: serde_json::Value = serde_json::from_str(&admin(&[
        "--json",
        "keys",
        "list",
        "--user",
        "ada@example.com",
    ]))
    .unwrap();
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
}
