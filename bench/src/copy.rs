//! The practical ceiling for ingest: `COPY … FROM STDIN (FORMAT binary)` of the same finding
//! and sighting-run rows that a first ingest writes, into the same indexed tables (every
//! column ingest fills, the scan pointer and the foreign keys included), with no dedup, no
//! lookups and no logic.

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::PgPoolCopyExt;
use uuid::Uuid;
use vega_repository::NewFinding;

use crate::Result;

/// Copies `findings` as new findings of `repository_id` first seen by `scan_id`, and as the
/// runs that scan opens in a stream of its own.
pub(crate) async fn copy_findings(
    db: &DatabaseConnection,
    project_id: Uuid,
    repository_id: Uuid,
    scan_id: Uuid,
    findings: &[NewFinding],
) -> Result<()> {
    let pool = db.get_postgres_connection_pool();
    let now = micros_since_2000(Utc::now());
    let ids: Vec<Uuid> = findings.iter().map(|_| Uuid::now_v7()).collect();

    let mut out = header();
    for (f, id) in findings.iter().zip(&ids) {
        out.extend_from_slice(&19i16.to_be_bytes());
        uuid(&mut out, *id);
        uuid(&mut out, project_id);
        uuid(&mut out, repository_id);
        bytes(&mut out, &f.fingerprint());
        bytes(&mut out, f.scanner.as_bytes());
        bytes(&mut out, f.category.as_str().as_bytes());
        bytes(&mut out, f.rule_id.as_bytes());
        bytes(&mut out, f.title.as_bytes());
        bytes(&mut out, &f.severity.as_i16().to_be_bytes());
        bytes(&mut out, &f.severity.as_i16().to_be_bytes());
        optional(
            &mut out,
            f.cwe.map(i32::to_be_bytes).as_ref().map(|b| &b[..]),
        );
        optional(&mut out, f.file_path.as_deref().map(str::as_bytes));
        lines(&mut out, f);
        bytes(&mut out, b"open");
        uuid(&mut out, scan_id);
        for _ in 0..3 {
            bytes(&mut out, &now.to_be_bytes());
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    let mut copy = pool
        .copy_in_raw(
            "COPY findings (id, project_id, repository_id, fingerprint, scanner, category, rule_id, title, \
                            severity, scanner_severity, cwe, file_path, start_line, end_line, status, \
                            first_seen_scan_id, first_seen_at, created_at, updated_at) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(out).await?;
    copy.finish().await?;

    let stream = Uuid::now_v7();
    sea_orm::sqlx::query(
        "INSERT INTO scan_streams (project_id, id, repository_id, ref_name, kind, default_branch, last_seq) \
         VALUES ($1, $2, $3, $4, 'full', true, 1)",
    )
    .bind(project_id)
    .bind(stream)
    .bind(repository_id)
    .bind(format!("copy-{scan_id}"))
    .execute(pool)
    .await?;
    let mut out = header();
    for (f, id) in findings.iter().zip(&ids) {
        out.extend_from_slice(&9i16.to_be_bytes());
        uuid(&mut out, project_id);
        uuid(&mut out, stream);
        uuid(&mut out, *id);
        bytes(&mut out, &1i64.to_be_bytes());
        bytes(&mut out, b"new");
        bytes(&mut out, &f.severity.as_i16().to_be_bytes());
        optional(&mut out, f.file_path.as_deref().map(str::as_bytes));
        lines(&mut out, f);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    let mut copy = pool
        .copy_in_raw(
            "COPY sighting_runs (project_id, stream_id, finding_id, first_seq, change, severity, \
                                 file_path, start_line, end_line) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(out).await?;
    copy.finish().await?;
    Ok(())
}

/// A finding's start and end lines, as two nullable int4 fields.
fn lines(out: &mut Vec<u8>, f: &NewFinding) {
    for line in [f.start_line, f.end_line] {
        optional(out, line.map(i32::to_be_bytes).as_ref().map(|b| &b[..]));
    }
}

fn header() -> Vec<u8> {
    let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out
}

fn uuid(out: &mut Vec<u8>, id: Uuid) {
    bytes(out, id.as_bytes());
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value);
}

fn optional(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => bytes(out, v),
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// Postgres' binary timestamptz: microseconds since 2000-01-01 UTC.
fn micros_since_2000(t: DateTime<Utc>) -> i64 {
    const EPOCH_2000: i64 = 946_684_800;
    (t.timestamp() - EPOCH_2000) * 1_000_000 + i64::from(t.timestamp_subsec_micros())
}
