//! The S3 backend.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncRead;

use crate::{BlobError, ListPage, ObjectKey, ObjectMeta, Stored};

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (except the last) and its largest part count.
const MIN_PART: u64 = 5 * MIB;
const MAX_PARTS: u64 = 10_000;

/// How the S3 backend uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Options {
    /// Objects at least this large go up in parts (default 64 MiB).
    pub multipart_threshold: u64,
    /// Part size (default 16 MiB; raised when 10,000 parts would not hold the object, and
    /// never below S3's 5 MiB minimum).
    pub part_size: u64,
    /// Parts in flight at once (default 4). Each streams from its slice of the file, so
    /// memory does not grow with this; one request at a time cannot fill the link, because
    /// every part waits for the server to store and checksum it before the next one starts.
    pub upload_concurrency: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            multipart_threshold: 64 * MIB,
            part_size: 16 * MIB,
            upload_concurrency: 4,
        }
    }
}

/// A client from aws-config's default chain. Retries and timeouts are set here rather than
/// left at the SDK's defaults silently: three attempts, a 5 s connect timeout, and stalled-
/// stream protection (the SDK default) for bodies. A custom endpoint (`AWS_ENDPOINT_URL`,
/// i.e. not AWS) gets path-style addressing and checksums only where the API requires them,
/// which S3-compatible servers handle reliably.
pub(crate) async fn client_from_environment() -> Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared);
    if shared.endpoint_url().is_some() {
        config = config
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Client::from_conf(config.build())
}

#[derive(Debug, Clone)]
pub(crate) struct S3Store {
    client: Client,
    bucket: String,
    prefix: Option<String>,
    options: S3Options,
}

fn s3_error<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> BlobError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    move |err| BlobError::S3 {
        operation,
        message: DisplayErrorContext(&err).to_string(),
    }
}

impl S3Store {
    pub(crate) fn new(
        client: Client,
        bucket: String,
        prefix: Option<String>,
        options: S3Options,
    ) -> Self {
        Self {
            client,
            bucket,
            prefix,
            options,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match &self.prefix {
            Some(prefix) => format!("s3://{}/{prefix}/", self.bucket),
            None => format!("s3://{}/", self.bucket),
        }
    }

    fn full_key(&self, key: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_owned(),
        }
    }

    fn strip(&self, full: &str) -> String {
        match &self.prefix {
            Some(prefix) => full
                .strip_prefix(prefix.as_str())
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(full)
                .to_owned(),
            None => full.to_owned(),
        }
    }

    pub(crate) async fn put_reader(
        &self,
        key: &ObjectKey,
        mut reader: impl AsyncRead + Unpin + Send,
    ) -> Result<Stored, BlobError> {
        let spool = crate::spool_path();
        let result = async {
            let mut file = tokio::fs::File::create(&spool).await?;
            let stored = crate::copy_hashing(&mut reader, &mut file).await?;
            drop(file);
            self.upload(key, &spool, stored).await?;
            Ok(stored)
        }
        .await;
        let _ = tokio::fs::remove_file(&spool).await;
        result
    }

    pub(crate) async fn put_file(&self, key: &ObjectKey, path: &Path) -> Result<Stored, BlobError> {
        let stored = crate::hash_file(path).await?;
        self.upload(key, path, stored).await?;
        Ok(stored)
    }

    async fn upload(&self, key: &ObjectKey, path: &Path, stored: Stored) -> Result<(), BlobError> {
        if stored.size >= self.options.multipart_threshold {
            return self.upload_parts(key, path, stored.size).await;
        }
        let full = self.full_key(key.as_str());
        // Sending our SHA-256 makes S3 verify the body on arrival, and keeps the SDK from
        // switching to aws-chunked encoding.
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_length(stored.size as i64)
            .checksum_sha256(BASE64.encode(stored.sha256))
            .if_none_match("*")
            .body(
                ByteStream::from_path(path)
                    .await
                    .map_err(|e| BlobError::Io(std::io::Error::other(e)))?,
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if precondition_failed(&err) => Err(BlobError::AlreadyExists {
                key: key.to_string(),
            }),
            Err(err) => Err(s3_error("PutObject")(err)),
        }
    }

