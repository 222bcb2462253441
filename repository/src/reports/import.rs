//! SARIF reports, [`Reports`]: completing a scan from a SARIF 2.1.0 log.
//!
//! [`Reports::complete_from_sarif`]: the log is spooled to an anonymous temporary
//! file (so any size streams), read once to check it and collect each run's rules
//! (`read::runs`), then read again result by result (`read::results`) into the completion's
//! ingest, a chunk at a time through a bounded channel (memory is a few chunks, whatever the
//! file), while it is stored as the scan's report through the row/object protocol (a pending
//! row and the object; on Postgres beside the ingest, on SQLite before it). The report's row
//! commits in the completion's transaction, so a refused log or a lost lease leaves no
//! finding, no artifact row and (removed at once, or by `gc` after a crash) no object. A
//! worker can also upload the report itself ([`Reports::upload_url`], then
//! [`Reports::complete_from_upload`]), so a large report never passes through an API process.
//!
//! The mapping of a result to a finding is `map.rs`'s; the export is `export.rs`.

use std::collections::HashSet;
use std::future::Future;
use std::io::{Seek, SeekFrom};
use std::sync::{Arc, Mutex, PoisonError};

use sea_orm::ConnectionTrait;
use tokio::io::AsyncRead;
use tracing::instrument;
use uuid::Uuid;
use vega_blobstore::{BlobStore, ObjectKey};
use vega_entity::{ArtifactKind, ArtifactState, artifacts, scans};

use crate::context::cx::Cx;
use crate::context::principal::Table;
use crate::db::connection::retry_conflicts;
use crate::db::sql::{is_postgres, statement};
use crate::error::{Error, Result};
use crate::findings::ingest::{self, Prepared};
use crate::objects::artifacts::{Artifacts, Owner, PresignedUpload, declared};
use crate::objects::upload::{self, Uploaded};
use crate::queue::complete::{self, FindingSource, Ingested};
use crate::queue::lease::{Lease, fence};
use crate::reports::map::Mapped;
use crate::reports::progress::ImportProgress;
use crate::reports::read;
use crate::reports::warnings::{Deviation, ImportWarning, Warnings};
use crate::reports::wire::Run;

/// Chunks in flight between the reader thread and the ingest.
const CHANNEL_CHUNKS: usize = 2;

/// The spool's read size.
const SPOOL_BUFFER: usize = 1 << 20;

/// The report object's content type.
const REPORT_TYPE: &str = "application/sarif+json";

/// SARIF reports: completing a scan from one, exporting findings as one.
#[derive(Debug, Clone)]
pub struct Reports<'a> {
    pub(crate) cx: Cx<'a>,
    pub(crate) blobs: &'a BlobStore,
    pub(crate) progress: Option<&'a Arc<ImportProgress>>,
}

impl<'a> Reports<'a> {
    /// The same reports, with imports reporting how far they have got to `progress` (read it
    /// from another task; `vega-admin scans import-sarif` draws it as a bar).
    pub fn with_progress(self, progress: &'a Arc<ImportProgress>) -> Self {
        Self {
            progress: Some(progress),
            ..self
        }
    }

    /// Reads the spooled log once to check it is SARIF 2.1.0 and collect its runs' rules.
    async fn check(&self, spool: &std::fs::File) -> Result<Vec<Run>> {
        let file = read_at_start(spool)?;
        let (runs, results) = blocking(move || read::runs(file)).await?;
        if let Some(progress) = self.progress {
            progress.checked(results);
        }
        Ok(runs)
    }

