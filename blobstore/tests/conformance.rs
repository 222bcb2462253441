//! One suite, three backends: every check runs against the local filesystem and against two
//! independent S3 implementations through aws-sdk-s3: s3s-fs in-process, and moto's server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use vega_blobstore::{BlobError, BlobStore, ObjectKey, S3Options};
use vega_tests::s3::{BUCKET, MotoServer, S3Server};

const MIB: usize = 1024 * 1024;
const PREFIX: &str = "env/test";

/// Small enough that the suite exercises multipart with a 13 MiB object.
fn options() -> S3Options {
    S3Options {
        multipart_threshold: 6 * MIB as u64,
        part_size: 5 * MIB as u64,
        // Below the part count, so parts overlap and one waits for a free slot.
        upload_concurrency: 2,
        spool_dir: scratch("spool"),
        ..S3Options::default()
    }
}

/// A backend under test, and how to rot an object behind its back.
struct Backend {
    store: BlobStore,
    raw: Raw,
    _server: Option<Box<dyn std::any::Any>>,
}

enum Raw {
    Files(PathBuf),
    S3(aws_sdk_s3::Client),
}

impl Backend {
    async fn fs() -> Self {
        let dir = scratch("fs");
        Self {
            store: BlobStore::filesystem(&dir).unwrap(),
            raw: Raw::Files(dir),
            _server: None,
        }
    }

    async fn s3() -> Self {
        let server = S3Server::start().await;
        Self {
            store: server.blob_store(Some(PREFIX), options()),
            raw: Raw::S3(server.client()),
            _server: Some(Box::new(server)),
        }
    }

    async fn moto() -> Self {
        let server = MotoServer::start().await;
        Self {
            store: server.blob_store(Some(PREFIX), options()),
            raw: Raw::S3(server.client()),
            _server: Some(Box::new(server)),
        }
    }

    /// Replaces the object's bytes without the store knowing.
    async fn overwrite(&self, key: &ObjectKey, bytes: Vec<u8>) {
        match &self.raw {
            Raw::Files(dir) => std::fs::write(dir.join(key.as_str()), bytes).unwrap(),
            Raw::S3(client) => {
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key(format!("{PREFIX}/{key}"))
                    .body(bytes.into())
                    .send()
                    .await
                    .unwrap();
            }
        }
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
            #[tokio::test]
            async fn moto() { body(&Backend::moto().await).await }
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
            let stored = b.store.put_file(&k, &path, "application/octet-stream").await.unwrap();
            assert_eq!(stored.size, size as u64);
            assert_eq!(stored.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
            assert_eq!(read_all(&b.store, &k, stored.sha256).await.unwrap(), data, "size {size}");
            assert_eq!(b.store.head(&k).await.unwrap().unwrap().size, size as u64);
        }
    }

    async fn streamed_puts_hash_while_streaming(b: &Backend) {
        let data = bytes(3 * MIB + 17, 99);
        let k = key("streamed.jsonl");
        let stored = b.store.put_reader(&k, std::io::Cursor::new(data.clone()), "application/octet-stream").await.unwrap();
        assert_eq!(stored.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(read_all(&b.store, &k, stored.sha256).await.unwrap(), data);
    }

    async fn writes_are_create_only(b: &Backend) {
        let k = key("report.json");
        let first = b.store.put_reader(&k, &b"first"[..], "application/octet-stream").await.unwrap();
        let second = b.store.put_reader(&k, &b"second"[..], "application/octet-stream").await;
        assert!(matches!(second, Err(BlobError::AlreadyExists { .. })), "{second:?}");
        assert_eq!(read_all(&b.store, &k, first.sha256).await.unwrap(), b"first");
    }

    async fn a_corrupted_object_fails_its_read(b: &Backend) {
        let k = key("debug.tar.gz");
        let data = bytes(100_000, 3);
        let stored = b.store.put_reader(&k, &data[..], "application/gzip").await.unwrap();
        // Rot one byte behind the store's back.
        let mut rotten = data.clone();
        rotten[50_000] ^= 0xff;
        b.overwrite(&k, rotten).await;
        let err = read_all(&b.store, &k, stored.sha256).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("corrupt"), "{err}");
        // A wrong expectation fails the same way on intact bytes.
        let other = b.store.put_reader(&key("intact"), &b"intact"[..], "application/octet-stream").await.unwrap();
        assert_ne!(other.sha256, stored.sha256);
        assert!(read_all(&b.store, &key("intact"), stored.sha256).await.is_err());
    }