    /// Uploads one slice of the file as part `number`.
    async fn upload_part(
        &self,
        full: &str,
        upload_id: &str,
        path: &Path,
        number: i32,
        offset: u64,
        length: u64,
    ) -> Result<CompletedPart, BlobError> {
        let body = ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(length))
            .build()
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        let part = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(length as i64)
            .body(body)
            .send()
            .await
            .map_err(s3_error("UploadPart"))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(part.e_tag().map(str::to_owned))
            .build())
    }

    /// Uploads in parts read from slices of the file, [`S3Options::upload_concurrency`] in
    /// flight, so memory does not grow with the object. Any failure aborts the upload so no
    /// parts linger.
    async fn upload_parts(&self, key: &ObjectKey, path: &Path, size: u64) -> Result<(), BlobError> {
        let full = self.full_key(key.as_str());
        let part_size = self
            .options
            .part_size
            .max(MIN_PART)
            .max(size.div_ceil(MAX_PARTS));
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(s3_error("CreateMultipartUpload"))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let slices = (0..size.div_ceil(part_size)).map(|i| {
                let offset = i * part_size;
                // Part numbers start at 1; at most MAX_PARTS, so the cast cannot truncate.
                (i as i32 + 1, offset, part_size.min(size - offset))
            });
            let mut parts: Vec<CompletedPart> = futures::stream::iter(slices)
                .map(|(number, offset, length)| {
                    self.upload_part(&full, &upload_id, path, number, offset, length)
                })
                .buffer_unordered(self.options.upload_concurrency.max(1))
                .try_collect()
                .await?;
            parts.sort_by_key(|p| p.part_number());
            let completed = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .if_none_match("*")
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match completed {
                Ok(_) => Ok(()),
                Err(err) if precondition_failed(&err) => Err(BlobError::AlreadyExists {
                    key: key.to_string(),
                }),
                Err(err) => Err(s3_error("CompleteMultipartUpload")(err)),
            }
        }
        .await;
        if result.is_err() {
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(err) = aborted {
                // The bucket's AbortIncompleteMultipartUpload lifecycle rule is the backstop.
                tracing::warn!(key = %full, upload_id, error = %DisplayErrorContext(&err), "could not abort a failed multipart upload");
            }
        }
        result
    }

    pub(crate) async fn open(
        &self,
        key: &ObjectKey,
    ) -> Result<Pin<Box<dyn AsyncRead + Send>>, BlobError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key.as_str()))
            .send()
            .await;
        match result {
            Ok(out) => Ok(Box::pin(out.body.into_async_read())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(BlobError::NotFound {
                    key: key.to_string(),
                })
            }
            Err(err) => Err(s3_error("GetObject")(err)),
        }
    }

    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, BlobError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key.as_str()))
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or_default().max(0) as u64,
                last_modified: out
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            })),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(s3_error("HeadObject")(err)),
        }
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key.as_str()))
            .send()
            .await
            .map_err(s3_error("DeleteObject"))?;
        Ok(())
    }

    pub(crate) async fn list(
        &self,
        prefix: &str,
        page: Option<String>,
    ) -> Result<ListPage, BlobError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .set_continuation_token(page)
            .max_keys(1000)
            .send()
            .await
            .map_err(s3_error("ListObjectsV2"))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: self.strip(o.key()?),
                    size: o.size().unwrap_or_default().max(0) as u64,
                    last_modified: o
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(ListPage { objects, next })
    }

    pub(crate) async fn presign_get(
        &self,
        key: &ObjectKey,
        expires: Duration,
    ) -> Result<String, BlobError> {
        let config = presigning(expires)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key.as_str()))
            .presigned(config)
            .await
            .map_err(s3_error("GetObject (presign)"))?;
        Ok(request.uri().to_owned())
    }

    pub(crate) async fn presign_put(
        &self,
        key: &ObjectKey,
        sha256: [u8; 32],
        expires: Duration,
    ) -> Result<(String, Vec<(String, String)>), BlobError> {
        let config = presigning(expires)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key.as_str()))
            .checksum_sha256(BASE64.encode(sha256))
            .if_none_match("*")
            .presigned(config)
            .await
            .map_err(s3_error("PutObject (presign)"))?;
        let headers = request
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok((request.uri().to_owned(), headers))
    }
}

fn presigning(expires: Duration) -> Result<PresigningConfig, BlobError> {
    PresigningConfig::expires_in(expires).map_err(|e| BlobError::S3 {
        operation: "presign",
        message: format!("expiry {expires:?}: {e} (the most S3 allows is 7 days)"),
    })
}

/// S3's answer to a create-only write whose key exists.
fn precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.raw_response()
        .is_some_and(|r| r.status().as_u16() == 412)
        || err.as_service_error().and_then(|e| e.code()) == Some("PreconditionFailed")
}