    fn artifacts(&self) -> Artifacts<'_> {
        Artifacts {
            cx: self.cx.clone(),
            blobs: self.blobs,
        }
    }

    /// Completes the scan from a SARIF 2.1.0 log of any size (streamed): stores it as the
    /// scan's report and ingests its results in the same completion (see the module docs for
    /// the mapping). A log that is not SARIF 2.1.0, or is malformed, is [`Error::Invalid`]
    /// naming the JSON pointer (`/runs/0/results/17/locations/0`), and nothing is written.
    /// Fenced on the lease like [`crate::Scans::complete`].
    #[instrument(name = "reports.complete_from_sarif", skip(self, report), fields(scan_id = %lease.scan_id))]
    pub async fn complete_from_sarif(
        &self,
        lease: &Lease,
        report: impl AsyncRead + Unpin + Send,
    ) -> Result<scans::Model> {
        let lease = lease.validated(self.cx.who, "complete scans")?;
        let scan = self
            .cx
            .select_one::<scans::Entity>(Table::Scans, "x.id = $1", vec![lease.scan_id.into()])
            .await?
            .ok_or(Error::LeaseLost {
                scan_id: lease.scan_id,
            })?;
        let spool = spool(report).await?;
        let runs = self.check(&spool).await?;
        let artifacts = self.artifacts();
        // The row before the ingest takes its connection: the put beside it needs none.
        let pending = artifacts
            .register(
                Uuid::now_v7(),
                report_owner(&scan),
                ArtifactKind::ScanReport,
                ObjectKey::scan_report(scan.project_id, scan.id),
                REPORT_TYPE,
            )
            .await?;
        let source = tokio::fs::File::from_std(reopen(&spool)?);
        let put = upload::put(self.cx.db(), self.blobs, &pending, source);
        let (uploaded, completed) = self.complete_spooled(&lease, &spool, runs, put).await;
        // A failed put has given up its row already.
        if let (Some(uploaded), Err(_)) = (&uploaded, &completed) {
            upload::abandon(self.cx.db(), self.blobs, uploaded).await;
        }
        completed
    }

    /// A URL to which the lease's worker uploads the scan's SARIF report itself (a presigned,
    /// create-only `PUT` of exactly `size` bytes with this SHA-256), so a large report never
    /// passes through an API process; then [`Reports::complete_from_upload`]. Asking again
    /// supersedes an earlier upload that was not completed. S3 only; `expires` in (0 s, 7
    /// days], and shorter than `gc`'s grace period, which removes an upload never completed.
    #[instrument(name = "reports.upload_url", skip(self, sha256), fields(scan_id = %lease.scan_id))]
    pub async fn upload_url(
        &self,
        lease: &Lease,
        size: u64,
        sha256: [u8; 32],
        expires: std::time::Duration,
    ) -> Result<PresignedUpload> {
        let lease = lease.validated(self.cx.who, "complete scans")?;
        let txn = self.cx.db().unit().await?;
        let scan = fence(&txn, &lease).await?;
        let (upload, superseded) = self
            .artifacts()
            .presign_upload(
                &txn,
                report_owner(&scan),
                ArtifactKind::ScanReport,
                ObjectKey::scan_report(scan.project_id, scan.id),
                REPORT_TYPE,
                vega_blobstore::Stored { size, sha256 },
                expires,
            )
            .await?;
        txn.commit().await?;
        if let Some(key) = superseded {
            // Until the superseded upload's object is gone, the create-only PUT cannot land.
            self.blobs.delete(&key).await?;
        }
        Ok(upload)
    }

    /// Completes the scan from the report uploaded to [`Reports::upload_url`]'s artifact, as
    /// [`Reports::complete_from_sarif`] does from a stream. The object is read back and must
    /// have the declared size and SHA-256, else [`Error::Invalid`] (`report`); a refused
    /// report, or a lost lease, removes the upload. After a retryable failure the upload
    /// stays, and the call can be repeated.
    #[instrument(name = "reports.complete_from_upload", skip(self), fields(scan_id = %lease.scan_id))]
    pub async fn complete_from_upload(
        &self,
        lease: &Lease,
        artifact_id: Uuid,
    ) -> Result<scans::Model> {
        let lease = lease.validated(self.cx.who, "complete scans")?;
        let row = self
            .cx
            .select_one::<artifacts::Entity>(
                Table::Artifacts,
                "x.id = $1 AND x.scan_id = $2 AND x.kind = $3",
                vec![
                    artifact_id.into(),
                    lease.scan_id.into(),
                    ArtifactKind::ScanReport.as_str().into(),
                ],
            )
            .await?
            .ok_or_else(|| Error::not_found("report upload", artifact_id))?;
        let declared = declared(&row)?
            .filter(|_| row.state == ArtifactState::Pending.as_str())
            .ok_or_else(|| Error::Conflict {
                constraint: "artifacts_state".into(),
                message: format!(
                    "artifact {artifact_id} is not an upload waiting for its completion"
                ),
            })?;
        let stored = declared.stored();
        // Nothing uploaded yet, or the store failing for now: the upload stays for the next call.
        let object = match self
            .blobs
            .get(declared.key(), stored.sha256, Some(stored.size))
            .await
        {
            Err(vega_blobstore::BlobError::NotFound { .. }) => {
                return Err(Error::Conflict {
                    constraint: "artifacts_state".into(),
                    message: format!("nothing has been uploaded to artifact {artifact_id}"),
                });
            }
            other => other?,
        };
        let checked = async {
            let spool = spool(object).await?;
            let runs = self.check(&spool).await?;
            Ok((spool, runs))
        }
        .await;
        let (declared, completed) = match checked {
            Ok((spool, runs)) => {
                let ready = std::future::ready(Ok(declared));
                self.complete_spooled(&lease, &spool, runs, ready).await
            }
            Err(err) => (Some(declared), Err(err)),
        };
        if let (Some(declared), Err(err)) = (&declared, &completed)
            && !err.is_retryable()
        {
            upload::abandon(self.cx.db(), self.blobs, declared).await;
        }
        completed
    }

    /// Ingests a spooled, checked log and commits its report, once `upload` has stored it, in
    /// one completion. On Postgres, in a transaction of its own, the upload (which must not
    /// touch the database) runs beside the ingest; elsewhere before it. A serialization
    /// conflict repeats the completion whole (each run re-reads the lease and the log).
    /// Returns the upload, when it succeeded, for the caller to keep or abandon.
    async fn complete_spooled(
        &self,
        lease: &Lease,
        spool: &std::fs::File,
        runs: Vec<Run>,
        upload: impl Future<Output = Result<Uploaded>>,
    ) -> (Option<Uploaded>, Result<scans::Model>) {
        let runs = Arc::new(runs);
        let db = self.cx.db();
        let (uploaded, ingested) = if db.owns_transactions() && is_postgres(db) {
            tokio::join!(upload, self.ingest(lease, spool, runs.clone()))
        } else {
            match upload.await {
                Ok(uploaded) => (Ok(uploaded), self.ingest(lease, spool, runs.clone()).await),
                Err(err) => return (None, Err(err)),
            }
        };
        let uploaded = match uploaded {
            Ok(uploaded) => uploaded,
            Err(err) => return (None, Err(err)),
        };
        let completed = match ingested {
            Ok(ingested) => self.commit(ingested, lease, &uploaded).await,
            Err(err) => Err(err),
        };
        let conflict =
            matches!(&completed, Err(Error::Unavailable { cause, .. }) if cause.is_conflict());
        let completed = if conflict && db.owns_transactions() {
            retry_conflicts("reports.complete_from_sarif", || async {
                let ingested = self.ingest(lease, spool, runs.clone()).await?;
                self.commit(ingested, lease, &uploaded).await
            })
            .await
        } else {
            completed
        };
        (Some(uploaded), completed)
    }

    /// The completion up to its commit: the completion unit, fed every result of the log a
    /// chunk at a time.
    async fn ingest(
        &self,
        lease: &Lease,
        spool: &std::fs::File,
        runs: Arc<Vec<Run>>,
    ) -> Result<(Ingested<'_>, Vec<ImportWarning>)> {
        let warnings = Arc::new(Mutex::new(Warnings::default()));
        let log = Log::Unread {
            file: read_at_start(spool)?,
            runs,
            chunk: ingest::chunk_size(self.cx.db()),
            warnings: warnings.clone(),
            progress: self.progress.cloned(),
        };
        let ingested = complete::ingest(self.cx.clone(), lease, log).await?;
        let warnings = warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list();
        Ok((ingested, warnings))
    }

    /// The completion's end: the report's row and the import's warnings committed with the
    /// scan's success.
    async fn commit(
        &self,
        (ingested, warnings): (Ingested<'_>, Vec<ImportWarning>),
        lease: &Lease,
        uploaded: &Uploaded,
    ) -> Result<scans::Model> {
        let txn = ingested.txn();
        self.artifacts().commit_uploaded(txn, uploaded).await?;
        if !warnings.is_empty() {
            let warnings = serde_json::to_value(&warnings)
                .map_err(|e| Error::Internal(format!("import warnings as JSON: {e}")))?;
            txn.execute_raw(statement(
                txn,
                "UPDATE scans SET import_warnings = $1 WHERE id = $2",
                [warnings.into(), lease.scan_id.into()],
            ))
            .await?;
        }
        complete::commit(self.cx.clone(), ingested, lease).await
    }

    /// The deviations from SARIF 2.1.0 that the import which completed this scan took with a
    /// fallback (README, "Importing SARIF"): one per kind, with the JSON pointer of its first
    /// occurrence and a count. Empty for a scan completed without a log, or from a log that
    /// follows the spec.
    #[instrument(name = "reports.import_warnings", skip(self))]
    pub async fn import_warnings(&self, scan_id: Uuid) -> Result<Vec<ImportWarning>> {
        let scan = self
            .cx
            .select_one::<scans::Entity>(Table::Scans, "x.id = $1", vec![scan_id.into()])
            .await?
            .ok_or_else(|| Error::not_found("scan", scan_id))?;
        match scan.import_warnings {
            None => Ok(Vec::new()),
            Some(stored) => serde_json::from_value(stored).map_err(|e| {
                Error::Database(sea_orm::DbErr::Type(format!("scans.import_warnings: {e}")))
            }),
        }
    }
}

