//! `vega-admin maintain` as processes on Postgres: two replicas, one leader; the leader
//! rescues a scan whose worker died; killed, it is replaced within the lease; SIGTERM stops
//! a leader cleanly and hands the lease over at once; `--once` runs each job and exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vega_entity::TriggerKind;
use vega_repository::{NewScan, Store};
use vega_tests::TestDb;

const LEASE: Duration = Duration::from_secs(2);

fn maintain(url: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vega-admin"))
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
        .env_remove("VEGA_PERSISTENCE_BACKEND")
        .env_remove("DATABASE_URL")
        .env_remove("VEGA_BLOB_BACKEND")
        .env("VEGA_DATABASE_URL", url)
        .env(
            "VEGA_BLOB_DIR",
            std::env::temp_dir().join("vega-maintain-blobs"),
        )
        .env("RUST_LOG", "info,sqlx=warn")
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
        let holder = store.leases().holder("maintain").await.unwrap();
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
        store.leases().holder("maintain").await.unwrap(),
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
    for job in ["rescue", "purge", "gc", "prune"] {
        assert!(
            stderr.contains(&format!("job=\"{job}\"")),
            "{job}: {stderr}"
        );
    }
}
