use chrono::{DateTime, FixedOffset};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{SnapshotStatus, snapshots};

use crate::context::cx::Cx;
use crate::context::principal::{Table, and_reach};
use crate::context::trail::{self, Action, Audit};
use crate::db::page::limit_clause;
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};
use crate::objects::cascade;

/// Input for [`Snapshots::create`].
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// The repository the source comes from (its project is taken from it).
    pub repository_id: Uuid,
    /// The commit, 40 or 64 hex digits.
    pub commit_sha: Option<String>,
    /// Branch or tag.
    pub ref_name: Option<String>,
    /// When the snapshot may be deleted (`maintain` expires it, archive included, unless a
    /// queued or running scan still reads it). `None`: kept until deleted.
    pub expires_at: Option<DateTime<FixedOffset>>,
}

/// The `snapshots` table: source trees fetched for scanning.
#[derive(Debug, Clone)]
pub struct Snapshots<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Snapshots<'_> {
    /// Creates a pending snapshot of a repository in reach and appends `snapshot.created`. Its
    /// archive enters only through [`crate::Artifacts::store_snapshot_archive`], which marks it
    /// ready.
    #[instrument(name = "snapshots.create", skip_all, fields(repository_id = %input.repository_id))]
    pub async fn create(&self, input: NewSnapshot) -> Result<snapshots::Model> {
        let commit_sha = input
            .commit_sha
            .as_deref()
            .map(|sha| validate::commit_sha("commit_sha", sha))
            .transpose()?;
        let ref_name = validate::optional_text("ref_name", input.ref_name.as_deref(), 255)?;
        let expires_at = input
            .expires_at
            .map(|at| validate::timestamp("expires_at", at))
            .transpose()?;
        if expires_at.is_some_and(|at| at <= now()) {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        // The project comes from the repository in the same statement: no round trip, and a
        // missing repository inserts nothing.
        let mut values: Vec<Value> = vec![
            Uuid::now_v7().into(),
            commit_sha.clone().into(),
            ref_name.into(),
            SnapshotStatus::Pending.as_str().into(),
            now().into(),
            input.repository_id.into(),
            expires_at.into(),
        ];
        let reach = and_reach(self.cx.who, Table::Repositories, "r", &mut values);
        let unit = self.cx.db().unit().await?;
        let snapshot = snapshots::Model::find_by_statement(statement(
            &unit,
            &format!(
                "INSERT INTO snapshots (id, project_id, repository_id, commit_sha, ref_name, \
                                            status, created_at, expires_at) \
                     SELECT $1, r.project_id, r.id, $2, $3, $4, $5, $7 FROM repositories r \
                      WHERE r.id = $6{reach} \
                     RETURNING *"
            ),
            values,
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("repository", input.repository_id))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::SnapshotCreated, ("snapshot", snapshot.id))
                    .project(snapshot.project_id)
                    .data(json!({
                        "repository_id": snapshot.repository_id,
                        "commit_sha": commit_sha,
                    })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(snapshot)
    }

    /// The snapshot with this id.
    #[instrument(name = "snapshots.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<snapshots::Model> {
        self.first("x.id = $1", vec![id.into()])
            .await?
            .ok_or_else(|| Error::not_found("snapshot", id))
    }

    /// Deletes the snapshot and appends `snapshot.deleted`; its archive is queued for `purge` in the same transaction and scans
    /// that read it keep their history.
    #[instrument(name = "snapshots.delete", skip(self))]
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        cascade::delete(self.cx.clone(), &cascade::SNAPSHOT, id).await
    }

    /// Deletes up to `limit` ready snapshots whose expiry has passed, as
    /// [`Snapshots::delete`] does (archives queued for purge), skipping any that a queued or
    /// running scan still reads. Returns how many were deleted (the system only).
    #[instrument(name = "snapshots.expire", skip(self))]
    pub async fn expire(&self, limit: u64) -> Result<u64> {
        self.cx.who.require_system("expire snapshots")?;
        let db = self.cx.db();
        let due: Vec<Uuid> = db
            .query_all_raw(statement(
                db,
                &format!(
                    "SELECT x.id FROM snapshots x \
                      WHERE x.status = 'ready' AND x.expires_at < $1 \
                        AND NOT EXISTS (SELECT 1 FROM scans s WHERE s.snapshot_id = x.id \
                                          AND s.status IN ('queued', 'running')) \
                      ORDER BY x.expires_at {}",
                    limit_clause(limit)
                ),
                [now().into()],
            ))
            .await?
            .iter()
            .map(|row| row.try_get("", "id"))
            .collect::<Result<_, sea_orm::DbErr>>()?;
        let mut expired = 0;
        for id in due {
            match self.delete(id).await {
                Ok(()) => expired += 1,
                // Deleted meanwhile by someone else.
                Err(Error::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(expired)
    }

    /// The repository's newest ready snapshot.
    #[instrument(name = "snapshots.latest_for_repository", skip(self))]
    pub async fn latest_for_repository(
        &self,
        repository_id: Uuid,
    ) -> Result<Option<snapshots::Model>> {
        self.first(
            "x.repository_id = $1 AND x.status = $2",
            vec![repository_id.into(), SnapshotStatus::Ready.as_str().into()],
        )
        .await
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
        self.first(
            "x.repository_id = $1 AND x.commit_sha = $2 AND x.status = $3",
            vec![
                repository_id.into(),
                commit_sha.into(),
                SnapshotStatus::Ready.as_str().into(),
            ],
        )
        .await
    }

    /// The newest snapshot in reach matching `filter`.
    async fn first(&self, filter: &str, values: Vec<Value>) -> Result<Option<snapshots::Model>> {
        let tail = format!("ORDER BY x.id DESC {}", limit_clause(1));
        Ok(self
            .cx
            .select::<snapshots::Entity>(Table::Snapshots, filter, values, &tail)
            .await?
            .pop())
    }
}
