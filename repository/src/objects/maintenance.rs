//! Object maintenance, for the system only: `purge` (the deletion outbox), `gc` (what failed
//! writes and crashes left behind) and the integrity check (committed rows against their
//! objects, which `vega-admin audit` runs).

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Value,
};
use tracing::instrument;
use uuid::Uuid;
use vega_blobstore::{BlobStore, ObjectKey, PendingUpload, UploadPage};
use vega_entity::{ArtifactState, artifacts};

use crate::db::sql::{is_postgres, now, placeholders, statement};
use crate::error::{Error, Result};
use crate::objects::artifacts::Artifacts;
use crate::objects::upload::Registry;

/// Where Vega's objects live: projects' objects, and event archives (which outlive them).
const OBJECT_PREFIXES: [&str; 2] = ["projects/", ObjectKey::EVENTS_PREFIX];
/// Outbox entries one purge claims at a time.
const PURGE_BATCH: i64 = 100;
/// Deletes in flight at once within a batch.
const PURGE_CONCURRENCY: usize = 16;
/// How long a claim holds its entries. A run that takes longer loses them to another run,
/// which is safe: deletes are idempotent and only the holder of the lease counts an entry.
const PURGE_LEASE: Duration = Duration::from_secs(600);
/// Backoff after a failed delete: 1 minute, doubling per attempt, at most 6 hours.
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// What [`Artifacts::purge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    /// Objects deleted and their outbox entries removed. Each entry is counted by exactly one
    /// purge, however many run at once.
    pub deleted: u64,
    /// Entries whose delete failed in this run; each is retried after its backoff.
    pub failed: Vec<PurgeFailure>,
}

/// An outbox entry whose delete failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurgeFailure {
    /// The object key (as queued; it may not even parse).
    pub object_key: String,
    /// Failed attempts so far, this one included.
    pub attempts: i32,
    /// Why it failed this time.
    pub error: String,
    /// When it may be tried again.
    pub retry_after: chrono::DateTime<chrono::FixedOffset>,
}

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
    /// Multipart uploads started before the grace period and never completed or aborted
    /// (a crash, or an abort that failed): aborted, which frees their parts.
    pub incomplete_uploads: u64,
    /// Whether anything was removed.
    pub removed: bool,
}

/// What [`Artifacts::check_integrity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IntegrityReport {
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
    /// Keys of multipart uploads started before the grace period and never finished
    /// (`gc --apply` aborts them).
    pub incomplete_uploads: Vec<String>,
}

impl IntegrityReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.size_mismatch.is_empty()
            && self.sha256_mismatch.is_empty()
            && self.stale_pending.is_empty()
            && self.incomplete_uploads.is_empty()
    }
}

