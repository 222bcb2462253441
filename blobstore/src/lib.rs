//! Object storage for Vega: one [`BlobStore`] over two backends, chosen by configuration.
//!
//! - **S3** ([`BlobStore::s3`]), through aws-sdk-s3 and aws-config's default credential chain.
//!   Uploads send their SHA-256 so S3 verifies them on arrival; objects above a threshold go up
//!   in parts read from file slices (memory stays bounded whatever the size), and a failed
//!   multipart upload is aborted.
//! - **Local filesystem** ([`BlobStore::filesystem`]), the embedded default: writes go to a
//!   hidden temporary sibling, are synced, then linked into place, so a reader never sees half
//!   an object; keys are validated and resolved paths must stay under the root.
//!
//! Both backends write *create-only* (an existing key is [`BlobError::AlreadyExists`], never
//! overwritten), compute size and SHA-256 while streaming, and return readers that verify the
//! SHA-256 at end of stream ([`VerifiedReader`]). Which rows reference which objects is the
//! repository layer's business; this crate knows keys and bytes only.

mod fs;
mod key;
mod s3;
mod verify;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncRead;
use vega_config::BlobSettings;

pub use key::ObjectKey;
pub use s3::S3Options;
pub use verify::VerifiedReader;

/// What went wrong with an object.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No object has this key.
    #[error("object {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A create-only write found the key taken.
    #[error("object {key} already exists; keys are never overwritten")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key is malformed (path traversal, empty segments, ...).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key, escaped.
        key: String,
        /// Why.
        reason: String,
    },
    /// The bytes read do not match the recorded SHA-256 or size.
    #[error(
        "object {key} is corrupt: expected sha256 {expected}, read {size} bytes with sha256 {actual}"
    )]
    Integrity {
        /// The key.
        key: String,
        /// The recorded SHA-256 (hex).
        expected: String,
        /// The SHA-256 of what was read (hex).
        actual: String,
        /// How many bytes were read.
        size: u64,
    },
    /// The backend cannot do this (presigned URLs on the filesystem).
    #[error("{0} is not supported by the {1} blob store")]
    Unsupported(&'static str, &'static str),
    /// A local I/O error.
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An S3 request failed.
    #[error("S3 {operation} failed: {message}")]
    S3 {
        /// The S3 operation.
        operation: &'static str,
        /// The SDK's error, with its context.
        message: String,
    },
}

/// What a put stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key (without the deployment prefix).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: Option<SystemTime>,
}

/// One page of a listing, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects.
    pub objects: Vec<ObjectMeta>,
    /// Pass to [`BlobStore::list`] for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Large-object storage over S3 or a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Fs(fs::FsStore),
    S3(s3::S3Store),
}

impl BlobStore {
    /// The store the settings describe. For S3, region, endpoint and credentials come from
    /// aws-config's default chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, roles).
    pub async fn from_settings(settings: &BlobSettings) -> Result<Self, BlobError> {
        match settings {
            BlobSettings::Fs { root, .. } => Self::filesystem(root),
            BlobSettings::S3 { bucket, prefix } => {
                let client = s3::client_from_environment().await;
                Ok(Self::s3(
                    client,
                    bucket,
                    prefix.clone(),
                    S3Options::default(),
                ))
            }
        }
    }

    /// A store rooted at a local directory (created if missing). Temporary files left by a
    /// crash more than an hour ago are removed.
    pub fn filesystem(root: impl AsRef<Path>) -> Result<Self, BlobError> {
        Ok(Self {
            backend: Backend::Fs(fs::FsStore::at(root.as_ref())?),
        })
    }

    /// A store in an S3 bucket, with an optional key prefix shared by every object.
    pub fn s3(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        prefix: Option<String>,
        options: S3Options,
    ) -> Self {
        Self {
            backend: Backend::S3(s3::S3Store::new(client, bucket.into(), prefix, options)),
        }
    }