    async fn list_head_and_delete(b: &Backend) {
        for name in ["b", "a", "c"] {
            b.store.put_reader(&key(name), name.as_bytes(), "application/octet-stream").await.unwrap();
        }
        let other = ObjectKey::parse("projects/p2/scans/s9/report.json").unwrap();
        b.store.put_reader(&other, &b"x"[..], "application/octet-stream").await.unwrap();
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
    let err = store
        .put_reader(&key("x"), &b"x"[..], "application/octet-stream")
        .await
        .unwrap_err();
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
    let store = server.blob_store(None, options());
    let k = key("report.json");
    store
        .put_reader(&k, &b"{\"ok\":true}"[..], "application/json")
        .await
        .unwrap();
    let url = store
        .presign_get(&k, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let body = reqwest::get(&url).await.unwrap();
    assert!(body.status().is_success(), "{}", body.status());
    let header = |name: &str| {
        body.headers()
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(
        header("content-disposition"),
        "attachment; filename=\"report.json\""
    );
    assert_eq!(body.bytes().await.unwrap().as_ref(), b"{\"ok\":true}");
    for expires in [0, 7 * 24 * 3600 + 1] {
        let err = store
            .presign_get(&k, std::time::Duration::from_secs(expires))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::InvalidExpiry { .. }), "{err:?}");
    }
    store
        .presign_get(&k, std::time::Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
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
    let store = server.blob_store(None, options());
    let path = scratch("src").join("big");
    std::fs::write(&path, bytes(13 * MIB, 5)).unwrap();
    let k = key("source.tar.gz");
    let err = store
        .put_file(&k, &path, "application/gzip")
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::S3 { .. }), "{err:?}");
    assert!(server.requests() >= 3);

    server.stop();
    let revived = S3Server::restart_over(server.root()).await;
    let store = revived.blob_store(None, options());
    assert_eq!(store.head(&k).await.unwrap(), None, "no object is visible");
    assert!(store.list("", None).await.unwrap().objects.is_empty());
    assert!(!Path::new(&server.root().join(BUCKET).join(k.as_str())).exists());
}

/// S3's checksum of a multipart object whose parts carried SHA-256 checksums: the SHA-256 of
/// the parts' digests, then the part count (5 MiB parts, as [`options`] sets).
fn composite(data: &[u8]) -> String {
    use base64::Engine;
    let chunks = data.chunks(5 * MIB);
    let count = chunks.len();
    let digests: Vec<u8> = chunks.flat_map(|c| Sha256::digest(c).to_vec()).collect();
    format!(
        "{}-{count}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&digests))
    )
}

/// What S3 says about an object: its Content-Type, the SHA-256 in its metadata, and its
/// checksum as `HeadObject` reports it.
async fn described(client: &aws_sdk_s3::Client, key: &ObjectKey) -> (String, String, String) {
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key(format!("{PREFIX}/{key}"))
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    (
        head.content_type().unwrap_or_default().to_owned(),
        head.metadata()
            .and_then(|m| m.get("sha256"))
            .cloned()
            .unwrap_or_default(),
        head.checksum_sha256().unwrap_or_default().to_owned(),
    )
}