/// A spooled, checked log as a completion's source: from the first chunk asked for (so
/// after the unit's lock and fence), a reader thread maps its results and sends them a chunk
/// at a time through a bounded channel, so memory is a few chunks whatever the file. Dropped,
/// the channel closes and the reader stops at its next chunk.
enum Log {
    Unread {
        file: ReadAt,
        runs: Arc<Vec<Run>>,
        chunk: usize,
        warnings: Arc<Mutex<Warnings>>,
        progress: Option<Arc<ImportProgress>>,
    },
    Reading {
        chunks: tokio::sync::mpsc::Receiver<Vec<Prepared>>,
        reader: tokio::task::JoinHandle<Result<()>>,
    },
    /// Between the two, for the moment it takes to start the reader.
    Starting,
}

impl Log {
    /// Starts the reader; the deviations it took are in `warnings` once it is done, and
    /// `progress` counts the results it read.
    fn start(
        file: ReadAt,
        runs: Arc<Vec<Run>>,
        chunk: usize,
        warnings: Arc<Mutex<Warnings>>,
        progress: Option<Arc<ImportProgress>>,
    ) -> Log {
        if let Some(progress) = &progress {
            progress.restart();
        }
        let (tx, chunks) = tokio::sync::mpsc::channel::<Vec<Prepared>>(CHANNEL_CHUNKS);
        let reader = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(chunk);
            let mut noted = Warnings::default();
            // The identities seen, by their first 8 bytes (of a SHA-256: a false match among
            // a million results is about 1 in 37 million, and would only miscount a warning).
            let mut seen = HashSet::new();
            let mut sink = |mapped: Mapped| -> Result<()> {
                for (deviation, field) in &mapped.deviations {
                    noted.note(*deviation, field);
                }
                let prepared = ingest::prepare_one(
                    mapped.finding,
                    || mapped.pointer.clone(),
                    mapped.suppression,
                )?;
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&prepared.fingerprint[..8]);
                if !seen.insert(u64::from_le_bytes(prefix)) {
                    noted.note(Deviation::DuplicateResult, &mapped.pointer);
                }
                batch.push(prepared);
                if batch.len() == chunk {
                    if let Some(progress) = &progress {
                        progress.add(batch.len() as u64);
                    }
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(chunk));
                    tx.blocking_send(full).map_err(|_| stopped())?;
                }
                Ok(())
            };
            read::results(file, &runs, &mut sink)?;
            if let Some(progress) = &progress {
                progress.add(batch.len() as u64);
            }
            if !batch.is_empty() {
                tx.blocking_send(batch).map_err(|_| stopped())?;
            }
            *warnings.lock().unwrap_or_else(PoisonError::into_inner) = noted;
            Ok(())
        });
        Log::Reading { chunks, reader }
    }
}

