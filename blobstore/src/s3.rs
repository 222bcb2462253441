//! The S3 backend.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    ConfigBag, Intercept, RequestChecksumCalculation, ResponseChecksumValidation,
    RuntimeComponents, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncRead;
use vega_config::S3Timeouts;

use crate::spool::Spool;
use crate::verify::hex;
use crate::{
    BlobError, Hashed, Hashing, ListPage, ObjectKey, ObjectMeta, PendingUpload, UploadMarker,
    UploadPage,
};

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (except the last) and its largest part count.
const MIN_PART: u64 = 5 * MIB;
const MAX_PARTS: u64 = 10_000;
/// The slowest link, in bytes per second, over which an upload is still given the time to
/// finish (shared by the parts in flight).
const SLOWEST_LINK: u64 = MIB;

/// How the S3 backend uploads, and the bound on its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The bound on every call (see [`S3Timeouts`]).
    pub timeouts: S3Timeouts,
    /// Where streams are spooled before upload; the store owns this directory.
    pub spool_dir: PathBuf,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            multipart_threshold: 64 * MIB,
            part_size: 16 * MIB,
            upload_concurrency: 4,
            timeouts: S3Timeouts::default(),
            spool_dir: vega_config::default_spool_dir(),
        }
    }
}

/// A client from aws-config's default chain (its timeouts and retries are set by
/// [`S3Store::new`]). A custom endpoint (`AWS_ENDPOINT_URL`, i.e. not AWS) gets path-style
/// addressing and checksums only where the API requires them, which S3-compatible servers
/// handle reliably; the SHA-256 checksums this store sends itself still go.
pub(crate) async fn client_from_environment() -> Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
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
    spool: Spool,
    endpoint: Endpoint,
}

/// The endpoint requests go to, as the SDK resolved it (the config does not expose it), for
/// error messages.
#[derive(Debug, Clone, Default)]
struct Endpoint(Arc<OnceLock<String>>);

impl Intercept for Endpoint {
    fn name(&self) -> &'static str {
        "vega-endpoint"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.0.get().is_none() {
            let uri = context.request().uri();
            // Scheme and authority only: the path holds keys.
            let end = uri
                .find("://")
                .and_then(|i| uri[i + 3..].find('/').map(|j| i + 3 + j))
                .unwrap_or(uri.len());
            let _ = self.0.set(uri[..end].to_owned());
        }
        Ok(())
    }
}

impl Endpoint {
    fn describe(&self) -> String {
        self.0
            .get()
            .cloned()
            .unwrap_or_else(|| "the S3 endpoint (AWS_ENDPOINT_URL or the region's)".to_owned())
    }
}