impl Artifacts<'_> {
    /// Deletes the objects queued for deletion, then their outbox entries. Each run claims
    /// batches of entries under a lease (`FOR UPDATE SKIP LOCKED` on Postgres; SQLite has one
    /// writer), so concurrent runs split the work and their counts add up. A delete that fails
    /// is reported, and its entry waits out a backoff while the entries behind it go on.
    #[instrument(name = "artifacts.purge", skip(self))]
    pub async fn purge(&self) -> Result<PurgeReport> {
        self.cx.who.require_system("purge objects")?;
        let mut report = PurgeReport::default();
        loop {
            let lease = Uuid::now_v7();
            let claimed = self.claim_deletions(lease).await?;
            if claimed.is_empty() {
                return Ok(report);
            }
            let outcomes: Vec<(String, i32, Result<(), String>)> = futures::stream::iter(claimed)
                .map(|(key, attempts)| async move {
                    let deleted = delete_object(self.blobs, &key).await;
                    (key, attempts, deleted)
                })
                .buffer_unordered(PURGE_CONCURRENCY)
                .collect()
                .await;
            let mut done = Vec::new();
            for (key, attempts, outcome) in outcomes {
                match outcome {
                    Ok(()) => done.push(key),
                    Err(error) => {
                        let failure = self.defer_deletion(lease, key, attempts + 1, error).await?;
                        tracing::warn!(key = %failure.object_key, attempts = failure.attempts, error = %failure.error, "could not delete a purged object; retrying later");
                        report.failed.push(failure);
                    }
                }
            }
            report.deleted += self.finish_deletions(lease, &done).await?;
        }
    }

    /// Claims up to [`PURGE_BATCH`] due entries for `lease`: their keys and failed attempts.
    async fn claim_deletions(&self, lease: Uuid) -> Result<Vec<(String, i32)>> {
        let db = self.cx.db();
        let now = now();
        let until = now + chrono::Duration::from_std(PURGE_LEASE).unwrap_or_default();
        let skip_locked = if is_postgres(db) {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let rows = db
            .query_all_raw(statement(
                db,
                &format!(
                    "UPDATE object_deletions SET lease_id = $1, not_before = $2 \
                      WHERE object_key IN (SELECT object_key FROM object_deletions \
                                            WHERE not_before IS NULL OR not_before <= $3 \
                                            ORDER BY requested_at, object_key LIMIT $4{skip_locked}) \
                     RETURNING object_key, attempts"
                ),
                [lease.into(), until.into(), now.into(), PURGE_BATCH.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "object_key")?, r.try_get("", "attempts")?)))
            .collect()
    }

    /// Removes the entries of `keys` this lease still holds; returns how many.
    async fn finish_deletions(&self, lease: Uuid, keys: &[String]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let db = self.cx.db();
        let placeholders = placeholders(2, keys.len());
        let mut values: Vec<Value> = vec![lease.into()];
        values.extend(keys.iter().map(|k| Value::from(k.as_str())));
        let removed = db
            .execute_raw(statement(
                db,
                &format!(
                    "DELETE FROM object_deletions WHERE lease_id = $1 AND object_key IN ({placeholders})"
                ),
                values,
            ))
            .await?;
        Ok(removed.rows_affected())
    }

    /// Releases a failed entry with its error and a backoff.
    async fn defer_deletion(
        &self,
        lease: Uuid,
        object_key: String,
        attempts: i32,
        error: String,
    ) -> Result<PurgeFailure> {
        let db = self.cx.db();
        let exponent = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(16);
        let backoff = RETRY_FIRST.saturating_mul(1 << exponent).min(RETRY_MAX);
        let retry_after = now() + chrono::Duration::from_std(backoff).unwrap_or_default();
        db.execute_raw(statement(
            db,
            "UPDATE object_deletions SET lease_id = NULL, not_before = $1, attempts = $2, last_error = $3 \
              WHERE object_key = $4 AND lease_id = $5",
            [
                retry_after.into(),
                attempts.into(),
                error.as_str().into(),
                object_key.as_str().into(),
                lease.into(),
            ],
        ))
        .await?;
        Ok(PurgeFailure {
            object_key,
            attempts,
            error,
            retry_after,
        })
    }

    /// Removes what failed writes and crashes left behind, all older than the grace period:
    /// pending rows (and their objects), objects no row knows, and multipart uploads never
    /// completed or aborted. Dry-run by default in the CLI; `progress` is called with the
    /// number of objects listed so far.
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
            for pending in &stale {
                self.blobs
                    .delete(&ObjectKey::parse(pending.key.as_str())?)
                    .await?;
                self.cx
                    .db()
                    .execute_raw(statement(
                        self.cx.db(),
                        &format!(
                            "DELETE FROM {} WHERE id = $1 AND state = 'pending'",
                            pending.table
                        ),
                        [pending.id.into()],
                    ))
                    .await?;
            }
        }
        for prefix in OBJECT_PREFIXES {
            self.collect_orphans(prefix, cutoff, options, &mut report, &mut progress)
                .await?;
        }
        for upload in incomplete_uploads(self.blobs, cutoff).await? {
            report.incomplete_uploads += 1;
            if !options.dry_run {
                tracing::info!(key = %upload.key, upload_id = %upload.upload_id, "aborting an incomplete multipart upload");
                self.blobs.abort_upload(&upload).await?;
            }
        }
        Ok(report)
    }

    /// The orphans under one prefix: objects older than `cutoff` that no row knows.
    async fn collect_orphans(
        &self,
        prefix: &str,
        cutoff: SystemTime,
        options: GcOptions,
        report: &mut GcReport,
        progress: &mut impl FnMut(u64),
    ) -> Result<()> {
        let mut page = None;
        loop {
            let listed = self.blobs.list(prefix, page).await?;
            if listed.objects.is_empty() && listed.next.is_none() {
                return Ok(());
            }
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
                None => return Ok(()),
            }
        }
    }

    /// Checks every committed artifact's object (existence and size; with `verify_content`,
    /// also the SHA-256 by reading it) and lists pending rows older than `grace`.
    #[instrument(name = "artifacts.check_integrity", skip(self))]
    pub async fn check_integrity(
        &self,
        grace: Duration,
        verify_content: bool,
    ) -> Result<IntegrityReport> {
        self.cx.who.require_system("check objects' integrity")?;
        let mut report = IntegrityReport::default();
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
            .map(|p| p.key)
            .collect();
        report.incomplete_uploads = incomplete_uploads(self.blobs, grace_cutoff(grace)?)
            .await?
            .into_iter()
            .map(|u| u.key)
            .collect();
        Ok(report)
    }
}

