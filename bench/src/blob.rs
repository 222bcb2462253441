//! Blob put/get of one large object on the filesystem and on loopback S3 (s3s-fs), beside
//! `std::fs::copy`, one raw aws-sdk-s3 PUT/GET and a raw multipart upload of the same file,
//! and the process's peak resident memory afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncWriteExt;
use vega_blobstore::{BlobStore, ObjectKey, S3Options};
use vega_tests::s3::{BUCKET, S3Server};

use crate::{Row, summary};

use crate::Result;

pub(crate) async fn run(mib: u64, rows: &mut Vec<Row>) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("vega-bench-blob-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    // The directory holds several GiB: remove it whether or not the scenario succeeds.
    let result = measure(&dir, mib, rows).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(dir: &Path, mib: u64, rows: &mut Vec<Row>) -> Result<()> {
    let source = dir.join("source");
    write_source(&source, mib).await?;
    let n = mib as usize;

    let copy = time(|| async {
        std::fs::copy(&source, dir.join("copy"))
            .map(|_| ())
            .map_err(Into::into)
    })
    .await?;
    let cp = summary("blob: std::fs::copy", n, &[copy], None);
    // A put must survive a crash before its row commits, so it fsyncs; so does this baseline.
    let copy_synced = time(|| async {
        std::fs::copy(&source, dir.join("copy-synced"))?;
        std::fs::File::open(dir.join("copy-synced"))?.sync_all()?;
        Ok(())
    })
    .await?;
    let cp_synced = summary("blob: std::fs::copy + fsync", n, &[copy_synced], None);

    let fs = BlobStore::filesystem(dir.join("fs"))?;
    let (put, get) = put_get(&fs, &source, "fs").await?;
    rows.push(summary("blob: fs put", n, &[put], Some(&cp)));
    rows.push(summary(
        "blob: fs put vs a synced copy",
        n,
        &[put],
        Some(&cp_synced),
    ));
    rows.push(summary("blob: fs get (verified)", n, &[get], Some(&cp)));
    // A get hands every byte to the caller, so it reads them into the process; cp does not.
    let plain_read = time(|| async {
        let mut file = std::fs::File::open(dir.join("fs/projects/bench/fs"))?;
        std::io::copy(&mut file, &mut std::io::sink())?;
        Ok(())
    })
    .await?;
    let plain_read = summary(
        "blob: read the file into the process (std::io::copy)",
        n,
        &[plain_read],
        None,
    );
    rows.push(summary(
        "blob: fs get (verified) vs a plain read",
        n,
        &[get],
        Some(&plain_read),
    ));
    rows.push(plain_read);
    rows.push(cp);
    rows.push(cp_synced);

    let server = S3Server::start().await;
    let client = server.client();
    let raw_put = time(|| async {
        client
            .put_object()
            .bucket(BUCKET)
            .key("raw")
            .body(ByteStream::from_path(&source).await?)
            .send()
            .await?;
        Ok(())
    })
    .await?;
    let raw_get = time(|| async {
        let mut body = client
            .get_object()
            .bucket(BUCKET)
            .key("raw")
            .send()
            .await?
            .body
            .into_async_read();
        tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        Ok(())
    })
    .await?;
    // The same parts, uploaded plainly: s3s-fs's CompleteMultipartUpload rewrites the whole
    // object on disk (real S3 only stitches metadata), which no client can avoid.
    let raw_multipart = time(|| async {
        let part = S3Options::default().part_size;
        let size = std::fs::metadata(&source)?.len();
        let id = client
            .create_multipart_upload()
            .bucket(BUCKET)
            .key("raw-multipart")
            .send()
            .await?
            .upload_id
            .ok_or("no upload id")?;
        let mut parts = Vec::new();
        for (i, offset) in (0..size).step_by(part as usize).enumerate() {
            let number = i as i32 + 1;
            let body = ByteStream::read_from()
                .path(&source)
                .offset(offset)
                .length(Length::Exact(part.min(size - offset)))
                .build()
                .await?;
            let done = client
                .upload_part()
                .bucket(BUCKET)
                .key("raw-multipart")
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
            .key("raw-multipart")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await?;
        Ok(())
    })
    .await?;
    let raw_multipart = summary(
        "blob: s3 raw aws-sdk multipart, same parts",
        n,
        &[raw_multipart],
        None,
    );
    let raw_put = summary("blob: s3 raw aws-sdk PutObject", n, &[raw_put], None);
    let raw_get = summary("blob: s3 raw aws-sdk GetObject", n, &[raw_get], None);
    let s3 = server.blob_store(None, S3Options::default());
    let (put, get) = put_get(&s3, &source, "s3").await?;
    rows.push(summary(
        "blob: s3 put (multipart, sha256)",
        n,
        &[put],
        Some(&raw_put),
    ));
    rows.push(summary(
        "blob: s3 put (multipart, sha256) vs raw multipart",
        n,
        &[put],
        Some(&raw_multipart),
    ));
    rows.push(summary(
        "blob: s3 get (verified)",
        n,
        &[get],
        Some(&raw_get),
    ));
    // The same upload with one part in flight, to show what concurrency buys on this link.
    let serial = server.blob_store(
        None,
        S3Options {
            upload_concurrency: 1,
            ..S3Options::default()
        },
    );
    let (serial_put, _) = put_get(&serial, &source, "s3-serial").await?;
    rows.push(summary(
        "blob: s3 put, one part in flight",
        n,
        &[serial_put],
        Some(&raw_multipart),
    ));
    rows.push(raw_multipart);
    rows.push(raw_put);
    rows.push(raw_get);
    if let Some(kib) = peak_rss_kib() {
        println!(
            "peak RSS after the blob scenarios ({mib} MiB objects, s3s-fs in process): {} MiB",
            kib / 1024
        );
    }
    Ok(())
}

async fn put_get(store: &BlobStore, source: &Path, name: &str) -> Result<(Duration, Duration)> {
    let key = ObjectKey::parse(format!("projects/bench/{name}"))?;
    let started = Instant::now();
    let stored = store.put_file(&key, source).await?;
    let put = started.elapsed();
    let started = Instant::now();
    let mut reader = store.get(&key, stored.sha256, Some(stored.size)).await?;
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

/// VmHWM: the most resident memory this process has used.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