impl S3Store {
    pub(crate) fn new(
        client: Client,
        bucket: String,
        prefix: Option<String>,
        options: S3Options,
    ) -> Result<Self, BlobError> {
        let t = options.timeouts;
        let endpoint = Endpoint::default();
        let config = client
            .config()
            .to_builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(t.connect)
                    .read_timeout(t.read)
                    .operation_attempt_timeout(t.attempt)
                    .operation_timeout(t.operation)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(t.max_attempts))
            .interceptor(endpoint.clone())
            .build();
        Ok(Self {
            client: Client::from_conf(config),
            bucket,
            prefix,
            spool: Spool::open(&options.spool_dir)?,
            options,
            endpoint,
        })
    }

    /// The error for a failed call: [`BlobError::Timeout`] naming the bound that ran out,
    /// else [`BlobError::S3`] with the SDK's context.
    fn failed<E, R>(&self, operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> BlobError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        move |err| {
            let message = DisplayErrorContext(&err).to_string();
            let t = self.options.timeouts;
            let bound = match &err {
                SdkError::TimeoutError(_) if message.contains("attempt timeout") => {
                    Some(("VEGA_S3_ATTEMPT_TIMEOUT", t.attempt))
                }
                SdkError::TimeoutError(_) => Some(("VEGA_S3_OPERATION_TIMEOUT", t.operation)),
                // The stalled-stream protection of an upload, whose grace is the read timeout.
                _ if message.contains("minimum throughput") => {
                    Some(("VEGA_S3_READ_TIMEOUT", t.read))
                }
                SdkError::DispatchFailure(e) if e.is_timeout() => {
                    if message.contains("read timeout") {
                        Some(("VEGA_S3_READ_TIMEOUT", t.read))
                    } else {
                        Some(("VEGA_S3_CONNECT_TIMEOUT", t.connect))
                    }
                }
                _ => None,
            };
            match bound {
                Some((setting, after)) => BlobError::Timeout {
                    operation,
                    endpoint: self.endpoint.describe(),
                    setting,
                    after,
                    attempts: t.max_attempts,
                },
                None => BlobError::S3 { operation, message },
            }
        }
    }

    /// The timeouts of a call that sends a body of `length` bytes while `in_flight` bodies
    /// share the link. The SDK's read timeout counts from the request's first byte, so the
    /// time to send the body at [`SLOWEST_LINK`] is added to the configured read timeout
    /// (within the attempt's bound): a small body to a silent endpoint fails in about the read
    /// timeout, a large part over a slow link still has the time to go. A body that stops
    /// moving altogether (the endpoint reads nothing once the socket buffers are full) fails
    /// after the read timeout too, by the SDK's stalled-stream protection.
    fn upload_timeouts(&self, length: u64, in_flight: usize) -> aws_sdk_s3::config::Builder {
        let t = self.options.timeouts;
        let sending =
            Duration::from_secs_f64(length as f64 * in_flight.max(1) as f64 / SLOWEST_LINK as f64);
        aws_sdk_s3::config::Builder::default()
            .timeout_config(
                TimeoutConfig::builder()
                    .read_timeout((t.read + sending).min(t.attempt))
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(t.read)
                    .build(),
            )
    }

    /// The part size an object of `size` bytes goes up in.
    fn part_size(&self, size: u64) -> u64 {
        self.options
            .part_size
            .max(MIN_PART)
            .max(size.div_ceil(MAX_PARTS))
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

    /// Spools the stream (hashing the whole and each part on the way), then uploads the
    /// spool file. The guard removes it however this future ends.
    pub(crate) async fn put_reader(
        &self,
        key: &ObjectKey,
        mut reader: impl AsyncRead + Unpin + Send,
        content_type: &str,
    ) -> Result<crate::Stored, BlobError> {
        let spool = self.spool.create()?;
        let mut file = spool.writer()?;
        let base = self.part_size(0);
        let mut hashed =
            crate::copy_hashing(&mut reader, &mut file, Hashing::with_parts(base)).await?;
        drop(file);
        if self.part_size(hashed.stored.size) != base {
            // Beyond 10,000 parts of the configured size (160 GiB at 16 MiB): hash again in
            // the larger parts.
            hashed = crate::hash_file(spool.path(), self.part_size(hashed.stored.size)).await?;
        }
        self.upload(key, spool.path(), &hashed, content_type)
            .await?;
        Ok(hashed.stored)
    }

    pub(crate) async fn put_file(
        &self,
        key: &ObjectKey,
        path: &Path,
        content_type: &str,
    ) -> Result<crate::Stored, BlobError> {
        let size = tokio::fs::metadata(path).await?.len();
        let hashed = crate::hash_file(path, self.part_size(size)).await?;
        if hashed.stored.size != size {
            return Err(BlobError::Io(std::io::Error::other(format!(
                "{} changed while it was being stored",
                path.display()
            ))));
        }
        self.upload(key, path, &hashed, content_type).await?;
        Ok(hashed.stored)
    }

    async fn upload(
        &self,
        key: &ObjectKey,
        path: &Path,
        hashed: &Hashed,
        content_type: &str,
    ) -> Result<(), BlobError> {
        let stored = hashed.stored;
        if stored.size >= self.options.multipart_threshold && stored.size > 0 {
            return self.upload_parts(key, path, hashed, content_type).await;
        }
        let full = self.full_key(key.as_str());
        // Sending our SHA-256 makes S3 verify the body on arrival, and keeps the SDK from
        // switching to aws-chunked encoding; the algorithm header is what S3-compatible servers
        // (moto) look for before they record the checksum.
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_type(content_type)
            .metadata(SHA256_METADATA, hex(&stored.sha256))
            .content_length(stored.size as i64)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(BASE64.encode(stored.sha256))
            .if_none_match("*")
            .body(
                ByteStream::from_path(path)
                    .await
                    .map_err(|e| BlobError::Io(std::io::Error::other(e)))?,
            )
            .customize()
            .config_override(self.upload_timeouts(stored.size, 1))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if precondition_failed(&err) => Err(BlobError::AlreadyExists {
                key: key.to_string(),
            }),
            Err(err) => Err(self.failed("PutObject")(err)),
        }
    }

    /// Uploads one slice of the file as part `number`, with its SHA-256 for S3 to check.
    #[allow(clippy::too_many_arguments)]
    async fn upload_part(
        &self,
        full: &str,
        upload_id: &str,
        path: &Path,
        number: i32,
        offset: u64,
        length: u64,
        sha256: [u8; 32],
        in_flight: usize,
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
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(BASE64.encode(sha256))
            .body(body)
            .customize()
            .config_override(self.upload_timeouts(length, in_flight))
            .send()
            .await
            .map_err(self.failed("UploadPart"))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(part.e_tag().map(str::to_owned))
            .checksum_sha256(BASE64.encode(sha256))
            .build())
    }

    /// Uploads in parts read from slices of the file, [`S3Options::upload_concurrency`] in
    /// flight, so memory does not grow with the object. Any failure aborts the upload; an
    /// abort that fails too leaves it for `gc`.
    async fn upload_parts(
        &self,
        key: &ObjectKey,
        path: &Path,
        hashed: &Hashed,
        content_type: &str,
    ) -> Result<(), BlobError> {
        let full = self.full_key(key.as_str());
        let size = hashed.stored.size;
        let part_size = hashed.part_size;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .content_type(content_type)
            .metadata(SHA256_METADATA, hex(&hashed.stored.sha256))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(self.failed("CreateMultipartUpload"))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let slices = hashed.parts.iter().enumerate().map(|(i, sha256)| {
                let offset = i as u64 * part_size;
                // Part numbers start at 1; at most MAX_PARTS, so the cast cannot truncate.
                (i as i32 + 1, offset, part_size.min(size - offset), *sha256)
            });
            let in_flight = self
                .options
                .upload_concurrency
                .clamp(1, hashed.parts.len().max(1));
            let mut parts: Vec<CompletedPart> = futures::stream::iter(slices)
                .map(|(number, offset, length, sha256)| {
                    self.upload_part(
                        &full, &upload_id, path, number, offset, length, sha256, in_flight,
                    )
                })
                .buffer_unordered(in_flight)
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
                Err(err) => Err(self.failed("CompleteMultipartUpload")(err)),
            }
        }
        .await;
        if result.is_err()
            && let Err(err) = self.abort(&full, &upload_id).await
        {
            // `gc` lists and aborts it later; the bucket's lifecycle rule is the last resort.
            tracing::warn!(key = %full, upload_id, error = %err, "could not abort a failed multipart upload; gc will");
        }
        result
    }

    async fn abort(&self, full: &str, upload_id: &str) -> Result<(), BlobError> {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_no_such_upload()) =>
            {
                Ok(())
            }
            Err(err) => Err(self.failed("AbortMultipartUpload")(err)),
        }
    }

    pub(crate) async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), BlobError> {
        self.abort(&self.full_key(&upload.key), &upload.upload_id)
            .await
    }

    pub(crate) async fn list_uploads(
        &self,
        prefix: &str,
        page: Option<UploadMarker>,
    ) -> Result<UploadPage, BlobError> {
        let (key_marker, upload_id_marker) = match page {
            Some(m) => (Some(m.key), Some(m.upload_id)),
            None => (None, None),
        };
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .set_key_marker(key_marker)
            .set_upload_id_marker(upload_id_marker)
            .max_uploads(1000)
            .send()
            .await
            .map_err(self.failed("ListMultipartUploads"))?;
        let uploads = out
            .uploads()
            .iter()
            .filter_map(|u| {
                Some(PendingUpload {
                    key: self.strip(u.key()?),
                    upload_id: u.upload_id()?.to_owned(),
                    initiated: u
                        .initiated()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                })
            })
            .collect();
        let next = match (
            out.is_truncated(),
            out.next_key_marker(),
            out.next_upload_id_marker(),
        ) {
            (Some(true), Some(key), upload_id) => Some(UploadMarker {
                key: key.to_owned(),
                upload_id: upload_id.unwrap_or_default().to_owned(),
            }),
            _ => None,
        };
        Ok(UploadPage { uploads, next })
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
            Err(err) => Err(self.failed("GetObject")(err)),
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
            Err(err) => Err(self.failed("HeadObject")(err)),
        }
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key.as_str()))
            .send()
            .await
            .map_err(self.failed("DeleteObject"))?;
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
            .map_err(self.failed("ListObjectsV2"))?;
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
            .set_response_content_disposition(attachment(key))
            .presigned(config)
            .await
            .map_err(self.failed("GetObject (presign)"))?;
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
            .map_err(self.failed("PutObject (presign)"))?;
        let headers = request
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok((request.uri().to_owned(), headers))
    }
}

/// The user metadata that carries an object's SHA-256 (hex), for presigned downloads to check.
pub(crate) const SHA256_METADATA: &str = "sha256";

fn presigning(expires: Duration) -> Result<PresigningConfig, BlobError> {
    PresigningConfig::expires_in(expires).map_err(|_| BlobError::InvalidExpiry { expires })
}

/// `attachment; filename="…"` when the key ends in a plain file name.
fn attachment(key: &ObjectKey) -> Option<String> {
    let name = key.as_str().rsplit('/').next()?;
    let plain = name.contains('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    plain.then(|| format!("attachment; filename=\"{name}\""))
}

/// S3's answer to a create-only write whose key exists.
fn precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.raw_response()
        .is_some_and(|r| r.status().as_u16() == 412)
        || err.as_service_error().and_then(|e| e.code()) == Some("PreconditionFailed")
}
