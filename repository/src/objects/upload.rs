//! The row/object protocol, once for every table that registers objects:
//!
//! 1. the row `pending` (each table's own insert, since their columns differ), so every
//!    object that exists has a row or is older than one;
//! 2. the object, create-only and hashed as it streams ([`put`]), outside any transaction and
//!    without touching the database, so it can run beside a transaction that holds a
//!    connection; a failed put gives up at once ([`give_up`]);
//! 3. in the caller's transaction, the row `committed` with the object's size and SHA-256
//!    ([`commit`]), beside whatever else must commit with it; or [`abandon`].
//!
//! A crash between any two steps leaves a pending row or an object no row knows: `gc` removes
//! both after its grace period (`maintenance.rs`).

use sea_orm::{ConnectionTrait, FromQueryResult};
use tokio::io::AsyncRead;
use uuid::Uuid;
use vega_blobstore::{BlobError, BlobStore, ObjectKey, Stored};

use crate::db::route::Conn;
use crate::db::sql::{now, statement};
use crate::error::{Error, Result};

/// A table that registers objects. Both have `id`, `object_key`, `state`
/// (`pending`/`committed`), `size_bytes`, `sha256`, `committed_at` and `created_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registry {
    /// `artifacts`: source archives, scan reports, event logs, debug bundles.
    Artifacts,
    /// `event_archives`: retention's batches of old events.
    EventArchives,
}

impl Registry {
    /// Every registry, for the sweeps that look at all of them.
    pub(crate) const ALL: [Registry; 2] = [Registry::Artifacts, Registry::EventArchives];

    pub(crate) fn table(self) -> &'static str {
        match self {
            Registry::Artifacts => "artifacts",
            Registry::EventArchives => "event_archives",
        }
    }
}

/// A pending row whose object is still to be put.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) registry: Registry,
    pub(crate) id: Uuid,
    pub(crate) key: ObjectKey,
    pub(crate) content_type: String,
}

/// An object put under a pending row, waiting for [`commit`] or [`abandon`].
#[derive(Debug)]
pub(crate) struct Uploaded {
    pub(crate) pending: Pending,
    pub(crate) stored: Stored,
}

impl Uploaded {
    /// The object's key.
    pub(crate) fn key(&self) -> &ObjectKey {
        &self.pending.key
    }

    /// The size and SHA-256 the object has (or, declared by a client's own upload, must have).
    pub(crate) fn stored(&self) -> Stored {
        self.stored
    }
}

/// Step 2: the object. On failure the pending row (and the object, where it is ours) is
/// given up before the error returns.
pub(crate) async fn put(
    db: &Conn<'_>,
    blobs: &BlobStore,
    pending: &Pending,
    source: impl AsyncRead + Unpin + Send,
) -> Result<Uploaded> {
    match blobs
        .put_reader(&pending.key, source, &pending.content_type)
        .await
    {
        Ok(stored) => Ok(Uploaded {
            pending: pending.clone(),
            stored,
        }),
        Err(err) => {
            let err = Error::from(err);
            give_up(db, blobs, pending, &err).await;
            Err(err)
        }
    }
}

/// Step 3, in the caller's transaction: the row `committed` with the object's size and
/// SHA-256, returned. `None` when the pending row is gone (its owner was deleted during the
/// upload, or gc took it): the caller decides what that means.
pub(crate) async fn commit<M: FromQueryResult>(
    txn: &impl ConnectionTrait,
    uploaded: &Uploaded,
) -> Result<Option<M>> {
    let sql = format!(
        "UPDATE {} SET state = 'committed', size_bytes = $1, sha256 = $2, committed_at = $3 \
          WHERE id = $4 AND state = 'pending' RETURNING *",
        uploaded.pending.registry.table()
    );
    Ok(M::find_by_statement(statement(
        txn,
        &sql,
        [
            i64::try_from(uploaded.stored.size)
                .unwrap_or(i64::MAX)
                .into(),
            uploaded.stored.sha256.to_vec().into(),
            now().into(),
            uploaded.pending.id.into(),
        ],
    ))
    .one(txn)
    .await?)
}

/// Tidies up after a failed step 2: the pending row now, and the object unless it is not
/// ours (it already existed) or the endpoint just timed out (asking again would make the
/// caller wait out a second bound). Best effort: gc finds whatever is left.
pub(crate) async fn give_up(db: &Conn<'_>, blobs: &BlobStore, pending: &Pending, err: &Error) {
    let ours = !matches!(
        err,
        Error::Blob(BlobError::AlreadyExists { .. } | BlobError::Timeout { .. })
    );
    remove(db, blobs, pending, ours).await;
}

/// Gives up an upload that will not be committed: its object and pending row go now (best
/// effort; gc removes whatever a failure here leaves).
pub(crate) async fn abandon(db: &Conn<'_>, blobs: &BlobStore, uploaded: &Uploaded) {
    remove(db, blobs, &uploaded.pending, true).await;
}

async fn remove(db: &Conn<'_>, blobs: &BlobStore, pending: &Pending, object: bool) {
    if object {
        let _ = blobs.delete(&pending.key).await;
    }
    let sql = format!(
        "DELETE FROM {} WHERE id = $1 AND state = 'pending'",
        pending.registry.table()
    );
    let _ = db
        .execute_raw(statement(db, &sql, [pending.id.into()]))
        .await;
}
