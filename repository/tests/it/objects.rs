//! The row/object protocol: store, read, delete + purge, gc and audit.

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::{ConnectionTrait, EntityTrait, Statement};
use tokio::io::AsyncReadExt;
use vega_blobstore::{BlobStore, ObjectKey, S3Options};
use vega_entity::{TriggerKind, artifacts, object_deletions};
use vega_repository::{Error, GcOptions, NewScan, NewSnapshot, ScanObject, Store};
use vega_tests::s3::S3Server;
use vega_tests::{TestDb, on_both_backends};

use crate::common;

/// A store over `db` with a filesystem blob store whose directory the test can reach into.
async fn store_with_dir(db: &TestDb) -> (Store, PathBuf) {
    let dir = std::env::temp_dir().join(format!("vega-objects-{}", uuid::Uuid::new_v4()));
    let blobs = BlobStore::filesystem(&dir).unwrap();
    (
        Store::from_parts(db.conn().clone(), blobs).await.unwrap(),
        dir,
    )
}

async fn read(store: &Store, id: uuid::Uuid) -> std::io::Result<Vec<u8>> {
    let mut reader = store
        .artifacts()
        .open(id)
        .await
        .map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    Ok(out)
}

async fn snapshot(store: &Store, repository_id: uuid::Uuid) -> uuid::Uuid {
    let new = NewSnapshot {
        repository_id,
        commit_sha: None,
        ref_name: Some("main".into()),
        expires_at: None,
    };
    store.snapshots().create(new).await.unwrap().id
}

async fn scan(store: &Store, repository_id: uuid::Uuid) -> uuid::Uuid {
    let new = NewScan::full(repository_id, TriggerKind::Api, Some("main".into()));
    store.scans().enqueue(new).await.unwrap().id
}

