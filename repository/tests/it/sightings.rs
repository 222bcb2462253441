//! Sightings as runs (`findings/runs.rs`): a rescan writes only what changed, and every scan's
//! view of its findings, counts and history keeps its answer across gaps and moves.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};
use uuid::Uuid;
use vega_entity::{DismissReason, Severity, TriggerKind, scans};
use vega_migration::{Migrator, MigratorTrait};
use vega_repository::{Dismissal, NewFinding, NewScan, Store};
use vega_tests::{TestDb, on_both_backends};

use crate::common;

const LEASE: Duration = Duration::from_secs(600);

async fn full_scan(store: &Store, repository_id: Uuid, findings: Vec<NewFinding>) -> scans::Model {
    common::scan_with(store, repository_id, "main", findings).await
}

/// Completes a SAST-only scan of main: a second default-branch stream of the repository.
async fn sast_scan(store: &Store, repository_id: Uuid, findings: Vec<NewFinding>) -> scans::Model {
    let mut partial = NewScan::full(repository_id, TriggerKind::Api, Some("main".into()));
    partial.kind = vega_entity::ScanKind::Sast;
    common::complete_scan(store, partial, findings).await
}

async fn scalar(db: &impl ConnectionTrait, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

/// Rows inserted and updated in `table` as Postgres counts them.
async fn writes(db: &impl ConnectionTrait, table: &str) -> (i64, i64) {
    let ins = scalar(
        db,
        &format!("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = '{table}'"),
    )
    .await;
    let upd = scalar(
        db,
        &format!("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = '{table}'"),
    )
    .await;
    (ins, upd)
}

/// Completes a full scan of main on a pool of its own, then closes it and waits until its
/// backends are gone: a backend reports its table statistics when it exits.
async fn scan_alone(db: &TestDb, repository_id: Uuid, findings: Vec<NewFinding>) -> scans::Model {
    const NAME: &str = "vega-scan-alone";
    let separator = if db.url().contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}application_name={NAME}", db.url());
    let conn = sea_orm::Database::connect(url).await.unwrap();
    let store = Store::from_parts(conn.clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap();
    let scan = full_scan(&store, repository_id, findings).await;
    drop(store);
    conn.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = format!(
        "SELECT count(*) FROM pg_stat_activity \
          WHERE datname = current_database() AND application_name = '{NAME}'"
    );
    while scalar(db.conn(), &alive).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the scan's backends did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A backend leaves pg_stat_activity just before it reports its statistics.
    tokio::time::sleep(Duration::from_millis(200)).await;
    scan
}

fn findings(n: usize) -> Vec<NewFinding> {
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

#[tokio::test]
async fn a_rescan_writes_only_what_changed() {
    let db = TestDb::postgres().await;
    let setup = common::store(&db).await;
    let repo = common::repository(&setup).await;
    let first = findings(200);
    scan_alone(&db, repo.id, first.clone()).await;

    // The same set again: not one finding or run written.
    let (findings_before, runs_before) = (
        writes(db.conn(), "findings").await,
        writes(db.conn(), "sighting_runs").await,
    );
    let same = scan_alone(&db, repo.id, first.clone()).await;
    assert_eq!(
        (same.findings_total, same.findings_new, same.findings_fixed),
        (200, 0, 0)
    );
    assert_eq!(
        writes(db.conn(), "findings").await,
        findings_before,
        "findings (ins, upd)"
    );
    assert_eq!(
        writes(db.conn(), "sighting_runs").await,
        runs_before,
        "runs (ins, upd)"
    );
    let page = setup.findings().of_scan(same.id, None, 500).await.unwrap();
    assert_eq!(page.items.len(), 200);
    assert!(page.items.iter().all(|f| f.occurrence.change == "existing"));

    // Three gone, one moved, two new: only those are written.
    let mut changed = first[3..].to_vec();
    changed[0].start_line = Some(40);
    changed[0].end_line = Some(41);
    changed.extend(findings(202)[200..].iter().cloned());
    let changed_scan = scan_alone(&db, repo.id, changed).await;
    assert_eq!(
        (
            changed_scan.findings_total,
            changed_scan.findings_new,
            changed_scan.findings_fixed
        ),
        (199, 2, 3)
    );
    let (findings_after, runs_after) = (
        writes(db.conn(), "findings").await,
        writes(db.conn(), "sighting_runs").await,
    );
    // Findings: two inserted; the moved one and the three fixed updated.
    assert_eq!(
        (
            findings_after.0 - findings_before.0,
            findings_after.1 - findings_before.1
        ),
        (2, 4)
    );
    // Runs: two new and the moved one's opened; the three gone and the moved one's closed.
    assert_eq!(
        (runs_after.0 - runs_before.0, runs_after.1 - runs_before.1),
        (3, 4)
    );
    let seen = setup
        .findings()
        .of_scan(changed_scan.id, None, 500)
        .await
        .unwrap()
        .items;
    let moved = seen.iter().find(|f| f.finding.rule_id == "rule-3").unwrap();
    assert_eq!(
        (
            moved.occurrence.change.as_str(),
            moved.occurrence.start_line
        ),
        ("existing", Some(40))
    );
    assert_eq!(
        seen.iter().filter(|f| f.occurrence.change == "new").count(),
        2
    );
    // What the scan before saw is unchanged.
    let before = setup
        .findings()
        .of_scan(same.id, None, 500)
        .await
        .unwrap()
        .items;
    let moved_before = before
        .iter()
        .find(|f| f.finding.rule_id == "rule-3")
        .unwrap();
    assert_eq!(
        (before.len(), moved_before.occurrence.start_line),
        (200, Some(10))
    );
}

on_both_backends! {
    async fn a_finding_seen_across_100_scans_with_gaps_and_a_move(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let steady = common::finding("steady", "src/a.py", Severity::High);
        let present = |i: usize| i % 7 != 3 && !(40..45).contains(&i);
        let line = |i: usize| if i < 60 { 10 } else { 20 };
        let gappy = |i: usize| {
            let mut f = common::finding("gappy", "src/b.py", Severity::Medium);
            f.start_line = Some(line(i));
            f.end_line = Some(line(i) + 1);
            f
        };
        let mut scans = Vec::new();
        for i in 0..100 {
            let mut batch = vec![steady.clone()];
            if present(i) {
                batch.push(gappy(i));
            }
            scans.push(full_scan(&store, repo.id, batch).await);
        }
        let mut gappy_id = None;
        for (i, scan) in scans.iter().enumerate() {
            let before = i.checked_sub(1).map(present);
            let seen = store.findings().of_scan(scan.id, None, 10).await.unwrap().items;
            assert_eq!(seen.len(), 1 + usize::from(present(i)), "scan {i}");
            assert_eq!(scan.findings_total, 1 + i32::from(present(i)), "scan {i}");
            assert_eq!(scan.findings_fixed, i32::from(before == Some(true) && !present(i)), "scan {i}");
            let steady_seen = seen.iter().find(|f| f.finding.rule_id == "steady").unwrap();
            assert_eq!(steady_seen.occurrence.change, if i == 0 { "new" } else { "existing" });
            match seen.iter().find(|f| f.finding.rule_id == "gappy") {
                Some(g) => {
                    gappy_id = Some(g.finding.id);
                    let change = match before {
                        None => "new",
                        Some(false) => "reopened",
                        Some(true) => "existing",
                    };
                    assert_eq!(g.occurrence.change, change, "scan {i}");
                    assert_eq!(g.occurrence.start_line, Some(line(i)), "scan {i}");
                    assert_eq!(g.occurrence.scan_id, scan.id);
                }
                None => assert!(!present(i), "scan {i}"),
            }
        }
        let gappy_id = gappy_id.unwrap();
        let last_present = (0..100).rev().find(|&i| present(i)).unwrap();
        let sightings = store.findings().sightings(gappy_id).await.unwrap();
        assert_eq!(sightings.times_seen, i64::try_from((0..100).filter(|&i| present(i)).count()).unwrap());
        assert_eq!(sightings.first_seen_scan_id, Some(scans[0].id));
        assert_eq!(sightings.last_seen_scan_id, Some(scans[last_present].id));
        let steady_id = store.findings().of_scan(scans[0].id, None, 10).await.unwrap().items
            .into_iter().find(|f| f.finding.rule_id == "steady").unwrap().finding.id;
        let steady_sightings = store.findings().sightings(steady_id).await.unwrap();
        assert_eq!((steady_sightings.times_seen, steady_sightings.last_seen_scan_id), (100, Some(scans[99].id)));

        // One run per stretch of scans that saw it unchanged: the steady finding's one, and one
        // per appearance or move of the other.
        let stretches = (0..100)
            .filter(|&i| present(i) && (i == 0 || !present(i - 1) || line(i) != line(i - 1)))
            .count();
        let runs = scalar(db.conn(), "SELECT count(*) FROM sighting_runs").await;
        assert_eq!(runs, 1 + i64::try_from(stretches).unwrap());
    }
}

/// What every scan of a repository saw, as `of_scan` answers: (scan, rule, change, line).
async fn every_view(
    store: &Store,
    scans: &[scans::Model],
) -> Vec<(Uuid, String, String, Option<i32>)> {
    let mut views = Vec::new();
    for scan in scans {
        for f in store
            .findings()
            .of_scan(scan.id, None, 100)
            .await
            .unwrap()
            .items
        {
            views.push((
                scan.id,
                f.finding.rule_id,
                f.occurrence.change,
                f.occurrence.start_line,
            ));
        }
    }
    views
}

on_both_backends! {
    async fn existing_occurrences_become_the_same_runs(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let mut scans = Vec::new();
        for i in 0..12 {
            let mut batch = vec![common::finding("steady", "src/a.py", Severity::High)];
            if i % 4 != 2 {
                let mut moving = common::finding("moving", "src/b.py", Severity::Low);
                moving.start_line = Some(if i < 6 { 10 } else { 30 });
                moving.end_line = moving.start_line;
                batch.push(moving);
            }
            scans.push(full_scan(&store, repo.id, batch).await);
        }
        store
            .scans()
            .enqueue(NewScan::full(repo.id, TriggerKind::Api, Some("feature".into())))
            .await
            .unwrap();
        let claim = store.scans().claim_next("w", 1, LEASE).await.unwrap().remove(0);
        scans.push(
            store
                .scans()
                .complete(&claim.lease, vec![common::finding("branch-only", "src/c.py", Severity::High)])
                .await
                .unwrap(),
        );
        let views = every_view(&store, &scans).await;
        assert_eq!(views.len(), 12 + 9 + 1);
        let findings = store.findings().list_open(repo.project_id, None, 10).await.unwrap().items;
        let mut sightings = Vec::new();
        for f in &findings {
            sightings.push(store.findings().sightings(f.id).await.unwrap());
        }

        // Back to one occurrence per finding per scan (undoing the migrations from
        // m20261206_000015_sighting_runs on), then forward again.
        let since_runs = Migrator::migrations()
            .iter()
            .rev()
            .position(|m| m.name() == "m20261206_000015_sighting_runs")
            .unwrap();
        Migrator::down(db.conn(), Some(u32::try_from(since_runs).unwrap() + 1)).await.unwrap();
        let occurrences = scalar(db.conn(), "SELECT count(*) FROM finding_occurrences").await;
        let total: i32 = scans.iter().map(|s| s.findings_total).sum();
        assert_eq!(occurrences, i64::from(total));
        Migrator::up(db.conn(), None).await.unwrap();

        let store = if db.backend() == vega_tests::Backend::Postgres {
            // Fresh connections: the old ones' prepared statements name the dropped tables.
            Store::from_parts(
                sea_orm::Database::connect(db.url()).await.unwrap(),
                vega_tests::scratch_blob_store(),
            )
            .await
            .unwrap()
        } else {
            store
        };
        assert_eq!(every_view(&store, &scans).await, views);
        for (f, before) in findings.iter().zip(&sightings) {
            assert_eq!(&store.findings().sightings(f.id).await.unwrap(), before, "{}", f.rule_id);
        }
        // The steady finding's one run, the moving one's four (scans 0-1, 3-5, 7-9 after its
        // move, 11), the branch's one.
        let runs = scalar(db.conn(), "SELECT count(*) FROM sighting_runs").await;
        assert_eq!(runs, 1 + 4 + 1);
    }
}

on_both_backends! {
    async fn a_repeated_scan_writes_nothing_only_while_no_other_scan_can_have_changed_its_findings(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let set = findings(3);
        full_scan(&store, repo.id, set.clone()).await;
        let again = full_scan(&store, repo.id, set.clone()).await;
        assert_eq!((again.findings_total, again.findings_new), (3, 0));
        let moved_id = store.findings().of_scan(again.id, None, 10).await.unwrap().items
            .into_iter().find(|f| f.finding.rule_id == "rule-1").unwrap().finding.id;

        // A SAST-only scan of main sees rule-1 elsewhere: the finding moves there.
        let mut moved = set[1].clone();
        moved.start_line = Some(70);
        moved.end_line = Some(71);
        sast_scan(&store, repo.id, vec![moved]).await;
        assert_eq!(store.findings().get(moved_id).await.unwrap().start_line, Some(70));

        // The full scan's set again, the same digest as its stream's last scan: another
        // stream changed the finding since, so it is written back, not skipped.
        let third = full_scan(&store, repo.id, set.clone()).await;
        assert_eq!(store.findings().get(moved_id).await.unwrap().start_line, Some(10));
        let seen = store.findings().of_scan(third.id, None, 10).await.unwrap().items;
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|f| f.occurrence.change == "existing" && f.occurrence.start_line == Some(10)));
        assert_eq!((third.findings_total, third.findings_new, third.findings_fixed), (3, 0, 0));
    }
}

