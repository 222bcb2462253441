//! The `artifacts` repository. Every object Vega writes for a snapshot or a scan is
//! registered in `artifacts`:
//!
//! - **write**: the row/object protocol of `upload.rs` (pending row, create-only put, commit
//!   with size and SHA-256, and for a source archive the snapshot `ready` in the same
//!   transaction);
//! - **read**: the object is streamed and verified against the row's SHA-256 and size;
//! - **delete**: `cascade.rs`; purge, gc and the integrity check: `maintenance.rs`.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use tokio::io::AsyncRead;
use tracing::instrument;
use uuid::Uuid;
use vega_blobstore::{BlobStore, ObjectKey, VerifiedReader};
use vega_entity::{ArtifactKind, ArtifactState, SnapshotStatus, artifacts};

use crate::context::cx::Cx;
use crate::context::principal::Table;
use crate::context::trail::{self, Action, Audit};
use crate::db::sql::{now, statement};
use crate::error::{Error, Result};
use crate::objects::cascade::enqueue_deletion;
use crate::objects::upload::{self, Pending, Registry, Uploaded};

/// The kinds of object a scan owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanObject {
    /// The scan's report (`report.json`).
    Report,
    /// Its JSON event log (`events.jsonl`).
    EventLog,
    /// A debug bundle (a scan may have several).
    DebugBundle,
}

/// The `artifacts` table and the objects it registers.
#[derive(Debug, Clone)]
pub struct Artifacts<'a> {
    pub(crate) cx: Cx<'a>,
    pub(crate) blobs: &'a BlobStore,
}

/// What an artifact belongs to.
pub(crate) enum Owner {
    Snapshot { project_id: Uuid, snapshot_id: Uuid },
    Scan { project_id: Uuid, scan_id: Uuid },
}

impl Owner {
    fn project_id(&self) -> Uuid {
        match *self {
            Owner::Snapshot { project_id, .. } | Owner::Scan { project_id, .. } => project_id,
        }
    }

    fn snapshot_id(&self) -> Option<Uuid> {
        match *self {
            Owner::Snapshot { snapshot_id, .. } => Some(snapshot_id),
            Owner::Scan { .. } => None,
        }
    }

    fn scan_id(&self) -> Option<Uuid> {
        match *self {
            Owner::Scan { scan_id, .. } => Some(scan_id),
            Owner::Snapshot { .. } => None,
        }
    }
}

/// An upload a client makes itself, straight to the blob store: a presigned, create-only PUT
/// that S3 accepts only with exactly the declared bytes, to the key of a pending artifact that
/// records the declared size and SHA-256. Not `Serialize`, and its `Debug` leaves out the
/// URL's query: until it expires the URL is a credential.
pub struct PresignedUpload {
    /// The pending artifact the upload fills.
    pub artifact_id: Uuid,
    /// Where to `PUT` the bytes.
    pub url: String,
    /// Headers the `PUT` must carry, as they were signed.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for PresignedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.url.split('?').next().unwrap_or_default();
        f.debug_struct("PresignedUpload")
            .field("artifact_id", &self.artifact_id)
            .field("url", &format_args!("{path}?<signed>"))
            .finish_non_exhaustive()
    }
}

/// A pending row's declared upload ([`Artifacts::presign_upload`]), to verify against the
/// object and then commit. `None` when the row declares no size and SHA-256 (its writer
/// streams it instead).
pub(crate) fn declared(row: &artifacts::Model) -> Result<Option<Uploaded>> {
    let (Some(size), Some(sha256)) = (row.size_bytes, row.sha256.as_deref()) else {
        return Ok(None);
    };
    Ok(Some(Uploaded {
        pending: Pending {
            registry: Registry::Artifacts,
            id: row.id,
            key: ObjectKey::parse(row.object_key.as_str())?,
            content_type: row.content_type.clone(),
        },
        stored: vega_blobstore::Stored {
            size: u64::try_from(size).unwrap_or_default(),
            sha256: sha256_of(sha256)?,
        },
    }))
}

