//! Object maintenance, for the system only: `purge` (the deletion outbox), `gc` (what failed
//! writes left behind) and `audit` (committed rows against their objects).

use std::time::{Duration, SystemTime};

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Value,
};
use tracing::instrument;
use uuid::Uuid;
use vega_blobstore::ObjectKey;
use vega_entity::{ArtifactState, artifacts, object_deletions};

use super::Artifacts;
use crate::sql::{now, statement};
use crate::{Error, Result};

/// Options for [`Artifacts::gc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Only objects and pending rows older than this are touched: younger ones may belong to
    /// an upload in progress.
    pub grace: Duration,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
}

/// What [`Artifacts::gc`] found (and, unless dry-run, removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Objects listed.
    pub scanned: u64,
    /// Objects no row knows, older than the grace period.
    pub orphans: u64,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Pending rows older than the grace period (uploads that never committed).
    pub stale_pending: u64,
    /// Whether anything was removed.
    pub removed: bool,
}

/// What [`Artifacts::audit`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// Committed rows checked.
    pub checked: u64,
    /// Keys of committed rows whose object is missing.
    pub missing: Vec<String>,
    /// Keys whose object's size differs from the row's.
    pub size_mismatch: Vec<String>,
    /// Keys whose object's SHA-256 differs from the row's (only with content verification).
    pub sha256_mismatch: Vec<String>,
    /// Keys of pending rows older than the grace period.
    pub stale_pending: Vec<String>,
}

impl AuditReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.size_mismatch.is_empty()
            && self.sha256_mismatch.is_empty()
            && self.stale_pending.is_empty()
    }
}