impl FindingSource for Log {
    type Chunk = Vec<Prepared>;

    async fn next(&mut self) -> Result<Option<Vec<Prepared>>> {
        if matches!(self, Log::Unread { .. })
            && let Log::Unread {
                file,
                runs,
                chunk,
                warnings,
                progress,
            } = std::mem::replace(self, Log::Starting)
        {
            *self = Log::start(file, runs, chunk, warnings, progress);
        }
        let Log::Reading { chunks, reader } = self else {
            return Ok(None);
        };
        match chunks.recv().await {
            Some(mut chunk) => {
                ingest::dedup(&mut chunk);
                Ok(Some(chunk))
            }
            // The reader is done: its error, if it stopped on one.
            None => reader
                .await
                .map_err(|e| Error::Internal(format!("SARIF reader: {e}")))?
                .map(|()| None),
        }
    }

    async fn failed(self, err: Error) -> Error {
        let Log::Reading { chunks, reader } = self else {
            return err;
        };
        // A bad result is the error to report; otherwise the ingest's (the reader then only
        // saw the channel close).
        drop(chunks);
        match reader.await {
            Ok(Err(invalid @ Error::Invalid { .. })) => invalid,
            _ => err,
        }
    }
}

/// Copies the log into an anonymous temporary file (gone when closed, or when the process
/// dies), so it can be read twice and uploaded whatever its size. A log read back from the
/// blob store that is not what its upload declared is [`Error::Invalid`] (`report`).
async fn spool(report: impl AsyncRead + Unpin + Send) -> Result<std::fs::File> {
    let file = tempfile::tempfile().map_err(|e| io_error("spool the SARIF log", e))?;
    let mut writer = tokio::fs::File::from_std(file);
    // Each write is a trip to the blocking pool: in 1 MiB pieces rather than `copy`'s 8 KiB,
    // spooling 33 MB took 100–150 ms, the longest step before the ingest starts.
    let mut report = tokio::io::BufReader::with_capacity(SPOOL_BUFFER, report);
    tokio::io::copy_buf(&mut report, &mut writer)
        .await
        .map_err(|e| match e.get_ref().and_then(|e| e.downcast_ref()) {
            Some(vega_blobstore::BlobError::Integrity {
                expected,
                actual,
                size,
                ..
            }) => Error::invalid(
                "report",
                format!(
                    "the uploaded object ({size} bytes, sha256 {actual}) is not what its upload \
                     declared (sha256 {expected})"
                ),
            ),
            _ => io_error("read the SARIF log", e),
        })?;
    let mut file = writer.into_std().await;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_error("rewind the SARIF log", e))?;
    Ok(file)
}