async fn count(db: &TestDb, table: &str) -> i64 {
    let row = db
        .conn()
        .query_one_raw(Statement::from_string(
            db.backend(),
            format!("SELECT count(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

on_both_backends! {
    async fn objects_are_stored_registered_and_read_back_verified(db: &TestDb) {
        let (store, _) = store_with_dir(db).await;
        let repo = common::repository(&store).await;
        let snapshot_id = snapshot(&store, repo.id).await;
        let archive = store.artifacts().store_snapshot_archive(snapshot_id, &b"tarball bytes"[..], Some(3)).await.unwrap();
        assert_eq!((archive.state.as_str(), archive.size_bytes), ("committed", Some(13)));
        let snap = store.snapshots().get(snapshot_id).await.unwrap();
        assert_eq!((snap.status.as_str(), snap.file_count), ("ready", Some(3)));
        assert_eq!(read(&store, archive.id).await.unwrap(), b"tarball bytes");
        let again = store.artifacts().store_snapshot_archive(snapshot_id, &b"x"[..], None).await;
        assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");

        let scan_id = scan(&store, repo.id).await;
        for (kind, body) in [
            (ScanObject::Report, &b"{}"[..]),
            (ScanObject::EventLog, &b"{\"e\":1}\n"[..]),
            (ScanObject::DebugBundle, &b"one"[..]),
            (ScanObject::DebugBundle, &b"two"[..]),
        ] {
            let artifact = store.artifacts().store_scan_object(scan_id, kind, body).await.unwrap();
            assert_eq!(read(&store, artifact.id).await.unwrap(), body);
        }
        assert_eq!(store.artifacts().list_for_scan(scan_id).await.unwrap().len(), 4);
        let twice = store.artifacts().store_scan_object(scan_id, ScanObject::Report, &b"[]"[..]).await;
        assert!(matches!(twice, Err(Error::Conflict { .. })), "a scan has one report: {twice:?}");
        let reports = store.artifacts().list_for_scan(scan_id).await.unwrap();
        assert_eq!(read(&store, reports[0].id).await.unwrap(), b"{}", "the first report is intact");
        assert_eq!(count(db, "artifacts").await, 5, "the failed write left no row");
        assert!(matches!(
            store.artifacts().store_scan_object(uuid::Uuid::now_v7(), ScanObject::Report, &b"{}"[..]).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            store.artifacts().download_url(archive.id, Duration::from_secs(60)).await,
            Err(Error::Blob(vega_blobstore::BlobError::Unsupported(..)))
        ));
    }

    async fn a_corrupted_object_is_detected_on_read_and_by_audit(db: &TestDb) {
        let (store, dir) = store_with_dir(db).await;
        let repo = common::repository(&store).await;
        let scan_id = scan(&store, repo.id).await;
        let report = store.artifacts().store_scan_object(scan_id, ScanObject::Report, &b"{\"a\":1}"[..]).await.unwrap();
        let log = store.artifacts().store_scan_object(scan_id, ScanObject::EventLog, &b"line\n"[..]).await.unwrap();
        let bundle = store.artifacts().store_scan_object(scan_id, ScanObject::DebugBundle, &b"bundle"[..]).await.unwrap();
        assert!(store.artifacts().check_integrity(Duration::ZERO, true).await.unwrap().is_clean());

        std::fs::write(dir.join(&report.object_key), b"{\"a\":2}").unwrap(); // same size, other bytes
        std::fs::write(dir.join(&log.object_key), b"longer line\n").unwrap();
        std::fs::remove_file(dir.join(&bundle.object_key)).unwrap();
        let err = read(&store, report.id).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

        let audit = store.artifacts().check_integrity(Duration::ZERO, true).await.unwrap();
        assert_eq!(audit.checked, 3);
        assert_eq!(audit.sha256_mismatch, vec![report.object_key.clone()]);
        assert_eq!(audit.size_mismatch, vec![log.object_key.clone()]);
        assert_eq!(audit.missing, vec![bundle.object_key.clone()]);
        let quick = store.artifacts().check_integrity(Duration::ZERO, false).await.unwrap();
        assert!(quick.sha256_mismatch.is_empty(), "content is only read when asked");
    }

    async fn deleting_a_project_leaves_no_object_after_purge(db: &TestDb) {
        let (store, dir) = store_with_dir(db).await;
        let repo = common::repository(&store).await;
        let snapshot_id = snapshot(&store, repo.id).await;
        store.artifacts().store_snapshot_archive(snapshot_id, &b"src"[..], None).await.unwrap();
        let scan_id = scan(&store, repo.id).await;
        store.artifacts().store_scan_object(scan_id, ScanObject::Report, &b"{}"[..]).await.unwrap();
        let prefix = dir.join(ObjectKey::project_prefix(repo.project_id));
        assert!(prefix.exists());

        store.projects().delete(repo.project_id).await.unwrap();
        assert!(matches!(store.projects().get(repo.project_id).await, Err(Error::NotFound { .. })));
        assert_eq!(count(db, "artifacts").await, 0);
        assert_eq!(object_deletions::Entity::find().all(db.conn()).await.unwrap().len(), 2);
        assert!(prefix.exists(), "objects wait for purge");

        assert_eq!(store.artifacts().purge().await.unwrap().deleted, 2);
        assert!(!prefix.exists(), "no object and no empty directory is left");
        assert_eq!(count(db, "object_deletions").await, 0);
        assert_eq!(store.artifacts().purge().await.unwrap().deleted, 0, "safe to run twice");
        assert!(matches!(store.projects().delete(repo.project_id).await, Err(Error::NotFound { .. })));
    }

    async fn expired_snapshots_go_with_their_archives_unless_a_scan_still_reads_them(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        // Due in 3 s: room for the set-up below however loaded the machine, and a wait after.
        let soon = (chrono::Utc::now() + chrono::TimeDelta::seconds(3)).fixed_offset();
        let new = |expires_at| NewSnapshot { repository_id: repo.id, commit_sha: None, ref_name: None, expires_at };
        let mut ids = Vec::new();
        for expires_at in [Some(soon), Some(soon), None] {
            let id = store.snapshots().create(new(expires_at)).await.unwrap().id;
            store.artifacts().store_snapshot_archive(id, &b"tar"[..], None).await.unwrap();
            ids.push(id);
        }
        let mut queued = NewScan::full(repo.id, TriggerKind::Api, Some("main".into()));
        queued.snapshot_id = Some(ids[1]);
        store.scans().enqueue(queued).await.unwrap();
        assert_eq!(store.snapshots().expire(100).await.unwrap(), 0, "not yet due");
        let due = (soon.to_utc() - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(due + Duration::from_millis(100)).await;
        assert_eq!(store.snapshots().expire(100).await.unwrap(), 1);
        assert!(matches!(store.snapshots().get(ids[0]).await, Err(Error::NotFound { .. })));
        assert!(store.snapshots().get(ids[1]).await.is_ok(), "a queued scan reads it");
        assert!(store.snapshots().get(ids[2]).await.is_ok(), "no expiry");
        assert_eq!(count(db, "object_deletions").await, 1, "its archive is queued for purge");

        let past = (chrono::Utc::now() - chrono::TimeDelta::seconds(1)).fixed_offset();
        let err = store.snapshots().create(new(Some(past))).await.unwrap_err();
        assert!(matches!(&err, Error::Invalid { field, .. } if field == "expires_at"), "{err:?}");
        let user = common::user(&store).await;
        let principal = store.users().principal(user.id).await.unwrap();
        let err = store.session(&principal).snapshots().expire(10).await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    }

    async fn deleting_a_scan_or_snapshot_queues_only_its_objects(db: &TestDb) {
        let (store, _) = store_with_dir(db).await;
        let repo = common::repository(&store).await;
        let keep = scan(&store, repo.id).await;
        let drop = scan(&store, repo.id).await;
        store.artifacts().store_scan_object(keep, ScanObject::Report, &b"{}"[..]).await.unwrap();
        store.artifacts().store_scan_object(drop, ScanObject::Report, &b"{}"[..]).await.unwrap();
        store.scans().delete(drop).await.unwrap();
        assert_eq!(store.artifacts().purge().await.unwrap().deleted, 1);
        assert_eq!(store.artifacts().list_for_scan(keep).await.unwrap().len(), 1);
        let snapshot_id = snapshot(&store, repo.id).await;
        store.artifacts().store_snapshot_archive(snapshot_id, &b"src"[..], None).await.unwrap();
        store.snapshots().delete(snapshot_id).await.unwrap();
        assert_eq!(store.artifacts().purge().await.unwrap().deleted, 1);
        assert!(matches!(store.scans().delete(drop).await, Err(Error::NotFound { .. })));
    }

    async fn gc_removes_what_failed_writes_left_after_the_grace_period(db: &TestDb) {
        let (store, dir) = store_with_dir(db).await;
        let repo = common::repository(&store).await;
        let scan_id = scan(&store, repo.id).await;
        let kept = store.artifacts().store_scan_object(scan_id, ScanObject::Report, &b"{}"[..]).await.unwrap();

        // The database failed after an upload: an object no row knows.
        let orphan = ObjectKey::debug_bundle(repo.project_id, scan_id, uuid::Uuid::now_v7());
        store.blobs().put_reader(&orphan, &b"orphaned bytes"[..], "application/gzip").await.unwrap();
        // A process died between its pending row and its upload's commit.
        let pending = ObjectKey::scan_event_log(repo.project_id, scan_id);
        store.blobs().put_reader(&pending, &b"half"[..], "application/x-ndjson").await.unwrap();
        db.conn()
            .execute_raw(Statement::from_sql_and_values(
                db.backend(),
                "INSERT INTO artifacts (id, project_id, scan_id, kind, object_key, content_type, state, created_at) \
                 VALUES ($1, $2, $3, 'event_log', $4, 'application/x-ndjson', 'pending', $5)",
                [uuid::Uuid::now_v7().into(), repo.project_id.into(), scan_id.into(), pending.as_str().into(),
                 (chrono::Utc::now() - chrono::Duration::hours(2)).fixed_offset().into()],
            ))
            .await
            .unwrap();

        let young = store.artifacts().gc(GcOptions { grace: Duration::from_secs(3600 * 24), dry_run: false }, |_| {}).await.unwrap();
        assert_eq!((young.orphans, young.stale_pending), (0, 0), "inside the grace period nothing is touched");

        let mut progress = Vec::new();
        let dry = store.artifacts().gc(GcOptions { grace: Duration::ZERO, dry_run: true }, |n| progress.push(n)).await.unwrap();
        assert_eq!((dry.orphans, dry.orphan_bytes, dry.stale_pending, dry.removed), (1, 14, 1, false));
        assert_eq!(progress, vec![3]);
        assert!(dir.join(orphan.as_str()).exists(), "dry run removes nothing");

        let applied = store.artifacts().gc(GcOptions { grace: Duration::ZERO, dry_run: false }, |_| {}).await.unwrap();
        assert!(applied.removed);
        assert!(!dir.join(orphan.as_str()).exists());
        assert!(!dir.join(pending.as_str()).exists());
        assert_eq!(artifacts::Entity::find().all(db.conn()).await.unwrap().len(), 1);
        assert_eq!(read(&store, kept.id).await.unwrap(), b"{}", "referenced objects are kept");
        let audit = store.artifacts().check_integrity(Duration::ZERO, true).await.unwrap();
        assert!(audit.is_clean(), "{audit:?}");
    }
}

#[tokio::test]
async fn an_upload_that_fails_midway_commits_no_row_and_leaves_no_object() {
    let db = TestDb::postgres().await;
    let options = S3Options {
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        // One part at a time, so "the server fails after N requests" is the same request.
        upload_concurrency: 1,
        ..S3Options::default()
    };
    let setup = Store::from_parts(db.conn().clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap();
    let repo = common::repository(&setup).await;
    let snapshot_id = snapshot(&setup, repo.id).await;

    // CreateMultipartUpload and one part succeed; then the server is gone.
    let server = S3Server::failing_after(2).await;
    let store = Store::from_parts(db.conn().clone(), server.blob_store(None, options.clone()))
        .await
        .unwrap();
    let big = vec![7u8; 12 << 20];
    let err = store
        .artifacts()
        .store_snapshot_archive(snapshot_id, &big[..], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Blob(_)), "{err:?}");
    assert_eq!(
        count(&db, "artifacts").await,
        0,
        "no artifact row, committed or pending"
    );
    assert_eq!(
        store.snapshots().get(snapshot_id).await.unwrap().status,
        "pending"
    );

    server.stop();
    let revived = S3Server::restart_over(server.root()).await;
    let blobs = revived.blob_store(None, options);
    assert!(
        blobs.list("", None).await.unwrap().objects.is_empty(),
        "no object is visible"
    );

    // With the server back, the same snapshot can be stored.
    let store = Store::from_parts(db.conn().clone(), blobs).await.unwrap();
    let archive = store
        .artifacts()
        .store_snapshot_archive(snapshot_id, &big[..], None)
        .await
        .unwrap();
    assert_eq!(archive.size_bytes, Some(12 << 20));
    let url = store
        .artifacts()
        .download_url(archive.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(url.starts_with(revived.endpoint()), "{url}");
    for expires in [Duration::ZERO, Duration::from_secs(7 * 24 * 3600 + 1)] {
        let err = store
            .artifacts()
            .download_url(archive.id, expires)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field, .. } if field == "expires"),
            "{err:?}"
        );
    }
}

/// Queues `n` objects for deletion in one project, as deletes of their owners would.
async fn queue_deletions(db: &TestDb, blobs: &BlobStore, keys: &[String]) {
    for key in keys {
        if let Ok(parsed) = ObjectKey::parse(key.as_str()) {
            blobs
                .put_reader(&parsed, &b"doomed"[..], "application/json")
                .await
                .unwrap();
        }
        db.conn()
            .execute_raw(Statement::from_sql_and_values(
                db.backend(),
                "INSERT INTO object_deletions (object_key, requested_at) VALUES ($1, $2)",
                [
                    key.as_str().into(),
                    chrono::Utc::now().fixed_offset().into(),
                ],
            ))
            .await
            .unwrap();
    }
}

on_both_backends! {
    async fn concurrent_purges_split_the_work_and_count_exactly(db: &TestDb) {
        let server = S3Server::start().await;
        let blobs = server.blob_store(None, S3Options::default());
        let keys: Vec<String> = (0..100).map(|i| format!("projects/p/scans/s{i}/report.json")).collect();
        queue_deletions(db, &blobs, &keys).await;
        let store = Store::from_parts(db.conn().clone(), blobs.clone()).await.unwrap();
        let before = server.requests();

        let (first, second) = (store.artifacts(), store.artifacts());
        let (a, b) = tokio::join!(first.purge(), second.purge());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.deleted + b.deleted, 100, "{} + {}", a.deleted, b.deleted);
        assert!(a.failed.is_empty() && b.failed.is_empty());
        assert_eq!(server.requests() - before, 100, "each object was deleted exactly once");
        assert_eq!(count(db, "object_deletions").await, 0);
        assert!(blobs.list("projects/", None).await.unwrap().objects.is_empty());
    }

    async fn a_failing_deletion_is_reported_retried_later_and_blocks_nothing(db: &TestDb) {
        let (store, dir) = store_with_dir(db).await;
        // A key queued by an older build that no longer parses sorts first, ahead of the rest.
        let mut keys = vec!["projects/../escape".to_owned()];
        keys.extend((0..3).map(|i| format!("projects/p/scans/s{i}/report.json")));
        queue_deletions(db, store.blobs(), &keys).await;

        let report = store.artifacts().purge().await.unwrap();
        assert_eq!(report.deleted, 3, "the entries behind the bad one were purged");
        assert_eq!(report.failed.len(), 1);
        let failed = &report.failed[0];
        assert_eq!((failed.object_key.as_str(), failed.attempts), ("projects/../escape", 1));
        assert!(failed.error.contains("invalid object key"), "{}", failed.error);
        assert!(failed.retry_after > chrono::Utc::now());
        assert!(!dir.join("projects/p").exists());

        let again = store.artifacts().purge().await.unwrap();
        assert_eq!((again.deleted, again.failed.len()), (0, 0), "it waits out its backoff");
        let rows = object_deletions::Entity::find().all(db.conn()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].attempts, rows[0].lease_id), (1, None));
        assert!(rows[0].last_error.as_deref().is_some_and(|e| e.contains("invalid object key")));
    }
}
