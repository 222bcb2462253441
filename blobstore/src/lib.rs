//! Object storage for Vega: one [`BlobStore`] over two backends, chosen by configuration.
//!
//! - **S3** ([`BlobStore::s3`]), through aws-sdk-s3 and aws-config's default credential chain.
//!   Every call is bounded ([`vega_config::S3Timeouts`]); a call that gets no answer in time is
//!   [`BlobError::Timeout`], naming the endpoint and the setting. Uploads carry their
//!   Content-Type and their SHA-256 (`x-amz-meta-sha256`, for whoever downloads through a
//!   presigned URL), and send SHA-256 checksums S3 verifies on arrival: the object's for a
//!   single PUT, each part's for a multipart upload. Objects above a threshold go up in parts
//!   read from file slices (memory stays bounded whatever the size); a failed multipart upload
//!   is aborted, and one a crash left behind is listed by [`BlobStore::list_uploads`] for `gc`.
//!   Streams are spooled in a directory the store owns; a spool file is removed on every path
//!   out of the put (success, error, cancellation), and one a killed process left is removed
//!   when the next store opens the directory.
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
mod spool;
mod verify;

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncRead;
use vega_config::BlobSettings;

pub use key::ObjectKey;
pub use s3::S3Options;
pub use vega_config::S3Timeouts;
pub use verify::VerifiedReader;

/// The longest a presigned URL may live: S3's own limit.
pub const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// An S3 call got no answer within its bound: the endpoint is down, unreachable or
    /// overloaded, or the bound is too tight for the link.
    #[error(
        "S3 {operation} at {endpoint} timed out ({setting}={}, {attempts} attempt(s)): check \
         that the endpoint answers from here, or raise {setting}",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The S3 operation.
        operation: &'static str,
        /// Where the call went (`AWS_ENDPOINT_URL`, or the region's AWS endpoint).
        endpoint: String,
        /// The setting whose bound ran out (`VEGA_S3_READ_TIMEOUT`, ...).
        setting: &'static str,
        /// Its value.
        after: Duration,
        /// Attempts allowed per call (`VEGA_S3_MAX_ATTEMPTS`).
        attempts: u32,
    },
    /// A presigned URL's expiry outside (0 s, 7 days].
    #[error(
        "a presigned URL must expire after more than 0 s and at most 7 days (S3's limit), not {}",
        humantime::format_duration(*expires)
    )]
    InvalidExpiry {
        /// The expiry asked for.
        expires: Duration,
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

impl BlobError {
    /// True when the same call may succeed later: the network, the disk or the server failed
    /// for a passing reason.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BlobError::Io(_) | BlobError::S3 { .. } | BlobError::Timeout { .. }
        )
    }
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

/// A multipart upload that was started and neither completed nor aborted: what a crash or a
/// failed abort leaves behind, invisible to object listings but billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it would create (without the deployment prefix).
    pub key: String,
    /// S3's id for it.
    pub upload_id: String,
    /// When it was started.
    pub initiated: Option<SystemTime>,
}

/// Where [`BlobStore::list_uploads`] resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadMarker {
    key: String,
    upload_id: String,
}

/// One page of pending multipart uploads, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadPage {
    /// The uploads.
    pub uploads: Vec<PendingUpload>,
    /// Pass to [`BlobStore::list_uploads`] for the next page; `None` at the end.
    pub next: Option<UploadMarker>,
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
            BlobSettings::S3 {
                bucket,
                prefix,
                timeouts,
                spool_dir,
            } => {
                let client = s3::client_from_environment().await;
                let options = S3Options {
                    timeouts: *timeouts,
                    spool_dir: spool_dir.clone(),
                    ..S3Options::default()
                };
                Self::s3(client, bucket, prefix.clone(), options)
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

    /// A store in an S3 bucket, with an optional key prefix shared by every object. The
    /// client's timeouts and retries are replaced by `options.timeouts`, so every call is
    /// bounded however the client was built. Spool files a killed process left in
    /// `options.spool_dir` are removed.
    pub fn s3(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        prefix: Option<String>,
        options: S3Options,
    ) -> Result<Self, BlobError> {
        Ok(Self {
            backend: Backend::S3(s3::S3Store::new(client, bucket.into(), prefix, options)?),
        })
    }

    /// Where objects go, for logs: `fs:/path` or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Fs(fs) => format!("fs:{}", fs.root().display()),
            Backend::S3(s3) => s3.describe(),
        }
    }

    /// Stores a file under `key`, create-only, returning its size and SHA-256. S3 serves it
    /// with `content_type`.
    pub async fn put_file(
        &self,
        key: &ObjectKey,
        path: &Path,
        content_type: &str,
    ) -> Result<Stored, BlobError> {
        match &self.backend {
            Backend::Fs(fs) => fs.put_file(key, path).await,
            Backend::S3(s3) => s3.put_file(key, path, content_type).await,
        }
    }

    /// Stores everything `reader` yields under `key`, create-only. For S3 the stream is first
    /// spooled to a file (S3 needs the length and checksums before the body), so memory stays
    /// bounded; S3 serves the object with `content_type`.
    pub async fn put_reader(
        &self,
        key: &ObjectKey,
        reader: impl AsyncRead + Unpin + Send,
        content_type: &str,
    ) -> Result<Stored, BlobError> {
        match &self.backend {
            Backend::Fs(fs) => fs.put_reader(key, reader).await,
            Backend::S3(s3) => s3.put_reader(key, reader, content_type).await,
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

    /// Multipart uploads under `prefix` that were started and never completed or aborted, up
    /// to 1,000 per page, after `page`. The filesystem has none (its interrupted writes are
    /// swept when it opens).
    pub async fn list_uploads(
        &self,
        prefix: &str,
        page: Option<UploadMarker>,
    ) -> Result<UploadPage, BlobError> {
        match &self.backend {
            Backend::Fs(_) => Ok(UploadPage::default()),
            Backend::S3(s3) => s3.list_uploads(prefix, page).await,
        }
    }

    /// Aborts a pending multipart upload, freeing its parts; aborting one that is gone succeeds.
    pub async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), BlobError> {
        match &self.backend {
            Backend::Fs(_) => Ok(()),
            Backend::S3(s3) => s3.abort_upload(upload).await,
        }
    }

    /// A URL that downloads the object without credentials until it expires, which must be
    /// in (0 s, 7 days]. Where the key ends in a file name, the download is offered under it
    /// (`Content-Disposition: attachment`).
    pub async fn presign_get(
        &self,
        key: &ObjectKey,
        expires: Duration,
    ) -> Result<String, BlobError> {
        check_expiry(expires)?;
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
        check_expiry(expires)?;
        match &self.backend {
            Backend::Fs(_) => Err(BlobError::Unsupported("presigned URLs", "fs")),
            Backend::S3(s3) => s3.presign_put(key, sha256, expires).await,
        }
    }
}