async fn objects_carry_their_metadata(store: &BlobStore, client: &aws_sdk_s3::Client, moto: bool) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();

    let small = bytes(4096, 11);
    let k = key("report.json");
    store
        .put_reader(&k, &small[..], "application/json")
        .await
        .unwrap();
    let (content_type, sha256, checksum) = described(client, &k).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(sha256, hex(&Sha256::digest(&small)));
    let checksum = if moto {
        // moto reports checksums through GetObjectAttributes only.
        let attributes = client
            .get_object_attributes()
            .bucket(BUCKET)
            .key(format!("{PREFIX}/{k}"))
            .object_attributes(aws_sdk_s3::types::ObjectAttributes::Checksum)
            .send()
            .await
            .unwrap();
        let sha = attributes.checksum().and_then(|c| c.checksum_sha256());
        sha.unwrap_or_default().to_owned()
    } else {
        checksum
    };
    assert_eq!(
        checksum,
        b64.encode(Sha256::digest(&small)),
        "S3 checked the body's SHA-256"
    );

    let big = bytes(13 * MIB, 12);
    let k = key("source.tar.gz");
    store
        .put_reader(&k, &big[..], "application/gzip")
        .await
        .unwrap();
    let (content_type, sha256, _) = described(client, &k).await;
    assert_eq!(
        content_type, "application/gzip",
        "multipart uploads carry it too"
    );
    assert_eq!(
        sha256,
        hex(&Sha256::digest(&big)),
        "the whole object's SHA-256, for downloaders"
    );
    if moto {
        // S3 answers `<digest>-3`, moto the digest alone; either way it is computed from the
        // parts' SHA-256s, so each part went up with its own. (s3s-fs reports none; the test
        // server checks each part's digest on arrival instead.)
        let (_, _, checksum) = described(client, &k).await;
        let expected = composite(&big);
        assert_eq!(checksum.split('-').next(), expected.split('-').next());
    }
}

#[tokio::test]
async fn s3_objects_carry_content_type_and_checksums() {
    let server = S3Server::start().await;
    objects_carry_their_metadata(
        &server.blob_store(Some(PREFIX), options()),
        &server.client(),
        false,
    )
    .await;
}

#[tokio::test]
async fn moto_objects_carry_content_type_and_checksums() {
    let server = MotoServer::start().await;
    objects_carry_their_metadata(
        &server.blob_store(Some(PREFIX), options()),
        &server.client(),
        true,
    )
    .await;
}

/// Tight bounds, so a test of a silent endpoint takes seconds.
fn tight() -> S3Options {
    S3Options {
        timeouts: vega_blobstore::S3Timeouts {
            connect: std::time::Duration::from_secs(1),
            read: std::time::Duration::from_secs(1),
            attempt: std::time::Duration::from_secs(2),
            operation: std::time::Duration::from_secs(3),
            max_attempts: 2,
        },
        ..options()
    }
}

/// Runs `call`, checks it failed as a timeout naming `endpoint` within `bound`, and prints how
/// long it took (the closing note quotes these lines).
async fn times_out<T: std::fmt::Debug>(
    what: &str,
    endpoint: &str,
    bound: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, BlobError>>,
) {
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(bound * 3, call)
        .await
        .unwrap_or_else(|_| panic!("{what} was still waiting after {:?}", bound * 3))
        .unwrap_err();
    let took = started.elapsed();
    println!("{what}: failed after {took:?}: {err}");
    assert!(took <= bound, "{what} took {took:?}, more than {bound:?}");
    assert!(matches!(err, BlobError::Timeout { .. }), "{what}: {err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(endpoint) && text.contains("VEGA_S3_"),
        "{what}: {text}"
    );
}

#[tokio::test]
async fn every_call_to_a_silent_endpoint_fails_within_its_bound() {
    let silent = vega_tests::s3::SilentEndpoint::start().await;
    let store = silent.blob_store(tight());
    let endpoint = silent.endpoint();
    // The operation timeout, plus scheduling slack.
    let bound = std::time::Duration::from_secs(4);
    let k = key("report.json");
    let big = scratch("src").join("big");
    std::fs::write(&big, bytes(13 * MIB, 1)).unwrap();
    times_out(
        "put (1 byte)",
        endpoint,
        bound,
        store.put_reader(&k, &b"x"[..], "application/json"),
    )
    .await;
    times_out(
        "put (multipart)",
        endpoint,
        bound,
        store.put_file(&k, &big, "application/gzip"),
    )
    .await;
    times_out("get", endpoint, bound, store.get(&k, [0; 32], None)).await;
    times_out("head", endpoint, bound, store.head(&k)).await;
    times_out("delete", endpoint, bound, store.delete(&k)).await;
    times_out("list", endpoint, bound, store.list("projects/", None)).await;
    times_out(
        "list uploads",
        endpoint,
        bound,
        store.list_uploads("projects/", None),
    )
    .await;
    let upload = vega_blobstore::PendingUpload {
        key: k.to_string(),
        upload_id: "u".into(),
        initiated: None,
    };
    times_out("abort upload", endpoint, bound, store.abort_upload(&upload)).await;
}

