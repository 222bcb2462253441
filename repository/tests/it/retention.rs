//! Event retention on both engines: old events move to the blob store in batches of one
//! project and day, the export reads them back identical to what was deleted, and gc finds
//! what an interrupted batch leaves. On Postgres a retirement archives a whole month and drops
//! its partition without deleting a row.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use sea_orm::{ConnectionTrait, Statement};
use uuid::Uuid;
use vega_blobstore::ObjectKey;
use vega_entity::events;
use vega_repository::{Error, EventFeed, GcOptions, NewEvent, Retired, Store};
use vega_tests::{TestDb, on_both_backends};

use crate::common;

fn event(project_id: Option<Uuid>, n: usize) -> NewEvent {
    NewEvent {
        action: "report.downloaded".into(),
        project_id,
        subject: Some(("scan".into(), Uuid::now_v7())),
        request_id: Some(format!("req-{n}")),
        ip_address: Some("192.0.2.7".into()),
        data: serde_json::json!({ "n": n, "note": "ünïcode ✓" }),
    }
}

async fn set_created_at(store: &Store, id: i64, at: DateTime<FixedOffset>) {
    let db = store.connection();
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "UPDATE events SET created_at = $1 WHERE id = $2",
        [at.into(), id.into()],
    ))
    .await
    .unwrap();
}

/// Every event of the project, oldest first, as the table holds them.
async fn all_events(store: &Store, project: Uuid) -> Vec<events::Model> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .events()
            .page(EventFeed::Project(project), before, 100)
            .await
            .unwrap();
        out.extend(page.items);
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    out.reverse();
    out
}

async fn export(store: &Store, project: Uuid) -> Vec<events::Model> {
    let mut out = Vec::new();
    let since = "2000-01-01T00:00:00Z".parse().unwrap();
    let until = (Utc::now() + TimeDelta::days(1)).fixed_offset();
    let n = store
        .event_archives()
        .export(project, since, until, &mut out)
        .await
        .unwrap();
    let lines: Vec<events::Model> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(n as usize, lines.len());
    lines
}

/// Creates the monthly partitions (Postgres) from January 2026 to now, for events moved into
/// the past; the migration creates only those from its own month on.
async fn past_months(store: &Store) {
    let since = "2026-01-01T00:00:00Z".parse().unwrap();
    let until = Utc::now().fixed_offset();
    store
        .event_archives()
        .ensure_partitions(since, until)
        .await
        .unwrap();
}

/// Appends `n` events to `project` and moves them to `day` (UTC), a millisecond apart.
async fn events_on(store: &Store, project: Option<Uuid>, day: &str, n: usize) {
    let base: DateTime<FixedOffset> = format!("{day}T12:00:00Z").parse().unwrap();
    for i in 0..n {
        let id = store.events().append(event(project, i)).await.unwrap().id;
        set_created_at(store, id, base + TimeDelta::milliseconds(i as i64)).await;
    }
}

/// Runs a retirement to its end: the archives' event counts and the months dropped.
async fn retire(store: &Store, before: &str, max_events: u32) -> (Vec<u64>, Vec<String>) {
    let mut retirement = store
        .event_archives()
        .retirement(before.parse().unwrap(), max_events)
        .unwrap();
    let (mut archived, mut dropped) = (Vec::new(), Vec::new());
    while let Some(step) = retirement.next().await.unwrap() {
        match step {
            Retired::Archived(batch) => archived.push(batch.events),
            Retired::Dropped {
                partition,
                start,
                end,
            } => {
                assert!(start < end);
                dropped.push(partition);
            }
        }
    }
    (archived, dropped)
}

