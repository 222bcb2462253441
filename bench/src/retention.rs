//! Event retention: `archive_batch` draining a backlog of old events (select, gzip JSON lines,
//! object write, commit and delete) beside raw sqlx reading and deleting a twin backlog in the
//! same batches (the statements' ceiling: no decoding, encoding, object or registration), and
//! a project's `events().page` while the archiver runs beside the same page on an idle server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use sea_orm::sqlx::{self, Row as _};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use vega_repository::{EventFeed, NewEvent, Store};

use crate::{Result, Row, bench_project, peak_rss, settle, summary};

/// Events per archive: `vega-admin maintain`'s default `--retention-batch`.
const BATCH: u32 = 20_000;

pub(crate) async fn run(
    store: &Store,
    db: &DatabaseConnection,
    url: &str,
    events: u64,
    iterations: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
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
    Ok(())
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
