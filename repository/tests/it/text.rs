//! Input the two engines would treat differently gets one answer on both: U+0000 in any text
//! or JSON (Postgres cannot store it, SQLite would), and caller timestamps outside what both
//! store alike. Each is `Error::Invalid` naming the field, and nothing is written.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use sea_orm::{ConnectionTrait, Statement};
use vega_entity::{Meter, Severity, TriggerKind};
use vega_repository::{Error, Lease, NewApiKey, NewEvent, NewScan, NewUsage, NewUser};
use vega_tests::on_both_backends;

use crate::common;

fn invalid_field<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

async fn count(db: &impl ConnectionTrait, table: &str) -> i64 {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT count(*) FROM {table}"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index(0)
    .unwrap()
}

fn at(year: i32) -> DateTime<FixedOffset> {
    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0)
        .unwrap()
        .fixed_offset()
}

on_both_backends! {
    async fn nul_in_any_text_or_json_is_invalid_and_writes_nothing(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let owner = store.projects().get(repo.project_id).await.unwrap().owner_id;
        store
            .scans()
            .enqueue(NewScan::full(repo.id, TriggerKind::Api, Some("main".into())))
            .await
            .unwrap();
        let lease = store
            .scans()
            .claim_next("w", 1, Duration::from_secs(60))
            .await
            .unwrap()
            .remove(0)
            .lease;

        let with_details = |details: serde_json::Value| {
            let mut findings: Vec<_> = (0..5)
                .map(|i| common::finding(&format!("r{i}"), "a.py", Severity::Low))
                .collect();
            findings[3].details = Some(details);
            findings
        };
        for (details, field) in [
            (serde_json::json!({"k": "a\u{0}b"}), "findings[3].details.k"),
            (serde_json::json!({"k\u{0}": 1}), "findings[3].details (a key)"),
            (
                serde_json::json!({"a": [{"b": ["ok", "\u{0}"]}]}),
                "findings[3].details.a[0].b[1]",
            ),
        ] {
            let err = store.scans().complete(&lease, with_details(details)).await;
            assert_eq!(invalid_field(err), field);
        }
        let bad_lease = Lease {
            worker_id: "w\u{0}".into(),
            ..lease.clone()
        };
        for result in [
            store.scans().complete(&bad_lease, vec![]).await.map(|_| ()),
            store.scans().heartbeat(&bad_lease, Duration::from_secs(60)).await.map(|_| ()),
            store.scans().fail(&bad_lease, "boom", "x").await.map(|_| ()),
        ] {
            assert_eq!(invalid_field(result), "lease.worker_id");
        }
        assert_eq!(
            invalid_field(store.scans().fail(&lease, "boom", "trace\u{0}").await),
            "message"
        );
        assert_eq!(invalid_field(store.scans().held_by("w\u{0}").await), "worker_id");
        assert_eq!(count(db.conn(), "findings").await, 0);
        assert_eq!(
            store.scans().get(lease.scan_id).await.unwrap().status,
            "running",
            "nothing was written to the scan"
        );

        let event = NewEvent {
            action: "scan.completed".into(),
            project_id: None,
            subject: None,
            request_id: None,
            ip_address: None,
            data: serde_json::json!({"note": "\u{0}"}),
        };
        let events = count(db.conn(), "events").await;
        assert_eq!(invalid_field(store.events().append(event).await), "data.note");
        assert_eq!(count(db.conn(), "events").await, events);

        let usage = NewUsage {
            account_id: owner,
            meter: Meter::ScanSeconds,
            quantity: 1,
            occurred_at: Utc::now().fixed_offset(),
            idempotency_key: "k".into(),
            project_id: None,
            scan_id: None,
            properties: serde_json::json!({"scanner": "sem\u{0}grep"}),
        };
        assert_eq!(
            invalid_field(store.usage().record(usage.clone()).await),
            "properties.scanner"
        );
        assert_eq!(
            invalid_field(store.usage().record_many(vec![usage.clone(), usage]).await),
            "records[0].properties.scanner"
        );
        assert_eq!(count(db.conn(), "usage_records").await, 0);

        let user = NewUser {
            email: "a\u{0}@example.com".into(),
            display_name: None, is_admin: false,
        };
        assert_eq!(invalid_field(store.users().create(user).await), "email");
        assert_eq!(
            invalid_field(store.users().find_by_email("a\u{0}@example.com").await),
            "email"
        );
        assert_eq!(
            invalid_field(store.projects().get_by_slug(owner, "we\u{0}b").await),
            "slug"
        );
    }

    async fn timestamps_are_refused_outside_years_1_to_9999_and_stored_alike(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let owner = store.projects().get(repo.project_id).await.unwrap().owner_id;
        let key = |expires_at| NewApiKey {
            user_id: owner,
            project_id: None,
            name: "ci".into(),
            scopes: vec!["scans:read".into()],
            expires_at: Some(expires_at),
        };
        assert_eq!(invalid_field(store.api_keys().issue(key(at(10_000))).await), "expires_at");
        assert_eq!(invalid_field(store.api_keys().issue(key(at(-5000))).await), "expires_at");
        assert_eq!(
            invalid_field(store.usage().totals(owner, at(0), at(2026)).await),
            "from"
        );
        assert_eq!(count(db.conn(), "api_keys").await, 0);

        // Nanoseconds and a non-UTC offset read back the same on both engines: the stored
        // value, in UTC at microsecond precision.
        let given = FixedOffset::east_opt(5 * 3600)
            .unwrap()
            .with_ymd_and_hms(2030, 6, 1, 12, 0, 0)
            .unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        let issued = store.api_keys().issue(key(given)).await.unwrap();
        let stored = issued.key.expires_at.unwrap();
        assert_eq!(stored, given - chrono::Duration::nanoseconds(789));
        assert_eq!(stored.offset().local_minus_utc(), 0);
    }
}
