//! A real S3 protocol server for tests: s3s-fs served on a TCP listener at 127.0.0.1:0 inside
//! the test process, spoken to by the real aws-sdk-s3 client.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
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
        Self::serve(root, usize::MAX, true).await
    }

    /// A server over an existing directory (to restart one that was stopped); the directory
    /// stays with the server that created it.
    pub async fn restart_over(root: &Path) -> Self {
        Self::serve(root.to_owned(), usize::MAX, false).await
    }

    /// A server that answers `requests` requests and then drops every connection, as a server
    /// that dies mid-transfer would.
    pub async fn failing_after(requests: usize) -> Self {
        let root = std::env::temp_dir().join(format!("vega-s3-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        Self::serve(root, requests, true).await
    }

    async fn serve(root: PathBuf, limit: usize, owns_root: bool) -> Self {
        let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs over the directory");
        let mut builder = S3ServiceBuilder::new(fs);
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
                            if n >= limit {
                                return Err(std::io::Error::other("the test server is down"));
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
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The environment a child process needs to reach this server through aws-config's default
    /// chain, as a deployed binary would reach S3.
    pub fn aws_env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }

    /// A blob store on [`BUCKET`] under `prefix`.
    pub fn blob_store(&self, prefix: Option<&str>, options: S3Options) -> BlobStore {
        BlobStore::s3(self.client(), BUCKET, prefix.map(str::to_owned), options)
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
