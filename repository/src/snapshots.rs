use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{ArtifactKind, SnapshotStatus, snapshots};

use crate::db::Db;
use crate::store::{now, statement};
use crate::{Error, Result, validate};

/// Input for [`Snapshots::create`].
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// The repository the source comes from (its project is taken from it).
    pub repository_id: Uuid,
    /// The commit, 40 or 64 hex digits.
    pub commit_sha: Option<String>,
    /// Branch or tag.
    pub ref_name: Option<String>,
}

/// The stored archive of a snapshot, for [`Snapshots::mark_ready`].
#[derive(Debug, Clone)]
pub struct ArchiveObject {
    /// The object's key in the blob store.
    pub object_key: String,
    /// Its size in bytes.
    pub size_bytes: i64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its MIME type.
    pub content_type: String,
    /// How many files the archive holds.
    pub file_count: Option<i32>,
}

/// The `snapshots` table: source trees fetched for scanning.
#[derive(Debug, Clone, Copy)]
pub struct Snapshots<'a> {
    pub(crate) db: &'a Db,
}

impl Snapshots<'_> {
    /// Creates a pending snapshot of a repository.
    #[instrument(name = "snapshots.create", skip_all, fields(repository_id = %input.repository_id))]
    pub async fn create(&self, input: NewSnapshot) -> Result<snapshots::Model> {
        let commit_sha = input
            .commit_sha
            .as_deref()
            .map(|sha| validate::commit_sha("commit_sha", sha))
            .transpose()?;
        let ref_name = validate::optional_text("ref_name", input.ref_name.as_deref(), 255)?;
        // The project comes from the repository in the same statement: no round trip, and a
        // missing repository inserts nothing.
        let sql = "INSERT INTO snapshots (id, project_id, repository_id, commit_sha, ref_name, status, created_at) \
                   SELECT $1, r.project_id, r.id, $2, $3, $4, $5 FROM repositories r WHERE r.id = $6 \
                   RETURNING *";
        snapshots::Entity::find()
            .from_raw_sql(statement(
                self.db,
                sql,
                [
                    Uuid::now_v7().into(),
                    commit_sha.into(),
                    ref_name.into(),
                    SnapshotStatus::Pending.as_str().into(),
                    now().into(),
                    input.repository_id.into(),
                ],
            ))
            .one(self.db)
            .await?
            .ok_or_else(|| Error::not_found("repository", input.repository_id))
    }

    /// The snapshot with this id.
    #[instrument(name = "snapshots.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<snapshots::Model> {
        snapshots::Entity::find_by_id(id)
            .one(self.db)
            .await?
            .ok_or_else(|| Error::not_found("snapshot", id))
    }

    /// Records the snapshot's stored archive (a committed `source_archive` artifact) and marks
    /// the snapshot ready, in one transaction. Only a pending snapshot can become ready
    /// ([`Error::Conflict`] otherwise).
    #[instrument(name = "snapshots.mark_ready", skip(self, archive))]
    pub async fn mark_ready(&self, id: Uuid, archive: ArchiveObject) -> Result<snapshots::Model> {
        let object_key = validate::text("object_key", &archive.object_key, 1, 1024)?;
        let content_type = validate::text("content_type", &archive.content_type, 1, 255)?;
        if archive.size_bytes < 0 {
            return Err(Error::invalid("size_bytes", "must not be negative"));
        }
        if archive.file_count.is_some_and(|n| n < 0) {
            return Err(Error::invalid("file_count", "must not be negative"));
        }
        let now = now();
        let txn = self.db.begin().await?;
        let ready = snapshots::Entity::find()
            .from_raw_sql(statement(
                &txn,
                "UPDATE snapshots SET status = $1, ready_at = $2, file_count = $3 \
                 WHERE id = $4 AND status = $5 RETURNING *",
                [
                    SnapshotStatus::Ready.as_str().into(),
                    now.into(),
                    archive.file_count.into(),
                    id.into(),
                    SnapshotStatus::Pending.as_str().into(),
                ],
            ))
            .one(&txn)
            .await?;
        let Some(ready) = ready else {
            let exists = snapshots::Entity::find_by_id(id).one(&txn).await?.is_some();
            return Err(if exists {
                Error::Conflict {
                    constraint: "snapshots_status_check".into(),
                    message: "only a pending snapshot can become ready".into(),
                }
            } else {
                Error::not_found("snapshot", id)
            });
        };
        sea_orm::ConnectionTrait::execute_raw(
            &txn,
            statement(
                &txn,
                "INSERT INTO artifacts (id, project_id, snapshot_id, kind, object_key, content_type, \
                                        size_bytes, sha256, state, created_at, committed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'committed', $9, $9)",
                [
                    Uuid::now_v7().into(),
                    ready.project_id.into(),
                    ready.id.into(),
                    ArtifactKind::SourceArchive.as_str().into(),
                    object_key.into(),
                    content_type.into(),
                    archive.size_bytes.into(),
                    archive.sha256.to_vec().into(),
                    now.into(),
                ],
            ),
        )
        .await?;
        txn.commit().await?;
        Ok(ready)
    }

    /// Deletes the snapshot; its archive is queued for `purge` in the same transaction and scans
    /// that read it keep their history.
    #[instrument(name = "snapshots.delete", skip(self))]
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        if crate::artifacts::delete_with_objects(self.db, "snapshots", "snapshot_id", id).await? {
            Ok(())
        } else {
            Err(Error::not_found("snapshot", id))
        }
    }

    /// The repository's newest ready snapshot.
    #[instrument(name = "snapshots.latest_for_repository", skip(self))]
    pub async fn latest_for_repository(
        &self,
        repository_id: Uuid,
    ) -> Result<Option<snapshots::Model>> {
        Ok(snapshots::Entity::find()
            .filter(snapshots::Column::RepositoryId.eq(repository_id))
            .filter(snapshots::Column::Status.eq(SnapshotStatus::Ready.as_str()))
            .order_by_desc(snapshots::Column::Id)
            .one(self.db)
            .await?)
    }

    /// The repository's newest ready snapshot of this commit, to reuse instead of fetching
    /// again.
    #[instrument(name = "snapshots.find_by_commit", skip(self))]
    pub async fn find_by_commit(
        &self,
        repository_id: Uuid,
        commit_sha: &str,
    ) -> Result<Option<snapshots::Model>> {
        let commit_sha = validate::commit_sha("commit_sha", commit_sha)?;
        Ok(snapshots::Entity::find()
            .filter(snapshots::Column::RepositoryId.eq(repository_id))
            .filter(snapshots::Column::CommitSha.eq(commit_sha))
            .filter(snapshots::Column::Status.eq(SnapshotStatus::Ready.as_str()))
            .order_by_desc(snapshots::Column::Id)
            .one(self.db)
            .await?)
    }
}