    /// Where objects go, for logs: `fs:/path` or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Fs(fs) => format!("fs:{}", fs.root().display()),
            Backend::S3(s3) => s3.describe(),
        }
    }

    /// Stores a file under `key`, create-only, returning its size and SHA-256.
    pub async fn put_file(&self, key: &ObjectKey, path: &Path) -> Result<Stored, BlobError> {
        match &self.backend {
            Backend::Fs(fs) => fs.put_file(key, path).await,
            Backend::S3(s3) => s3.put_file(key, path).await,
        }
    }

    /// Stores everything `reader` yields under `key`, create-only. For S3 the stream is first
    /// spooled to a temporary file (S3 needs the length and checksum before the body), so
    /// memory stays bounded.
    pub async fn put_reader(
        &self,
        key: &ObjectKey,
        reader: impl AsyncRead + Unpin + Send,
    ) -> Result<Stored, BlobError> {
        match &self.backend {
            Backend::Fs(fs) => fs.put_reader(key, reader).await,
            Backend::S3(s3) => s3.put_reader(key, reader).await,
        }
    }

    /// Opens an object for reading; the reader fails at end of stream unless the bytes match
    /// `sha256` (and `size`, when given).
    pub async fn get(
        &self,
        key: &ObjectKey,
        sha256: [u8; 32],
        size: Option<u64>,
    ) -> Result<VerifiedReader, BlobError> {
        let inner = match &self.backend {
            Backend::Fs(fs) => fs.open(key).await?,
            Backend::S3(s3) => s3.open(key).await?,
        };
        Ok(VerifiedReader::new(inner, key.to_string(), sha256, size))
    }

    /// The object's size and time, or `None` if there is none.
    pub async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, BlobError> {
        match &self.backend {
            Backend::Fs(fs) => fs.head(key).await,
            Backend::S3(s3) => s3.head(key).await,
        }
    }

    /// Deletes an object; deleting a missing object succeeds (deletes are retried by `purge`).
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError> {
        match &self.backend {
            Backend::Fs(fs) => fs.delete(key).await,
            Backend::S3(s3) => s3.delete(key).await,
        }
    }

    /// Up to 1,000 objects whose keys start with `prefix`, in key order, after `page`.
    pub async fn list(&self, prefix: &str, page: Option<String>) -> Result<ListPage, BlobError> {
        match &self.backend {
            Backend::Fs(fs) => fs.list(prefix, page).await,
            Backend::S3(s3) => s3.list(prefix, page).await,
        }
    }

    /// A URL that downloads the object without credentials until it expires (at most 7 days).
    pub async fn presign_get(
        &self,
        key: &ObjectKey,
        expires: Duration,
    ) -> Result<String, BlobError> {
        match &self.backend {
            Backend::Fs(_) => Err(BlobError::Unsupported("presigned URLs", "fs")),
            Backend::S3(s3) => s3.presign_get(key, expires).await,
        }
    }

    /// A URL and headers that upload exactly the bytes with this SHA-256 (S3 rejects any
    /// other body), valid until it expires.
    pub async fn presign_put(
        &self,
        key: &ObjectKey,
        sha256: [u8; 32],
        expires: Duration,
    ) -> Result<(String, Vec<(String, String)>), BlobError> {
        match &self.backend {
            Backend::Fs(_) => Err(BlobError::Unsupported("presigned URLs", "fs")),
            Backend::S3(s3) => s3.presign_put(key, sha256, expires).await,
        }
    }
}

/// Size and SHA-256 of the bytes fed to it: the one place stored bytes are hashed.
#[derive(Default)]
struct Hashing {
    hasher: sha2::Sha256,
    size: u64,
}

impl Hashing {
    fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> Stored {
        use sha2::Digest;
        Stored {
            size: self.size,
            sha256: self.hasher.finalize().into(),
        }
    }
}

/// The size and SHA-256 of a file, read on the blocking pool with plain `std::fs` reads (a
/// `tokio::fs` read is a thread hop per buffer).
pub(crate) async fn hash_file(path: &Path) -> Result<Stored, BlobError> {
    use std::io::Read;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hashing = Hashing::default();
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(hashing.finish()),
                n => hashing.update(&buf[..n]),
            }
        }
    })
    .await
    .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
}

/// Copies `reader` into `writer`, returning the size and SHA-256 of what passed.
pub(crate) async fn copy_hashing(
    reader: &mut (impl AsyncRead + Unpin + ?Sized),
    writer: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized),
) -> std::io::Result<Stored> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut hashing = Hashing::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.flush().await?;
            return Ok(hashing.finish());
        }
        hashing.update(&buf[..n]);
        writer.write_all(&buf[..n]).await?;
    }
}

/// A temporary file path in the system temp directory, for spooling.
pub(crate) fn spool_path() -> PathBuf {
    std::env::temp_dir().join(format!(".vega-spool-{}", uuid::Uuid::new_v4()))
}