impl Artifacts<'_> {
    /// Deletes the objects queued for deletion, then their outbox rows; returns how many. Safe
    /// to run twice or from several processes: deleting a missing object succeeds.
    #[instrument(name = "artifacts.purge", skip(self))]
    pub async fn purge(&self) -> Result<u64> {
        self.cx.who.require_system("purge objects")?;
        let mut purged = 0;
        loop {
            let batch: Vec<String> = object_deletions::Entity::find()
                .select_only()
                .column(object_deletions::Column::ObjectKey)
                .order_by_asc(object_deletions::Column::RequestedAt)
                .limit(500)
                .into_tuple()
                .all(self.cx.db())
                .await?;
            if batch.is_empty() {
                return Ok(purged);
            }
            for key in &batch {
                self.blobs.delete(&ObjectKey::parse(key.as_str())?).await?;
            }
            let placeholders = (1..=batch.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let values: Vec<Value> = batch.iter().map(|k| k.as_str().into()).collect();
            self.cx
                .db()
                .execute_raw(statement(
                    self.cx.db(),
                    &format!("DELETE FROM object_deletions WHERE object_key IN ({placeholders})"),
                    values,
                ))
                .await?;
            purged += batch.len() as u64;
        }
    }

    /// Removes what failed writes left behind: pending rows older than the grace period (and
    /// their objects), and objects no row knows that are older than the grace period. Dry-run
    /// by default in the CLI; `progress` is called with the number of objects listed so far.
    #[instrument(name = "artifacts.gc", skip(self, progress))]
    pub async fn gc(&self, options: GcOptions, mut progress: impl FnMut(u64)) -> Result<GcReport> {
        self.cx.who.require_system("collect garbage")?;
        let mut report = GcReport {
            removed: !options.dry_run,
            ..GcReport::default()
        };
        let cutoff = grace_cutoff(options.grace)?;
        let stale = stale_pending(self.cx.db(), options.grace).await?;
        report.stale_pending = stale.len() as u64;
        if !options.dry_run {
            for (id, key) in &stale {
                self.blobs.delete(&ObjectKey::parse(key.as_str())?).await?;
                self.cx
                    .db()
                    .execute_raw(statement(
                        self.cx.db(),
                        "DELETE FROM artifacts WHERE id = $1 AND state = 'pending'",
                        [(*id).into()],
                    ))
                    .await?;
            }
        }
        let mut page = None;
        loop {
            let listed = self.blobs.list("projects/", page).await?;
            report.scanned += listed.objects.len() as u64;
            let keys: Vec<&str> = listed.objects.iter().map(|o| o.key.as_str()).collect();
            let known = known_keys(self.cx.db(), &keys).await?;
            for object in &listed.objects {
                let old = object.last_modified.is_none_or(|t| t < cutoff);
                if old && !known.contains(&object.key) {
                    report.orphans += 1;
                    report.orphan_bytes += object.size;
                    if !options.dry_run {
                        tracing::info!(key = %object.key, size = object.size, "removing an object no row references");
                        self.blobs
                            .delete(&ObjectKey::parse(object.key.as_str())?)
                            .await?;
                    }
                }
            }
            progress(report.scanned);
            match listed.next {
                Some(next) => page = Some(next),
                None => return Ok(report),
            }
        }
    }

    /// Checks every committed artifact's object (existence and size; with `verify_content`,
    /// also the SHA-256 by reading it) and lists pending rows older than `grace`.
    #[instrument(name = "artifacts.audit", skip(self))]
    pub async fn audit(&self, grace: Duration, verify_content: bool) -> Result<AuditReport> {
        self.cx.who.require_system("audit objects")?;
        let mut report = AuditReport::default();
        let mut after = Uuid::nil();
        loop {
            let batch = artifacts::Entity::find()
                .filter(artifacts::Column::State.eq(ArtifactState::Committed.as_str()))
                .filter(artifacts::Column::Id.gt(after))
                .order_by_asc(artifacts::Column::Id)
                .limit(500)
                .all(self.cx.db())
                .await?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            for artifact in batch {
                report.checked += 1;
                let key = ObjectKey::parse(artifact.object_key.as_str())?;
                let expected = artifact.size_bytes.and_then(|s| u64::try_from(s).ok());
                match self.blobs.head(&key).await? {
                    None => report.missing.push(artifact.object_key),
                    Some(meta) if Some(meta.size) != expected => {
                        report.size_mismatch.push(artifact.object_key)
                    }
                    Some(_) if verify_content => {
                        let sha256 = artifact
                            .sha256
                            .as_deref()
                            .and_then(|s| <[u8; 32]>::try_from(s).ok())
                            .unwrap_or_default();
                        let mut reader = self.blobs.get(&key, sha256, expected).await?;
                        if tokio::io::copy(&mut reader, &mut tokio::io::sink())
                            .await
                            .is_err()
                        {
                            report.sha256_mismatch.push(artifact.object_key);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        report.stale_pending = stale_pending(self.cx.db(), grace)
            .await?
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        Ok(report)
    }
}

fn grace_cutoff(grace: Duration) -> Result<SystemTime> {
    SystemTime::now()
        .checked_sub(grace)
        .ok_or_else(|| Error::invalid("grace", "is too long"))
}

async fn stale_pending(db: &impl ConnectionTrait, grace: Duration) -> Result<Vec<(Uuid, String)>> {
    let cutoff = now()
        - chrono::Duration::from_std(grace).map_err(|_| Error::invalid("grace", "is too long"))?;
    Ok(artifacts::Entity::find()
        .select_only()
        .column(artifacts::Column::Id)
        .column(artifacts::Column::ObjectKey)
        .filter(artifacts::Column::State.eq(ArtifactState::Pending.as_str()))
        .filter(artifacts::Column::CreatedAt.lt(cutoff))
        .into_tuple()
        .all(db)
        .await?)
}

/// Which of `keys` a row (any state) or the deletion outbox knows.
async fn known_keys(
    db: &impl ConnectionTrait,
    keys: &[&str],
) -> Result<std::collections::HashSet<String>> {
    let mut known = std::collections::HashSet::new();
    for chunk in keys.chunks(500) {
        if chunk.is_empty() {
            continue;
        }
        let placeholders = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let values: Vec<Value> = chunk.iter().map(|k| (*k).into()).collect();
        let rows = db
            .query_all_raw(statement(
                db,
                &format!(
                    "SELECT object_key FROM artifacts WHERE object_key IN ({placeholders}) \
                     UNION SELECT object_key FROM object_deletions WHERE object_key IN ({placeholders})"
                ),
                values,
            ))
            .await?;
        for row in rows {
            known.insert(row.try_get::<String>("", "object_key")?);
        }
    }
    Ok(known)
}