on_both_backends! {
    async fn a_full_scan_fixes_what_it_did_not_see_however_it_became_open(db: &TestDb) {
        // The fixed sweep runs only when the repository has more open default-branch findings
        // than the scan holds open runs of: a finding opened by another stream, and one
        // reopened by a person, must both still be found.
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let set = findings(3);
        let first = full_scan(&store, repo.id, set.clone()).await;
        let id_of = |rule: &str, items: &[vega_repository::ScanFinding]| {
            items.iter().find(|f| f.finding.rule_id == rule).unwrap().finding.id
        };
        let items = store.findings().of_scan(first.id, None, 10).await.unwrap().items;
        let dismissed = id_of("rule-0", &items);
        store
            .findings()
            .dismiss(dismissed, Dismissal::because(DismissReason::FalsePositive))
            .await
            .unwrap();

        // A SAST-only scan of main adds a finding the full scans never report.
        let extra = common::finding("rule-extra", "src/extra.py", Severity::Low);
        let added = sast_scan(&store, repo.id, vec![extra]).await;
        let extra_id = store.findings().of_scan(added.id, None, 10).await.unwrap().items[0].finding.id;

        // The full scan sees its three again: three runs against three open findings, but one
        // of the three it saw is dismissed, so the extra one is still found and fixed.
        let second = full_scan(&store, repo.id, set.clone()).await;
        assert_eq!((second.findings_total, second.findings_fixed, second.count_dismissed), (3, 1, 1));
        assert_eq!(store.findings().get(extra_id).await.unwrap().status, "fixed");
        assert_eq!(store.findings().get(dismissed).await.unwrap().status, "dismissed");

        // A person reopens the dismissed finding; the next full scan does not see it.
        store.findings().reopen(dismissed).await.unwrap();
        let third = full_scan(&store, repo.id, set[1..].to_vec()).await;
        assert_eq!((third.findings_total, third.findings_fixed, third.count_dismissed), (2, 1, 0));
        assert_eq!(store.findings().get(dismissed).await.unwrap().status, "fixed");

        // Nothing left to fix: the same set again fixes nothing and counts the same.
        let fourth = full_scan(&store, repo.id, set[1..].to_vec()).await;
        assert_eq!((fourth.findings_total, fourth.findings_fixed), (2, 0));
        let counts = store.findings().open_counts(repo.project_id).await.unwrap();
        assert_eq!(counts.total(), 2);
    }
}

