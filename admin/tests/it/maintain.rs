//! `vega-admin maintain` as processes on Postgres: two replicas, one leader; the leader
//! rescues a scan whose worker died; killed, it is replaced within the lease; SIGTERM stops
//! a leader cleanly and hands the lease over at once; `--once` runs each job and exits;
//! retention moves old events to the blob store, a SIGTERM mid-run loses none, and
//! `vega-admin events export` reads back exactly what was deleted; `/metrics` serves the
//! runs, parsed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};
use vega_entity::{TriggerKind, events};
use vega_repository::{NewScan, Store};
use vega_tests::TestDb;

use crate::common;

const LEASE: Duration = Duration::from_secs(2);

/// `vega-admin` with the test's database and blob directory and nothing from the caller's
/// environment.
fn admin(url: &str, blobs: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vega-admin"));
    command
        .env_remove("VEGA_PERSISTENCE_BACKEND")
        .env_remove("DATABASE_URL")
        .env_remove("VEGA_BLOB_BACKEND")
        .env_remove("VEGA_METRICS_LISTEN")
        .env("VEGA_DATABASE_URL", url)
        .env("VEGA_BLOB_DIR", blobs)
        .env("RUST_LOG", "info,sqlx=warn");
    command
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("vega-maintain-{}", uuid::Uuid::new_v4()))
}

fn maintain(url: &str, extra: &[&str]) -> Child {
    maintain_with(
        url,
        &std::env::temp_dir().join("vega-maintain-blobs"),
        extra,
    )
}

