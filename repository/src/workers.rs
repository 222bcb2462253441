use std::time::Duration;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use tracing::instrument;
use vega_entity::worker_heartbeats;

use crate::db::Db;
use crate::store::{now, statement};
use crate::{Error, Result, validate};

/// Input for [`Workers::heartbeat`].
#[derive(Debug, Clone)]
pub struct WorkerBeat {
    /// Stable for the worker process's life, e.g. `{hostname}/{pid}/{boot uuid}`.
    pub worker_id: String,
    /// Host name.
    pub hostname: Option<String>,
    /// Build or scanner-bundle version.
    pub version: Option<String>,
    /// How many scans it runs at once.
    pub capacity: i32,
}

/// The `worker_heartbeats` table: which workers are alive. Scan ownership is decided by scan
/// leases, not by this table; it is for operators and capacity planning.
#[derive(Debug, Clone, Copy)]
pub struct Workers<'a> {
    pub(crate) db: &'a Db,
}

impl Workers<'_> {
    /// Records that the worker is alive (insert on first beat, update afterwards).
    #[instrument(name = "workers.heartbeat", skip_all, fields(worker_id = %beat.worker_id))]
    pub async fn heartbeat(&self, beat: WorkerBeat) -> Result<worker_heartbeats::Model> {
        let worker_id = validate::text("worker_id", &beat.worker_id, 1, 200)?;
        if beat.capacity < 0 {
            return Err(Error::invalid("capacity", "must not be negative"));
        }
        let now = now();
        worker_heartbeats::Entity::find()
            .from_raw_sql(statement(
                self.db,
                "INSERT INTO worker_heartbeats (worker_id, hostname, version, capacity, started_at, last_seen_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (worker_id) DO UPDATE SET hostname = excluded.hostname, \
                        version = excluded.version, capacity = excluded.capacity, \
                        last_seen_at = excluded.last_seen_at \
                 RETURNING *",
                [
                    worker_id.into(),
                    validate::optional_text("hostname", beat.hostname.as_deref(), 255)?.into(),
                    validate::optional_text("version", beat.version.as_deref(), 128)?.into(),
                    beat.capacity.into(),
                    now.into(),
                ],
            ))
            .one(self.db)
            .await?
            .ok_or_else(|| Error::Database(sea_orm::DbErr::RecordNotInserted))
    }

    /// Workers seen within `window`, most recent first.
    #[instrument(name = "workers.live", skip(self))]
    pub async fn live(&self, window: Duration) -> Result<Vec<worker_heartbeats::Model>> {
        let since = now() - window_duration(window)?;
        Ok(worker_heartbeats::Entity::find()
            .filter(worker_heartbeats::Column::LastSeenAt.gte(since))
            .order_by_desc(worker_heartbeats::Column::LastSeenAt)
            .all(self.db)
            .await?)
    }

    /// Deletes workers not seen for `older_than`; returns how many.
    #[instrument(name = "workers.prune", skip(self))]
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        let before = now() - window_duration(older_than)?;
        let result = self
            .db
            .execute_raw(statement(
                self.db,
                "DELETE FROM worker_heartbeats WHERE last_seen_at < $1",
                [before.into()],
            ))
            .await?;
        Ok(result.rows_affected())
    }
}

fn window_duration(d: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(d).map_err(|_| Error::invalid("window", "is too long"))
}
