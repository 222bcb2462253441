//! Event retention: `archive_batch` draining a backlog of old events (select, gzip JSON lines,
//! object write, commit and delete) beside raw sqlx reading and deleting a twin backlog in the
//! same batches (the statements' ceiling: no decoding, encoding, object or registration), and
//! a project's `events().page` while the archiver runs beside the same page on an idle server.
//!
//! Then a month of events retired whole (archived, its partition detached and dropped) beside
//! a twin month archived and deleted by `archive_batch`, as retention did before partitions:
//! the time, the WAL written, and how long event appends made beside each had to wait (the
//! locks retention holds on `events` show there).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{Datelike, TimeDelta, Utc};
use sea_orm::sqlx::{self, Row as _};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use vega_repository::{EventFeed, NewEvent, Retired, Store};

use crate::{Result, Row, Volume, bench_project, peak_rss, settle, summary, wal_position};

/// Events per archive: `vega-admin maintain`'s default `--retention-batch`.
const BATCH: u32 = 20_000;

pub(crate) async fn run(
    store: &Store,
    db: &DatabaseConnection,
    url: &str,
    events: u64,
    iterations: usize,
    rows: &mut Vec<Row>,
    volumes: &mut Vec<Volume>,
) -> Result<()> {
    // The backlogs are in the past: their months' partitions first, from the month `month`
    // retires whole.
    store
        .event_archives()
        .ensure_partitions(month_end(6), Utc::now().fixed_offset())
        .await?;
    let archived = bench_project(store, "retention-archived").await?;
    let raw_project = bench_project(store, "retention-raw").await?;
    let reader = bench_project(store, "retention-reader").await?;
    // The archived backlog is 60 to 50 days old, its raw twin 40 to 30: the archiver's cutoff
    // (45 days) reaches the first only.
    let spread = 10 * 86_400 / events.max(1);
    for (project, from_days) in [(archived, 60), (raw_project, 40)] {
        db.execute_unprepared(&format!(
            "INSERT INTO events (created_at, project_id, actor_type, actor_label, action, \
                                 subject_type, subject_id, request_id, data) \
             SELECT now() - interval '{from_days} days' + g * interval '{spread} seconds', \
                    '{project}', 'system', 'bench', 'scan.completed', 'scan', gen_random_uuid(), \
                    'req-' || g, jsonb_build_object('n', g, 'status', 'completed', 'findings', g % 97) \
             FROM generate_series(1, {events}) g"
        ))
        .await?;
    }
    for n in 0..1_000 {
        store
            .events()
            .append(NewEvent {
                action: "scan.completed".into(),
                project_id: Some(reader),
                subject: None,
                request_id: Some(format!("req-{n}")),
                ip_address: None,
                data: serde_json::json!({ "n": n }),
            })
            .await?;
    }
    db.execute_unprepared("ANALYZE events").await?;
    // The seeding's writes flushed, so they do not land on the idle readings.
    settle(db).await?;
    let cutoff = (Utc::now() - TimeDelta::days(45)).fixed_offset();

    // Idle and busy, the reader pages the same way: a call, a short pause, the next call.
    let idle = read_pages(
        store.clone(),
        reader,
        Arc::new(AtomicBool::new(false)),
        iterations,
    )
    .await?;

    // The archiver drains its backlog while the reader pages the other project.
    peak_rss::reset();
    let rss_before = peak_rss::current_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = tokio::spawn(read_pages(store.clone(), reader, stop.clone(), usize::MAX));
    let started = Instant::now();
    let mut moved = 0;
    while let Some(batch) = store.event_archives().archive_batch(cutoff, BATCH).await? {
        moved += batch.events;
    }
    let archive_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let busy = reading.await??;
    if moved != events {
        return Err(format!("archived {moved} events of {events}").into());
    }
    if let (Some(before), Some(peak)) = (rss_before, peak_rss::peak_kib()) {
        println!(
            "peak RSS while archiving {events} events in batches of {BATCH}: {} MiB ({} MiB before)",
            peak / 1024,
            before / 1024
        );
    }

    // The twin starts as the archiver did, without the dead index entries of a drained
    // backlog ahead of its rows (the shared server's autovacuum is off).
    db.execute_unprepared("VACUUM events").await?;
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let started = Instant::now();
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(
            "SELECT * FROM events WHERE project_id = $1 AND created_at < now() - interval '25 days' \
              ORDER BY created_at, id LIMIT $2",
        )
        .bind(raw_project)
        .bind(i64::from(BATCH))
        .fetch_all(&raw)
        .await?;
        let Some(last) = batch.last() else { break };
        let (at, id): (chrono::DateTime<Utc>, i64) =
            (last.try_get("created_at")?, last.try_get("id")?);
        let mut tx = raw.begin().await?;
        let gone = sqlx::query(
            "DELETE FROM events WHERE project_id = $1 AND (created_at, id) <= ($2, $3)",
        )
        .bind(raw_project)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        deleted += gone.rows_affected();
    }
    let raw_time = started.elapsed();
    if deleted != events {
        return Err(format!("the raw twin deleted {deleted} events of {events}").into());
    }

    let n = usize::try_from(events)?;
    let base = summary(
        "retention: raw SELECT then DELETE of 20,000 rows",
        n,
        &[raw_time],
        None,
    );
    rows.push(summary(
        "retention: archive_batch, 20,000 per gzipped object",
        n,
        &[archive_time],
        Some(&base),
    ));
    rows.push(base);
    let base = summary(
        "retention: events().page of a project, idle",
        50,
        &idle,
        None,
    );
    rows.push(summary(
        "retention: events().page of a project, while archiving",
        50,
        &busy,
        Some(&base),
    ));
    rows.push(base);
    month(store, db, events, rows, volumes).await
}

