//! History that stays small: one repository's findings ingested, then rescanned `rescans`
//! times with 1% of them moved each time. Timed: each rescan beside the first ingest. Sized:
//! the sighting runs all those scans left, beside what one occurrence row per finding per
//! scan (the design before runs) takes: a scratch table of that shape, with its primary key
//! and index, holding one scan's rows, times the number of scans.

use std::time::Instant;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use uuid::Uuid;
use vega_repository::{NewFinding, Store};

use crate::{
    Result, Row, Volume, bench_project, claim_main, git_repository, one_percent_moved, settle,
    summary, synthetic_findings,
};

pub(crate) async fn run(
    store: &Store,
    db: &DatabaseConnection,
    findings: usize,
    rescans: usize,
    rows: &mut Vec<Row>,
    volumes: &mut Vec<Volume>,
) -> Result<()> {
    let project = bench_project(store, "history").await?;
    let repo = git_repository(store, project, "history", Some("main")).await?;
    let batch = synthetic_findings(findings);
    let runs_before = size(db, "sighting_runs").await?;
    settle(db).await?;
    let started = Instant::now();
    let first = complete(store, repo.id, batch.clone()).await?;
    let first_ingest = summary(
        "history: first ingest",
        findings,
        &[started.elapsed()],
        None,
    );
    let mut times = Vec::with_capacity(rescans);
    let mut last = first;
    for i in 0..rescans {
        // The same 1% moves back and forth: each rescan closes and opens that many runs.
        let shift = if i % 2 == 0 { 1000 } else { 0 };
        let scan = one_percent_moved(&batch, shift);
        let started = Instant::now();
        last = complete(store, repo.id, scan).await?;
        times.push(started.elapsed());
    }
    rows.push(summary(
        &format!("history: rescan with 1% changed, each of {rescans}"),
        findings,
        &times,
        Some(&first_ingest),
    ));
    rows.push(first_ingest);

    let runs = size(db, "sighting_runs").await? - runs_before;
    let one_scan = occurrence_rows_size(db, last).await?;
    let scans = u64::try_from(rescans + 1)?;
    let old = Volume::new(
        &format!("history: occurrence rows of {scans} scans (one scan's, measured, x{scans})"),
        one_scan * scans,
        None,
    );
    volumes.push(Volume::new(
        &format!("history: sighting runs of {scans} scans (table+index)"),
        runs,
        Some(&old),
    ));
    volumes.push(old);
    Ok(())
}

async fn complete(store: &Store, repository_id: Uuid, findings: Vec<NewFinding>) -> Result<Uuid> {
    let lease = claim_main(store, repository_id).await?;
    Ok(store.scans().complete(&lease, findings).await?.id)
}

/// Table, indexes and TOAST of `table`, in bytes.
async fn size(db: &DatabaseConnection, table: &str) -> Result<u64> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT pg_total_relation_size('{table}') AS bytes"),
        ))
        .await?
        .ok_or("no size")?;
    Ok(u64::try_from(row.try_get::<i64>("", "bytes")?)?)
}

/// The size one scan's occurrence rows took before sighting runs: the old table's shape
/// (primary key on scan and finding, index on finding and scan) with a row per finding the
/// scan saw.
async fn occurrence_rows_size(db: &DatabaseConnection, scan_id: Uuid) -> Result<u64> {
    for sql in [
        "DROP TABLE IF EXISTS bench_occurrences".to_owned(),
        "CREATE TABLE bench_occurrences (scan_id uuid NOT NULL, finding_id uuid NOT NULL, \
                                         project_id uuid NOT NULL, severity smallint NOT NULL, \
                                         change text NOT NULL, file_path text, start_line int, \
                                         end_line int, PRIMARY KEY (scan_id, finding_id))"
            .to_owned(),
        "CREATE INDEX bench_occurrences_finding_idx \
           ON bench_occurrences (finding_id, scan_id DESC)"
            .to_owned(),
        format!(
            "INSERT INTO bench_occurrences \
             SELECT s.id, o.finding_id, o.project_id, o.severity, 'existing', o.file_path, \
                    o.start_line, o.end_line \
               FROM scans s JOIN sighting_runs o ON o.project_id = s.project_id \
                AND o.stream_id = s.stream_id AND o.first_seq <= s.stream_seq \
                AND (o.last_seq IS NULL OR o.last_seq >= s.stream_seq) \
              WHERE s.id = '{scan_id}'"
        ),
    ] {
        db.execute_unprepared(&sql).await?;
    }
    let bytes = size(db, "bench_occurrences").await?;
    db.execute_unprepared("DROP TABLE bench_occurrences")
        .await?;
    Ok(bytes)
}
