//! The ingest engine: a completing scan's findings deduplicated against its repository's,
//! its occurrences recorded and, for a full scan of the tracked branch, what it no longer sees
//! marked fixed. Called by `scans.complete` inside the scan's transaction.
//!
//! Ingestion is set-based: a scan of 100k findings costs a few hundred multi-row statements,
//! never a round trip per finding.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;
use vega_entity::{FindingCategory, FindingStatus, OccurrenceChange, ScanKind, Severity, scans};

use crate::sql::{array, is_postgres, now, statement};
use crate::{Error, Result, SeverityCounts, fingerprint, validate};

/// Rows per multi-row statement on SQLite: far below its bind-parameter limit (32,766) at 15
/// parameters per row, and large enough that round trips do not dominate.
const CHUNK: usize = 1000;

/// Rows per statement on Postgres, where each column travels as one array parameter
/// (`unnest`), so the statement's size does not grow with the rows.
const PG_CHUNK: usize = 5000;

/// Columns written by the findings upsert, in the order both statement forms produce them.
const FINDING_COLUMNS: &str = "id, project_id, repository_id, fingerprint, scanner, category, \
     rule_id, title, severity, scanner_severity, cwe, cve, file_path, start_line, end_line, \
     package_name, package_version, details, status, first_seen_scan_id, last_seen_scan_id, \
     first_seen_at, last_seen_at, times_seen, created_at, updated_at";

/// What a sighting does to a finding that exists: refresh last seen, location and severity
/// (unless a person overrode it); reopen it if it was fixed; leave a dismissal alone.
const ON_FINDING_CONFLICT: &str = "ON CONFLICT (repository_id, fingerprint) DO UPDATE SET \
     last_seen_scan_id = excluded.last_seen_scan_id, \
     last_seen_at = excluded.last_seen_at, \
     times_seen = findings.times_seen + 1, \
     title = excluded.title, \
     file_path = excluded.file_path, \
     start_line = excluded.start_line, \
     end_line = excluded.end_line, \
     scanner_severity = excluded.scanner_severity, \
     severity = CASE WHEN findings.severity_overridden THEN findings.severity \
                     ELSE excluded.severity END, \
     status = CASE WHEN findings.status = 'fixed' THEN 'open' ELSE findings.status END, \
     fixed_at = CASE WHEN findings.status = 'fixed' THEN NULL ELSE findings.fixed_at END, \
     fixed_in_scan_id = CASE WHEN findings.status = 'fixed' THEN NULL \
                             ELSE findings.fixed_in_scan_id END, \
     updated_at = excluded.updated_at";

/// One finding reported by a scanner, as passed to [`crate::Scans::complete`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct NewFinding {
    /// The tool (`semgrep`, `gitleaks`, `trivy`, ...).
    pub scanner: String,
    /// What kind of issue.
    pub category: FindingCategory,
    /// The tool's rule or check id.
    pub rule_id: String,
    /// One-line title, up to 512 characters.
    pub title: String,
    /// The tool's severity.
    pub severity: Severity,
    /// File, relative to the repository root.
    pub file_path: Option<String>,
    /// First line (1-based).
    pub start_line: Option<i32>,
    /// Last line.
    pub end_line: Option<i32>,
    /// What identifies this match within its file without line numbers (see
    /// [`crate::fingerprint`]).
    pub location_key: String,
    /// CWE number.
    pub cwe: Option<i32>,
    /// CVE or GHSA id.
    pub cve: Option<String>,
    /// Dependency name (SCA).
    pub package_name: Option<String>,
    /// Dependency version (SCA).
    pub package_version: Option<String>,
    /// Small extra data; the full finding stays in the scan report.
    pub details: Option<serde_json::Value>,
}

impl NewFinding {
    /// This finding's fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(
            self.category,
            &self.scanner,
            &self.rule_id,
            self.file_path.as_deref(),
            &self.location_key,
        )
    }
}

/// What ingestion wrote, for the scan's summary columns.
pub(crate) struct IngestSummary {
    pub counts: SeverityCounts,
    pub total: i32,
    pub new: i32,
    pub fixed: i32,
}

