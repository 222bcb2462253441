//! Scan completion with findings, and the findings and project-list read paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use vega_entity::{DismissReason, Severity, TriggerKind};
use vega_repository::{Error, NewFinding, NewScan, Store};
use vega_tests::on_both_backends;

const LEASE: Duration = Duration::from_secs(60);

/// Enqueues, claims and completes one scan of `ref_name` with these findings.
async fn scan_with(
    store: &Store,
    repository_id: uuid::Uuid,
    ref_name: &str,
    findings: Vec<NewFinding>,
) -> vega_entity::scans::Model {
    store
        .scans()
        .enqueue(NewScan::full(
            repository_id,
            TriggerKind::Api,
            Some(ref_name.into()),
        ))
        .await
        .unwrap();
    let claim = store
        .scans()
        .claim_next("w", 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    store
        .scans()
        .complete(&claim.lease, findings)
        .await
        .unwrap()
}

fn a() -> NewFinding {
    common::finding("eval", "src/app.py", Severity::Critical)
}

fn b() -> NewFinding {
    common::finding("sql-injection", "src/db.py", Severity::High)
}

on_both_backends! {
    async fn findings_are_deduplicated_fixed_and_reopened(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;

        // Scan 1 sees A and B (B twice in the batch: one finding).
        let s1 = scan_with(&store, repo.id, "main", vec![a(), b(), b()]).await;
        assert_eq!((s1.findings_total, s1.findings_new, s1.findings_fixed), (2, 2, 0));
        assert_eq!((s1.count_critical, s1.count_high), (1, 1));
        let page = store.findings().of_scan(s1.id, None, 10).await.unwrap();
        assert!(page.items.iter().all(|f| f.occurrence.change == "new"));

        // Scan 2 of the tracked branch no longer sees B: B is fixed, A is existing. A moved
        // down the file; its identity does not depend on line numbers.
        let mut moved = a();
        moved.start_line = Some(40);
        moved.end_line = Some(41);
        let s2 = scan_with(&store, repo.id, "main", vec![moved]).await;
        assert_eq!((s2.findings_total, s2.findings_new, s2.findings_fixed), (1, 0, 1));
        let counts = store.findings().open_counts(repo.project_id).await.unwrap();
        assert_eq!((counts.critical, counts.high, counts.total()), (1, 0, 1));

        // A feature-branch scan without A marks nothing fixed.
        let s3 = scan_with(&store, repo.id, "feature", vec![]).await;
        assert_eq!(s3.findings_fixed, 0);
        assert_eq!(store.findings().open_counts(repo.project_id).await.unwrap().critical, 1);

        // Scan 4 sees B again: reopened.
        let s4 = scan_with(&store, repo.id, "main", vec![a(), b()]).await;
        let seen = store.findings().of_scan(s4.id, None, 10).await.unwrap().items;
        let b_seen = seen.iter().find(|f| f.finding.rule_id == "sql-injection").unwrap();
        assert_eq!(b_seen.occurrence.change, "reopened");
        assert_eq!(b_seen.finding.status, "open");
        assert_eq!(b_seen.finding.fixed_at, None);
        let a_seen = seen.iter().find(|f| f.finding.rule_id == "eval").unwrap();
        assert_eq!(a_seen.occurrence.change, "existing");
        assert_eq!(a_seen.finding.times_seen, 3);
        // Optional values round-trip as NULL, present ones as themselves, on both statement forms.
        assert_eq!((a_seen.finding.cve.as_deref(), a_seen.finding.package_name.as_deref()), (None, None));
        assert_eq!((a_seen.finding.details.clone(), a_seen.finding.cwe), (None, Some(95)));
        assert_eq!((a_seen.occurrence.start_line, a_seen.finding.file_path.as_deref()), (Some(10), Some("src/app.py")));
        assert_eq!(a_seen.finding.first_seen_scan_id, Some(s1.id));
        assert_eq!(a_seen.finding.last_seen_scan_id, Some(s4.id));

        // Only two findings ever existed.
        let all = store.findings().list_open(repo.project_id, None, 50).await.unwrap();
        assert_eq!(all.items.len(), 2);

        // The project points at the newest completed scan.
        let project = store.projects().get(repo.project_id).await.unwrap();
        assert_eq!(project.latest_scan_id, Some(s4.id));
    }

    async fn dismissed_findings_stay_dismissed_until_reopened(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let owner = store.projects().get(repo.project_id).await.unwrap().owner_id;
        let s1 = scan_with(&store, repo.id, "main", vec![a()]).await;
        let id = store.findings().of_scan(s1.id, None, 1).await.unwrap().items[0].finding.id;

        let dismissed = store.findings().dismiss(id, DismissReason::UsedInTests, Some(owner)).await.unwrap();
        assert_eq!(dismissed.status, "dismissed");
        assert!(matches!(
            store.findings().dismiss(id, DismissReason::FalsePositive, None).await,
            Err(Error::Conflict { .. })
        ));
        scan_with(&store, repo.id, "main", vec![a()]).await;
        assert_eq!(store.findings().get(id).await.unwrap().status, "dismissed");
        assert_eq!(store.findings().open_counts(repo.project_id).await.unwrap().total(), 0);

        let reopened = store.findings().reopen(id).await.unwrap();
        assert_eq!((reopened.status.as_str(), reopened.dismissed_reason), ("open", None));
        assert!(matches!(store.findings().reopen(id).await, Err(Error::Conflict { .. })));
        assert!(matches!(store.findings().reopen(uuid::Uuid::now_v7()).await, Err(Error::NotFound { .. })));
    }

    async fn a_bad_finding_is_named_and_nothing_is_written(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        store.scans().enqueue(NewScan::full(repo.id, TriggerKind::Api, Some("main".into()))).await.unwrap();
        let claim = store.scans().claim_next("w", 1, LEASE).await.unwrap().remove(0);
        let mut bad = b();
        bad.start_line = Some(0);
        let err = store.scans().complete(&claim.lease, vec![a(), bad]).await.unwrap_err();
        assert!(matches!(&err, Error::Invalid { field, .. } if field == "findings[1].start_line"), "{err}");
        assert_eq!(store.scans().get(claim.scan.id).await.unwrap().status, "running");
        assert_eq!(store.findings().open_counts(repo.project_id).await.unwrap().total(), 0);
        // The lease is intact: the worker can still complete correctly.
        store.scans().complete(&claim.lease, vec![a()]).await.unwrap();
    }

    async fn ingestion_spans_many_statements(db: &TestDb) {
        // More findings than one statement holds on either engine (1,000 rows on SQLite, 5,000
        // on Postgres), and a second scan whose new findings sit in its last statement.
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let finding = |i: usize| {
            let mut f = common::finding(&format!("rule-{}", i % 7), &format!("src/f{i}.py"), Severity::ALL[i % 6]);
            f.location_key = format!("k{i}");
            f
        };
        let s1 = scan_with(&store, repo.id, "main", (0..5500).map(finding).collect()).await;
        assert_eq!((s1.findings_total, s1.findings_new), (5500, 5500));
        let s2 = scan_with(&store, repo.id, "main", (500..5800).map(finding).collect()).await;
        assert_eq!((s2.findings_total, s2.findings_new, s2.findings_fixed), (5300, 300, 500));
        assert_eq!(store.findings().open_counts(repo.project_id).await.unwrap().total(), 5300);
    }

    async fn open_findings_page_worst_first_without_gaps(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let many: Vec<_> = (0..30)
            .map(|i| {
                let mut f = common::finding("r", &format!("f{i}.py"), Severity::ALL[i % 6]);
                f.location_key = format!("k{i}");
                f
            })
            .collect();
        scan_with(&store, repo.id, "main", many).await;
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.findings().list_open(repo.project_id, cursor, 7).await.unwrap();
            seen.extend(page.items.iter().map(|f| (f.severity, f.id)));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 30);
        let mut sorted = seen.clone();
        sorted.sort_by(|x, y| y.cmp(x));
        assert_eq!(seen, sorted, "worst first, then newest");
    }

    async fn project_list_shows_latest_scan_counts_and_pages_stably(db: &TestDb) {
        let store = common::store(db).await;
        let owner = common::user(&store).await;
        let mut created = Vec::new();
        for i in 0..12 {
            created.push(common::project(&store, &owner, &format!("p{i:02}")).await.id);
        }
        // Give the newest project a completed scan with one critical finding.
        let repo = store
            .repositories()
            .add(vega_repository::NewRepository {
                project_id: created[11],
                provider: vega_entity::Provider::Upload,
                provider_xid: None,
                full_name: None,
                clone_url: None,
                default_branch: None,
            })
            .await
            .unwrap();
        let scan = scan_with(&store, repo.id, "main", vec![a()]).await;

        let first = store.projects().list_for_owner(owner.id, None, 5).await.unwrap();
        let latest = first.items[0].latest_scan.as_ref().unwrap();
        assert_eq!((latest.id, latest.counts.critical, latest.status.as_str()), (scan.id, 1, "succeeded"));
        assert!(first.items[1].latest_scan.is_none());

        // Projects created between page reads are newer than the cursor: no repeats, no gaps.
        common::project(&store, &owner, "late-1").await;
        let second = store.projects().list_for_owner(owner.id, first.next, 5).await.unwrap();
        common::project(&store, &owner, "late-2").await;
        let third = store.projects().list_for_owner(owner.id, second.next, 5).await.unwrap();
        assert_eq!(third.next, None);
        let listed: Vec<_> = [first, second, third].into_iter().flat_map(|p| p.items).map(|p| p.id).collect();
        assert_eq!(listed, created.iter().rev().copied().collect::<Vec<_>>());

        store.projects().archive(created[0]).await.unwrap();
        let all = store.projects().list_for_owner(owner.id, None, 100).await.unwrap();
        assert!(!all.items.iter().any(|p| p.id == created[0]), "archived projects leave the list");
    }
}