/// The end of the UTC month `months_ago` months before this one.
fn month_end(months_ago: u32) -> chrono::DateTime<chrono::FixedOffset> {
    Utc::now()
        .date_naive()
        .with_day(1)
        .and_then(|d| d.checked_sub_months(chrono::Months::new(months_ago - 1)))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
        .and_utc()
        .fixed_offset()
}

/// Projects a month's events are spread over.
const MONTH_PROJECTS: u64 = 10;

/// A month of `events` retired whole, beside a twin month archived and deleted by batches.
async fn month(
    store: &Store,
    db: &DatabaseConnection,
    events: u64,
    rows: &mut Vec<Row>,
    volumes: &mut Vec<Volume>,
) -> Result<()> {
    let appender = bench_project(store, "retention-appender").await?;
    let mut projects = Vec::new();
    for n in 0..MONTH_PROJECTS {
        projects.push(bench_project(store, &format!("retention-month-{n}")).await?);
    }
    let list = projects
        .iter()
        .map(|p| format!("'{p}'::uuid"))
        .collect::<Vec<_>>()
        .join(", ");
    // Five months ago goes whole, four months ago by batches: the older first, so each
    // method's cutoff reaches its own month only.
    for months_ago in [5, 4] {
        db.execute_unprepared(&format!(
            "INSERT INTO events (created_at, project_id, actor_type, actor_label, action, \
                                 subject_type, subject_id, request_id, data) \
             SELECT date_trunc('month', now() - interval '{months_ago} months') \
                      + (g::float8 / {events}) * interval '28 days', \
                    (ARRAY[{list}])[1 + g % {MONTH_PROJECTS}], 'system', 'bench', \
                    'scan.completed', 'scan', gen_random_uuid(), 'req-' || g, \
                    jsonb_build_object('n', g, 'status', 'completed', 'findings', g % 97) \
             FROM generate_series(1, {events}) g"
        ))
        .await?;
    }
    db.execute_unprepared("ANALYZE events").await?;

    settle(db).await?;
    let (stop, appending) = append_beside(store, appender);
    let wal = wal_position(db).await?;
    let started = Instant::now();
    let mut retirement = store.event_archives().retirement(month_end(5), BATCH)?;
    let (mut moved, mut dropped) = (0, 0);
    while let Some(step) = retirement.next().await? {
        match step {
            Retired::Archived(batch) => moved += batch.events,
            Retired::Dropped { .. } => dropped += 1,
        }
    }
    let whole = started.elapsed();
    let whole_wal = wal_position(db).await? - wal;
    stop.store(true, Ordering::Relaxed);
    let whole_appends = appending.await??;
    if moved != events || dropped != 1 {
        return Err(format!("retired {moved} events of {events} and {dropped} months").into());
    }

    settle(db).await?;
    let (stop, appending) = append_beside(store, appender);
    let wal = wal_position(db).await?;
    let started = Instant::now();
    let mut moved = 0;
    while let Some(batch) = store
        .event_archives()
        .archive_batch(month_end(4), BATCH)
        .await?
    {
        moved += batch.events;
    }
    let batched = started.elapsed();
    let batched_wal = wal_position(db).await? - wal;
    stop.store(true, Ordering::Relaxed);
    let batched_appends = appending.await??;
    if moved != events {
        return Err(format!("archive_batch moved {moved} events of {events}").into());
    }

    let n = usize::try_from(events)?;
    let base = summary(
        "retention of a month: archive_batch (archive, DELETE)",
        n,
        &[batched],
        None,
    );
    rows.push(summary(
        "retention of a month: retirement (archive, detach, drop)",
        n,
        &[whole],
        Some(&base),
    ));
    rows.push(base);
    for (what, appends) in [
        ("archive_batch", &batched_appends),
        ("retirement", &whole_appends),
    ] {
        let mut sorted = appends.clone();
        sorted.sort();
        let at = |q: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "event appends beside {what}: {} calls, p50 {:?}, p99 {:?}, max {:?}",
            sorted.len(),
            at(0.5),
            at(0.99),
            sorted.last().copied().unwrap_or_default()
        );
    }
    let base = summary(
        "event append, beside archive_batch of a month",
        1,
        &batched_appends,
        None,
    );
    rows.push(summary(
        "event append, beside retirement of a month",
        1,
        &whole_appends,
        Some(&base),
    ));
    rows.push(base);
    let base = Volume::new("WAL of a month's archive_batch", batched_wal, None);
    volumes.push(Volume::new(
        "WAL of a month's retirement",
        whole_wal,
        Some(&base),
    ));
    volumes.push(base);
    Ok(())
}

/// Appends events to `project` one after another until the flag is set; each call's time.
fn append_beside(
    store: &Store,
    project: uuid::Uuid,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Result<Vec<Duration>>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let store = store.clone();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut times = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let started = Instant::now();
            store
                .events()
                .append(NewEvent {
                    action: "scan.completed".into(),
                    project_id: Some(project),
                    subject: None,
                    request_id: None,
                    ip_address: None,
                    data: serde_json::json!({ "n": times.len() }),
                })
                .await?;
            times.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(times)
    });
    (stop, task)
}

/// `events().page` of `project`, `calls` times or until `stop`, with the time of each.
async fn read_pages(
    store: Store,
    project: uuid::Uuid,
    stop: Arc<AtomicBool>,
    calls: usize,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    while times.len() < calls && !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        store
            .events()
            .page(EventFeed::Project(project), None, 50)
            .await?;
        times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(times)
}
