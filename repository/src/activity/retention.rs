//! Event retention: old events move from the `events` table to the blob store, one gzipped
//! JSON-lines object per project (or none), UTC day and batch, registered in
//! `event_archives`; and the export that reads archived and live events back as one stream.
//!
//! A batch follows the row/object protocol (`objects/upload.rs`): the archive row is inserted
//! `pending`, the object is put create-only, then one transaction commits the row and deletes
//! exactly the events it holds (the delete must remove as many rows as were archived, or nothing
//! commits). So an event is, at every instant, in the table or in a committed archive, never
//! both and never neither; a crash leaves a pending row or an unknown object for gc.

use std::collections::VecDeque;
use std::io::{BufRead, Write};

use chrono::{DateTime, FixedOffset, NaiveTime, TimeDelta, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Value};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::instrument;
use uuid::Uuid;
use vega_blobstore::{BlobError, BlobStore, ObjectKey};
use vega_entity::{event_archives, events};

use crate::activity::partitions::{self, Attachment, Month};
use crate::context::cx::Cx;
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};
use crate::objects::upload::{self, Pending, Registry};

/// The most events one archive object holds: the batch's rows and its compressed object are
/// held in memory, so this bounds retention's memory whatever the backlog.
pub const MAX_ARCHIVE_EVENTS: u32 = 50_000;

/// Live events an export reads per query.
const EXPORT_PAGE: u64 = 1_000;

/// What one [`EventArchives::archive_batch`] moved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchivedBatch {
    /// The committed archive.
    pub archive_id: Uuid,
    /// Its object key.
    pub object_key: String,
    /// The project whose events it holds (`None`: events of no project).
    pub project_id: Option<Uuid>,
    /// Events archived and deleted from the table.
    pub events: u64,
    /// The object's size.
    pub size_bytes: u64,
}

/// The `event_archives` table and the objects it registers (the system only).
#[derive(Debug, Clone)]
pub struct EventArchives<'a> {
    pub(crate) cx: Cx<'a>,
    pub(crate) blobs: &'a BlobStore,
}

