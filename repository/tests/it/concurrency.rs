//! Completions that meet: many scans of one repository completing at once, sharing findings
//! in different orders, on both engines; and two SQLite "processes" on one file.

use std::time::Duration;

use rand::seq::SliceRandom;
use sea_orm::{ConnectionTrait, Statement};
use vega_entity::{Severity, TriggerKind};
use vega_repository::{Lease, NewFinding, NewScan, Store};
use vega_tests::{Backend, on_both_backends};

use crate::common;

const LEASE: Duration = Duration::from_secs(600);
const SCANS: usize = 8;
/// Findings every scan shares, and rounds: the figures on Postgres; SQLite, whose one
/// writer runs completions one by one anyway, gets fewer so that a debug build stays quick.
const POSTGRES: (usize, usize) = (5000, 5);
const SQLITE: (usize, usize) = (1000, 3);

fn shared_findings(n: usize) -> Vec<NewFinding> {
    (0..n)
        .map(|i| {
            common::finding(
                &format!("rule-{i}"),
                &format!("src/f{i}.py"),
                Severity::High,
            )
        })
        .collect()
}

/// Claims `n` scans of the repository's default branch.
async fn claim(store: &Store, repository_id: uuid::Uuid, n: usize) -> Vec<Lease> {
    for _ in 0..n {
        store
            .scans()
            .enqueue(NewScan::full(
                repository_id,
                TriggerKind::Api,
                Some("main".into()),
            ))
            .await
            .unwrap();
    }
    let claims = store
        .scans()
        .claim_next("w", u32::try_from(n).unwrap(), LEASE)
        .await
        .unwrap();
    assert_eq!(claims.len(), n);
    claims.into_iter().map(|c| c.lease).collect()
}

