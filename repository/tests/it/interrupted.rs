//! A process killed in the middle of an S3 upload leaves a spool file and an incomplete
//! multipart upload; the next store to open the spool directory removes the first, and
//! `gc --apply` aborts the second. The test re-runs its own binary as the child, which
//! uploads to a server (in the parent) that stops answering after the first part.

use std::process::{Command, Stdio};
use std::time::Duration;

use vega_blobstore::{BlobStore, ObjectKey, S3Options};
use vega_repository::{GcOptions, Store};
use vega_tests::TestDb;
use vega_tests::s3::{BUCKET, S3Server};

use crate::common;

const CHILD_ENDPOINT: &str = "VEGA_INTERRUPTED_CHILD_ENDPOINT";
const CHILD_SPOOL: &str = "VEGA_INTERRUPTED_CHILD_SPOOL";
const MIB: usize = 1 << 20;

fn options(spool_dir: &str) -> S3Options {
    S3Options {
        multipart_threshold: 6 * MIB as u64,
        part_size: 5 * MIB as u64,
        upload_concurrency: 1,
        spool_dir: spool_dir.into(),
        ..S3Options::default()
    }
}

/// The child: only when the parent sets the variables.
#[tokio::test]
async fn child_process() {
    let (Ok(endpoint), Ok(spool)) = (std::env::var(CHILD_ENDPOINT), std::env::var(CHILD_SPOOL))
    else {
        return;
    };
    let client = vega_tests::s3::client(&endpoint);
    let store = BlobStore::s3(client, BUCKET, None, options(&spool)).unwrap();
    let key = ObjectKey::parse("projects/p/snapshots/s/source.tar.gz").unwrap();
    let body = vec![9u8; 13 * MIB];
    // Hangs on the second part until the parent kills this process.
    let _ = store.put_reader(&key, &body[..], "application/gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_upload_leaves_nothing_the_next_start_and_gc_do_not_remove() {
    // CreateMultipartUpload and part 1 are answered; part 2 never is.
    let server = S3Server::hanging_after(2).await;
    let spool = std::env::temp_dir().join(format!("vega-spool-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &common::test_name(module_path!(), "child_process"),
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENDPOINT, server.endpoint())
        .env(CHILD_SPOOL, &spool)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.requests() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never reached part 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(&spool).unwrap().flatten().collect();
    println!(
        "the killed upload left {} spool file(s) of {} bytes",
        left.len(),
        left.iter()
            .map(|e| e.metadata().unwrap().len())
            .sum::<u64>()
    );
    assert_eq!(left.len(), 1, "a SIGKILL runs no destructor");

    server.stop();
    let revived = S3Server::restart_over(server.root()).await;
    let blobs = revived.blob_store(None, options(spool.to_str().unwrap()));
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "opening the store swept the dead process's spool file"
    );
    let uploads = blobs.list_uploads("projects/", None).await.unwrap().uploads;
    assert_eq!(uploads.len(), 1, "the incomplete upload is listed");
    let part = server
        .root()
        .join(format!(".upload_id-{}.part-1", uploads[0].upload_id));
    assert!(part.exists(), "its first part is stored, and billed");

    let db = TestDb::sqlite().await;
    let store = Store::from_parts(db.conn().clone(), blobs.clone())
        .await
        .unwrap();
    let audit = store
        .artifacts()
        .check_integrity(Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(audit.incomplete_uploads, vec![uploads[0].key.clone()]);
    let young = GcOptions {
        grace: Duration::from_secs(3600),
        dry_run: false,
    };
    let kept = store.artifacts().gc(young, |_| {}).await.unwrap();
    assert_eq!(
        kept.incomplete_uploads, 0,
        "an upload inside the grace may still be running"
    );
    let dry = GcOptions {
        grace: Duration::ZERO,
        dry_run: true,
    };
    let counted = store.artifacts().gc(dry, |_| {}).await.unwrap();
    assert_eq!(counted.incomplete_uploads, 1);
    assert!(part.exists(), "a dry run aborts nothing");
    let apply = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let applied = store.artifacts().gc(apply, |_| {}).await.unwrap();
    println!(
        "gc --apply aborted {} incomplete upload(s)",
        applied.incomplete_uploads
    );
    assert_eq!(applied.incomplete_uploads, 1);
    assert!(!part.exists(), "the abort freed its parts");
    assert!(
        blobs
            .list_uploads("projects/", None)
            .await
            .unwrap()
            .uploads
            .is_empty()
    );
    assert!(
        store
            .artifacts()
            .check_integrity(Duration::ZERO, false)
            .await
            .unwrap()
            .is_clean()
    );
    let _ = std::fs::remove_dir_all(&spool);
}
