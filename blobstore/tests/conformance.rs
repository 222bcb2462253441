//! One suite, two backends: every check runs against the local filesystem and against a real
//! S3 protocol server (s3s-fs on loopback) through aws-sdk-s3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use vega_blobstore::{BlobError, BlobStore, ObjectKey, S3Options};
use vega_tests::s3::{BUCKET, S3Server};

const MIB: usize = 1024 * 1024;
/// Small enough that the suite exercises multipart with a 13 MiB object.
const OPTIONS: S3Options = S3Options {
    multipart_threshold: 6 * MIB as u64,
    part_size: 5 * MIB as u64,
    // Below the part count, so parts overlap and one waits for a free slot.
    upload_concurrency: 2,
};

/// A backend under test and where its bytes live on disk (for tampering).
struct Backend {
    store: BlobStore,
    files: PathBuf,
    _server: Option<S3Server>,
}

impl Backend {
    async fn fs() -> Self {
        let dir = scratch("fs");
        Self {
            store: BlobStore::filesystem(&dir).unwrap(),
            files: dir,
            _server: None,
        }
    }

    async fn s3() -> Self {
        let server = S3Server::start().await;
        let files = server.root().join(BUCKET).join("env/test");
        Self {
            store: server.blob_store(Some("env/test"), OPTIONS),
            files,
            _server: Some(server),
        }
    }

    fn file_of(&self, key: &ObjectKey) -> PathBuf {
        self.files.join(key.as_str())
    }
}

fn scratch(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vega-blob-{kind}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic bytes that do not compress or repeat at part boundaries.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::parse(format!("projects/p1/scans/s1/{name}")).unwrap()
}

async fn read_all(store: &BlobStore, key: &ObjectKey, sha: [u8; 32]) -> std::io::Result<Vec<u8>> {
    let mut reader = store
        .get(key, sha, None)
        .await
        .map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    Ok(out)
}

macro_rules! conformance {
    ($(async fn $name:ident($b:ident: &Backend) $body:block)+) => {$(
        mod $name {
            use super::*;
            async fn body($b: &Backend) $body
            #[tokio::test]
            async fn fs() { body(&Backend::fs().await).await }
            #[tokio::test]
            async fn s3() { body(&Backend::s3().await).await }
        }
    )+};
}

conformance! {
    async fn round_trips_of_every_size(b: &Backend) {
        for (i, size) in [0, 1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 13 * MIB].into_iter().enumerate() {
            let data = bytes(size, i as u64 + 7);
            let path = scratch("src").join("object");
            std::fs::write(&path, &data).unwrap();
            let k = key(&format!("object-{size}"));
            let stored = b.store.put_file(&k, &path).await.unwrap();
            assert_eq!(stored.size, size as u64);
            assert_eq!(stored.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
            assert_eq!(read_all(&b.store, &k, stored.sha256).await.unwrap(), data, "size {size}");
            assert_eq!(b.store.head(&k).await.unwrap().unwrap().size, size as u64);
        }
    }

    async fn streamed_puts_hash_while_streaming(b: &Backend) {
        let data = bytes(3 * MIB + 17, 99);
        let k = key("streamed.jsonl");
        let stored = b.store.put_reader(&k, std::io::Cursor::new(data.clone())).await.unwrap();
        assert_eq!(stored.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(read_all(&b.store, &k, stored.sha256).await.unwrap(), data);
    }

    async fn writes_are_create_only(b: &Backend) {
        let k = key("report.json");
        let first = b.store.put_reader(&k, &b"first"[..]).await.unwrap();
        let second = b.store.put_reader(&k, &b"second"[..]).await;
        assert!(matches!(second, Err(BlobError::AlreadyExists { .. })), "{second:?}");
        assert_eq!(read_all(&b.store, &k, first.sha256).await.unwrap(), b"first");
    }

    async fn a_corrupted_object_fails_its_read(b: &Backend) {
        let k = key("debug.tar.gz");
        let data = bytes(100_000, 3);
        let stored = b.store.put_reader(&k, &data[..]).await.unwrap();
        // Rot one byte where the backend keeps it.
        let file = b.file_of(&k);
        let mut on_disk = std::fs::read(&file).unwrap();
        on_disk[50_000] ^= 0xff;
        std::fs::write(&file, on_disk).unwrap();
        let err = read_all(&b.store, &k, stored.sha256).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("corrupt"), "{err}");
        // A wrong expectation fails the same way on intact bytes.
        let other = b.store.put_reader(&key("intact"), &b"intact"[..]).await.unwrap();
        assert_ne!(other.sha256, stored.sha256);
        assert!(read_all(&b.store, &key("intact"), stored.sha256).await.is_err());
    }

    async fn list_head_and_delete(b: &Backend) {
        for name in ["b", "a", "c"] {
            b.store.put_reader(&key(name), name.as_bytes()).await.unwrap();
        }
        let other = ObjectKey::parse("projects/p2/scans/s9/report.json").unwrap();
        b.store.put_reader(&other, &b"x"[..]).await.unwrap();
        let page = b.store.list("projects/p1/", None).await.unwrap();
        let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["projects/p1/scans/s1/a", "projects/p1/scans/s1/b", "projects/p1/scans/s1/c"]);
        assert_eq!(page.next, None);
        assert_eq!(b.store.list("projects/", None).await.unwrap().objects.len(), 4);

        b.store.delete(&key("b")).await.unwrap();
        b.store.delete(&key("b")).await.unwrap(); // idempotent
        assert_eq!(b.store.head(&key("b")).await.unwrap(), None);
        assert!(matches!(b.store.get(&key("b"), [0; 32], None).await, Err(BlobError::NotFound { .. })));
        assert_eq!(b.store.list("projects/p1/", None).await.unwrap().objects.len(), 2);
    }
}