async fn scalar(db: &impl ConnectionTrait, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

async fn deadlocks(db: &impl ConnectionTrait) -> i64 {
    scalar(
        db,
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .await
}

on_both_backends! {
    async fn concurrent_completions_of_one_repository_all_succeed_and_count_each_finding_once(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let postgres = db.backend() == Backend::Postgres;
        let (shared, rounds) = if postgres { POSTGRES } else { SQLITE };
        let deadlocks_before = if postgres { deadlocks(db.conn()).await } else { 0 };
        for round in 1..=rounds {
            if round > 1 {
                // A full scan of main that sees nothing fixes all of them: this round reopens.
                let lease = claim(&store, repo.id, 1).await.remove(0);
                let fixer = store.scans().complete(&lease, vec![]).await.unwrap();
                assert_eq!(fixer.findings_fixed, i32::try_from(shared).unwrap());
            }
            let leases = claim(&store, repo.id, SCANS).await;
            let tasks: Vec<_> = leases
                .into_iter()
                .map(|lease| {
                    let store = store.clone();
                    let mut findings = shared_findings(shared);
                    findings.shuffle(&mut rand::rng());
                    tokio::spawn(async move { store.scans().complete(&lease, findings).await })
                })
                .collect();
            let mut new = 0;
            let mut ids = Vec::new();
            for task in tasks {
                let scan = task.await.unwrap().unwrap();
                assert_eq!(scan.findings_total, i32::try_from(shared).unwrap());
                new += scan.findings_new;
                ids.push(format!("'{}'", scan.id));
            }
            let expected_new = if round == 1 { shared } else { 0 };
            assert_eq!(new, i32::try_from(expected_new).unwrap(), "round {round}: new");
            let ids = ids.join(", ");
            let id_list = if postgres {
                ids.clone()
            } else {
                // SQLite stores UUIDs as 16-byte blobs.
                ids.split(", ")
                    .map(|id| format!("X'{}'", id.trim_matches('\'').replace('-', "")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            // What each scan saw, as the runs of the stream record it (see findings/runs.rs).
            let seen = "FROM scans s JOIN sighting_runs o ON o.project_id = s.project_id \
                          AND o.stream_id = s.stream_id AND o.first_seq <= s.stream_seq \
                          AND (o.last_seq IS NULL OR o.last_seq >= s.stream_seq)";
            let first_sightings = scalar(
                db.conn(),
                &format!(
                    "SELECT count(*) {seen} WHERE s.id IN ({id_list}) \
                       AND o.first_seq = s.stream_seq AND o.change IN ('new', 'reopened')"
                ),
            )
            .await;
            let distinct = scalar(
                db.conn(),
                &format!(
                    "SELECT count(DISTINCT o.finding_id) {seen} WHERE s.id IN ({id_list}) \
                       AND o.first_seq = s.stream_seq AND o.change IN ('new', 'reopened')"
                ),
            )
            .await;
            assert_eq!((first_sightings, distinct), (shared as i64, shared as i64), "round {round}: each finding new or reopened once");
            let sightings = scalar(
                db.conn(),
                &format!("SELECT count(*) {seen} WHERE s.id IN ({id_list})"),
            )
            .await;
            assert_eq!(sightings, i64::try_from(SCANS * shared).unwrap());
            let wrong_times_seen = scalar(
                db.conn(),
                &format!(
                    "SELECT count(*) FROM (SELECT o.finding_id, \
                            SUM(COALESCE(o.last_seq, st.last_seq) - o.first_seq + 1) AS n \
                       FROM sighting_runs o JOIN scan_streams st \
                         ON st.project_id = o.project_id AND st.id = o.stream_id \
                      GROUP BY o.finding_id) AS t WHERE n <> {}",
                    SCANS * round
                ),
            )
            .await;
            assert_eq!(wrong_times_seen, 0, "round {round}: every scan saw every finding");
            let one = store.findings().list_open(repo.project_id, None, 1).await.unwrap().items[0].id;
            let times_seen = store.findings().sightings(one).await.unwrap().times_seen;
            assert_eq!(times_seen, i64::try_from(SCANS * round).unwrap(), "round {round}: times seen");
            let open = scalar(db.conn(), "SELECT count(*) FROM findings WHERE status = 'open'").await;
            assert_eq!(open, shared as i64);
        }
        if postgres {
            // Backends report their statistics when they go idle or exit: close the pool.
            db.conn().clone().close().await.unwrap();
            let fresh = sea_orm::Database::connect(db.url()).await.unwrap();
            assert_eq!(deadlocks(&fresh).await, deadlocks_before, "no deadlock, even a retried one");
            fresh.close().await.unwrap();
        }
    }
}

/// Two pools on one SQLite file, as two API processes: concurrent completions all succeed,
/// because every transaction takes the write lock when it begins and waits its turn.
#[tokio::test]
async fn two_sqlite_writers_on_one_file_both_succeed() {
    // Each process has one SQLite connection, so its callers queue for it; a debug build's
    // completions are slow, and this test is about the file lock, not that queue.
    let settings = common::sqlite_file(vega_config::PoolOptions {
        acquire_timeout: Duration::from_secs(60),
        lock_timeout: Duration::from_secs(60),
        ..vega_config::PoolOptions::default()
    })
    .await;
    let dir = settings.database.sqlite_path().unwrap();
    let dir = dir.parent().unwrap();
    let one = Store::connect(&settings).await.unwrap();
    let two = Store::connect(&settings).await.unwrap();
    let repo = common::repository(&one).await;
    let leases = claim(&one, repo.id, 8).await;
    let tasks: Vec<_> = leases
        .into_iter()
        .enumerate()
        .map(|(i, lease)| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            let findings = shared_findings(2000);
            tokio::spawn(async move { store.scans().complete(&lease, findings).await })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        new += task.await.unwrap().unwrap().findings_new;
    }
    assert_eq!(new, 2000);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Another writer of the repository holding its ingest lock past `lock_timeout` (here three
/// times over) makes a completion wait and retry, not fail.
#[tokio::test]
async fn a_completion_queued_behind_the_ingest_lock_past_the_lock_timeout_still_succeeds() {
    let db = vega_tests::TestDb::postgres().await;
    let pool = vega_config::PoolOptions {
        lock_timeout: Duration::from_millis(200),
        ..vega_config::PoolOptions::default()
    };
    let store = Store::connect(&common::settings(db.url(), pool))
        .await
        .unwrap();
    let repo = common::repository(&store).await;
    let lease = claim(&store, repo.id, 1).await.remove(0);
    let holder = sea_orm::TransactionTrait::begin(db.conn()).await.unwrap();
    holder
        .execute_unprepared(&format!(
            "SELECT 1 FROM repositories WHERE id = '{}' FOR NO KEY UPDATE",
            repo.id
        ))
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        holder.commit().await.unwrap();
    });
    let scan = store
        .scans()
        .complete(&lease, shared_findings(10))
        .await
        .unwrap();
    release.await.unwrap();
    assert_eq!(scan.findings_total, 10);
}