/// The owner of a scan's report artifact.
fn report_owner(scan: &scans::Model) -> Owner {
    Owner::Scan {
        project_id: scan.project_id,
        scan_id: scan.id,
    }
}

/// The spooled file for the upload, rewound: the one reader of the file's shared offset.
fn reopen(file: &std::fs::File) -> Result<std::fs::File> {
    let mut copy = file
        .try_clone()
        .map_err(|e| io_error("reopen the SARIF log", e))?;
    copy.seek(SeekFrom::Start(0))
        .map_err(|e| io_error("rewind the SARIF log", e))?;
    Ok(copy)
}

/// The spooled file for a pass of the reader, from its start at a position of its own
/// (`pread`), so the ingest's pass reads beside the upload without sharing its offset.
fn read_at_start(file: &std::fs::File) -> Result<ReadAt> {
    Ok(ReadAt {
        file: file
            .try_clone()
            .map_err(|e| io_error("reopen the SARIF log", e))?,
        at: 0,
    })
}

struct ReadAt {
    file: std::fs::File,
    at: u64,
}

impl std::io::Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("SARIF reader: {e}")))?
}

fn stopped() -> Error {
    Error::Internal("the ingest stopped before the SARIF reader".into())
}

fn io_error(what: &str, err: std::io::Error) -> Error {
    Error::Blob(vega_blobstore::BlobError::Io(std::io::Error::new(
        err.kind(),
        format!("could not {what}: {err}"),
    )))
}