/// A validated finding with its fingerprint.
pub(crate) struct Prepared {
    finding: NewFinding,
    fingerprint: [u8; 32],
}

/// Validates every finding before the transaction opens (so a bad one writes nothing and is
/// named by its index), computes fingerprints, drops repeats within the batch, and sorts by
/// fingerprint: the order in which ingestion locks rows, whatever order the caller sent.
pub(crate) fn prepare(findings: Vec<NewFinding>) -> Result<Vec<Prepared>> {
    let mut seen = std::collections::HashSet::with_capacity(findings.len());
    let mut prepared = Vec::with_capacity(findings.len());
    for (i, mut f) in findings.into_iter().enumerate() {
        let field = |name: &str| format!("findings[{i}].{name}");
        f.scanner = validate::text(&field("scanner"), &f.scanner, 1, 64)?;
        f.rule_id = validate::text(&field("rule_id"), &f.rule_id, 1, 512)?;
        f.title = validate::text(&field("title"), &f.title, 1, 512)?;
        f.file_path = validate::optional_text(&field("file_path"), f.file_path.as_deref(), 4096)?;
        match (f.start_line, f.end_line) {
            (Some(start), _) if start < 1 => {
                return Err(Error::invalid(&field("start_line"), "must be at least 1"));
            }
            (Some(start), Some(end)) if end < start => {
                return Err(Error::invalid(
                    &field("end_line"),
                    "must not be before start_line",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    &field("start_line"),
                    "is required with end_line",
                ));
            }
            _ => {}
        }
        f.cve = validate::optional_text(&field("cve"), f.cve.as_deref(), 64)?;
        f.package_name =
            validate::optional_text(&field("package_name"), f.package_name.as_deref(), 512)?;
        f.package_version =
            validate::optional_text(&field("package_version"), f.package_version.as_deref(), 128)?;
        if f.cwe.is_some_and(|cwe| cwe < 1) {
            return Err(Error::invalid(
                &field("cwe"),
                "must be a positive CWE number",
            ));
        }
        if f.details.as_ref().is_some_and(serde_json::Value::is_null) {
            f.details = None;
        }
        if let Some(details) = &f.details {
            validate::json(&field("details"), details)?;
        }
        let fingerprint = f.fingerprint();
        if seen.insert(fingerprint) {
            prepared.push(Prepared {
                finding: f,
                fingerprint,
            });
        }
    }
    prepared.sort_unstable_by_key(|p| p.fingerprint);
    Ok(prepared)
}

