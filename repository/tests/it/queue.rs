//! The scan queue: enqueue, claim, heartbeat, finish, cancel, rescue, history.

use std::collections::HashSet;
use std::time::Duration;

use vega_entity::{ScanKind, ScanStatus, TriggerKind};
use vega_repository::{CancelOutcome, Error, NewScan, Store};
use vega_tests::{TestDb, on_both_backends};

use crate::common;

const LEASE: Duration = Duration::from_secs(60);

async fn queued(store: &Store, repository_id: uuid::Uuid, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let scan = store
            .scans()
            .enqueue(NewScan::full(
                repository_id,
                TriggerKind::Api,
                Some("main".into()),
            ))
            .await
            .unwrap();
        ids.push(scan.id);
    }
    ids
}

on_both_backends! {
    async fn enqueue_validates_and_derives_the_tracked_branch(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let main = store.scans().enqueue(NewScan::full(repo.id, TriggerKind::Api, Some("main".into()))).await.unwrap();
        assert!(main.tracks_default_branch);
        assert_eq!(main.status, "queued");
        assert_eq!(main.project_id, repo.project_id);
        let feature = store.scans().enqueue(NewScan::full(repo.id, TriggerKind::Webhook, Some("feature".into()))).await.unwrap();
        assert!(!feature.tracks_default_branch);

        let mut bad = NewScan::full(repo.id, TriggerKind::Api, None);
        bad.priority = 9;
        assert!(matches!(store.scans().enqueue(bad).await, Err(Error::Invalid { field, .. }) if field == "priority"));
        let mut bad = NewScan::full(repo.id, TriggerKind::Api, None);
        bad.commit_sha = Some("not-a-sha".into());
        assert!(matches!(store.scans().enqueue(bad).await, Err(Error::Invalid { field, .. }) if field == "commit_sha"));
        let missing = store.scans().enqueue(NewScan::full(uuid::Uuid::now_v7(), TriggerKind::Api, None)).await;
        assert!(matches!(missing, Err(Error::NotFound { entity: "repository", .. })));
        assert!(matches!(store.scans().get(uuid::Uuid::now_v7()).await, Err(Error::NotFound { .. })));
    }

    async fn claims_follow_priority_then_age_and_fence_every_write(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let old = queued(&store, repo.id, 1).await[0];
        let mut urgent = NewScan::full(repo.id, TriggerKind::Manual, None);
        urgent.priority = 1;
        let urgent = store.scans().enqueue(urgent).await.unwrap().id;

        let claims = store.scans().claim_next("worker-a", 10, LEASE).await.unwrap();
        let order: Vec<_> = claims.iter().map(|c| c.scan.id).collect();
        assert_eq!(order, vec![urgent, old]);
        assert!(store.scans().claim_next("worker-b", 10, LEASE).await.unwrap().is_empty());

        let claim = &claims[0];
        assert_eq!(claim.lease.attempt, 1);
        assert_eq!(claim.scan.status, "running");
        assert_eq!(store.scans().held_by("worker-a").await.unwrap().len(), 2);
        let beat = store.scans().heartbeat(&claim.lease, LEASE).await.unwrap();
        assert!(!beat.cancel_requested);

        let mut forged = claim.lease.clone();
        forged.worker_id = "worker-b".into();
        assert!(matches!(store.scans().heartbeat(&forged, LEASE).await, Err(Error::LeaseLost { .. })));
        assert!(matches!(store.scans().fail(&forged, "boom", "x").await, Err(Error::LeaseLost { .. })));

        let failed = store.scans().fail(&claim.lease, "scanner_crash", "semgrep exited 2").await.unwrap();
        assert_eq!(failed.status, "failed");
        assert_eq!(failed.error_code.as_deref(), Some("scanner_crash"));
        assert!(failed.finished_at.is_some());
        assert!(matches!(store.scans().heartbeat(&claim.lease, LEASE).await, Err(Error::LeaseLost { .. })));

        let done = store.scans().complete(&claims[1].lease, vec![]).await.unwrap();
        assert_eq!(done.status, "succeeded");
        assert!(matches!(store.scans().complete(&claims[1].lease, vec![]).await, Err(Error::LeaseLost { .. })));
    }

    async fn cancel_stops_queued_scans_and_asks_running_ones(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let ids = queued(&store, repo.id, 2).await;
        assert_eq!(store.scans().cancel(ids[0]).await.unwrap(), CancelOutcome::Canceled);
        assert_eq!(store.scans().get(ids[0]).await.unwrap().status, "canceled");

        let claim = store.scans().claim_next("w", 1, LEASE).await.unwrap().remove(0);
        assert_eq!(claim.scan.id, ids[1]);
        assert_eq!(store.scans().cancel(ids[1]).await.unwrap(), CancelOutcome::Requested);
        assert!(store.scans().heartbeat(&claim.lease, LEASE).await.unwrap().cancel_requested);
        let canceled = store.scans().acknowledge_cancel(&claim.lease).await.unwrap();
        assert_eq!(canceled.status, "canceled");
        assert_eq!(
            store.scans().cancel(ids[1]).await.unwrap(),
            CancelOutcome::AlreadyFinished(ScanStatus::Canceled)
        );
        assert!(matches!(store.scans().cancel(uuid::Uuid::now_v7()).await, Err(Error::NotFound { .. })));
    }

    async fn an_expired_lease_is_rescued_and_the_old_worker_changes_nothing(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let id = queued(&store, repo.id, 1).await[0];
        let stale = store.scans().claim_next("worker-a", 1, Duration::from_millis(1)).await.unwrap().remove(0);
        tokio::time::sleep(Duration::from_millis(20)).await;

        let rescued = store.scans().rescue_expired(Duration::ZERO).await.unwrap();
        assert_eq!(rescued.len(), 1);
        assert_eq!((rescued[0].scan_id, rescued[0].status), (id, ScanStatus::Queued));
        assert!(store.scans().rescue_expired(Duration::ZERO).await.unwrap().is_empty(), "rescued once");

        assert!(matches!(store.scans().heartbeat(&stale.lease, LEASE).await, Err(Error::LeaseLost { .. })));
        let finding = common::finding("r1", "a.py", vega_entity::Severity::High);
        assert!(matches!(store.scans().complete(&stale.lease, vec![finding]).await, Err(Error::LeaseLost { .. })));
        let scan = store.scans().get(id).await.unwrap();
        assert_eq!((scan.status.as_str(), scan.findings_total), ("queued", 0));
        assert_eq!(scan.error_code.as_deref(), Some("lease_expired"));
        assert!(store.findings().open_counts(repo.project_id).await.unwrap().total() == 0);

        let fresh = store.scans().claim_next("worker-b", 1, LEASE).await.unwrap().remove(0);
        assert_eq!((fresh.scan.id, fresh.lease.attempt), (id, 2));
        store.scans().complete(&fresh.lease, vec![]).await.unwrap();
    }

    async fn a_scan_out_of_attempts_fails_when_rescued(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let mut once = NewScan::full(repo.id, TriggerKind::Schedule, None);
        once.max_attempts = 1;
        once.kind = ScanKind::Secrets;
        let id = store.scans().enqueue(once).await.unwrap().id;
        store.scans().claim_next("w", 1, Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rescued = store.scans().rescue_expired(Duration::from_secs(30)).await.unwrap();
        assert_eq!(rescued[0].status, ScanStatus::Failed);
        let scan = store.scans().get(id).await.unwrap();
        assert_eq!(scan.status, "failed");
        assert!(scan.finished_at.is_some());
        assert!(store.scans().claim_next("w", 1, LEASE).await.unwrap().is_empty());
    }

    async fn retried_scans_wait_for_their_backoff(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        queued(&store, repo.id, 1).await;
        store.scans().claim_next("w", 1, Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.scans().rescue_expired(Duration::from_secs(3600)).await.unwrap();
        assert!(store.scans().claim_next("w", 1, LEASE).await.unwrap().is_empty(), "not due yet");
    }

    async fn history_pages_newest_first(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let ids = queued(&store, repo.id, 5).await;
        let first = store.scans().history(repo.project_id, None, 3).await.unwrap();
        let second = store.scans().history(repo.project_id, first.next, 3).await.unwrap();
        let seen: Vec<_> = first.items.iter().chain(&second.items).map(|s| s.id).collect();
        assert_eq!(seen, ids.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(second.next, None);
        assert!(matches!(store.scans().history(repo.project_id, None, 0).await, Err(Error::Invalid { .. })));
    }
}

/// Eight workers drain 1,000 queued scans: each scan is claimed by exactly one of them.
async fn eight_workers_claim_each_scan_once(db: TestDb) {
    let store = common::store(&db).await;
    let repo = common::repository(&store).await;
    let ids: HashSet<_> = queued(&store, repo.id, 1000).await.into_iter().collect();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claims = store
                        .scans()
                        .claim_next(&format!("worker-{w}"), 3, LEASE)
                        .await
                        .unwrap();
                    if claims.is_empty() {
                        return mine;
                    }
                    mine.extend(claims.into_iter().map(|c| c.scan.id));
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for worker in workers {
        claimed.extend(worker.await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 1000, "no scan claimed twice");
    assert_eq!(unique, ids, "no scan lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_claim_each_scan_once_on_postgres() {
    eight_workers_claim_each_scan_once(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_claim_each_scan_once_on_sqlite() {
    eight_workers_claim_each_scan_once(TestDb::sqlite().await).await;
}
