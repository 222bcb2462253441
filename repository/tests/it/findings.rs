//! Scan completion with findings, and the findings and project-list read paths.

use std::time::Duration;

use vega_entity::{DismissReason, Severity, TriggerKind};
use vega_repository::{Delta, Dismissal, Error, NewFinding, NewScan, SlaPolicy, TriageState};
use vega_tests::on_both_backends;

use crate::common;
use crate::common::scan_with;

const LEASE: Duration = Duration::from_secs(60);

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
        // Optional values round-trip as NULL, present ones as themselves, on both statement forms.
        assert_eq!((a_seen.finding.cve.as_deref(), a_seen.finding.package_name.as_deref()), (None, None));
        assert_eq!((a_seen.finding.details.clone(), a_seen.finding.cwe), (None, Some(95)));
        assert_eq!((a_seen.occurrence.start_line, a_seen.finding.file_path.as_deref()), (Some(10), Some("src/app.py")));
        let sightings = store.findings().sightings(a_seen.finding.id).await.unwrap();
        assert_eq!(sightings.times_seen, 3);
        assert_eq!(sightings.first_seen_scan_id, Some(s1.id));
        assert_eq!(sightings.last_seen_scan_id, Some(s4.id));
        assert_eq!(sightings.last_seen_at, s4.finished_at.unwrap());

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
        let s1 = scan_with(&store, repo.id, "main", vec![a()]).await;
        let id = store.findings().of_scan(s1.id, None, 1).await.unwrap().items[0].finding.id;

        let dismissed = store.findings().dismiss(id, Dismissal::because(DismissReason::UsedInTests)).await.unwrap();
        assert_eq!(dismissed.status, "dismissed");
        assert!(matches!(
            store.findings().dismiss(id, Dismissal::because(DismissReason::FalsePositive)).await,
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
            seen.extend(page.items.iter().map(|f| (std::cmp::Reverse(f.severity), f.first_seen_at, f.id)));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 30);
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "worst first, then oldest");
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
                default_branch: Some("main".into()),
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

    async fn only_the_default_branch_decides_status_counts_and_the_latest_scan(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let c = || common::finding("xss", "src/view.py", Severity::Medium);
        let main1 = scan_with(&store, repo.id, "main", vec![a(), b()]).await;
        let counts_before = store.findings().open_counts(repo.project_id).await.unwrap();
        let branch = scan_with(&store, repo.id, "feature/x", vec![b(), c()]).await;
        // The branch scan has its own counts and moves nothing of main's.
        assert_eq!((branch.findings_total, branch.count_high, branch.count_medium), (2, 1, 1));
        assert_eq!(store.findings().open_counts(repo.project_id).await.unwrap(), counts_before);
        let project = store.projects().get(repo.project_id).await.unwrap();
        assert_eq!(project.latest_scan_id, Some(main1.id), "a branch scan is never the project's latest");
        let rules = |page: vega_repository::Page<vega_entity::findings::Model, uuid::Uuid>| {
            page.items.into_iter().map(|f| f.rule_id).collect::<Vec<_>>()
        };
        let findings = store.findings();
        let compare = |delta| findings.compare(branch.id, delta, None, 10);
        assert_eq!(rules(compare(Delta::Introduced).await.unwrap()), ["xss"]);
        assert_eq!(rules(compare(Delta::Absent).await.unwrap()), ["eval"]);
        assert_eq!(rules(compare(Delta::Unchanged).await.unwrap()), ["sql-injection"]);
        let c_id = compare(Delta::Introduced).await.unwrap().items[0].id;
        assert!(!store.findings().get(c_id).await.unwrap().on_default_branch);
        let listed = store.findings().list_open(repo.project_id, None, 50).await.unwrap();
        assert_eq!(listed.items.len(), 2, "a branch-only finding is not in main's open list");

        // main's next full scan without A fixes A; another branch scan seeing A never reopens it.
        let main2 = scan_with(&store, repo.id, "main", vec![b()]).await;
        assert_eq!(main2.findings_fixed, 1);
        let a_id = store.findings().of_scan(main1.id, None, 10).await.unwrap().items.iter()
            .find(|f| f.finding.rule_id == "eval").unwrap().finding.id;
        assert_eq!(store.findings().get(a_id).await.unwrap().status, "fixed");
        assert_eq!(rules(compare(Delta::Absent).await.unwrap()), ["eval"], "as of the branch scan's completion");
        let refused = store.findings().compare(main2.id, Delta::Introduced, None, 10).await.unwrap_err();
        assert!(matches!(refused, vega_repository::Error::Invalid { .. }), "{refused:?}");
        let stale = scan_with(&store, repo.id, "feature/x", vec![a(), b(), c()]).await;
        assert_eq!(store.findings().get(a_id).await.unwrap().status, "fixed");
        let introduced = rules(store.findings().compare(stale.id, Delta::Introduced, None, 10).await.unwrap());
        assert_eq!(introduced.len(), 2, "fixed on main and never on main: both introduced ({introduced:?})");
        assert_eq!(store.projects().get(repo.project_id).await.unwrap().latest_scan_id, Some(main2.id));

        // The branch finding reaches main: it becomes main's, and the project's counts show it.
        let main3 = scan_with(&store, repo.id, "main", vec![b(), c()]).await;
        assert!(store.findings().get(c_id).await.unwrap().on_default_branch);
        assert_eq!((main3.count_high, main3.count_medium), (1, 1));
        let summary = store.projects().list_for_owner(project.owner_id, None, 10).await.unwrap().items.remove(0);
        let latest = summary.latest_scan.unwrap();
        assert_eq!((latest.id, latest.counts.total(), latest.dismissed), (main3.id, 2, 0));
    }

    async fn counts_leave_dismissed_findings_apart(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let s1 = scan_with(&store, repo.id, "main", vec![a(), b()]).await;
        assert_eq!((s1.count_critical, s1.count_high, s1.count_dismissed), (1, 1, 0));
        let b_id = store.findings().of_scan(s1.id, None, 10).await.unwrap().items.iter()
            .find(|f| f.finding.rule_id == "sql-injection").unwrap().finding.id;
        store.findings().dismiss(b_id, Dismissal::because(DismissReason::WontFix)).await.unwrap();
        let s2 = scan_with(&store, repo.id, "main", vec![a(), b()]).await;
        assert_eq!((s2.count_critical, s2.count_high, s2.count_dismissed, s2.findings_total), (1, 0, 1, 2));
        let owner = store.projects().get(repo.project_id).await.unwrap().owner_id;
        let latest = store.projects().list_for_owner(owner, None, 10).await.unwrap().items.remove(0).latest_scan.unwrap();
        assert_eq!((latest.counts.high, latest.counts.critical, latest.dismissed), (0, 1, 1));
    }

    async fn triage_transitions_are_fenced_recorded_and_survive_rescans(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let s1 = scan_with(&store, repo.id, "main", vec![a()]).await;
        let id = store.findings().of_scan(s1.id, None, 1).await.unwrap().items[0].finding.id;

        let confirmed = store.findings().confirm(id).await.unwrap();
        assert_eq!(TriageState::of(&confirmed), TriageState::Confirmed);
        assert!(matches!(store.findings().confirm(id).await, Err(Error::Conflict { .. })));
        // A confirmed finding is still open: counted, listed.
        assert_eq!(store.findings().open_counts(repo.project_id).await.unwrap().critical, 1);

        // An override with its reason survives the tool's later severity.
        store.findings().override_severity(id, Severity::Low, "behind the VPN").await.unwrap();
        let mut louder = a();
        louder.severity = Severity::Critical;
        let s2 = scan_with(&store, repo.id, "main", vec![louder]).await;
        let after = store.findings().get(id).await.unwrap();
        assert_eq!((after.severity, after.scanner_severity, after.severity_reason.as_deref()),
                   (Severity::Low.as_i16(), Severity::Critical.as_i16(), Some("behind the VPN")));
        assert_eq!((s2.count_low, s2.count_critical), (1, 0), "counts use the effective severity");
        assert!(matches!(store.findings().override_severity(id, Severity::Low, "").await, Err(Error::Invalid { .. })));

        // A dismissal with a comment and an expiry; the expiry reopens it by itself.
        let past = chrono::Utc::now().fixed_offset() - chrono::Duration::seconds(1);
        let refused = store.findings().dismiss(id, Dismissal { until: Some(past), ..Dismissal::because(DismissReason::AcceptedRisk) }).await;
        assert!(matches!(&refused, Err(Error::Invalid { field, .. }) if field == "until"), "{refused:?}");
        let until = chrono::Utc::now().fixed_offset() + chrono::Duration::milliseconds(300);
        let dismissed = store.findings().dismiss(id, Dismissal {
            reason: DismissReason::AcceptedRisk,
            comment: Some("until the vendor ships a fix".into()),
            until: Some(until),
        }).await.unwrap();
        assert_eq!((dismissed.dismissed_comment.as_deref(), dismissed.confirmed_at), (Some("until the vendor ships a fix"), None));
        assert_eq!(store.findings().expire_dismissals(10).await.unwrap(), 0, "not yet due");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.findings().expire_dismissals(10).await.unwrap(), 1);
        let reopened = store.findings().get(id).await.unwrap();
        assert_eq!((TriageState::of(&reopened), reopened.dismissed_comment), (TriageState::Open, None));
        store.findings().clear_severity_override(id).await.unwrap();
        assert!(matches!(store.findings().clear_severity_override(id).await, Err(Error::Conflict { .. })));

        // The history reads in order, each with the state it left and its actor.
        let history = store.findings().history(id, None, 50).await.unwrap().items;
        let actions: Vec<(&str, &str)> = history.iter()
            .map(|e| (e.action.as_str(), e.data["from"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(actions, [
            ("finding.confirmed", "open"),
            ("finding.severity_overridden", "critical"),
            ("finding.dismissed", "confirmed"),
            ("finding.dismissal_expired", ""),
            ("finding.severity_restored", "low"),
        ]);
        assert!(history.iter().all(|e| e.actor_type == "system"));
        let second = store.findings().history(id, Some(vega_repository::EventCursor { created_at: history[1].created_at, id: history[1].id }), 50).await.unwrap();
        assert_eq!(second.items.len(), 3);
    }

    async fn overdue_findings_list_worst_first_under_the_projects_sla(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        scan_with(&store, repo.id, "main", vec![a(), b(), common::finding("weak-hash", "src/c.py", Severity::Low)]).await;
        // Nothing is a day old: nothing is overdue under the defaults.
        let none = store.findings().overdue(repo.project_id, SlaPolicy::DEFAULT, None, 10).await.unwrap();
        assert!(none.items.is_empty());
        // A policy of zero-day windows cannot be set; the project's settings apply over the
        // defaults, and a severity without days is never overdue.
        assert!(matches!(store.projects().set_sla(repo.project_id, SlaPolicy { high: Some(0), ..SlaPolicy::DEFAULT }).await, Err(Error::Invalid { .. })));
        let global = SlaPolicy { critical: Some(1), high: Some(1), medium: None, low: Some(1) };
        store.projects().set_sla(repo.project_id, SlaPolicy { critical: None, high: None, medium: None, low: Some(3650) }).await.unwrap();
        // First sightings two days ago.
        use sea_orm::ConnectionTrait;
        let raw = db.conn();
        let two_days_ago = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now() - chrono::Duration::days(2), 6).fixed_offset();
        raw.execute_raw(sea_orm::Statement::from_sql_and_values(
            raw.get_database_backend(),
            "UPDATE findings SET first_seen_at = $1 WHERE project_id = $2",
            [two_days_ago.into(), repo.project_id.into()],
        )).await.unwrap();
        let page = store.findings().overdue(repo.project_id, global, None, 1).await.unwrap();
        assert_eq!(page.items[0].finding.rule_id, "eval", "worst first");
        assert_eq!(page.items[0].due_at, page.items[0].finding.first_seen_at + chrono::Duration::days(1));
        let rest = store.findings().overdue(repo.project_id, global, page.next, 10).await.unwrap();
        let rules: Vec<_> = rest.items.iter().map(|o| o.finding.rule_id.as_str()).collect();
        assert_eq!(rules, ["sql-injection"], "the project's 3650 days keep the low one in time");
    }
}