/// Presigned URLs live in (0 s, 7 days].
fn check_expiry(expires: Duration) -> Result<(), BlobError> {
    if expires.is_zero() || expires > MAX_PRESIGN_EXPIRY {
        return Err(BlobError::InvalidExpiry { expires });
    }
    Ok(())
}

/// Size and SHA-256 of the bytes fed to it, and the SHA-256 of each `part_size` slice when
/// that is not zero: the one place stored bytes are hashed, in one pass.
#[derive(Default)]
pub(crate) struct Hashing {
    hasher: sha2::Sha256,
    size: u64,
    part_size: u64,
    part: sha2::Sha256,
    parts: Vec<[u8; 32]>,
}

/// What a hashing pass saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hashed {
    pub(crate) stored: Stored,
    /// The part size the part digests were taken at (0: none were).
    pub(crate) part_size: u64,
    pub(crate) parts: Vec<[u8; 32]>,
}

impl Hashing {
    pub(crate) fn with_parts(part_size: u64) -> Self {
        Self {
            part_size,
            ..Self::default()
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        use sha2::Digest;
        self.hasher.update(bytes);
        if self.part_size == 0 {
            self.size += bytes.len() as u64;
            return;
        }
        while !bytes.is_empty() {
            let room = self.part_size - self.size % self.part_size;
            let n = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.part.update(&bytes[..n]);
            self.size += n as u64;
            bytes = &bytes[n..];
            if self.size.is_multiple_of(self.part_size) {
                self.parts
                    .push(std::mem::take(&mut self.part).finalize().into());
            }
        }
    }

    fn finish(mut self) -> Hashed {
        use sha2::Digest;
        if self.part_size != 0 && !self.size.is_multiple_of(self.part_size) {
            self.parts.push(self.part.finalize().into());
        }
        Hashed {
            stored: Stored {
                size: self.size,
                sha256: self.hasher.finalize().into(),
            },
            part_size: self.part_size,
            parts: self.parts,
        }
    }
}

/// The size and SHA-256 of a file (and of its `part_size` slices, when not zero), read on
/// the blocking pool with plain `std::fs` reads (a `tokio::fs` read is a thread hop per
/// buffer).
pub(crate) async fn hash_file(path: &Path, part_size: u64) -> Result<Hashed, BlobError> {
    use std::io::Read;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hashing = Hashing::with_parts(part_size);
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

/// Copies `reader` into `writer`, hashing what passes with `hashing`.
pub(crate) async fn copy_hashing(
    reader: &mut (impl AsyncRead + Unpin + ?Sized),
    writer: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized),
    mut hashing: Hashing,
) -> std::io::Result<Hashed> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn part_digests_follow_part_boundaries_whatever_the_writes() {
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        let mut hashing = Hashing::with_parts(10);
        // Writes that straddle, end on and start at part boundaries.
        for chunk in [&data[..3], &data[3..10], &data[10..23], &data[23..]] {
            hashing.update(chunk);
        }
        let hashed = hashing.finish();
        let expected: Vec<[u8; 32]> = data
            .chunks(10)
            .map(|c| sha2::Sha256::digest(c).into())
            .collect();
        assert_eq!(hashed.parts, expected);
        assert_eq!(hashed.stored.size, 25);
        assert_eq!(
            hashed.stored.sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(&data))
        );
        assert!(Hashing::with_parts(10).finish().parts.is_empty());
        assert_eq!(Hashing::default().finish().parts, Vec::<[u8; 32]>::new());
    }
}