#[tokio::test]
async fn fs_refuses_keys_that_escape_its_root() {
    let root = scratch("root");
    let outside = scratch("outside");
    let store = BlobStore::filesystem(&root).unwrap();
    for bad in ["../escape", "/etc/passwd", "a/../../b", "a\\b", "a\0b", ""] {
        assert!(
            matches!(ObjectKey::parse(bad), Err(BlobError::InvalidKey { .. })),
            "{bad:?}"
        );
    }
    // A symlink inside the root that points outside it is not followed.
    std::os::unix::fs::symlink(&outside, root.join("projects")).unwrap();
    let err = store.put_reader(&key("x"), &b"x"[..]).await.unwrap_err();
    assert!(matches!(err, BlobError::InvalidKey { .. }), "{err:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[tokio::test]
async fn fs_hides_and_sweeps_interrupted_writes() {
    let root = scratch("root");
    let dir = root.join("projects/p1");
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join(".report.json.tmp-1234");
    std::fs::write(&stale, b"half").unwrap();
    let fresh = dir.join(".events.jsonl.tmp-5678");
    std::fs::write(&fresh, b"in flight").unwrap();
    let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hours_ago)
        .unwrap();

    let store = BlobStore::filesystem(&root).unwrap();
    assert!(!stale.exists(), "stale temporary file swept at start-up");
    assert!(fresh.exists(), "a recent one may belong to a live writer");
    assert!(
        store.list("", None).await.unwrap().objects.is_empty(),
        "temporary files are not objects"
    );
}

#[tokio::test]
async fn s3_presigned_urls_download_the_object() {
    let server = S3Server::start().await;
    let store = server.blob_store(None, OPTIONS);
    let k = key("report.json");
    store.put_reader(&k, &b"{\"ok\":true}"[..]).await.unwrap();
    let url = store
        .presign_get(&k, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let body = reqwest::get(&url).await.unwrap();
    assert!(body.status().is_success(), "{}", body.status());
    assert_eq!(body.bytes().await.unwrap().as_ref(), b"{\"ok\":true}");
    assert!(
        store
            .presign_get(&k, std::time::Duration::from_secs(8 * 24 * 3600))
            .await
            .is_err()
    );
    let fs = BlobStore::filesystem(scratch("fs")).unwrap();
    assert!(matches!(
        fs.presign_get(&k, std::time::Duration::from_secs(60)).await,
        Err(BlobError::Unsupported(..))
    ));
}

#[tokio::test]
async fn s3_server_dying_mid_multipart_leaves_no_object() {
    // CreateMultipartUpload and two parts succeed; the third part finds the server gone.
    let server = S3Server::failing_after(3).await;
    let store = server.blob_store(None, OPTIONS);
    let path = scratch("src").join("big");
    std::fs::write(&path, bytes(13 * MIB, 5)).unwrap();
    let k = key("source.tar.gz");
    let err = store.put_file(&k, &path).await.unwrap_err();
    assert!(matches!(err, BlobError::S3 { .. }), "{err:?}");
    assert!(server.requests() >= 3);

    server.stop();
    let revived = S3Server::restart_over(server.root()).await;
    let store = revived.blob_store(None, OPTIONS);
    assert_eq!(store.head(&k).await.unwrap(), None, "no object is visible");
    assert!(store.list("", None).await.unwrap().objects.is_empty());
    assert!(!Path::new(&server.root().join(BUCKET).join(k.as_str())).exists());
}
