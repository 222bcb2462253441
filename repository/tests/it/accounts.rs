//! Users, projects, repositories, snapshots, API keys, usage, workers and events.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use vega_entity::{Meter, Provider, RevokeReason, UserStatus};
use vega_repository::{
    Error, EventFeed, NewApiKey, NewEvent, NewProject, NewRepository, NewSnapshot, NewUsage,
    NewUser, Recorded, WorkerBeat,
};
use vega_tests::{TestDb, on_both_backends};

use crate::common;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

on_both_backends! {
    async fn users_are_unique_by_email_in_any_case(db: &TestDb) {
        let store = common::store(db).await;
        let users = store.users();
        let ada = users.create(NewUser { email: " Ada@Example.COM ".into(), display_name: None, is_admin: false }).await.unwrap();
        assert_eq!(ada.email, "ada@example.com");
        let dup = users.create(NewUser { email: "ADA@example.com".into(), display_name: None, is_admin: false }).await;
        assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
        assert_eq!(users.find_by_email("aDa@EXAMPLE.com").await.unwrap().map(|u| u.id), Some(ada.id));
        assert_eq!(users.find_by_email("bob@example.com").await.unwrap(), None);
        let bad = users.create(NewUser { email: "not an email".into(), display_name: None, is_admin: false }).await;
        assert!(matches!(bad, Err(Error::Invalid { field, .. }) if field == "email"));
        let suspended = users.set_status(ada.id, UserStatus::Suspended).await.unwrap();
        assert_eq!(suspended.status, "suspended");
        assert!(matches!(users.get(uuid::Uuid::now_v7()).await, Err(Error::NotFound { .. })));
        assert!(matches!(users.set_status(uuid::Uuid::now_v7(), UserStatus::Active).await, Err(Error::NotFound { .. })));
    }

    async fn project_slugs_are_unique_per_owner(db: &TestDb) {
        let store = common::store(db).await;
        let owner = common::user(&store).await;
        let other = common::user(&store).await;
        let web = common::project(&store, &owner, "web").await;
        let new = |owner_id, slug: &str| NewProject { owner_id, name: "Web".into(), slug: slug.into(), description: None };
        let dup = store.projects().create(new(owner.id, "web")).await;
        assert!(matches!(&dup, Err(Error::Conflict { constraint, .. }) if constraint.contains("slug") || constraint.contains("projects")), "{dup:?}");
        store.projects().create(new(other.id, "web")).await.unwrap();
        let bad = store.projects().create(new(owner.id, "Web API")).await;
        assert!(matches!(bad, Err(Error::Invalid { field, .. }) if field == "slug"));
        let orphan = store.projects().create(new(uuid::Uuid::now_v7(), "x")).await;
        assert!(matches!(orphan, Err(Error::Conflict { .. })), "{orphan:?}");
        assert_eq!(store.projects().get_by_slug(owner.id, "web").await.unwrap().id, web.id);
        assert!(matches!(store.projects().get_by_slug(owner.id, "nope").await, Err(Error::NotFound { .. })));
        let archived = store.projects().archive(web.id).await.unwrap();
        assert!(archived.archived_at.is_some());
        assert_eq!(store.projects().archive(web.id).await.unwrap().archived_at, archived.archived_at);
    }

    async fn repositories_route_webhooks_and_refuse_credentials(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let xid = repo.provider_xid.clone().unwrap();
        let found = store.repositories().find_by_provider(Provider::Github, &xid).await.unwrap();
        assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), vec![repo.id]);
        assert_eq!(store.repositories().list_for_project(repo.project_id).await.unwrap().len(), 1);
        let add = |xid: Option<&str>, url: Option<&str>| NewRepository {
            project_id: repo.project_id,
            provider: Provider::Github,
            provider_xid: xid.map(Into::into),
            full_name: None,
            clone_url: url.map(Into::into),
            default_branch: None,
        };
        let dup = store.repositories().add(add(Some(&xid), None)).await;
        assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
        let missing = store.repositories().add(add(None, None)).await;
        assert!(matches!(missing, Err(Error::Invalid { field, .. }) if field == "provider_xid"));
        let leaky = store.repositories().add(add(Some("9"), Some("https://x:ghp_secret@github.com/a/b.git"))).await;
        assert!(matches!(leaky, Err(Error::Invalid { field, .. }) if field == "clone_url"));
    }

    async fn snapshots_become_ready_with_their_archive(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let snap = store.snapshots().create(NewSnapshot { repository_id: repo.id, commit_sha: Some(SHA.to_uppercase()), ref_name: Some("main".into()), expires_at: None }).await.unwrap();
        assert_eq!((snap.status.as_str(), snap.commit_sha.as_deref()), ("pending", Some(SHA)));
        assert_eq!(store.snapshots().latest_for_repository(repo.id).await.unwrap(), None);
        // The archive enters only through the artifact protocol, which marks the snapshot ready.
        store.artifacts().store_snapshot_archive(snap.id, &b"archive bytes"[..], Some(17)).await.unwrap();
        let ready = store.snapshots().get(snap.id).await.unwrap();
        assert_eq!((ready.status.as_str(), ready.file_count), ("ready", Some(17)));
        let again = store.artifacts().store_snapshot_archive(snap.id, &b"again"[..], Some(1)).await;
        assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
        assert_eq!(store.snapshots().latest_for_repository(repo.id).await.unwrap().map(|s| s.id), Some(snap.id));
        assert_eq!(store.snapshots().find_by_commit(repo.id, SHA).await.unwrap().map(|s| s.id), Some(snap.id));
        let bad = store.snapshots().create(NewSnapshot { repository_id: repo.id, commit_sha: Some("abc".into()), ref_name: None, expires_at: None }).await;
        assert!(matches!(bad, Err(Error::Invalid { field, .. }) if field == "commit_sha"));
        let orphan = store.snapshots().create(NewSnapshot { repository_id: uuid::Uuid::now_v7(), commit_sha: None, ref_name: None, expires_at: None }).await;
        assert!(matches!(orphan, Err(Error::NotFound { .. })));
        let negative = store.artifacts().store_snapshot_archive(snap.id, &b""[..], Some(-1)).await;
        assert!(matches!(negative, Err(Error::Invalid { .. })));
    }

    async fn api_keys_authenticate_until_revoked_rotated_or_expired(db: &TestDb) {
        let store = common::store(db).await;
        let owner = common::user(&store).await;
        let keys = store.api_keys();
        let new = |expires_at| NewApiKey { user_id: owner.id, project_id: None, name: "ci".into(), scopes: vec!["scans:write".into()], expires_at };
        let issued = keys.issue(new(None)).await.unwrap();
        let token = issued.token.expose().to_owned();
        assert!(token.starts_with("vgk_") && token.len() == 40);
        assert_eq!(issued.key.token_prefix, &token[..12]);
        assert_eq!(issued.key.token_last4, &token[36..]);
        let principal = keys.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(principal.key_id(), Some(issued.key.id));
        assert!(principal.has_scope("scans:write"));

        // A typo fails the checksum; garbage is refused; neither needs the database.
        let typo = format!("{}{}", &token[..20], if &token[20..21] == "x" { "y" } else { "x" }) + &token[21..];
        assert_eq!(keys.authenticate(&typo).await.unwrap(), None);
        assert_eq!(keys.authenticate("Bearer nonsense").await.unwrap(), None);

        assert!(keys.touch(&principal, Some("10.0.0.1")).await.unwrap());
        // A stale principal in hand: the statement's condition refuses the second write.
        assert!(!keys.touch(&principal, Some("10.0.0.1")).await.unwrap(), "throttled");
        // A fresh one in hand: refused before any statement.
        let used = keys.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(keys.get(issued.key.id).await.unwrap().last_used_ip.as_deref(), Some("10.0.0.1"));
        assert!(!keys.touch(&used, Some("10.0.0.1")).await.unwrap(), "throttled");

        let rotated = keys.rotate(issued.key.id).await.unwrap();
        assert_eq!(rotated.key.rotated_from_id, Some(issued.key.id));
        assert_eq!(keys.authenticate(&token).await.unwrap(), None, "the old key stops working");
        assert!(keys.authenticate(rotated.token.expose()).await.unwrap().is_some());
        assert!(matches!(keys.rotate(issued.key.id).await, Err(Error::Conflict { .. })));
        assert_eq!(keys.get(issued.key.id).await.unwrap().revoked_reason.as_deref(), Some("rotated"));

        let revoked = keys.revoke(rotated.key.id, RevokeReason::Leaked).await.unwrap();
        assert_eq!(revoked.revoked_reason.as_deref(), Some("leaked"));
        assert_eq!(keys.authenticate(rotated.token.expose()).await.unwrap(), None);
        assert!(matches!(keys.revoke(uuid::Uuid::now_v7(), RevokeReason::User).await, Err(Error::NotFound { .. })));

        // Expiry: back-date the key rather than sleep, so the test cannot race the clock.
        let soon = keys.issue(new(Some((Utc::now() + chrono::Duration::hours(1)).fixed_offset()))).await.unwrap();
        assert!(keys.authenticate(soon.token.expose()).await.unwrap().is_some());
        backdate(db, "api_keys", "expires_at", "id", soon.key.id.into()).await;
        assert_eq!(keys.authenticate(soon.token.expose()).await.unwrap(), None, "expired");

        let past = keys.issue(new(Some((Utc::now() - chrono::Duration::hours(1)).fixed_offset()))).await;
        assert!(matches!(past, Err(Error::Invalid { field, .. }) if field == "expires_at"));
        let mut bad_scope = new(None);
        bad_scope.scopes = vec!["DROP TABLE".into()];
        assert!(matches!(keys.issue(bad_scope).await, Err(Error::Invalid { field, .. }) if field == "scopes[0]"));
        assert_eq!(keys.list_for_user(owner.id).await.unwrap().len(), 3);

        // The plaintext is nowhere in the database: not in api_keys, not anywhere else.
        let secret = &token[12..36];
        let rows = db.conn().query_all_raw(Statement::from_string(db.backend(), "SELECT * FROM api_keys")).await.unwrap();
        assert_eq!(rows.len(), 3);
        for key in keys.list_for_user(owner.id).await.unwrap() {
            let stored = format!("{key:?}");
            assert!(!stored.contains(secret), "{stored}");
        }
        if db.backend() == DbBackend::Postgres {
            let leaks = db.conn().query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres,
                "SELECT count(*) AS n FROM (SELECT k::text AS t FROM api_keys k UNION ALL SELECT e::text FROM events e \
                  UNION ALL SELECT u::text FROM users u) rows WHERE t LIKE '%' || $1 || '%'",
                [secret.into()])).await.unwrap().unwrap();
            assert_eq!(leaks.try_get::<i64>("", "n").unwrap(), 0);
        }
    }

    async fn usage_is_recorded_once_per_key(db: &TestDb) {
        let store = common::store(db).await;
        let account = common::user(&store).await;
        let now = Utc::now().fixed_offset();
        let rec = |key: &str, meter, quantity| NewUsage {
            account_id: account.id, meter, quantity, occurred_at: now,
            idempotency_key: key.into(), project_id: None, scan_id: None, properties: serde_json::json!({"plan": "team"}),
        };
        assert!(matches!(store.usage().record(rec("scan:1:seconds", Meter::ScanSeconds, 90)).await.unwrap(), Recorded::Inserted(_)));
        assert_eq!(store.usage().record(rec("scan:1:seconds", Meter::ScanSeconds, 90)).await.unwrap(), Recorded::Duplicate);
        let clash = store.usage().record(rec("scan:1:seconds", Meter::ScanSeconds, 91)).await;
        assert!(matches!(clash, Err(Error::Conflict { .. })), "{clash:?}");
        store.usage().record(rec("scan:2:seconds", Meter::ScanSeconds, 10)).await.unwrap();
        store.usage().record(rec("scan:2", Meter::Scans, 1)).await.unwrap();
        let negative = store.usage().record(rec("x", Meter::Scans, -1)).await;
        assert!(matches!(negative, Err(Error::Invalid { field, .. }) if field == "quantity"));

        let hour = chrono::Duration::hours(1);
        let totals = store.usage().totals(account.id, now - hour, now + hour).await.unwrap();
        let totals: Vec<_> = totals.iter().map(|t| (t.meter.as_str(), t.total)).collect();
        assert_eq!(totals, vec![("scan_seconds", 100), ("scans", 1)]);
        assert!(store.usage().totals(account.id, now + hour, now + hour * 2).await.unwrap().is_empty());
        assert!(matches!(store.usage().totals(account.id, now, now).await, Err(Error::Invalid { .. })));
    }

    async fn usage_batches_record_each_key_once_or_nothing(db: &TestDb) {
        let store = common::store(db).await;
        let account = common::user(&store).await;
        let now = Utc::now().fixed_offset();
        let rec = |key: &str, quantity| NewUsage {
            account_id: account.id, meter: Meter::LocScanned, quantity, occurred_at: now,
            idempotency_key: key.into(), project_id: None, scan_id: None, properties: serde_json::json!({}),
        };
        store.usage().record(rec("a", 5)).await.unwrap();
        let results = store.usage().record_many(vec![rec("b", 1), rec("c", 2), rec("a", 5), rec("b", 1)]).await.unwrap();
        assert!(matches!(results[..], [Recorded::Inserted(_), Recorded::Inserted(_), Recorded::Duplicate, Recorded::Duplicate]), "{results:?}");

        let clash = store.usage().record_many(vec![rec("d", 1), rec("a", 6)]).await;
        assert!(matches!(clash, Err(Error::Conflict { .. })), "{clash:?}");
        let bad = store.usage().record_many(vec![rec("e", 1), rec("f", -1)]).await;
        assert!(matches!(bad, Err(Error::Invalid { field, .. }) if field == "records[1].quantity"));

        let hour = chrono::Duration::hours(1);
        let totals = store.usage().totals(account.id, now - hour, now + hour).await.unwrap();
        assert_eq!(totals.iter().map(|t| t.total).sum::<i64>(), 8, "d, e and f were not recorded");
        let many: Vec<_> = (0..2500).map(|i| rec(&format!("bulk-{i}"), 1)).collect();
        assert_eq!(store.usage().record_many(many).await.unwrap().len(), 2500);

        // Optional ids come through the batch form as given, present or absent.
        let project = common::project(&store, &account, "billing").await;
        let mut with_project = rec("with-project", 1);
        with_project.project_id = Some(project.id);
        store.usage().record_many(vec![with_project, rec("without-project", 1)]).await.unwrap();
        let stored = db.conn().query_all_raw(Statement::from_string(db.backend(),
            "SELECT idempotency_key, project_id, scan_id FROM usage_records \
              WHERE idempotency_key LIKE 'with%' ORDER BY idempotency_key")).await.unwrap();
        let stored: Vec<(String, Option<uuid::Uuid>, Option<uuid::Uuid>)> = stored.iter()
            .map(|r| (r.try_get("", "idempotency_key").unwrap(), r.try_get("", "project_id").unwrap(), r.try_get("", "scan_id").unwrap()))
            .collect();
        assert_eq!(stored, vec![("with-project".into(), Some(project.id), None), ("without-project".into(), None, None)]);
        let mut nil = rec("nil", 1);
        nil.scan_id = Some(uuid::Uuid::nil());
        let refused = store.usage().record_many(vec![nil]).await;
        assert!(matches!(&refused, Err(Error::Invalid { field, .. }) if field == "records[0].scan_id"), "{refused:?}");
    }

    async fn workers_heartbeat_and_are_pruned(db: &TestDb) {
        let store = common::store(db).await;
        let beat = |id: &str| WorkerBeat { worker_id: id.into(), hostname: Some("h1".into()), version: Some("1.2.3".into()), capacity: 4 };
        let first = store.workers().heartbeat(beat("w1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = store.workers().heartbeat(beat("w1")).await.unwrap();
        assert_eq!(first.started_at, second.started_at);
        assert!(second.last_seen_at > first.last_seen_at);
        store.workers().heartbeat(beat("w2")).await.unwrap();
        assert_eq!(store.workers().live(Duration::from_secs(60)).await.unwrap().len(), 2);
        backdate(db, "worker_heartbeats", "last_seen_at", "worker_id", "w1".into()).await;
        assert_eq!(store.workers().prune(Duration::from_secs(60)).await.unwrap(), 1);
        let live: Vec<_> = store.workers().live(Duration::from_secs(60)).await.unwrap().into_iter().map(|w| w.worker_id).collect();
        assert_eq!(live, vec!["w2"]);
        assert!(matches!(store.workers().heartbeat(beat("")).await, Err(Error::Invalid { .. })));
    }

    async fn event_pages_have_no_gaps_while_events_arrive(db: &TestDb) {
        let store = common::store(db).await;
        let project = uuid::Uuid::now_v7();
        let event = |i: usize| NewEvent {
            action: "report.viewed".into(), project_id: Some(project), subject: Some(("scan".into(), uuid::Uuid::now_v7())),
            request_id: None, ip_address: None, data: serde_json::json!({ "i": i }),
        };
        let mut written = Vec::new();
        for i in 0..10 {
            written.push(store.events().append(event(i)).await.unwrap().id);
        }
        let mut read = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.events().page(EventFeed::Project(project), cursor, 3).await.unwrap();
            read.extend(page.items.iter().map(|e| e.id));
            store.events().append(event(99)).await.unwrap(); // newer than every cursor
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(read, written.iter().rev().copied().collect::<Vec<_>>());
        let subject = store.events().append(event(5)).await.unwrap();
        let (kind, id) = (subject.subject_type.clone().unwrap(), subject.subject_id.unwrap());
        let timeline = store.events().page(EventFeed::Subject(kind, id), None, 10).await.unwrap();
        assert_eq!(timeline.items.len(), 1);
        let mut big = event(0);
        big.data = serde_json::json!({ "blob": "x".repeat(20_000) });
        assert!(matches!(store.events().append(big).await, Err(Error::Invalid { field, .. }) if field == "data"));
    }
}

/// Sets a timestamp column to an hour ago.
async fn backdate(db: &TestDb, table: &str, column: &str, key: &str, id: Value) {
    let hour_ago = (Utc::now() - chrono::Duration::hours(1)).fixed_offset();
    let sql = format!("UPDATE {table} SET {column} = $1 WHERE {key} = $2");
    let done = db
        .conn()
        .execute_raw(Statement::from_sql_and_values(
            db.backend(),
            sql,
            [hour_ago.into(), id],
        ))
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}