impl Artifacts<'_> {
    /// Stores a pending snapshot's source archive (any size, streamed) and marks the snapshot
    /// ready with it.
    #[instrument(name = "artifacts.store_snapshot_archive", skip(self, source))]
    pub async fn store_snapshot_archive(
        &self,
        snapshot_id: Uuid,
        source: impl AsyncRead + Unpin + Send,
        file_count: Option<i32>,
    ) -> Result<artifacts::Model> {
        if file_count.is_some_and(|n| n < 0) {
            return Err(Error::invalid("file_count", "must not be negative"));
        }
        let snapshot = self
            .cx
            .select_one::<vega_entity::snapshots::Entity>(
                Table::Snapshots,
                "x.id = $1",
                vec![snapshot_id.into()],
            )
            .await?
            .ok_or_else(|| Error::not_found("snapshot", snapshot_id))?;
        if snapshot.status != SnapshotStatus::Pending.as_str() {
            return Err(Error::Conflict {
                constraint: "snapshots_status".into(),
                message: format!("the snapshot is {}, not pending", snapshot.status),
            });
        }
        let owner = Owner::Snapshot {
            project_id: snapshot.project_id,
            snapshot_id,
        };
        let id = Uuid::now_v7();
        let key = ObjectKey::snapshot_archive(snapshot.project_id, snapshot_id);
        self.store(
            id,
            owner,
            ArtifactKind::SourceArchive,
            key,
            "application/gzip",
            source,
            file_count,
        )
        .await
    }

    /// Stores one of a scan's objects (streamed, any size).
    #[instrument(name = "artifacts.store_scan_object", skip(self, source))]
    pub async fn store_scan_object(
        &self,
        scan_id: Uuid,
        kind: ScanObject,
        source: impl AsyncRead + Unpin + Send,
    ) -> Result<artifacts::Model> {
        let scan = self
            .cx
            .select_one::<vega_entity::scans::Entity>(
                Table::Scans,
                "x.id = $1",
                vec![scan_id.into()],
            )
            .await?
            .ok_or_else(|| Error::not_found("scan", scan_id))?;
        let id = Uuid::now_v7();
        let (kind, key, content_type) = match kind {
            ScanObject::Report => (
                ArtifactKind::ScanReport,
                ObjectKey::scan_report(scan.project_id, scan_id),
                "application/json",
            ),
            ScanObject::EventLog => (
                ArtifactKind::EventLog,
                ObjectKey::scan_event_log(scan.project_id, scan_id),
                "application/x-ndjson",
            ),
            ScanObject::DebugBundle => (
                ArtifactKind::DebugBundle,
                ObjectKey::debug_bundle(scan.project_id, scan_id, id),
                "application/gzip",
            ),
        };
        let owner = Owner::Scan {
            project_id: scan.project_id,
            scan_id,
        };
        self.store(id, owner, kind, key, content_type, source, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        id: Uuid,
        owner: Owner,
        kind: ArtifactKind,
        key: ObjectKey,
        content_type: &str,
        source: impl AsyncRead + Unpin + Send,
        file_count: Option<i32>,
    ) -> Result<artifacts::Model> {
        let uploaded = self
            .upload(id, owner, kind, key, content_type, source)
            .await?;
        // 3. Commit the row (and the snapshot, and the event) together.
        let txn = self.cx.db().unit().await?;
        let committed = self.commit_uploaded(&txn, &uploaded).await?;
        if let Some(snapshot_id) = committed.snapshot_id {
            let ready = txn
                .execute_raw(statement(
                    &txn,
                    "UPDATE snapshots SET status = 'ready', ready_at = $1, file_count = $2 \
                      WHERE id = $3 AND status = 'pending'",
                    [
                        committed.committed_at.into(),
                        file_count.into(),
                        snapshot_id.into(),
                    ],
                ))
                .await?;
            if ready.rows_affected() == 0 {
                return Err(Error::Conflict {
                    constraint: "snapshots_status".into(),
                    message: "the snapshot stopped being pending during the upload".into(),
                });
            }
        }
        txn.commit().await?;
        Ok(committed)
    }

    /// Steps 1 and 2 of a write: the pending row, then the object (create-only, hashed as it
    /// streams). The caller commits it with [`Artifacts::commit_uploaded`] in its own
    /// transaction, or gives it up with `upload::abandon`.
    pub(crate) async fn upload(
        &self,
        id: Uuid,
        owner: Owner,
        kind: ArtifactKind,
        key: ObjectKey,
        content_type: &str,
        source: impl AsyncRead + Unpin + Send,
    ) -> Result<Uploaded> {
        let pending = self.register(id, owner, kind, key, content_type).await?;
        upload::put(self.cx.db(), self.blobs, &pending, source).await
    }

    /// Step 1 of a write: the pending row, so every object that exists has a row or is older
    /// than one.
    pub(crate) async fn register(
        &self,
        id: Uuid,
        owner: Owner,
        kind: ArtifactKind,
        key: ObjectKey,
        content_type: &str,
    ) -> Result<Pending> {
        insert_pending(self.cx.db(), id, &owner, kind, &key, content_type, None).await?;
        Ok(Pending {
            registry: Registry::Artifacts,
            id,
            key,
            content_type: content_type.to_owned(),
        })
    }

    /// Step 1 of a write whose bytes the client uploads itself, inside the caller's
    /// transaction: the pending row with the declared size and SHA-256, and a URL that takes
    /// exactly those bytes. A pending row that an earlier call left on the same key is
    /// replaced, so asking again supersedes an upload that failed; its object (if the upload
    /// got that far) must then go before the new upload can land: the caller deletes the
    /// returned key after committing. Step 2 is the client's `PUT`; step 3, after the object
    /// is verified against [`declared`], is [`Artifacts::commit_uploaded`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn presign_upload(
        &self,
        txn: &impl ConnectionTrait,
        owner: Owner,
        kind: ArtifactKind,
        key: ObjectKey,
        content_type: &str,
        declared: vega_blobstore::Stored,
        expires: Duration,
    ) -> Result<(PresignedUpload, Option<ObjectKey>)> {
        presign_expiry(expires)?;
        // Signing is local and refuses what the backend cannot do, before any row is written.
        let (url, headers) = self
            .blobs
            .presign_put(&key, declared.sha256, expires)
            .await?;
        let replaced = txn
            .execute_raw(statement(
                txn,
                "DELETE FROM artifacts WHERE object_key = $1 AND state = 'pending'",
                [key.as_str().into()],
            ))
            .await?
            .rows_affected();
        let id = Uuid::now_v7();
        insert_pending(txn, id, &owner, kind, &key, content_type, Some(declared)).await?;
        let upload = PresignedUpload {
            artifact_id: id,
            url,
            headers,
        };
        Ok((upload, (replaced > 0).then_some(key)))
    }

    /// Step 3 of a write, inside the caller's transaction: the row `committed` with the
    /// object's size and SHA-256, and `artifact.stored`. An owner deleted during the upload
    /// queues the object for purge and is [`Error::Conflict`].
    pub(crate) async fn commit_uploaded(
        &self,
        txn: &impl ConnectionTrait,
        uploaded: &Uploaded,
    ) -> Result<artifacts::Model> {
        let committed = upload::commit::<artifacts::Model>(txn, uploaded).await?;
        let Some(committed) = committed else {
            // The owner was deleted while we uploaded: the object must go too.
            enqueue_deletion(txn, uploaded.key().as_str()).await?;
            return Err(Error::Conflict {
                constraint: "artifacts_owner".into(),
                message: "the owner was deleted during the upload".into(),
            });
        };
        trail::record(
            txn,
            self.cx.who,
            vec![
                Audit::new(Action::ArtifactStored, ("artifact", committed.id))
                    .project(committed.project_id)
                    .data(serde_json::json!({
                        "kind": committed.kind,
                        "size_bytes": committed.size_bytes,
                    })),
            ],
        )
        .await?;
        Ok(committed)
    }

    /// The artifact with this id.
    #[instrument(name = "artifacts.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<artifacts::Model> {
        self.cx
            .select_one::<artifacts::Entity>(Table::Artifacts, "x.id = $1", vec![id.into()])
            .await?
            .ok_or_else(|| Error::not_found("artifact", id))
    }

    /// A committed artifact's bytes, verified against its SHA-256 and size as they stream (the
    /// read fails at the end if they differ).
    #[instrument(name = "artifacts.open", skip(self))]
    pub async fn open(&self, id: Uuid) -> Result<VerifiedReader> {
        let (key, sha256, size) = self.committed(id).await?;
        Ok(self.blobs.get(&key, sha256, Some(size)).await?)
    }

    /// A URL that downloads the artifact without credentials until it expires, which must be
    /// in (0 s, 7 days] (S3's limit). S3 only; the download carries the artifact's
    /// Content-Type and, for whoever wants to check it, its SHA-256 as `x-amz-meta-sha256`.
    #[instrument(name = "artifacts.download_url", skip(self))]
    pub async fn download_url(&self, id: Uuid, expires: Duration) -> Result<String> {
        presign_expiry(expires)?;
        let (key, ..) = self.committed(id).await?;
        Ok(self.blobs.presign_get(&key, expires).await?)
    }

    async fn committed(&self, id: Uuid) -> Result<(ObjectKey, [u8; 32], u64)> {
        let artifact = self.get(id).await?;
        // A presigned upload's pending row already holds its declared size and SHA-256.
        let (true, Some(sha256), Some(size)) = (
            artifact.state == ArtifactState::Committed.as_str(),
            artifact.sha256,
            artifact.size_bytes,
        ) else {
            return Err(Error::Conflict {
                constraint: "artifacts_state".into(),
                message: "the artifact's upload has not completed".into(),
            });
        };
        Ok((
            ObjectKey::parse(artifact.object_key)?,
            sha256_of(&sha256)?,
            u64::try_from(size).unwrap_or_default(),
        ))
    }

    /// The scan's artifacts (report, event log, debug bundles), oldest first.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "artifacts.list_for_scan", skip(self))]
    pub async fn list_for_scan(&self, scan_id: Uuid) -> Result<Vec<artifacts::Model>> {
        let cx = self.cx.replica();
        cx.select::<artifacts::Entity>(
            Table::Artifacts,
            "x.scan_id = $1",
            vec![scan_id.into()],
            "ORDER BY x.id",
        )
        .await
    }
}

