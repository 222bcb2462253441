//! The local-filesystem backend.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncRead;

use crate::{BlobError, ListPage, ObjectKey, ObjectMeta, Stored};

const TEMP_MARKER: &str = ".tmp-";
const STALE_TEMP: Duration = Duration::from_secs(3600);
const PAGE: usize = 1000;

#[derive(Debug, Clone)]
pub(crate) struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub(crate) fn at(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        sweep_stale_temp_files(&root, SystemTime::now())?;
        Ok(Self { root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The file for a key. Keys cannot contain `..`; on top of that, the deepest directory of
    /// the path that exists is resolved (following symlinks) and must be under the root
    /// *before* anything is created, so a symlink cannot lead a write, or a `mkdir`, outside.
    fn path(&self, key: &ObjectKey, create_dirs: bool) -> Result<PathBuf, BlobError> {
        let path = self.root.join(key.as_str());
        let parent = path.parent().unwrap_or(&self.root).to_owned();
        let mut existing = parent.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(&self.root);
        }
        self.contain(key, existing)?;
        if create_dirs {
            std::fs::create_dir_all(&parent)?;
            self.contain(key, &parent)?;
        }
        Ok(path)
    }

    fn contain(&self, key: &ObjectKey, dir: &Path) -> Result<(), BlobError> {
        if dir.canonicalize()?.starts_with(&self.root) {
            Ok(())
        } else {
            Err(BlobError::InvalidKey {
                key: key.to_string(),
                reason: "resolves outside the blob directory".into(),
            })
        }
    }

    /// Streams `reader` into a new object, hashing the bytes as they are written.
    pub(crate) async fn put_reader(
        &self,
        key: &ObjectKey,
        mut reader: impl AsyncRead + Unpin + Send,
    ) -> Result<Stored, BlobError> {
        self.put_via_temp(key, async |temp| {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(temp)
                .await?;
            let hashed =
                crate::copy_hashing(&mut reader, &mut file, crate::Hashing::default()).await?;
            file.sync_all().await?;
            Ok(hashed.stored)
        })
        .await
    }

    /// Stores a copy of the file at `source`. The kernel copies it (`copy_file_range`, or a
    /// reflink where the filesystem has them), then the copy is hashed while it is flushed to
    /// disk: the hash is of the bytes that landed, even if `source` changes meanwhile, and the
    /// two passes overlap instead of queueing behind each other.
    pub(crate) async fn put_file(
        &self,
        key: &ObjectKey,
        source: &Path,
    ) -> Result<Stored, BlobError> {
        self.put_via_temp(key, async |temp| {
            tokio::fs::copy(source, temp).await?;
            let sync = async { tokio::fs::File::open(temp).await?.sync_all().await };
            let (hashed, synced) = tokio::join!(crate::hash_file(temp, 0), sync);
            synced?;
            Ok(hashed?.stored)
        })
        .await
    }

    /// Writes an object through a uniquely named, fully synced temporary file (`write`), then
    /// links it into place. A hard link is an atomic create-if-absent: the key either appears
    /// complete or not at all, and an existing object is never replaced.
    async fn put_via_temp(
        &self,
        key: &ObjectKey,
        write: impl AsyncFnOnce(&Path) -> Result<Stored, BlobError>,
    ) -> Result<Stored, BlobError> {
        let path = self.path(key, true)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}{TEMP_MARKER}{}", uuid::Uuid::new_v4()));
        let result = async {
            let stored = write(&temp).await?;
            match tokio::fs::hard_link(&temp, &path).await {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(BlobError::AlreadyExists {
                        key: key.to_string(),
                    });
                }
                other => other?,
            }
            if let Some(dir) = path.parent() {
                tokio::fs::File::open(dir).await?.sync_all().await?;
            }
            Ok(stored)
        }
        .await;
        let _ = tokio::fs::remove_file(&temp).await;
        result
    }

    pub(crate) async fn open(
        &self,
        key: &ObjectKey,
    ) -> Result<Pin<Box<dyn AsyncRead + Send>>, BlobError> {
        match tokio::fs::File::open(self.path(key, false)?).await {
            Ok(file) => Ok(Box::pin(tokio::io::BufReader::with_capacity(
                256 * 1024,
                file,
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound {
                key: key.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, BlobError> {
        match tokio::fs::metadata(self.path(key, false)?).await {
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                last_modified: meta.modified().ok(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError> {
        let path = self.path(key, false)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Remove directories the delete emptied, up to the root (best effort: a concurrent
        // write may have refilled one).
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Each page walks the directories under the prefix again and sorts what it finds: simple
    /// and stateless, and fine for the thousands of objects of an embedded deployment; S3 pages
    /// natively for the millions of a production one.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        after: Option<String>,
    ) -> Result<ListPage, BlobError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut objects = Vec::new();
            walk(&root, &root, &prefix, &mut objects)?;
            objects.sort_by(|a: &ObjectMeta, b| a.key.cmp(&b.key));
            let start = match &after {
                Some(after) => objects.partition_point(|o| o.key.as_str() <= after.as_str()),
                None => 0,
            };
            let mut page: Vec<_> = objects.into_iter().skip(start).take(PAGE + 1).collect();
            let next = if page.len() > PAGE {
                page.truncate(PAGE);
                page.last().map(|o| o.key.clone())
            } else {
                None
            };
            Ok(ListPage {
                objects: page,
                next,
            })
        })
        .await
        .map_err(|e| BlobError::Io(io::Error::other(e)))?
    }
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let key = relative.to_string_lossy().replace('\\', "/");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            // Only descend where keys with the prefix can be.
            let dir_key = format!("{key}/");
            if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                walk(root, &path, prefix, out)?;
            }
        } else if kind.is_file() && key.starts_with(prefix) && !is_temp(&path) {
            let meta = entry.metadata()?;
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                last_modified: meta.modified().ok(),
            });
        }
    }
    Ok(())
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy())
        .is_some_and(|n| n.starts_with('.') && n.contains(TEMP_MARKER))
}

/// Removes temporary files an interrupted write left behind.
fn sweep_stale_temp_files(dir: &Path, now: SystemTime) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sweep_stale_temp_files(&path, now)?;
        } else if is_temp(&path) {
            let age = entry
                .metadata()?
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok());
            if age.is_some_and(|a| a > STALE_TEMP) {
                tracing::info!(path = %path.display(), "removing a stale temporary blob file");
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}
