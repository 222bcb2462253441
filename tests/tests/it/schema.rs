//! The schema's invariants, checked against the migrated database on both engines.

// Test helpers fail the test by panicking.
use chrono::{DateTime, FixedOffset, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DbErr, EntityTrait, SqlErr};
use vega_entity::{findings, projects, repositories, scans, usage_records, users};
use vega_migration::catalog;
use vega_tests::{TestDb, on_both_backends};

fn now() -> DateTime<FixedOffset> {
    Utc::now().fixed_offset()
}

fn id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

async fn user(db: &TestDb) -> users::Model {
    let now = now();
    users::ActiveModel {
        id: Set(id()),
        email: Set(format!("{}@example.com", id().simple())),
        status: Set("active".into()),
        is_admin: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db.conn())
    .await
    .unwrap()
}

/// A user, a project and a repository, the parents most rows need.
async fn repository(db: &TestDb) -> repositories::Model {
    let owner = user(db).await;
    let now = now();
    let project = projects::ActiveModel {
        id: Set(id()),
        owner_id: Set(owner.id),
        name: Set("Vega".into()),
        slug: Set(format!("vega-{}", id().simple())),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db.conn())
    .await
    .unwrap();
    repositories::ActiveModel {
        id: Set(id()),
        project_id: Set(project.id),
        provider: Set("github".into()),
        provider_xid: Set(Some(id().to_string())),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db.conn())
    .await
    .unwrap()
}

