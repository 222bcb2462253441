use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Hashes what passes through it and fails the read at end of stream when the size or SHA-256
/// differ from what was expected: a caller that reads to the end has read verified bytes, and
/// a caller that sees an error must discard what it read.
pub struct VerifiedReader {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    hasher: Sha256,
    read: u64,
    expected_size: Option<u64>,
    expected_sha256: [u8; 32],
    key: String,
}

impl VerifiedReader {
    pub(crate) fn new(
        inner: Pin<Box<dyn AsyncRead + Send>>,
        key: String,
        expected_sha256: [u8; 32],
        expected_size: Option<u64>,
    ) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected_size,
            expected_sha256,
            key,
        }
    }
}

impl std::fmt::Debug for VerifiedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedReader")
            .field("key", &self.key)
            .field("read", &self.read)
            .field("expected_size", &self.expected_size)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for VerifiedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.hasher.update(new);
                    this.read += new.len() as u64;
                    return Poll::Ready(Ok(()));
                }
                // End of stream: the moment to check.
                let actual: [u8; 32] = this.hasher.clone().finalize().into();
                let size_ok = this.expected_size.is_none_or(|n| n == this.read);
                if size_ok && actual == this.expected_sha256 {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        crate::BlobError::Integrity {
                            key: this.key.clone(),
                            expected: hex(&this.expected_sha256),
                            actual: hex(&actual),
                            size: this.read,
                        },
                    )))
                }
            }
            other => other,
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