impl<'a> EventArchives<'a> {
    /// Archives one batch: up to `max_events` (at most [`MAX_ARCHIVE_EVENTS`]) of the oldest
    /// events created before `before`, all of one project and UTC day. `None` when no event
    /// is that old. Run it until it returns `None` to archive a backlog; each batch commits
    /// on its own, so stopping between batches loses nothing.
    #[instrument(name = "event_archives.archive_batch", skip(self))]
    pub async fn archive_batch(
        &self,
        before: DateTime<FixedOffset>,
        max_events: u32,
    ) -> Result<Option<ArchivedBatch>> {
        self.cx.who.require_system("archive events")?;
        let max_events = batch_size(max_events)?;
        let before = validate::timestamp("before", before)?;
        let db = self.cx.db();
        let Some(oldest) = events::Model::find_by_statement(statement(
            db,
            "SELECT * FROM events WHERE created_at < $1 ORDER BY created_at, id LIMIT 1",
            [before.into()],
        ))
        .one(db)
        .await?
        else {
            return Ok(None);
        };
        let day = oldest.created_at.with_timezone(&Utc).date_naive();
        let day_start = day.and_time(NaiveTime::MIN).and_utc().fixed_offset();
        let end = (day_start + TimeDelta::days(1)).min(before);
        let (project, mut values) = project_filter(oldest.project_id);
        values.extend([day_start.into(), end.into()]);
        let n = values.len();
        let rows = events::Model::find_by_statement(statement(
            db,
            &format!(
                "SELECT * FROM events WHERE {project} AND created_at >= ${} AND created_at < ${n} \
                     ORDER BY created_at, id LIMIT {max_events}",
                n - 1
            ),
            values,
        ))
        .all(db)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            self.write(oldest.project_id, rows, Release::Delete).await?,
        ))
    }

    /// Archives one batch of a month's table (`month.name`): up to `max_events` of one
    /// project's events past its last committed archive, all of one UTC day. The events stay
    /// in the table until the month is dropped; the export reads them from the archive.
    async fn archive_from(
        &self,
        month: &Month,
        project: Option<Uuid>,
        max_events: u32,
    ) -> Result<Option<ArchivedBatch>> {
        let db = self.cx.db();
        let (filter, mut values) = project_filter(project);
        let after = match watermark(db, project).await? {
            Some((at, id)) => {
                values.extend([at.into(), id.into()]);
                let n = values.len();
                format!(" AND (created_at, id) > (${}, ${n})", n - 1)
            }
            None => String::new(),
        };
        // The next event's UTC day bounds the read: a batch holds one project's day.
        let table = &month.name;
        let Some(next) = events::Model::find_by_statement(statement(
            db,
            &format!("SELECT * FROM {table} WHERE {filter}{after} ORDER BY created_at, id LIMIT 1"),
            values.clone(),
        ))
        .one(db)
        .await?
        else {
            return Ok(None);
        };
        let day = next.created_at.with_timezone(&Utc).date_naive();
        let day_end = (day.and_time(NaiveTime::MIN).and_utc() + TimeDelta::days(1)).fixed_offset();
        values.push(day_end.into());
        let n = values.len();
        let rows = events::Model::find_by_statement(statement(
            db,
            &format!(
                "SELECT * FROM {table} WHERE {filter}{after} AND created_at < ${n} \
                  ORDER BY created_at, id LIMIT {max_events}"
            ),
            values,
        ))
        .all(db)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.write(project, rows, Release::Keep).await?))
    }

    /// Writes `rows` (one project's, of one UTC day, oldest first, not empty) as an archive:
    /// the pending row, the object, then the commit that `release` completes.
    async fn write(
        &self,
        project: Option<Uuid>,
        rows: Vec<events::Model>,
        release: Release,
    ) -> Result<ArchivedBatch> {
        let db = self.cx.db();
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(Error::Internal("an archive of no events".into()));
        };
        let day = first.created_at.with_timezone(&Utc).date_naive();
        let id = Uuid::now_v7();
        let key = ObjectKey::event_archive(
            project,
            (
                chrono::Datelike::year(&day),
                chrono::Datelike::month(&day),
                chrono::Datelike::day(&day),
            ),
            id,
        );
        let count = rows.len() as u64;
        let range = (first.created_at, first.id, last.created_at, last.id);
        // Tens of milliseconds of CPU for a full batch: off the async workers.
        let body = tokio::task::spawn_blocking(move || encode(&rows))
            .await
            .map_err(std::io::Error::other)
            .and_then(|encoded| encoded)
            .map_err(BlobError::Io)?;

        // 1. The row first, so every archive object has a row or is older than one.
        db.execute_raw(statement(
            db,
            "INSERT INTO event_archives (id, project_id, object_key, event_count, first_created_at, \
                                         first_event_id, last_created_at, last_event_id, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)",
            [
                id.into(),
                project.into(),
                key.as_str().into(),
                i64::try_from(count).unwrap_or(i64::MAX).into(),
                range.0.into(),
                range.1.into(),
                range.2.into(),
                range.3.into(),
                now().into(),
            ],
        ))
        .await?;
        // 2. The object, outside any transaction.
        let pending = Pending {
            registry: Registry::EventArchives,
            id,
            key: key.clone(),
            content_type: "application/gzip".into(),
        };
        let uploaded = upload::put(db, self.blobs, &pending, body.as_slice()).await?;
        // 3. Commit the row and release the events it holds, together.
        let committed: Result<()> = async {
            let txn = db.unit().await?;
            upload::commit::<event_archives::Model>(&txn, &uploaded)
                .await?
                .ok_or_else(|| Error::Conflict {
                    constraint: "event_archives_state".into(),
                    message: "the pending archive row was removed during the upload".into(),
                })?;
            let (filter, mut values) = project_filter(project);
            match release {
                Release::Delete => {
                    values.extend([range.0.into(), range.1.into(), range.2.into(), range.3.into()]);
                    let n = values.len();
                    let deleted = txn
                        .execute_raw(statement(
                            &txn,
                            &format!(
                                "DELETE FROM events WHERE {filter} \
                                   AND (created_at, id) >= (${}, ${}) AND (created_at, id) <= (${}, ${n})",
                                n - 3,
                                n - 2,
                                n - 1
                            ),
                            values,
                        ))
                        .await?;
                    if deleted.rows_affected() != count {
                        // An event of the range committed after the batch was read: archive
                        // it next time rather than delete what the object does not hold.
                        return Err(Error::Conflict {
                            constraint: "event_archives_range".into(),
                            message: format!(
                                "the archived range holds {} events now, {count} when it was read; retrying",
                                deleted.rows_affected()
                            ),
                        });
                    }
                }
                Release::Keep => {
                    // Two retirements of one month (a leader that outlived its lease) must not
                    // both archive an event: the project's archives commit one at a time, and
                    // only past the last one.
                    txn.execute_raw(statement(
                        &txn,
                        "SELECT pg_advisory_xact_lock(hashtextextended('event_archives/' || COALESCE($1::text, ''), 0))",
                        [project.into()],
                    ))
                    .await?;
                    values.extend([range.0.into(), range.1.into(), id.into()]);
                    let n = values.len();
                    let overlap = txn
                        .query_one_raw(statement(
                            &txn,
                            &format!(
                                "SELECT 1 FROM event_archives WHERE {filter} AND state = 'committed' \
                                    AND id <> ${n} AND (last_created_at, last_event_id) >= (${}, ${})",
                                n - 2,
                                n - 1
                            ),
                            values,
                        ))
                        .await?;
                    if overlap.is_some() {
                        return Err(Error::Conflict {
                            constraint: "event_archives_range".into(),
                            message: "another retirement archived these events first".into(),
                        });
                    }
                }
            }
            txn.commit().await
        }
        .await;
        if let Err(err) = committed {
            upload::abandon(db, self.blobs, &uploaded).await;
            return Err(err);
        }
        Ok(ArchivedBatch {
            archive_id: id,
            object_key: key.as_str().to_owned(),
            project_id: project,
            events: count,
            size_bytes: uploaded.stored().size,
        })
    }

    /// Retirement of the events of every UTC month that ended by `before` (and an hour ago),
    /// step by step ([`Retirement::next`]): on Postgres whole months, each archived, detached
    /// and dropped (no row is deleted); on SQLite batches of [`EventArchives::archive_batch`]
    /// up to the same instant, so both engines keep the same events. `max_events` bounds each archive
    /// (at most [`MAX_ARCHIVE_EVENTS`]).
    pub fn retirement(
        self,
        before: DateTime<FixedOffset>,
        max_events: u32,
    ) -> Result<Retirement<'a>> {
        self.cx.who.require_system("archive events")?;
        let max_events = batch_size(max_events)?;
        Ok(Retirement {
            before: validate::timestamp("before", before)?,
            archives: self,
            max_events,
            month: None,
        })
    }

    /// Creates the monthly partitions of `events` that cover `[since, until)` and are missing,
    /// returning their names (Postgres; SQLite has one plain table, and nothing to create).
    /// `vega-admin maintain` keeps three months ahead; an append whose month has no partition
    /// fails, so a backfill of old events creates their months first. At most 120 months.
    #[instrument(name = "event_archives.ensure_partitions", skip(self))]
    pub async fn ensure_partitions(
        &self,
        since: DateTime<FixedOffset>,
        until: DateTime<FixedOffset>,
    ) -> Result<Vec<String>> {
        self.cx.who.require_system("create event partitions")?;
        let since = validate::timestamp("since", since)?;
        let until = validate::timestamp("until", until)?;
        if until <= since {
            return Err(Error::invalid("until", "must be after since"));
        }
        if until - since > TimeDelta::days(31 * 120) {
            return Err(Error::invalid("until", "at most 120 months after since"));
        }
        if self.cx.db().get_database_backend() != DbBackend::Postgres {
            return Ok(Vec::new());
        }
        partitions::create(self.cx.db(), since, until).await
    }

    /// Writes a project's events created in `[since, until)` to `out` as JSON lines, oldest
    /// first: the archived ones (each object verified against its row), then the live ones.
    /// Each line is an [`events::Model`] as serde writes it, the same whichever side it came
    /// from. Returns the number of events written. When retention archived some of the
    /// project's events during the export, it ends with [`Error::Conflict`] (run it again)
    /// rather than leave them out.
    #[instrument(name = "event_archives.export", skip(self, out))]
    pub async fn export(
        &self,
        project_id: Uuid,
        since: DateTime<FixedOffset>,
        until: DateTime<FixedOffset>,
        out: &mut (impl AsyncWrite + Unpin + Send),
    ) -> Result<u64> {
        self.cx.who.require_system("export events")?;
        let since = validate::timestamp("since", since)?;
        let until = validate::timestamp("until", until)?;
        if until <= since {
            return Err(Error::invalid("until", "must be after since"));
        }
        let db = self.cx.db();
        // The watermark first: the archives up to it hold every event up to it (a project's
        // archives are a prefix of its events), and any archive that commits later lies
        // past it. Live events start past it: a month being retired still holds events its
        // archives already hold.
        let mark = watermark(db, Some(project_id)).await?;
        let archives = match mark {
            Some((at, id)) => {
                event_archives::Model::find_by_statement(statement(
                    db,
                    "SELECT * FROM event_archives \
                      WHERE project_id = $1 AND state = 'committed' \
                        AND last_created_at >= $2 AND first_created_at < $3 \
                        AND (last_created_at, last_event_id) <= ($4, $5) \
                      ORDER BY first_created_at, first_event_id",
                    [
                        project_id.into(),
                        since.into(),
                        until.into(),
                        at.into(),
                        id.into(),
                    ],
                ))
                .all(db)
                .await?
            }
            None => Vec::new(),
        };
        let in_range = |e: &events::Model| e.created_at >= since && e.created_at < until;
        let mut written = 0;
        let mut line = Vec::new();
        for archive in archives {
            for event in self.read(&archive).await? {
                if in_range(&event) {
                    write_line(out, &mut line, &event).await?;
                    written += 1;
                }
            }
        }
        let mut after = mark;
        loop {
            let mut values: Vec<Value> = vec![project_id.into(), since.into(), until.into()];
            let cursor = match after {
                Some((at, id)) => {
                    values.extend([at.into(), id.into()]);
                    "AND (created_at, id) > ($4, $5)"
                }
                None => "",
            };
            let sql = format!(
                "SELECT * FROM events \
                      WHERE project_id = $1 AND created_at >= $2 AND created_at < $3 {cursor} \
                      ORDER BY created_at, id LIMIT {EXPORT_PAGE}"
            );
            let page = if db.get_database_backend() == DbBackend::Postgres {
                // The generic plan of a prepared statement guesses a handful of rows for a
                // parameterised time range and sorts the partitions' rows (an empty month
                // ahead is read by a seq scan, unsorted); a custom plan reads one page of
                // each month's index in order.
                let txn = db.unit().await?;
                txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
                    .await?;
                let page = events::Model::find_by_statement(statement(&txn, &sql, values))
                    .all(&txn)
                    .await?;
                txn.commit().await?;
                page
            } else {
                events::Model::find_by_statement(statement(db, &sql, values))
                    .all(db)
                    .await?
            };
            let Some(last) = page.last() else { break };
            after = Some((last.created_at, last.id));
            let full = page.len() as u64 == EXPORT_PAGE;
            for event in &page {
                write_line(out, &mut line, event).await?;
                written += 1;
            }
            if !full {
                break;
            }
        }
        // An archive that committed meanwhile may hold events that neither part read (on
        // SQLite it deleted them): the export says so rather than end short.
        if watermark(db, Some(project_id)).await? != mark {
            return Err(Error::Conflict {
                constraint: "event_archives_range".into(),
                message: "retention archived events of this project during the export; run \
                          the export again"
                    .into(),
            });
        }
        out.flush().await.map_err(export_io)?;
        Ok(written)
    }

    /// An archive's events, its object verified against the row (one archive is at most
    /// [`MAX_ARCHIVE_EVENTS`] events, so it is read whole).
    async fn read(&self, archive: &event_archives::Model) -> Result<Vec<events::Model>> {
        let key = ObjectKey::parse(archive.object_key.as_str())?;
        let sha256 = archive
            .sha256
            .as_deref()
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .unwrap_or_default();
        let size = archive.size_bytes.and_then(|s| u64::try_from(s).ok());
        let mut gz = Vec::new();
        self.blobs
            .get(&key, sha256, size)
            .await?
            .read_to_end(&mut gz)
            .await
            .map_err(|e| corrupt(&archive.object_key, e))?;
        let mut events = Vec::new();
        for line in std::io::BufReader::new(flate2::read::GzDecoder::new(gz.as_slice())).lines() {
            let line = line.map_err(|e| corrupt(&archive.object_key, e))?;
            events.push(serde_json::from_str(&line).map_err(|e| corrupt(&archive.object_key, e))?);
        }
        Ok(events)
    }
}