fn maintain_with(url: &str, blobs: &Path, extra: &[&str]) -> Child {
    admin(url, blobs)
        .args([
            "maintain",
            "--lease",
            "2s",
            "--rescue-every",
            "500ms",
            "--rescue-backoff",
            "1ms",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `holder` (the lease's holder, if any) satisfies `done`, up to `within`.
async fn until(
    store: &Store,
    within: Duration,
    done: impl Fn(Option<&str>) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let holder = store.leader_leases().holder("maintain").await.unwrap();
        if done(holder.as_deref()) {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "still {holder:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pid_of(holder: &str) -> u32 {
    holder.split('/').nth(1).unwrap().parse().unwrap()
}

async fn scan_whose_worker_died(store: &Store) -> uuid::Uuid {
    let repo = common::repository(store).await;
    let scan = store
        .scans()
        .enqueue(NewScan::full(
            repo.id,
            TriggerKind::Api,
            Some("main".into()),
        ))
        .await
        .unwrap();
    // The worker claims it for a second and is never heard from again.
    store
        .scans()
        .claim_next("doomed", 1, Duration::from_secs(1))
        .await
        .unwrap();
    scan.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_rescues_and_a_standby_takes_over() {
    let db = TestDb::postgres().await;
    let store = Store::from_parts(db.conn().clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap();
    let scan_id = scan_whose_worker_died(&store).await;

    let a = maintain(db.url(), &[]);
    let b = maintain(db.url(), &[]);
    let leader = until(&store, Duration::from_secs(20), |h| h.is_some())
        .await
        .unwrap();
    let (mut leader_child, standby) = if pid_of(&leader) == a.id() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(pid_of(&leader), leader_child.id());

    // The dead worker's lease ran out after 1 s; rescue runs every 500 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.scans().get(scan_id).await.unwrap().status != "queued" {
        assert!(Instant::now() < deadline, "the scan was not rescued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Killed, the leader is replaced within a lease (and the standby's tick).
    leader_child.kill().unwrap();
    leader_child.wait().unwrap();
    let killed_at = Instant::now();
    let next = until(&store, LEASE * 3, |h| {
        h.is_some_and(|h| pid_of(h) == standby.id())
    })
    .await;
    println!(
        "the standby took over {:?} after the leader was killed",
        killed_at.elapsed()
    );
    assert!(next.is_some());

    // SIGTERM: the leader finishes, releases the lease and exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &standby.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || standby.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        exit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    assert!(String::from_utf8_lossy(&exit.stderr).contains("maintain stopped"));
    assert_eq!(
        store.leader_leases().holder("maintain").await.unwrap(),
        None,
        "the lease was released"
    );
}

#[tokio::test]
async fn once_runs_every_job_and_exits() {
    let db = TestDb::postgres().await;
    let child = maintain(db.url(), &["--once"]);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for job in [
        "rescue",
        "purge",
        "gc",
        "prune",
        "expire",
        "dismissals",
        "retention",
    ] {
        assert!(
            stderr.contains(&format!("job=\"{job}\"")),
            "{job}: {stderr}"
        );
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let row = db
        .conn()
        .query_one_raw(Statement::from_string(db.backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index(0).unwrap()
}

/// `vega-admin events export --project …` parsed, and its stderr.
fn export(url: &str, blobs: &Path, project: uuid::Uuid) -> Vec<events::Model> {
    let out = admin(url, blobs)
        .args(["events", "export", "--project", &project.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<events::Model> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        stderr.contains(&format!("exported {} events", lines.len())),
        "{stderr}"
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_archives_what_it_deletes_and_a_sigterm_loses_none() {
    const TOTAL: i64 = 40_000;
    let db = TestDb::postgres().await;
    let blobs = scratch_dir();
    let store = Store::from_parts(
        db.conn().clone(),
        vega_blobstore::BlobStore::filesystem(&blobs).unwrap(),
    )
    .await
    .unwrap();
    let project = common::repository(&store).await.project_id;
    let now = chrono::Utc::now().fixed_offset();
    store
        .event_archives()
        .ensure_partitions(now - chrono::TimeDelta::days(60), now)
        .await
        .unwrap();
    // Four days of events, a month and more ago, beside the fixture's own of today.
    db.conn()
        .execute_unprepared(&format!(
            "INSERT INTO events (created_at, project_id, actor_type, actor_label, action, data) \
             SELECT now() - interval '40 days' + g * interval '9 seconds', '{project}', 'system', \
                    'seed', 'scan.completed', jsonb_build_object('n', g, 'note', 'ünïcode ✓') \
             FROM generate_series(1, {TOTAL}) g"
        ))
        .await
        .unwrap();
    let before = export(db.url(), &blobs, project);
    let live = count(&db, "SELECT count(*) FROM events").await;
    let project_live = count(
        &db,
        &format!("SELECT count(*) FROM events WHERE project_id = '{project}'"),
    )
    .await;
    assert_eq!(before.len() as i64, project_live);

    let port = vega_tests::free_port();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let listen = format!("127.0.0.1:{port}");
    let retention = [
        "--retain-events",
        "1d",
        "--retention-batch",
        "200",
        "--retention-every",
        "1s",
    ];
    let child = maintain_with(
        db.url(),
        &blobs,
        &[&retention[..], &["--metrics-listen", &listen]].concat(),
    );

    // SIGTERM as soon as the first archive commits: the batch in hand finishes, none is lost.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        &db,
        "SELECT count(*) FROM event_archives WHERE state = 'committed'",
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "no archive committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let scrape = vega_tests::scrape::scrape(&metrics_url).await;
    assert!(
        scrape
            .value(
                "vega_maintenance_runs_total",
                &[("job", "rescue"), ("outcome", "ok")]
            )
            .is_some_and(|n| n >= 1.0),
        "{}",
        scrape.text
    );
    assert!(
        scrape
            .value("vega_db_statement_seconds", &[])
            .is_some_and(|n| n > 0.0),
        "{}",
        scrape.text
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert_eq!(exit.status.code(), Some(0), "{stderr}");

    let pending = "SELECT count(*) FROM event_archives WHERE state = 'pending'";
    let archived = "SELECT coalesce(sum(event_count), 0)::bigint FROM event_archives \
                    WHERE state = 'committed'";
    let left = count(&db, "SELECT count(*) FROM events").await;
    println!(
        "after SIGTERM: {} archived, {left} left",
        count(&db, archived).await
    );
    assert_eq!(count(&db, pending).await, 0, "{stderr}");
    // Each event is read from one place: the archives, or the table past them (on Postgres
    // a month's archived events stay in its partition until it is dropped).
    assert_eq!(export(db.url(), &blobs, project), before, "after SIGTERM");
    assert!(count(&db, archived).await <= TOTAL);
    assert!(left <= live);

    // A scheduled `--once` archives the rest; the table keeps nothing older than a day.
    let once = maintain_with(db.url(), &blobs, &[&retention[..], &["--once"]].concat());
    let out = tokio::task::spawn_blocking(move || once.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM events WHERE created_at < now() - interval '1 day'"
        )
        .await,
        0
    );
    assert_eq!(count(&db, archived).await, TOTAL);
    assert_eq!(count(&db, pending).await, 0);

    // What was deleted reads back identical, in order, beside what is still live.
    assert_eq!(export(db.url(), &blobs, project), before);
    std::fs::remove_dir_all(&blobs).ok();
}
