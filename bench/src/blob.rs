//! Blob put/get of one large object on the filesystem and on loopback S3 (s3s-fs), beside
//! `std::fs::copy`, one raw aws-sdk-s3 PUT/GET and a raw multipart upload of the same file,
//! and the process's peak resident memory afterwards, in `--runs` rounds.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncWriteExt;
use vega_blobstore::{BlobStore, ObjectKey, S3Options};
use vega_tests::s3::{BUCKET, S3Server};

use crate::{Row, summary};

use crate::Result;

pub(crate) async fn run(mib: u64, runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("vega-bench-blob-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    // The directory holds several GiB: remove it whether or not the scenario succeeds.
    let result = measure(&dir, mib, runs, rows).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Each measurement's durations, one per round. Every round runs every measurement once, in
/// the same order, so a slow spell of the disk lands on a whole round rather than on whichever
/// measurement ran through it; the medians are compared.
#[derive(Default)]
struct Rounds {
    copy: Vec<Duration>,
    copy_synced: Vec<Duration>,
    fs_put: Vec<Duration>,
    fs_get: Vec<Duration>,
    plain_read: Vec<Duration>,
    raw_put: Vec<Duration>,
    raw_get: Vec<Duration>,
    raw_multipart: Vec<Duration>,
    s3_put: Vec<Duration>,
    s3_get: Vec<Duration>,
    s3_serial_put: Vec<Duration>,
}

async fn measure(dir: &Path, mib: u64, runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    let source = dir.join("source");
    write_source(&source, mib).await?;
    let fs = BlobStore::filesystem(dir.join("fs"))?;
    let server = S3Server::start().await;
    let client = server.client();
    let s3 = server.blob_store(None, S3Options::default());
    // The same upload with one part in flight, to show what concurrency buys on this link.
    let serial = server.blob_store(
        None,
        S3Options {
            upload_concurrency: 1,
            ..S3Options::default()
        },
    );
    let mut t = Rounds::default();
    for round in 0..runs {
        let key = |name: &str| ObjectKey::parse(format!("projects/bench/{name}-{round}"));
        let copy = dir.join(format!("copy-{round}"));
        t.copy
            .push(time(|| async { Ok(std::fs::copy(&source, &copy).map(|_| ())?) }).await?);
        // A put must survive a crash before its row commits, so it fsyncs; so does this baseline.
        let synced = dir.join(format!("copy-synced-{round}"));
        t.copy_synced.push(
            time(|| async {
                std::fs::copy(&source, &synced)?;
                std::fs::File::open(&synced)?.sync_all()?;
                Ok(())
            })
            .await?,
        );
        let fs_key = key("fs")?;
        let (put, get) = put_get(&fs, &source, &fs_key).await?;
        t.fs_put.push(put);
        t.fs_get.push(get);
        // A get hands every byte to the caller, so it reads them into the process; cp does not.
        t.plain_read.push(
            time(|| async {
                let mut file = std::fs::File::open(dir.join(format!("fs/{fs_key}")))?;
                std::io::copy(&mut file, &mut std::io::sink())?;
                Ok(())
            })
            .await?,
        );
        fs.delete(&fs_key).await?;
        std::fs::remove_file(&copy)?;
        std::fs::remove_file(&synced)?;

        let raw = format!("raw-{round}");
        t.raw_put.push(
            time(|| async {
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key(&raw)
                    .body(ByteStream::from_path(&source).await?)
                    .send()
                    .await?;
                Ok(())
            })
            .await?,
        );
        t.raw_get.push(
            time(|| async {
                let mut body = client
                    .get_object()
                    .bucket(BUCKET)
                    .key(&raw)
                    .send()
                    .await?
                    .body
                    .into_async_read();
                tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
                Ok(())
            })
            .await?,
        );
        let multipart = format!("raw-multipart-{round}");
        t.raw_multipart
            .push(time(|| raw_multipart(&client, &source, &multipart)).await?);
        let (s3_key, serial_key) = (key("s3")?, key("s3-serial")?);
        let (put, get) = put_get(&s3, &source, &s3_key).await?;
        t.s3_put.push(put);
        t.s3_get.push(get);
        let (put, _) = put_get(&serial, &source, &serial_key).await?;
        t.s3_serial_put.push(put);
        // Like the fs files, so that every round starts with the same store and disk.
        s3.delete(&s3_key).await?;
        s3.delete(&serial_key).await?;
        for raw_key in [&raw, &multipart] {
            client
                .delete_object()
                .bucket(BUCKET)
                .key(raw_key)
                .send()
                .await?;
        }
    }

    let n = mib as usize;
    let cp = summary("blob: std::fs::copy", n, &t.copy, None);
    let cp_synced = summary("blob: std::fs::copy + fsync", n, &t.copy_synced, None);
    let plain_read = summary(
        "blob: read the file into the process (std::io::copy)",
        n,
        &t.plain_read,
        None,
    );
    let raw_multipart = summary(
        "blob: s3 raw aws-sdk multipart, same parts",
        n,
        &t.raw_multipart,
        None,
    );
    let raw_put = summary("blob: s3 raw aws-sdk PutObject", n, &t.raw_put, None);
    let raw_get = summary("blob: s3 raw aws-sdk GetObject", n, &t.raw_get, None);
    rows.extend([
        summary("blob: fs put", n, &t.fs_put, Some(&cp)),
        summary(
            "blob: fs put vs a synced copy",
            n,
            &t.fs_put,
            Some(&cp_synced),
        ),
        summary("blob: fs get (verified)", n, &t.fs_get, Some(&cp)),
        summary(
            "blob: fs get (verified) vs a plain read",
            n,
            &t.fs_get,
            Some(&plain_read),
        ),
        summary(
            "blob: s3 put (multipart, sha256)",
            n,
            &t.s3_put,
            Some(&raw_put),
        ),
        summary(
            "blob: s3 put (multipart, sha256) vs raw multipart",
            n,
            &t.s3_put,
            Some(&raw_multipart),
        ),
        summary("blob: s3 get (verified)", n, &t.s3_get, Some(&raw_get)),
        summary(
            "blob: s3 put, one part in flight",
            n,
            &t.s3_serial_put,
            Some(&raw_multipart),
        ),
        plain_read,
        cp,
        cp_synced,
        raw_multipart,
        raw_put,
        raw_get,
    ]);
    if let Some(kib) = crate::peak_rss::peak_kib() {
        println!(
            "peak RSS after the blob scenarios ({mib} MiB objects, s3s-fs in process): {} MiB",
            kib / 1024
        );
    }
    Ok(())
}

/// The same parts as the store's upload, sent plainly one after another: s3s-fs's
/// CompleteMultipartUpload rewrites the whole object on disk (real S3 only stitches
/// metadata), which no client can avoid, so this is the like-for-like baseline of a put.
async fn raw_multipart(client: &aws_sdk_s3::Client, source: &Path, key: &str) -> Result<()> {
    let part = S3Options::default().part_size;
    let size = std::fs::metadata(source)?.len();
    let id = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await?
        .upload_id
        .ok_or("no upload id")?;
    let mut parts = Vec::new();
    for (i, offset) in (0..size).step_by(part as usize).enumerate() {
        let number = i as i32 + 1;
        let body = ByteStream::read_from()
            .path(source)
            .offset(offset)
            .length(Length::Exact(part.min(size - offset)))
            .build()
            .await?;
        let done = client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(number)
            .body(body)
            .send()
            .await?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(done.e_tag)
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

async fn put_get(
    store: &BlobStore,
    source: &Path,
    key: &ObjectKey,
) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let stored = store
        .put_file(key, source, "application/octet-stream")
        .await?;
    let put = started.elapsed();
    let started = Instant::now();
    let mut reader = store.get(key, stored.sha256, Some(stored.size)).await?;
    tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    Ok((put, started.elapsed()))
}

async fn time<F, Fut>(f: F) -> Result<Duration>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    f().await?;
    Ok(started.elapsed())
}

async fn write_source(path: &Path, mib: u64) -> Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..mib {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        file.write_all(&block).await?;
    }
    file.sync_all().await?;
    Ok(())
}