/// One step of a [`Retirement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retired {
    /// An archive committed: on SQLite its events were deleted; on Postgres they stay until
    /// their month is dropped, and the export already reads them from the archive.
    Archived(ArchivedBatch),
    /// A month's partition was detached and dropped, every event of it archived (Postgres).
    Dropped {
        /// The partition (`events_YYYY_MM`).
        partition: String,
        /// Its first instant (UTC).
        start: DateTime<FixedOffset>,
        /// The first instant after it.
        end: DateTime<FixedOffset>,
    },
}

/// Retention in steps, from [`EventArchives::retirement`]: call [`Retirement::next`] until it
/// returns `None`. Each step commits on its own, so stopping between steps loses nothing, and
/// a crash at any point leaves what the next retirement finishes (a month half archived, a
/// detach interrupted, a detached month not yet dropped) or gc removes (a pending archive).
#[derive(Debug)]
pub struct Retirement<'a> {
    archives: EventArchives<'a>,
    before: DateTime<FixedOffset>,
    max_events: u32,
    /// The month in hand and the projects whose events in it may still need archiving.
    month: Option<(Month, VecDeque<Option<Uuid>>)>,
}

impl Retirement<'_> {
    /// The next step, or `None` when no month that ended by the cutoff is left to retire. On
    /// Postgres a month is retired when it ended by the cutoff (and an hour ago): its
    /// events are archived per project and day, then it is detached `CONCURRENTLY`, any event
    /// that reached it meanwhile is archived too, and it is dropped. The decision reads the
    /// partitions' bounds and the clock, never a row.
    #[instrument(name = "event_archives.retire", skip(self), fields(before = %self.before))]
    pub async fn next(&mut self) -> Result<Option<Retired>> {
        let archives = &self.archives;
        let db = archives.cx.db();
        let until = partitions::retirable_until(self.before);
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(archives
                .archive_batch(until, self.max_events)
                .await?
                .map(Retired::Archived));
        }
        loop {
            let Some((month, projects)) = &mut self.month else {
                let Some(month) = partitions::months(db)
                    .await?
                    .into_iter()
                    .find(|m| m.end <= until)
                else {
                    return Ok(None);
                };
                let projects = partitions::projects(db, &month).await?;
                self.month = Some((month, projects));
                continue;
            };
            if let Some(project) = projects.front().copied() {
                match archives
                    .archive_from(month, project, self.max_events)
                    .await?
                {
                    Some(batch) => return Ok(Some(Retired::Archived(batch))),
                    None => {
                        projects.pop_front();
                        continue;
                    }
                }
            }
            if month.attachment == Attachment::Detached {
                partitions::drop(db, month).await?;
                let month = month.clone();
                self.month = None;
                return Ok(Some(Retired::Dropped {
                    partition: month.name,
                    start: month.start,
                    end: month.end,
                }));
            }
            partitions::detach(db, month).await?;
            month.attachment = Attachment::Detached;
            // An append that reached the month before it was detached is archived first.
            *projects = partitions::projects(db, month).await?;
        }
    }
}