on_both_backends! {
    async fn a_rescan_compares_only_the_buckets_that_changed_and_answers_the_same(db: &TestDb) {
        // 400 findings in 128 buckets of fingerprints: one disappears, one moves and one is
        // new; the rest of their buckets are compared, every other bucket is not.
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let first = findings(400);
        let one = full_scan(&store, repo.id, first.clone()).await;
        let mut second = first.clone();
        let gone = second.remove(17);
        second[100].start_line = Some(900);
        second[100].end_line = Some(901);
        let moved = second[100].rule_id.clone();
        second.push(common::finding("rule-new", "src/new.py", Severity::Low));
        let two = full_scan(&store, repo.id, second.clone()).await;
        assert_eq!(
            (two.findings_total, two.findings_new, two.findings_fixed),
            (400, 1, 1)
        );
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.findings().of_scan(two.id, after, 100).await.unwrap();
            seen.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 400);
        assert!(!seen.iter().any(|s| s.finding.rule_id == gone.rule_id));
        let new = seen.iter().find(|s| s.finding.rule_id == "rule-new").unwrap();
        assert_eq!(new.occurrence.change, "new");
        let moved = seen.iter().find(|s| s.finding.rule_id == moved).unwrap();
        assert_eq!((moved.occurrence.start_line, moved.occurrence.change.as_str()), (Some(900), "existing"));
        assert_eq!(seen.iter().filter(|s| s.occurrence.change == "existing").count(), 399);

        // The one that disappeared was seen once; the others twice, the moved one in two runs.
        let gone_id = store.findings().of_scan(one.id, None, 500).await.unwrap().items
            .into_iter().find(|s| s.finding.rule_id == gone.rule_id).unwrap().finding.id;
        let sightings = store.findings().sightings(gone_id).await.unwrap();
        assert_eq!((sightings.times_seen, sightings.last_seen_scan_id), (1, Some(one.id)));
        let kept = store.findings().sightings(seen[0].finding.id).await.unwrap();
        assert_eq!(kept.times_seen, if seen[0].finding.rule_id == "rule-new" { 1 } else { 2 });
        let runs = scalar(db.conn(), "SELECT count(*) FROM sighting_runs").await;
        assert_eq!(runs, 400 + 2, "one per finding, and the moved and the new one's");

        // The same set again repeats: nothing changes, and the answers stay.
        let three = full_scan(&store, repo.id, second).await;
        assert_eq!((three.findings_total, three.findings_new, three.findings_fixed), (400, 0, 0));
        assert_eq!(scalar(db.conn(), "SELECT count(*) FROM sighting_runs").await, runs);
    }
}