fn scan(repo: &repositories::Model, status: &str) -> scans::ActiveModel {
    let now = now();
    scans::ActiveModel {
        id: Set(id()),
        project_id: Set(repo.project_id),
        repository_id: Set(repo.id),
        kind: Set("full".into()),
        trigger_kind: Set("api".into()),
        tracks_default_branch: Set(true),
        status: Set(status.into()),
        priority: Set(2),
        scheduled_at: Set(now),
        attempt: Set(0),
        max_attempts: Set(3),
        count_critical: Set(0),
        count_high: Set(0),
        count_medium: Set(0),
        count_low: Set(0),
        count_info: Set(0),
        count_unknown: Set(0),
        findings_total: Set(0),
        findings_new: Set(0),
        findings_fixed: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

fn finding(repo: &repositories::Model, fingerprint: [u8; 32]) -> findings::ActiveModel {
    let now = now();
    findings::ActiveModel {
        id: Set(id()),
        project_id: Set(repo.project_id),
        repository_id: Set(repo.id),
        fingerprint: Set(fingerprint.to_vec()),
        scanner: Set("semgrep".into()),
        category: Set("sast".into()),
        rule_id: Set("python.lang.security.eval".into()),
        title: Set("eval of untrusted input".into()),
        severity: Set(4),
        scanner_severity: Set(4),
        severity_overridden: Set(false),
        status: Set("open".into()),
        first_seen_at: Set(now),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

fn usage(account: &users::Model, key: &str, quantity: i64) -> usage_records::ActiveModel {
    let now = now();
    usage_records::ActiveModel {
        account_id: Set(account.id),
        meter: Set("scan_seconds".into()),
        quantity: Set(quantity),
        occurred_at: Set(now),
        received_at: Set(now),
        idempotency_key: Set(key.into()),
        properties: Set(serde_json::json!({})),
        ..Default::default()
    }
}

#[track_caller]
fn assert_check_violation(result: Result<impl std::fmt::Debug, DbErr>, constraint: &str) {
    let err = result.expect_err("the row should have been rejected");
    // Postgres: `violates check constraint "x"`; SQLite: `CHECK constraint failed: x`.
    assert!(
        err.to_string().contains(constraint),
        "expected {constraint}, got: {err}"
    );
}

#[track_caller]
fn assert_unique_violation(result: Result<impl std::fmt::Debug, DbErr>) {
    let err = result.expect_err("the row should have been rejected");
    assert!(
        matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        "expected a unique violation, got: {err}"
    );
}

on_both_backends! {
    async fn check_constraints_reject_bad_rows(db: &TestDb) {
        let repo = repository(db).await;
        assert_check_violation(scan(&repo, "exploded").insert(db.conn()).await, "scans_status_check");
        let mut finished_without_time = scan(&repo, "succeeded");
        finished_without_time.finished_at = Set(None);
        assert_check_violation(finished_without_time.insert(db.conn()).await, "scans_finished_check");
        assert_check_violation(scan(&repo, "running").insert(db.conn()).await, "scans_lease_check");

        let account = user(db).await;
        assert_check_violation(
            usage(&account, "k1", -1).insert(db.conn()).await,
            "usage_records_quantity_check",
        );
        let mut short = finding(&repo, [1; 32]);
        short.fingerprint = Set(vec![1; 20]);
        assert_check_violation(short.insert(db.conn()).await, "findings_fingerprint_check");
        let mut loud = finding(&repo, [2; 32]);
        loud.severity = Set(6);
        assert_check_violation(loud.insert(db.conn()).await, "findings_severity_check");

        // A valid row passes, so the rejections above are the constraints and not the fixture.
        scan(&repo, "queued").insert(db.conn()).await.unwrap();
        usage(&account, "k1", 0).insert(db.conn()).await.unwrap();
    }

    async fn fingerprints_are_unique_per_repository(db: &TestDb) {
        let repo = repository(db).await;
        finding(&repo, [7; 32]).insert(db.conn()).await.unwrap();
        assert_unique_violation(finding(&repo, [7; 32]).insert(db.conn()).await);
        let other = repository(db).await;
        finding(&other, [7; 32]).insert(db.conn()).await.unwrap();
    }

    async fn usage_idempotency_keys_are_unique_per_account(db: &TestDb) {
        let account = user(db).await;
        usage(&account, "scan:1:seconds", 30).insert(db.conn()).await.unwrap();
        assert_unique_violation(usage(&account, "scan:1:seconds", 30).insert(db.conn()).await);
        let other = user(db).await;
        usage(&other, "scan:1:seconds", 30).insert(db.conn()).await.unwrap();
    }

    async fn latest_scan_pointer_is_a_real_foreign_key(db: &TestDb) {
        // projects.latest_scan_id and scans.project_id point at each other; the two engines
        // declare the first differently, and both must enforce it.
        let repo = repository(db).await;
        let project = projects::Entity::find_by_id(repo.project_id).one(db.conn()).await.unwrap().unwrap();
        let mut dangling: projects::ActiveModel = project.clone().into();
        dangling.latest_scan_id = Set(Some(id()));
        let err = dangling.update(db.conn()).await.unwrap_err();
        assert!(matches!(err.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))), "{err}");

        let scan = scan(&repo, "queued").insert(db.conn()).await.unwrap();
        let mut pointed: projects::ActiveModel = project.into();
        pointed.latest_scan_id = Set(Some(scan.id));
        pointed.update(db.conn()).await.unwrap();
        scans::Entity::delete_by_id(scan.id).exec(db.conn()).await.unwrap();
        let project = projects::Entity::find_by_id(repo.project_id).one(db.conn()).await.unwrap().unwrap();
        assert_eq!(project.latest_scan_id, None, "ON DELETE SET NULL");
    }

    async fn every_foreign_key_leads_a_full_index_and_names_its_delete_rule(db: &TestDb) {
        let fks = catalog::foreign_keys(db.conn()).await.unwrap();
        assert!(fks.len() >= 25, "found only {} foreign keys", fks.len());
        let indexes = catalog::full_indexes(db.conn()).await.unwrap();
        for fk in &fks {
            assert!(
                indexes.iter().any(|index| fk.is_led_by(index)),
                "{}.{:?} has no full index that starts with it (the seed's slow-delete trap)",
                fk.table, fk.columns
            );
            assert_ne!(fk.on_delete, "NO ACTION", "{}.{:?} does not say what happens on delete", fk.table, fk.columns);
        }
    }
}

/// The hot tables carry the storage settings migration 000011 gives them (Postgres only:
/// SQLite has none), so vacuum keeps pace with the queue whatever the history holds.
#[tokio::test]
async fn hot_tables_vacuum_after_a_fixed_amount_of_work() {
    use sea_orm::{ConnectionTrait, Statement};
    let db = TestDb::postgres().await;
    let options = |table: &'static str| {
        let db = db.conn().clone();
        async move {
            let row = db
                .query_one_raw(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "SELECT coalesce(reloptions, '{}') AS o FROM pg_class WHERE relname = $1",
                    [table.into()],
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<Vec<String>>("", "o").unwrap()
        }
    };
    for table in ["scans", "worker_heartbeats", "api_keys", "projects"] {
        let set = options(table).await;
        for option in [
            "autovacuum_vacuum_scale_factor=0",
            "fillfactor=",
            "autovacuum_vacuum_threshold=",
        ] {
            assert!(
                set.iter().any(|o| o.starts_with(option)),
                "{table}: {option} missing from {set:?}"
            );
        }
    }
    let scans = options("scans").await;
    assert!(
        scans.contains(&"autovacuum_vacuum_insert_scale_factor=0".to_owned()),
        "{scans:?}"
    );
}