/// `max_events` checked: 1 to [`MAX_ARCHIVE_EVENTS`].
fn batch_size(max_events: u32) -> Result<u32> {
    if max_events == 0 || max_events > MAX_ARCHIVE_EVENTS {
        return Err(Error::invalid(
            "max_events",
            format!("must be 1 to {MAX_ARCHIVE_EVENTS}"),
        ));
    }
    Ok(max_events)
}

/// What committing an archive does to the events it holds.
#[derive(Debug, Clone, Copy)]
enum Release {
    /// Deletes them from `events`, exactly as many as were archived (a plain table).
    Delete,
    /// Keeps them until their month's partition is dropped, archived past the project's
    /// last archive only (a month being retired).
    Keep,
}

/// The position `(created_at, id)` of a project's newest archived event. A project's
/// archives hold a prefix of its events in that order (both ways of archiving go oldest
/// first), so its events past this position are the live ones.
async fn watermark(
    db: &impl ConnectionTrait,
    project: Option<Uuid>,
) -> Result<Option<(DateTime<FixedOffset>, i64)>> {
    #[derive(FromQueryResult)]
    struct Last {
        last_created_at: DateTime<FixedOffset>,
        last_event_id: i64,
    }
    let (filter, values) = project_filter(project);
    Ok(Last::find_by_statement(statement(
        db,
        &format!(
            "SELECT last_created_at, last_event_id FROM event_archives \
              WHERE {filter} AND state = 'committed' \
              ORDER BY last_created_at DESC, last_event_id DESC LIMIT 1"
        ),
        values,
    ))
    .one(db)
    .await?
    .map(|l| (l.last_created_at, l.last_event_id)))
}