#[tokio::test]
async fn a_server_hanging_mid_upload_bounds_the_parts_and_the_cleanup() {
    // CreateMultipartUpload is answered; every part, and the abort after them, hang.
    let server = S3Server::hanging_after(1).await;
    let store = server.blob_store(None, tight());
    let path = scratch("src").join("big");
    std::fs::write(&path, bytes(13 * MIB, 2)).unwrap();
    let started = std::time::Instant::now();
    let err = store
        .put_file(&key("source.tar.gz"), &path, "application/gzip")
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("multipart put with hanging parts and abort: failed after {took:?}: {err}");
    assert!(
        matches!(
            err,
            BlobError::Timeout {
                operation: "UploadPart",
                ..
            }
        ),
        "{err:?}"
    );
    // The parts' operation timeout, then the abort's.
    assert!(took <= std::time::Duration::from_secs(8), "took {took:?}");
}

#[tokio::test]
async fn a_cancelled_put_leaves_no_spool_file() {
    let server = S3Server::start().await;
    let options = options();
    let spool = options.spool_dir.clone();
    let store = server.blob_store(None, options);
    // A stream that delivers a few bytes and then stalls, as a slow client does.
    let (mut tx, rx) = tokio::io::duplex(1024);
    tokio::io::AsyncWriteExt::write_all(&mut tx, b"some bytes")
        .await
        .unwrap();
    let k = key("events.jsonl");
    let put = store.put_reader(&k, rx, "application/x-ndjson");
    let cancelled = tokio::time::timeout(std::time::Duration::from_millis(300), put).await;
    assert!(
        cancelled.is_err(),
        "the put was still waiting for its stream"
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the guard removed the spool file"
    );
    drop(tx);
    assert_eq!(store.head(&k).await.unwrap(), None);
}

/// With the default timeouts, a small object and one of 16 MiB to an endpoint that accepts
/// connections and never answers both fail within a minute in all (every attempt included).
#[tokio::test]
async fn small_uploads_to_a_silent_endpoint_fail_within_a_minute_with_the_defaults() {
    let silent = vega_tests::s3::SilentEndpoint::start().await;
    let defaults = S3Options {
        spool_dir: scratch("spool"),
        ..S3Options::default()
    };
    assert_eq!(defaults.timeouts, vega_blobstore::S3Timeouts::default());
    let store = silent.blob_store(defaults);
    let endpoint = silent.endpoint();
    let bound = std::time::Duration::from_secs(60);
    let big = scratch("src").join("16mib");
    std::fs::write(&big, bytes(16 * MIB, 3)).unwrap();
    let small_key = key("small.json");
    let big_key = key("big.tar.gz");
    tokio::join!(
        times_out(
            "put (1 KB), default timeouts",
            endpoint,
            bound,
            store.put_reader(&small_key, &[b'x'; 1024][..], "application/json"),
        ),
        times_out(
            "put (16 MiB), default timeouts",
            endpoint,
            bound,
            store.put_file(&big_key, &big, "application/gzip"),
        ),
    );
}

/// A 16 MiB object over a 1 MiB/s uplink takes longer than the read timeout to send, and
/// still goes up with the default timeouts: the body's time is added to an upload's.
#[tokio::test]
async fn a_slow_upload_still_succeeds_with_the_defaults() {
    let server = S3Server::start().await;
    let port: u16 = server
        .endpoint()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let throttle = vega_tests::proxy::Throttle::start(port, MIB as u64).await;
    let store = vega_tests::s3::blob_store_at(
        &throttle.endpoint(),
        S3Options {
            spool_dir: scratch("spool"),
            ..S3Options::default()
        },
    );
    let path = scratch("src").join("slow");
    let data = bytes(16 * MIB, 4);
    std::fs::write(&path, &data).unwrap();
    let started = std::time::Instant::now();
    let k = key("slow.tar.gz");
    let stored = store.put_file(&k, &path, "application/gzip").await.unwrap();
    let took = started.elapsed();
    println!("put (16 MiB) at 1 MiB/s with default timeouts: {took:?}");
    assert_eq!(stored.size, data.len() as u64);
    assert!(
        took > vega_blobstore::S3Timeouts::default().read,
        "the upload took {took:?}: not slower than the read timeout, so it proves nothing"
    );
}