async fn count(store: &Store, sql: &str) -> i64 {
    let db = store.connection();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

on_both_backends! {
    async fn old_events_move_to_archives_and_export_returns_them_unchanged(db: &TestDb) {
        let store = common::store(db).await;
        past_months(&store).await;
        let owner = common::user(&store).await;
        let project = common::project(&store, &owner, "web").await;
        let other = common::project(&store, &owner, "api").await;
        let mut ids = Vec::new();
        for n in 0..30 {
            ids.push(store.events().append(event(Some(project.id), n)).await.unwrap().id);
        }
        store.events().append(event(Some(other.id), 99)).await.unwrap();
        store.events().append(event(None, 100)).await.unwrap();
        // Three past days, ten events each, the last two days' at 23:59 and 00:00 of
        // consecutive days (a batch must not cross midnight).
        let base: DateTime<FixedOffset> = "2026-03-01T23:59:59.5Z".parse().unwrap();
        for (i, id) in ids.iter().enumerate() {
            let at = base + TimeDelta::days((i / 10) as i64) + TimeDelta::milliseconds((i % 10) as i64);
            set_created_at(&store, *id, at).await;
        }
        let before_archive = all_events(&store, project.id).await;
        assert_eq!(before_archive.len(), 31, "30 appended and project.created");

        let cutoff = "2026-06-01T00:00:00Z".parse().unwrap();
        let mut batches = Vec::new();
        while let Some(batch) = store.event_archives().archive_batch(cutoff, 4).await.unwrap() {
            assert!(batch.events <= 4);
            batches.push(batch);
        }
        // Each day of ten events takes three batches of at most four.
        assert_eq!(batches.iter().map(|b| b.events).sum::<u64>(), 30);
        assert_eq!(batches.len(), 9, "{batches:#?}");
        for day in ["2026-03-01", "2026-03-02", "2026-03-03"] {
            assert_eq!(batches.iter().filter(|b| b.object_key.contains(day)).map(|b| b.events).sum::<u64>(), 10, "{day}");
        }
        assert!(batches.iter().all(|b| b.project_id == Some(project.id)));
        assert_eq!(all_events(&store, project.id).await.len(), 1, "only project.created is newer");
        assert_eq!(count(&store, "SELECT count(*) FROM event_archives WHERE state = 'committed'").await, 9);

        assert_eq!(export(&store, project.id).await, before_archive, "archived and live, oldest first");
        assert_eq!(export(&store, other.id).await.len(), 2, "the other project's are untouched");

        // A window inside one day reads only that part of the archives.
        let mut out = Vec::new();
        let since = base + TimeDelta::days(1) + TimeDelta::milliseconds(2);
        let until = base + TimeDelta::days(1) + TimeDelta::milliseconds(5);
        assert_eq!(store.event_archives().export(project.id, since, until, &mut out).await.unwrap(), 3);

        // Everything archived: events of no project too, in their own archives.
        let now = (Utc::now() + TimeDelta::seconds(1)).fixed_offset();
        while let Some(batch) = store.event_archives().archive_batch(now, 1000).await.unwrap() {
            assert!(batch.object_key.starts_with("events/"));
        }
        assert_eq!(count(&store, "SELECT count(*) FROM events").await, 0);
        assert!(count(&store, "SELECT count(*) FROM event_archives WHERE project_id IS NULL").await >= 1);
        assert_eq!(export(&store, project.id).await, before_archive);

        // Archives are known objects: gc leaves them alone.
        let report = store.artifacts().gc(GcOptions { grace: Duration::ZERO, dry_run: false }, |_| {}).await.unwrap();
        assert_eq!((report.orphans, report.stale_pending), (0, 0), "{report:?}");
        assert_eq!(export(&store, project.id).await, before_archive);
    }

    async fn an_interrupted_batch_leaves_what_gc_removes(db: &TestDb) {
        let store = common::store(db).await;
        let owner = common::user(&store).await;
        let project = common::project(&store, &owner, "web").await;
        // An upload whose process died before its row: an unknown object under events/.
        let orphan = ObjectKey::event_archive(Some(project.id), (2026, 1, 2), Uuid::now_v7());
        store.blobs().put_reader(&orphan, &b"partial"[..], "application/gzip").await.unwrap();
        // One that died after its row, before committing: a stale pending row and its object.
        let pending = ObjectKey::event_archive(None, (2026, 1, 2), Uuid::now_v7());
        store.blobs().put_reader(&pending, &b"partial"[..], "application/gzip").await.unwrap();
        let db2 = store.connection();
        db2.execute_raw(Statement::from_sql_and_values(
            db2.get_database_backend(),
            "INSERT INTO event_archives (id, project_id, object_key, event_count, first_created_at, \
                                         first_event_id, last_created_at, last_event_id, state, created_at) \
             VALUES ($1, NULL, $2, 1, $3, 1, $3, 1, 'pending', $3)",
            [Uuid::now_v7().into(), pending.as_str().into(), "2026-01-02T00:00:00Z".parse::<DateTime<FixedOffset>>().unwrap().into()],
        ))
        .await
        .unwrap();

        let report = store.artifacts().gc(GcOptions { grace: Duration::from_secs(3600), dry_run: true }, |_| {}).await.unwrap();
        assert_eq!(report.stale_pending, 1, "{report:?}");
        assert_eq!(report.orphans, 0, "the objects are younger than the grace period");
        let report = store.artifacts().gc(GcOptions { grace: Duration::ZERO, dry_run: false }, |_| {}).await.unwrap();
        assert_eq!((report.orphans, report.stale_pending), (1, 1), "{report:?}");
        assert!(store.blobs().head(&orphan).await.unwrap().is_none());
        assert!(store.blobs().head(&pending).await.unwrap().is_none());
        assert_eq!(count(&store, "SELECT count(*) FROM event_archives").await, 0);
        let audit = store.artifacts().check_integrity(Duration::ZERO, true).await.unwrap();
        assert!(audit.is_clean(), "{audit:?}");
    }

    async fn only_the_system_archives_and_bad_bounds_are_refused(db: &TestDb) {
        let store = common::store(db).await;
        let user = common::user(&store).await;
        let principal = store.users().principal(user.id).await.unwrap();
        let session = store.session(&principal);
        let now = Utc::now().fixed_offset();
        let err = session.event_archives().archive_batch(now, 10).await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
        let err = session.event_archives().export(Uuid::now_v7(), now, now, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
        for max in [0, vega_repository::MAX_ARCHIVE_EVENTS + 1] {
            let err = store.event_archives().archive_batch(now, max).await.unwrap_err();
            assert!(matches!(&err, Error::Invalid { field, .. } if field == "max_events"), "{err:?}");
        }
        let err = store.event_archives().export(Uuid::now_v7(), now, now, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(&err, Error::Invalid { field, .. } if field == "until"), "{err:?}");
        assert_eq!(store.event_archives().archive_batch("2000-01-01T00:00:00Z".parse().unwrap(), 10).await.unwrap(), None);
    }

    async fn a_retirement_exports_the_same_and_leaves_only_what_is_newer(db: &TestDb) {
        let store = common::store(db).await;
        past_months(&store).await;
        let owner = common::user(&store).await;
        let project = common::project(&store, &owner, "web").await;
        events_on(&store, Some(project.id), "2026-03-01", 6).await;
        events_on(&store, Some(project.id), "2026-03-31", 3).await;
        events_on(&store, Some(project.id), "2026-04-20", 2).await;
        events_on(&store, None, "2026-03-05", 2).await;
        let before = export(&store, project.id).await;
        assert_eq!(before.len(), 12, "11 moved and project.created");

        // The cutoff falls in April: March goes (on Postgres as a month), April stays, on
        // SQLite too.
        let (archived, _) = retire(&store, "2026-04-25T00:00:00Z", 4).await;
        assert_eq!(archived.iter().sum::<u64>(), 11, "{archived:?}");
        assert!(archived.iter().all(|n| *n <= 4), "{archived:?}");
        assert_eq!(export(&store, project.id).await, before);
        let live = all_events(&store, project.id).await;
        assert_eq!(live.len(), 3, "April's two and project.created");
        assert!(live.iter().all(|e| e.created_at >= "2026-04-01T00:00:00Z".parse::<DateTime<FixedOffset>>().unwrap()));
        // Nothing more to do until the cutoff moves.
        assert_eq!(retire(&store, "2026-04-25T00:00:00Z", 4).await, (Vec::new(), Vec::new()));

        let principal = store.users().principal(owner.id).await.unwrap();
        let session = store.session(&principal);
        let err = session.event_archives().retirement(Utc::now().fixed_offset(), 10).unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
        let err = store.event_archives().retirement(Utc::now().fixed_offset(), 0).unwrap_err();
        assert!(matches!(&err, Error::Invalid { field, .. } if field == "max_events"), "{err:?}");
    }
}

/// Postgres: retirement drops a month's partition after archiving every event of it, and not
/// one row is deleted (a trigger refuses any DELETE on `events`; a dropped partition's
/// `pg_stat_user_tables` row goes with it, so the counter cannot say it afterwards). A month
/// left detached by an interrupted retirement is archived and dropped by the next one.
#[tokio::test]
async fn a_month_is_archived_and_dropped_without_deleting_a_row() {
    let db = TestDb::postgres().await;
    let store = common::store(&db).await;
    past_months(&store).await;
    let owner = common::user(&store).await;
    let web = common::project(&store, &owner, "web").await;
    let api = common::project(&store, &owner, "api").await;
    events_on(&store, Some(web.id), "2026-03-01", 10).await;
    events_on(&store, Some(web.id), "2026-03-02", 10).await;
    events_on(&store, Some(api.id), "2026-03-15", 5).await;
    events_on(&store, None, "2026-03-20", 3).await;
    events_on(&store, Some(web.id), "2026-04-10", 5).await;
    let before = (export(&store, web.id).await, export(&store, api.id).await);
    let conn = store.connection();
    conn.execute_unprepared(
        "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'DELETE on %', TG_TABLE_NAME; END $$; \
         CREATE TRIGGER refuse_delete BEFORE DELETE ON events \
           FOR EACH ROW EXECUTE FUNCTION refuse_delete()",
    )
    .await
    .unwrap();

    let (archived, dropped) = retire(&store, "2026-04-20T00:00:00Z", 4).await;
    // web: two days of ten in batches of four; api: five; no project: three.
    assert_eq!(
        archived,
        [4, 4, 2, 4, 4, 2, 4, 1, 3],
        "web's days, api's, no project's"
    );
    assert_eq!(archived.iter().sum::<u64>(), 28, "{archived:?}");
    assert_eq!(
        dropped,
        ["events_2026_01", "events_2026_02", "events_2026_03"],
        "March and the empty months before it"
    );
    let exists = |name: &str| format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'");
    assert_eq!(count(&store, &exists("events_2026_03")).await, 0);
    assert_eq!(
        count(&store, "SELECT count(*) FROM events_2026_04").await,
        5
    );
    assert_eq!(
        (export(&store, web.id).await, export(&store, api.id).await),
        before
    );

    // April, detached by a retirement that died before dropping it, with an event that
    // reached it meanwhile: the next retirement archives both and drops it.
    conn.execute_unprepared("ALTER TABLE events DETACH PARTITION events_2026_04")
        .await
        .unwrap();
    conn.execute_unprepared(&format!(
        "INSERT INTO events_2026_04 (id, created_at, project_id, actor_type, actor_label, action, data) \
         VALUES (nextval('events_id_seq'), '2026-04-11T00:00:00Z', '{}', 'system', 'late', 'late.append', '{{}}')",
        web.id
    ))
    .await
    .unwrap();
    let (archived, dropped) = retire(&store, "2026-05-20T00:00:00Z", 100).await;
    assert_eq!(
        archived,
        [5, 1],
        "April 10's five, then the late one of another day"
    );
    assert_eq!(dropped, ["events_2026_04"]);
    assert_eq!(count(&store, &exists("events_2026_04")).await, 0);
    let web_after = export(&store, web.id).await;
    assert_eq!(web_after.len(), before.0.len() + 1);
    assert_eq!(
        web_after
            .iter()
            .filter(|e| e.action == "late.append")
            .count(),
        1
    );
    assert_eq!(
        web_after
            .into_iter()
            .filter(|e| e.action != "late.append")
            .collect::<Vec<_>>(),
        before.0
    );
    assert_eq!(export(&store, api.id).await, before.1);
    // The month in progress is never retired, whatever the cutoff.
    let (_, dropped) = retire(&store, &Utc::now().to_rfc3339(), 100).await;
    assert!(
        dropped
            .iter()
            .all(|m| m.as_str() < Utc::now().format("events_%Y_%m").to_string().as_str()),
        "{dropped:?}"
    );
    assert!(
        count(&store, "SELECT count(*) FROM events").await >= 2,
        "the projects' own events of today"
    );
}