/// `project_id = $1`, or `project_id IS NULL` for events of no project.
fn project_filter(project_id: Option<Uuid>) -> (&'static str, Vec<Value>) {
    match project_id {
        Some(id) => ("project_id = $1", vec![id.into()]),
        None => ("project_id IS NULL", Vec::new()),
    }
}

/// The batch as gzipped JSON lines.
fn encode(rows: &[events::Model]) -> std::io::Result<Vec<u8>> {
    // serde_json writes in fragments of a few bytes; the encoder wants them gathered.
    let mut out = std::io::BufWriter::with_capacity(
        64 * 1024,
        GzEncoder::new(Vec::new(), Compression::fast()),
    );
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.finish()
}

async fn write_line(
    out: &mut (impl AsyncWrite + Unpin + Send),
    buf: &mut Vec<u8>,
    event: &events::Model,
) -> Result<()> {
    buf.clear();
    serde_json::to_writer(&mut *buf, event).map_err(|e| export_io(e.into()))?;
    buf.push(b'\n');
    out.write_all(buf).await.map_err(export_io)
}

fn export_io(err: std::io::Error) -> Error {
    io_error(format!("writing the export failed: {err}"))
}

/// An archive that verified against its row but does not decode (or a read that failed).
fn corrupt(key: &str, err: impl std::fmt::Display) -> Error {
    io_error(format!("the event archive {key} cannot be read: {err}"))
}

fn io_error(message: String) -> Error {
    Error::Blob(BlobError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        message,
    )))
}