/// Step 1 of a write: the `pending` row, with the size and SHA-256 the upload declared when a
/// client uploads the bytes itself.
async fn insert_pending(
    db: &impl ConnectionTrait,
    id: Uuid,
    owner: &Owner,
    kind: ArtifactKind,
    key: &ObjectKey,
    content_type: &str,
    declared: Option<vega_blobstore::Stored>,
) -> Result<()> {
    let size = declared
        .map(|d| i64::try_from(d.size))
        .transpose()
        .map_err(|_| Error::invalid("size", "is larger than any object can be"))?;
    db.execute_raw(statement(
        db,
        "INSERT INTO artifacts (id, project_id, snapshot_id, scan_id, kind, object_key, \
                                content_type, size_bytes, sha256, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10)",
        [
            id.into(),
            owner.project_id().into(),
            owner.snapshot_id().into(),
            owner.scan_id().into(),
            kind.as_str().into(),
            key.as_str().into(),
            content_type.into(),
            size.into(),
            declared.map(|d| d.sha256.to_vec()).into(),
            now().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// A presigned URL's expiry, checked as the caller's input: in (0 s, 7 days], S3's limit.
fn presign_expiry(expires: Duration) -> Result<()> {
    if expires.is_zero() || expires > vega_blobstore::MAX_PRESIGN_EXPIRY {
        return Err(Error::invalid(
            "expires",
            "must be longer than 0 s and at most 7 days (S3's limit for presigned URLs)",
        ));
    }
    Ok(())
}

/// A stored SHA-256 (the schema's CHECK keeps it 32 bytes).
fn sha256_of(stored: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(stored)
        .map_err(|_| Error::Database(sea_orm::DbErr::Type("sha256 is not 32 bytes".into())))
}