/// Multipart uploads under the store's projects started before `cutoff` and never finished,
/// every page of them.
async fn incomplete_uploads(blobs: &BlobStore, cutoff: SystemTime) -> Result<Vec<PendingUpload>> {
    let mut found = Vec::new();
    for prefix in OBJECT_PREFIXES {
        let mut page = None;
        loop {
            let UploadPage { uploads, next } = blobs.list_uploads(prefix, page).await?;
            found.extend(
                uploads
                    .into_iter()
                    .filter(|u| u.initiated.is_none_or(|t| t < cutoff)),
            );
            match next {
                Some(next) => page = Some(next),
                None => break,
            }
        }
    }
    Ok(found)
}

/// Deletes a queued object, as text for the report when it fails (a key that no longer
/// parses fails the same way, every time, without touching the store).
async fn delete_object(blobs: &BlobStore, key: &str) -> Result<(), String> {
    let key = ObjectKey::parse(key).map_err(|e| e.to_string())?;
    blobs.delete(&key).await.map_err(|e| e.to_string())
}

fn grace_cutoff(grace: Duration) -> Result<SystemTime> {
    SystemTime::now()
        .checked_sub(grace)
        .ok_or_else(|| Error::invalid("grace", "is too long"))
}

/// A pending row of `artifacts` or `event_archives`: an upload that never committed.
struct StalePending {
    table: &'static str,
    id: Uuid,
    key: String,
}

async fn stale_pending(db: &impl ConnectionTrait, grace: Duration) -> Result<Vec<StalePending>> {
    let cutoff = now()
        - chrono::Duration::from_std(grace).map_err(|_| Error::invalid("grace", "is too long"))?;
    let mut found = Vec::new();
    for table in Registry::ALL.map(Registry::table) {
        let rows: Vec<(Uuid, String)> = db
            .query_all_raw(statement(
                db,
                &format!(
                    "SELECT id, object_key FROM {table} WHERE state = 'pending' AND created_at < $1"
                ),
                [cutoff.into()],
            ))
            .await?
            .into_iter()
            .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "object_key")?)))
            .collect::<Result<_, sea_orm::DbErr>>()?;
        found.extend(
            rows.into_iter()
                .map(|(id, key)| StalePending { table, id, key }),
        );
    }
    Ok(found)
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
        let placeholders = placeholders(1, chunk.len());
        let values: Vec<Value> = chunk.iter().map(|k| (*k).into()).collect();
        let rows = db
            .query_all_raw(statement(
                db,
                &format!(
                    "SELECT object_key FROM artifacts WHERE object_key IN ({placeholders}) \
                     UNION SELECT object_key FROM event_archives WHERE object_key IN ({placeholders}) \
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
