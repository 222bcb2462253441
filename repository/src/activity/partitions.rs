//! The monthly partitions of `events` on Postgres (migration `m20261206_000016_events_by_month`):
//! creating months ahead, and the catalogue retention reads to retire a whole month. Names are
//! `events_YYYY_MM` and bounds are UTC months, so a partition's name says its range; nothing
//! here reads a row's time to decide what to drop.

use std::collections::VecDeque;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult};
use uuid::Uuid;

use crate::db::route::Conn;
use crate::db::sql::statement;
use crate::error::Result;

/// Where a month's table stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attachment {
    /// A partition of `events`.
    Attached,
    /// `DETACH … CONCURRENTLY` began and did not finish (it was interrupted).
    DetachPending,
    /// Detached: only retention detaches, so it is a month on its way to being dropped.
    Detached,
}

/// One month's table.
#[derive(Debug, Clone)]
pub(crate) struct Month {
    pub(crate) name: String,
    pub(crate) start: DateTime<FixedOffset>,
    pub(crate) end: DateTime<FixedOffset>,
    pub(crate) attachment: Attachment,
}

#[derive(FromQueryResult)]
struct Listed {
    name: String,
    attached: bool,
    pending: bool,
}

/// Creates the months covering `[since, until)` that do not exist yet; their names.
pub(crate) async fn create(
    db: &impl ConnectionTrait,
    since: DateTime<FixedOffset>,
    until: DateTime<FixedOffset>,
) -> Result<Vec<String>> {
    #[derive(FromQueryResult)]
    struct Created {
        name: String,
    }
    Ok(Created::find_by_statement(statement(
        db,
        "SELECT create_event_partitions($1, $2) AS name",
        [since.into(), until.into()],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(|c| c.name)
    .collect())
}

/// Every month's table, attached or left detached by an interrupted retirement, oldest first.
pub(crate) async fn months(db: &impl ConnectionTrait) -> Result<Vec<Month>> {
    let listed = Listed::find_by_statement(statement(
        db,
        "SELECT c.relname::text AS name, i.inhrelid IS NOT NULL AS attached, \
                COALESCE(i.inhdetachpending, false) AS pending \
           FROM pg_class c \
           LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'events'::regclass \
          WHERE c.relkind = 'r' AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$' \
            AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass) \
          ORDER BY c.relname",
        [],
    ))
    .all(db)
    .await?;
    Ok(listed
        .into_iter()
        .filter_map(|l| {
            let (start, end) = bounds(&l.name)?;
            let attachment = match (l.attached, l.pending) {
                (true, true) => Attachment::DetachPending,
                (true, false) => Attachment::Attached,
                (false, _) => Attachment::Detached,
            };
            Some(Month {
                name: l.name,
                start,
                end,
                attachment,
            })
        })
        .collect())
}

/// The UTC month `events_YYYY_MM` covers.
fn bounds(name: &str) -> Option<(DateTime<FixedOffset>, DateTime<FixedOffset>)> {
    let (year, month) = name.strip_prefix("events_")?.split_once('_')?;
    let first = NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1)?;
    let next = first.checked_add_months(chrono::Months::new(1))?;
    let at = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().fixed_offset());
    Some((at(first)?, at(next)?))
}

/// The projects with events in the month's table (`None`: events of no project), read by a
/// skip scan of its `(project_id, …)` index: one probe per project, not per event.
pub(crate) async fn projects(
    db: &impl ConnectionTrait,
    month: &Month,
) -> Result<VecDeque<Option<Uuid>>> {
    #[derive(FromQueryResult)]
    struct Project {
        project_id: Option<Uuid>,
    }
    let table = &month.name;
    let rows = Project::find_by_statement(statement(
        db,
        &format!(
            "WITH RECURSIVE p(project_id) AS ( \
               (SELECT project_id FROM {table} WHERE project_id IS NOT NULL \
                 ORDER BY project_id LIMIT 1) \
               UNION ALL \
               SELECT (SELECT e.project_id FROM {table} e WHERE e.project_id > p.project_id \
                        ORDER BY e.project_id LIMIT 1) \
                 FROM p WHERE p.project_id IS NOT NULL) \
             SELECT project_id FROM p WHERE project_id IS NOT NULL \
             UNION ALL \
             SELECT NULL::uuid WHERE EXISTS (SELECT 1 FROM {table} WHERE project_id IS NULL)"
        ),
        [],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|p| p.project_id).collect())
}

/// Detaches the month without blocking appends or reads of `events` (`CONCURRENTLY`: a
/// SHARE UPDATE EXCLUSIVE lock, then a wait for the transactions that could see it), or
/// finishes a detach that was interrupted.
pub(crate) async fn detach(conn: &Conn<'_>, month: &Month) -> Result<()> {
    let how = match month.attachment {
        Attachment::DetachPending => "FINALIZE",
        _ => "CONCURRENTLY",
    };
    conn.outside_transaction(&format!(
        "ALTER TABLE events DETACH PARTITION {} {how}",
        month.name
    ))
    .await
}

/// Drops a detached month's table.
pub(crate) async fn drop(db: &impl ConnectionTrait, month: &Month) -> Result<()> {
    db.execute_unprepared(&format!("DROP TABLE IF EXISTS {}", month.name))
        .await?;
    Ok(())
}

/// The latest end a month may have to be retired at `before`: the last UTC month start at or
/// before it, and an hour ago at the latest, longer than any transaction that read the clock
/// inside the month can still run (statement and idle-in-transaction timeouts are seconds),
/// so no append can land in it. Both engines retire exactly the events before this instant.
pub(crate) fn retirable_until(before: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    let until = before.min((Utc::now() - chrono::TimeDelta::hours(1)).fixed_offset());
    let day = until.with_timezone(&Utc).date_naive();
    NaiveDate::from_ymd_opt(day.year(), day.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(until, |t| t.and_utc().fixed_offset())
}
