//! S3 protocol servers for tests, spoken to by the real aws-sdk-s3 client:
//!
//! - [`S3Server`]: s3s-fs on a TCP listener at 127.0.0.1:0 inside the test process, with the
//!   two things s3s-fs lacks added ([`Extended`]): `ListMultipartUploads`, and a check of each
//!   part's SHA-256 as S3 makes it;
//! - [`MotoServer`]: moto's S3 server as a child process, a second implementation written
//!   independently of the first;
//! - [`SilentEndpoint`]: a listener that accepts connections and never answers.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use base64::Engine;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use sha2::Digest;
use tokio::task::{JoinHandle, JoinSet};
use vega_blobstore::{BlobStore, S3Options};

const ACCESS_KEY: &str = "vega-test";
const SECRET_KEY: &str = "vega-test-secret";
/// The bucket every test server starts with.
pub const BUCKET: &str = "vega-test";

/// A running s3s-fs server. Dropping it stops it.
pub struct S3Server {
    endpoint: String,
    root: PathBuf,
    /// Whether dropping the server removes `root` (not when it serves another's directory).
    owns_root: bool,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl S3Server {
    /// A server over a fresh directory, with [`BUCKET`] created.
    pub async fn start() -> Self {
        let root = std::env::temp_dir().join(format!("vega-s3-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        Self::serve(root, Limit::None, true).await
    }

    /// A server over an existing directory (to restart one that was stopped); the directory
    /// stays with the server that created it.
    pub async fn restart_over(root: &Path) -> Self {
        Self::serve(root.to_owned(), Limit::None, false).await
    }

    /// A server that answers `requests` requests and then drops every connection, as a server
    /// that dies mid-transfer would.
    pub async fn failing_after(requests: usize) -> Self {
        let root = std::env::temp_dir().join(format!("vega-s3-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        Self::serve(root, Limit::FailAfter(requests), true).await
    }

    /// A server that answers `requests` requests and then never answers another, as a server
    /// that hung (or a network that black-holes packets) mid-transfer would.
    pub async fn hanging_after(requests: usize) -> Self {
        let root = std::env::temp_dir().join(format!("vega-s3-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        Self::serve(root, Limit::HangAfter(requests), true).await
    }

    async fn serve(root: PathBuf, limit: Limit, owns_root: bool) -> Self {
        let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs over the directory");
        let mut builder = S3ServiceBuilder::new(Extended {
            fs,
            root: root.clone(),
        });
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            // Owned by this task: aborting the task aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                let counter = counter.clone();
                let limited = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            match limit {
                                Limit::FailAfter(max) if n >= max => {
                                    return Err(std::io::Error::other("the test server is down"));
                                }
                                Limit::HangAfter(max) if n >= max => {
                                    std::future::pending::<()>().await;
                                }
                                _ => {}
                            }
                            Service::call(&service, request)
                                .await
                                .map_err(|e| std::io::Error::other(format!("{e:?}")))
                        }
                    },
                );
                let connection = http
                    .serve_connection(TokioIo::new(socket), limited)
                    .into_owned();
                connections.spawn(async move {
                    let _ = connection.await;
                    Ok::<_, Infallible>(())
                });
            }
        });
        Self {
            endpoint,
            root,
            owns_root,
            served,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The directory behind the server (objects are files under `root/bucket/key`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many requests reached the server.
    pub fn requests(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// The real aws-sdk-s3 client, configured as for any non-AWS endpoint.
    pub fn client(&self) -> aws_sdk_s3::Client {
        client(&self.endpoint)
    }

    /// The environment a child process needs to reach this server through aws-config's default
    /// chain, as a deployed binary would reach S3.
    pub fn aws_env(&self) -> [(&'static str, String); 4] {
        aws_env(&self.endpoint)
    }

    /// A blob store on [`BUCKET`] under `prefix`.
    pub fn blob_store(&self, prefix: Option<&str>, options: S3Options) -> BlobStore {
        blob_store(&self.endpoint, prefix, options)
    }

    /// Stops the server: the listener and every open connection.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
        // The benchmarks store GiB-sized objects here; leaving them filled the disk.
        if self.owns_root {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// When a test server stops answering.
#[derive(Debug, Clone, Copy)]
enum Limit {
    None,
    FailAfter(usize),
    HangAfter(usize),
}

/// The real aws-sdk-s3 client for a non-AWS endpoint, as a deployment configures it.
pub fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn aws_env(endpoint: &str) -> [(&'static str, String); 4] {
    [
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ]
}

/// A blob store on [`BUCKET`] that reaches a test server through `endpoint` (a
/// [`crate::proxy::Throttle`] in front of it, say).
pub fn blob_store_at(endpoint: &str, options: S3Options) -> BlobStore {
    blob_store(endpoint, None, options)
}

fn blob_store(endpoint: &str, prefix: Option<&str>, options: S3Options) -> BlobStore {
    BlobStore::s3(client(endpoint), BUCKET, prefix.map(str::to_owned), options)
        .expect("a blob store over the test server")
}

/// s3s-fs with `ListMultipartUploads` (read from the upload records s3s-fs keeps on disk, so
/// it survives a restart over the same directory) and with each part's `x-amz-checksum-sha256`
/// checked against the bytes stored, as S3 checks it. Everything else is s3s-fs's.
struct Extended {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
}

#[async_trait::async_trait]
impl S3 for Extended {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.fs.get_object(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let expected = req.input.checksum_sha256.clone();
        let part = self.root.join(format!(
            ".upload_id-{}.part-{}",
            req.input.upload_id, req.input.part_number
        ));
        let out = self.fs.upload_part(req).await?;
        if let Some(expected) = expected {
            // Streamed, so the server's memory stays small beside the store it is measured with.
            let mut hasher = sha2::Sha256::new();
            std::fs::File::open(&part)
                .and_then(|mut file| std::io::copy(&mut file, &mut hasher))
                .map_err(|e| s3_error!(InternalError, "{e}"))?;
            let actual = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
            if actual != expected {
                let _ = std::fs::remove_file(&part);
                return Err(s3_error!(
                    BadDigest,
                    "the part's x-amz-checksum-sha256 does not match its bytes"
                ));
            }
        }
        Ok(out)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(|e| s3_error!(InternalError, "{e}"))?;
        for entry in entries.flatten() {
            // `.bucket-{b64}.object-{b64}.upload-{uuid}.metadata.json`
            let name = entry.file_name().to_string_lossy().into_owned();
            let parts: Vec<&str> = name.split('.').collect();
            let ["", bucket, object, upload, "metadata", "json"] = parts.as_slice() else {
                continue;
            };
            let decode = |s: &str| b64.decode(s).ok().and_then(|b| String::from_utf8(b).ok());
            let (Some(bucket), Some(key), Some(upload_id)) = (
                bucket.strip_prefix("bucket-").and_then(decode),
                object.strip_prefix("object-").and_then(decode),
                upload.strip_prefix("upload-"),
            ) else {
                continue;
            };
            if bucket != input.bucket || !key.starts_with(&prefix) {
                continue;
            }
            let after_marker = match (&input.key_marker, &input.upload_id_marker) {
                (None, _) => true,
                (Some(k), Some(u)) => (key.as_str(), upload_id) > (k.as_str(), u.as_str()),
                (Some(k), None) => key.as_str() > k.as_str(),
            };
            if after_marker {
                let initiated = entry.metadata().and_then(|m| m.modified()).ok();
                uploads.push((key, upload_id.to_owned(), initiated));
            }
        }
        uploads.sort();
        let max = usize::try_from(input.max_uploads.unwrap_or(1000)).unwrap_or(1000);
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let next = uploads.last().filter(|_| truncated).cloned();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(truncated),
            next_key_marker: next.as_ref().map(|n| n.0.clone()),
            next_upload_id_marker: next.map(|n| n.1),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|(key, upload_id, initiated)| MultipartUpload {
                        key: Some(key),
                        upload_id: Some(upload_id),
                        initiated: initiated.map(Timestamp::from),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}

/// moto's S3 server (`moto_server`), started as a child process on a free port with
/// [`BUCKET`] created, and killed on drop. The binary is `VEGA_MOTO_SERVER` (the test command
/// installs moto into its cached virtualenv and sets it), else `moto_server` on the `PATH`.
pub struct MotoServer {
    endpoint: String,
    child: std::process::Child,
}

impl MotoServer {
    /// Starts the server and waits until it answers.
    pub async fn start() -> Self {
        let binary = std::env::var("VEGA_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = crate::free_port();
        let child = std::process::Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto's S3 server ({binary}: {e}); run scripts/test, which \
                     installs it, or set VEGA_MOTO_SERVER to a moto_server binary"
                )
            });
        let server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let client = server.client();
        for _ in 0..300 {
            if client.create_bucket().bucket(BUCKET).send().await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "moto's S3 server did not answer on {} within 30 s",
            server.endpoint
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The real aws-sdk-s3 client for this server.
    pub fn client(&self) -> aws_sdk_s3::Client {
        client(&self.endpoint)
    }

    /// The environment a child process needs to reach this server through aws-config.
    pub fn aws_env(&self) -> [(&'static str, String); 4] {
        aws_env(&self.endpoint)
    }

    /// A blob store on [`BUCKET`] under `prefix`.
    pub fn blob_store(&self, prefix: Option<&str>, options: S3Options) -> BlobStore {
        blob_store(&self.endpoint, prefix, options)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener that accepts every connection and never reads or answers: an S3 endpoint
/// behind a black-holing firewall, or a server that hung.
pub struct SilentEndpoint {
    endpoint: String,
    task: JoinHandle<()>,
}

impl SilentEndpoint {
    /// Starts listening on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { endpoint, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A blob store that sends everything here.
    pub fn blob_store(&self, options: S3Options) -> BlobStore {
        blob_store(&self.endpoint, None, options)
    }
}

impl Drop for SilentEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
