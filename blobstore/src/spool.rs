//! The spool directory: where S3 uploads of streams wait for their length and checksums.
//!
//! Each spool file is created under a temporary name, locked (`flock`), then renamed to
//! `<uuid>.spool`, so a `.spool` file is locked from the moment it has that name until its
//! process closes it or dies, when the kernel releases the lock. The guard removes the file
//! on every path out of a put, cancellation included; what a killed process left is exactly
//! the `.spool` files whose lock can be taken, and [`Spool::open`] removes those. Several
//! processes may share the directory: a live one's files stay locked.

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::BlobError;

const SUFFIX: &str = ".spool";
const NEW_SUFFIX: &str = ".spool-new";
/// A file still under its temporary name was left by a crash between two system calls; any
/// that is this old is swept.
const STALE_NEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(crate) struct Spool {
    dir: PathBuf,
}

/// A spool file, removed when dropped.
#[derive(Debug)]
pub(crate) struct SpoolFile {
    path: PathBuf,
    file: File,
}

impl Spool {
    /// The spool in `dir` (created if missing), swept of what dead processes left.
    pub(crate) fn open(dir: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir)?;
        let spool = Self {
            dir: dir.to_owned(),
        };
        let swept = spool.sweep()?;
        if swept > 0 {
            tracing::info!(dir = %dir.display(), files = swept, "removed spool files a stopped process left");
        }
        Ok(spool)
    }

    fn sweep(&self) -> io::Result<usize> {
        let mut swept = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let abandoned = if name.ends_with(SUFFIX) {
                match File::options().write(true).open(&path) {
                    // The lock is free: its owner is gone (ours are dropped by then).
                    Ok(file) => match file.try_lock() {
                        Ok(()) => true,
                        Err(TryLockError::WouldBlock) => false,
                        Err(TryLockError::Error(e)) => return Err(e),
                    },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                }
            } else if name.ends_with(NEW_SUFFIX) {
                let age = entry
                    .metadata()?
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok());
                age.is_some_and(|a| a > STALE_NEW)
            } else {
                false
            };
            if abandoned {
                match std::fs::remove_file(&path) {
                    Ok(()) => swept += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(swept)
    }

    /// A new, empty, locked spool file.
    pub(crate) fn create(&self) -> Result<SpoolFile, BlobError> {
        let id = uuid::Uuid::new_v4();
        let new = self.dir.join(format!("{id}{NEW_SUFFIX}"));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&new)?;
        let locked = file.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("a new spool file was already locked"),
        });
        let path = self.dir.join(format!("{id}{SUFFIX}"));
        let renamed = locked.and_then(|()| std::fs::rename(&new, &path));
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&new);
            return Err(e.into());
        }
        Ok(SpoolFile { path, file })
    }
}

impl SpoolFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A writer at the start of the file (the lock stays with the guard's descriptor).
    pub(crate) fn writer(&self) -> Result<tokio::fs::File, BlobError> {
        Ok(tokio::fs::File::from_std(self.file.try_clone()?))
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        // Removed before the lock goes with the descriptor, so no sweeper sees it unlocked.
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a spool file; the next start sweeps it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_files_stay_and_dead_ones_go() {
        let dir = std::env::temp_dir().join(format!("vega-spool-test-{}", uuid::Uuid::new_v4()));
        let spool = Spool::open(&dir).unwrap();
        let live = spool.create().unwrap();
        // A file whose owner died: named like a spool file, nobody holds its lock.
        let dead = dir.join(format!("{}{SUFFIX}", uuid::Uuid::new_v4()));
        std::fs::write(&dead, b"left by a killed process").unwrap();
        let other = dir.join("not-ours.txt");
        std::fs::write(&other, b"x").unwrap();

        Spool::open(&dir).unwrap();
        assert!(
            live.path().exists(),
            "a live process's file is locked and stays"
        );
        assert!(!dead.exists(), "an unlocked spool file is swept");
        assert!(
            other.exists(),
            "files that are not spool files are left alone"
        );

        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists(), "the guard removes its file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