/// Takes the repository's ingest lock for the rest of the transaction (see ARCHITECTURE.md,
/// "Ingest under concurrency"): completions of one repository's scans then run one after
/// another, each reading what the one before committed. On Postgres it is the repository
/// row, locked `FOR NO KEY UPDATE`, which the findings' foreign-key checks (`FOR KEY SHARE`)
/// do not wait for; on SQLite the `BEGIN IMMEDIATE` transaction already holds the one write
/// lock. Taken before the scan's fence, in the order a repository's deletion locks them.
pub(crate) async fn lock_repository_of(txn: &impl ConnectionTrait, scan_id: Uuid) -> Result<()> {
    if is_postgres(txn) {
        txn.query_one_raw(statement(
            txn,
            "SELECT 1 AS locked FROM repositories \
              WHERE id = (SELECT repository_id FROM scans WHERE id = $1) FOR NO KEY UPDATE",
            [scan_id.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Writes a completing scan's findings and occurrences and, for a full scan of the tracked
/// branch, marks fixed the open findings it did not see. Runs inside the scan's transaction,
/// after [`lock_repository_of`].
pub(crate) async fn ingest(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    prepared: &[Prepared],
) -> Result<IngestSummary> {
    let now = now();
    let mut counts = SeverityCounts::default();
    for p in prepared {
        counts.add(p.finding.severity, 1);
    }
    let mut new = 0;
    if is_postgres(txn) {
        for chunk in prepared.chunks(PG_CHUNK) {
            new += write_chunk_postgres(txn, scan, chunk, now).await?;
        }
    } else {
        for chunk in prepared.chunks(CHUNK) {
            new += write_chunk_sqlite(txn, scan, chunk, now).await?;
        }
    }
    let fixed = if scan.kind == ScanKind::Full.as_str() && scan.tracks_default_branch {
        let result = txn
            .execute_raw(statement(
                txn,
                "UPDATE findings SET status = 'fixed', fixed_at = $1, fixed_in_scan_id = $2, \
                        updated_at = $1 \
                  WHERE repository_id = $3 AND status = 'open' \
                    AND (last_seen_scan_id IS NULL OR last_seen_scan_id <> $2)",
                [now.into(), scan.id.into(), scan.repository_id.into()],
            ))
            .await?;
        i32::try_from(result.rows_affected()).unwrap_or(i32::MAX)
    } else {
        0
    };
    Ok(IngestSummary {
        counts,
        total: i32::try_from(prepared.len()).unwrap_or(i32::MAX),
        new,
        fixed,
    })
}

/// A chunk's upsert and occurrences on Postgres, in one statement: the chunk travels once, as
/// one array parameter per column (`unnest`), so the statement is parsed and planned once
/// whatever its row count, and nothing comes back but the count of new findings. A finding is
/// new when this statement inserted its row (`xmax = 0`); reopened when its status was
/// `fixed` in the statement's snapshot, which under the repository lock is the latest
/// committed status, since only completions move a finding into or out of `fixed`.
///
/// sea-query binds arrays without NULL elements, so optional values travel as a sentinel that
/// validation rules out ('' for text, 0 for numbers, JSON `null`) and `NULLIF` turns back
/// into NULL.
async fn write_chunk_postgres(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    chunk: &[Prepared],
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<i32> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let values: Vec<Value> = vec![
        scan.project_id.into(),
        scan.repository_id.into(),
        scan.id.into(),
        now.into(),
        array(chunk, |_| Uuid::now_v7()),
        array(chunk, |p| p.fingerprint.to_vec()),
        array(chunk, |p| p.finding.scanner.clone()),
        array(chunk, |p| p.finding.category.as_str().to_owned()),
        array(chunk, |p| p.finding.rule_id.clone()),
        array(chunk, |p| p.finding.title.clone()),
        array(chunk, |p| p.finding.severity.as_i16()),
        array(chunk, |p| p.finding.cwe.unwrap_or(0)),
        array(chunk, |p| text(&p.finding.cve)),
        array(chunk, |p| text(&p.finding.file_path)),
        array(chunk, |p| p.finding.start_line.unwrap_or(0)),
        array(chunk, |p| p.finding.end_line.unwrap_or(0)),
        array(chunk, |p| text(&p.finding.package_name)),
        array(chunk, |p| text(&p.finding.package_version)),
        array(chunk, |p| {
            p.finding.details.clone().unwrap_or(serde_json::Value::Null)
        }),
    ];
    // Each row's prior status is a correlated subquery, one probe of the unique index per row
    // whatever the planner estimates: after five executions Postgres plans this statement
    // generically, guesses ten rows for each `unnest`, and as a join it chose a nested loop
    // over the whole chunk for every row (measured: 2.5 s per 5,000 existing findings).
    let sql = format!(
        "WITH u AS ( \
           SELECT x.*, (SELECT f.status FROM findings f \
                         WHERE f.repository_id = $2 AND f.fingerprint = x.fingerprint) AS prior \
             FROM unnest($5::uuid[], $6::bytea[], $7::text[], $8::text[], $9::text[], \
                         $10::text[], $11::int2[], $12::int4[], $13::text[], $14::text[], \
                         $15::int4[], $16::int4[], $17::text[], $18::text[], $19::jsonb[]) \
               AS x(id, fingerprint, scanner, category, rule_id, title, severity, cwe, cve, \
                    file_path, start_line, end_line, package_name, package_version, details) \
         ), upserted AS ( \
           INSERT INTO findings ({FINDING_COLUMNS}) \
           SELECT u.id, $1, $2, u.fingerprint, u.scanner, u.category, u.rule_id, u.title, \
                  u.severity, u.severity, NULLIF(u.cwe, 0), NULLIF(u.cve, ''), \
                  NULLIF(u.file_path, ''), NULLIF(u.start_line, 0), NULLIF(u.end_line, 0), \
                  NULLIF(u.package_name, ''), NULLIF(u.package_version, ''), \
                  NULLIF(u.details, 'null'::jsonb), 'open', $3, $3, $4, $4, 1, $4, $4 \
             FROM u \
           {ON_FINDING_CONFLICT} \
           RETURNING id, fingerprint, (xmax = 0) AS inserted \
         ), occurrences AS ( \
           INSERT INTO finding_occurrences (scan_id, finding_id, project_id, severity, change, \
                                            file_path, start_line, end_line) \
           SELECT $3, upserted.id, $1, u.severity, \
                  CASE WHEN upserted.inserted THEN 'new' \
                       WHEN u.prior = 'fixed' THEN 'reopened' ELSE 'existing' END, \
                  NULLIF(u.file_path, ''), NULLIF(u.start_line, 0), NULLIF(u.end_line, 0) \
             FROM upserted JOIN u USING (fingerprint) \
           RETURNING change \
         ) \
         SELECT count(*) AS written, count(*) FILTER (WHERE change = 'new') AS new \
           FROM occurrences"
    );
    let row = txn
        .query_one_raw(statement(txn, &sql, values))
        .await?
        .ok_or_else(|| Error::Database(sea_orm::DbErr::RecordNotFound("ingest count".into())))?;
    let written: i64 = row.try_get("", "written")?;
    if usize::try_from(written).ok() != Some(chunk.len()) {
        return Err(Error::Database(sea_orm::DbErr::Custom(format!(
            "ingest wrote {written} occurrences for {} findings",
            chunk.len()
        ))));
    }
    let new: i64 = row.try_get("", "new")?;
    Ok(i32::try_from(new).unwrap_or(i32::MAX))
}

/// A chunk's upsert and occurrences on SQLite, which has no arrays and no data-modifying
/// `WITH`: the prior statuses, then a multi-row upsert returning the ids, then the
/// occurrences. Returns how many findings were new.
async fn write_chunk_sqlite(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    chunk: &[Prepared],
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<i32> {
    let previous = previous_statuses(txn, scan.repository_id, chunk).await?;
    let ids = upsert(txn, scan, chunk, now).await?;
    let mut new = 0;
    let mut occurrences = Vec::with_capacity(chunk.len());
    for p in chunk {
        let change = match previous.get(&p.fingerprint).map(String::as_str) {
            None => OccurrenceChange::New,
            Some(s) if s == FindingStatus::Fixed.as_str() => OccurrenceChange::Reopened,
            Some(_) => OccurrenceChange::Existing,
        };
        new += i32::from(change == OccurrenceChange::New);
        let finding_id = ids.get(&p.fingerprint).copied().ok_or_else(|| {
            Error::Database(sea_orm::DbErr::Custom(
                "upsert returned no id for a finding".into(),
            ))
        })?;
        occurrences.push((finding_id, p, change));
    }
    insert_occurrences(txn, scan, &occurrences).await?;
    Ok(new)
}

/// The current status of those fingerprints that already exist in the repository: absent
/// means new, `fixed` means reopened.
async fn previous_statuses(
    txn: &impl ConnectionTrait,
    repository_id: Uuid,
    chunk: &[Prepared],
) -> Result<HashMap<[u8; 32], String>> {
    let placeholders = crate::sql::placeholders(2, chunk.len());
    let mut values: Vec<Value> = vec![repository_id.into()];
    values.extend(chunk.iter().map(|p| Value::from(p.fingerprint.to_vec())));
    let sql = format!(
        "SELECT fingerprint, status FROM findings WHERE repository_id = $1 AND fingerprint IN ({placeholders})"
    );
    let rows = txn.query_all_raw(statement(txn, &sql, values)).await?;
    rows.iter()
        .map(|row| Ok((fingerprint_of(row)?, row.try_get("", "status")?)))
        .collect()
}

/// Inserts new findings and refreshes existing ones (last seen, location, severity unless a
/// person overrode it; a fixed finding reopens, a dismissed one stays dismissed). Returns each
/// fingerprint's finding id.
async fn upsert(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    chunk: &[Prepared],
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<HashMap<[u8; 32], Uuid>> {
    // $1..$4 are shared by every row; each row adds 15 parameters.
    const SHARED: usize = 4;
    const PER_ROW: usize = 15;
    let mut values: Vec<Value> = Vec::with_capacity(SHARED + chunk.len() * PER_ROW);
    values.extend([
        scan.project_id.into(),
        scan.repository_id.into(),
        scan.id.into(),
        now.into(),
    ]);
    let mut rows = Vec::with_capacity(chunk.len());
    for (i, prepared) in chunk.iter().enumerate() {
        let b = SHARED + i * PER_ROW;
        let p = |k: usize| format!("${}", b + k);
        // Columns in the order of the INSERT below; severity fills both severity columns.
        rows.push(format!(
            "({}, $1, $2, {}, {}, {}, {}, {}, {sev}, {sev}, {}, {}, {}, {}, {}, {}, {}, {}, \
              'open', $3, $3, $4, $4, 1, $4, $4)",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(8),
            p(9),
            p(10),
            p(11),
            p(12),
            p(13),
            p(14),
            p(15),
            sev = p(7),
        ));
        let f = &prepared.finding;
        values.extend([
            Uuid::now_v7().into(),
            prepared.fingerprint.to_vec().into(),
            f.scanner.clone().into(),
            f.category.as_str().into(),
            f.rule_id.clone().into(),
            f.title.clone().into(),
            f.severity.as_i16().into(),
            f.cwe.into(),
            f.cve.clone().into(),
            f.file_path.clone().into(),
            f.start_line.into(),
            f.end_line.into(),
            f.package_name.clone().into(),
            f.package_version.clone().into(),
            f.details.clone().into(),
        ]);
    }
    let sql = format!(
        "INSERT INTO findings ({FINDING_COLUMNS}) VALUES {} {ON_FINDING_CONFLICT} \
         RETURNING id, fingerprint",
        rows.join(", ")
    );
    let returned = txn.query_all_raw(statement(txn, &sql, values)).await?;
    returned
        .iter()
        .map(|row| Ok((fingerprint_of(row)?, row.try_get("", "id")?)))
        .collect()
}

fn fingerprint_of(row: &sea_orm::QueryResult) -> Result<[u8; 32]> {
    let bytes: Vec<u8> = row.try_get("", "fingerprint")?;
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| Error::Database(sea_orm::DbErr::Type("fingerprint is not 32 bytes".into())))
}

async fn insert_occurrences(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    occurrences: &[(Uuid, &Prepared, OccurrenceChange)],
) -> Result<()> {
    const SHARED: usize = 2;
    const PER_ROW: usize = 6;
    let mut values: Vec<Value> = Vec::with_capacity(SHARED + occurrences.len() * PER_ROW);
    values.extend([scan.id.into(), scan.project_id.into()]);
    let mut rows = Vec::with_capacity(occurrences.len());
    for (i, (finding_id, p, change)) in occurrences.iter().enumerate() {
        let b = SHARED + i * PER_ROW;
        rows.push(format!(
            "($1, ${}, $2, ${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6
        ));
        values.extend([
            (*finding_id).into(),
            p.finding.severity.as_i16().into(),
            change.as_str().into(),
            p.finding.file_path.clone().into(),
            p.finding.start_line.into(),
            p.finding.end_line.into(),
        ]);
    }
    txn.execute_raw(statement(
        txn,
        &format!(
            "INSERT INTO finding_occurrences (scan_id, finding_id, project_id, severity, change, \
                                              file_path, start_line, end_line) VALUES {}",
            rows.join(", ")
        ),
        values,
    ))
    .await?;
    Ok(())
}
