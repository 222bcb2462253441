//! The ingest engine: a completing scan's findings deduplicated against its repository's,
//! its occurrences recorded and, for a full scan of the tracked branch, what it no longer sees
//! marked fixed. Called by `scans.complete` inside the scan's transaction.
//!
//! Ingestion is set-based: a scan of 100k findings costs a few hundred multi-row statements,
//! never a round trip per finding.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;
use vega_entity::{
    DismissReason, FindingCategory, FindingStatus, OccurrenceChange, ScanKind, Severity, scans,
};

use crate::db::sql::{array, is_postgres, now, statement};
use crate::db::validate;
use crate::error::{Error, Result, Transient};
use crate::findings::fingerprint::fingerprint;
use crate::findings::reads::SeverityCounts;

/// Rows per multi-row statement on SQLite: far below its bind-parameter limit (32,766) at 15
/// parameters per row, and large enough that round trips do not dominate.
const CHUNK: usize = 1000;

/// Rows per statement on Postgres, where each column travels as one array parameter
/// (`unnest`), so the statement's size does not grow with the rows.
const PG_CHUNK: usize = 5000;

/// Columns written by the findings upsert, in the order both statement forms produce them.
const FINDING_COLUMNS: &str = "id, project_id, repository_id, fingerprint, scanner, category, \
     rule_id, title, severity, scanner_severity, cwe, cve, file_path, start_line, end_line, \
     package_name, package_version, details, status, on_default_branch, first_seen_scan_id, \
     last_seen_scan_id, first_seen_at, last_seen_at, times_seen, created_at, updated_at";

/// What a default-branch sighting does to a finding that exists: mark it seen there, refresh
/// last seen, location and severity (unless a person overrode it). A repeat within the scan
/// (a later chunk of a streamed report) is not counted twice.
const REFRESH: &str = "last_seen_scan_id = excluded.last_seen_scan_id, \
     last_seen_at = excluded.last_seen_at, \
     on_default_branch = true, \
     times_seen = findings.times_seen + CASE WHEN findings.last_seen_scan_id = \
                  excluded.last_seen_scan_id THEN 0 ELSE 1 END, \
     title = excluded.title, \
     file_path = excluded.file_path, \
     start_line = excluded.start_line, \
     end_line = excluded.end_line, \
     scanner_severity = excluded.scanner_severity, \
     severity = CASE WHEN findings.severity_overridden THEN findings.severity \
                     ELSE excluded.severity END, \
     updated_at = excluded.updated_at";

/// A full scan of the default branch also reopens a fixed finding it sees; a dismissal stays.
const REOPEN: &str = ", \
     status = CASE WHEN findings.status = 'fixed' THEN 'open' ELSE findings.status END, \
     fixed_at = CASE WHEN findings.status = 'fixed' THEN NULL ELSE findings.fixed_at END, \
     fixed_in_scan_id = CASE WHEN findings.status = 'fixed' THEN NULL \
                             ELSE findings.fixed_in_scan_id END";

/// What a scan may do to the repository's findings, from its ref and kind: only the default
/// branch's scans change them, and only a full one decides what is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A full scan of the default branch: refreshes what it sees, reopens what was fixed,
    /// marks fixed what it no longer sees, and becomes the project's latest scan.
    DefaultFull,
    /// A partial scan of the default branch (some scanners): refreshes what it sees.
    DefaultPartial,
    /// A scan of any other ref: records its occurrences and adds the findings nobody has seen
    /// yet (not on the default branch); changes nothing else.
    Branch,
}

impl Role {
    pub(crate) fn of(scan: &scans::Model) -> Self {
        match (
            scan.tracks_default_branch,
            scan.kind == ScanKind::Full.as_str(),
        ) {
            (true, true) => Role::DefaultFull,
            (true, false) => Role::DefaultPartial,
            (false, _) => Role::Branch,
        }
    }

    fn on_conflict(self) -> String {
        match self {
            Role::DefaultFull => {
                format!("ON CONFLICT (repository_id, fingerprint) DO UPDATE SET {REFRESH}{REOPEN}")
            }
            Role::DefaultPartial => {
                format!("ON CONFLICT (repository_id, fingerprint) DO UPDATE SET {REFRESH}")
            }
            Role::Branch => "ON CONFLICT (repository_id, fingerprint) DO NOTHING".to_owned(),
        }
    }
}

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
    /// [`crate::findings::fingerprint::fingerprint`]).
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
    /// The scan's findings not dismissed, by effective severity.
    pub counts: SeverityCounts,
    /// The scan's findings that are dismissed.
    pub dismissed: i32,
    pub total: i32,
    pub new: i32,
    pub fixed: i32,
}

/// A dismissal a report asks for: a result the tool reports as suppressed (SARIF
/// `suppressions`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Suppression {
    pub reason: DismissReason,
    pub comment: Option<String>,
}

/// A validated finding with its fingerprint.
pub(crate) struct Prepared {
    pub finding: NewFinding,
    pub fingerprint: [u8; 32],
    pub suppression: Option<Suppression>,
}

/// Validates every finding before the transaction opens (so a bad one writes nothing and is
/// named by its index), computes fingerprints, drops repeats within the batch, and sorts by
/// fingerprint: the order in which ingestion locks rows, whatever order the caller sent.
pub(crate) fn prepare(findings: Vec<NewFinding>) -> Result<Vec<Prepared>> {
    let mut prepared = findings
        .into_iter()
        .enumerate()
        .map(|(i, f)| prepare_one(f, &format!("findings[{i}]"), None))
        .collect::<Result<Vec<_>>>()?;
    dedup(&mut prepared);
    Ok(prepared)
}

/// Sorts a chunk by fingerprint and drops repeats (the first sighting wins).
pub(crate) fn dedup(chunk: &mut Vec<Prepared>) {
    chunk.sort_by_key(|p| p.fingerprint);
    chunk.dedup_by_key(|p| p.fingerprint);
}

/// Validates one finding, naming a bad field under `at` (`findings[3].title`).
pub(crate) fn prepare_one(
    mut f: NewFinding,
    at: &str,
    suppression: Option<Suppression>,
) -> Result<Prepared> {
    let field = |name: &str| format!("{at}.{name}");
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
    Ok(Prepared {
        fingerprint: f.fingerprint(),
        finding: f,
        suppression,
    })
}

/// Takes the repository's ingest lock for the rest of the transaction (see ARCHITECTURE.md,
/// "Ingest under concurrency"): completions of one repository's scans then run one after
/// another, each reading what the one before committed. On Postgres it is the repository
/// row, locked `FOR NO KEY UPDATE`, which the findings' foreign-key checks (`FOR KEY SHARE`)
/// do not wait for; on SQLite the `BEGIN IMMEDIATE` transaction already holds the one write
/// lock. Taken before the scan's fence, in the order a repository's deletion locks them.
///
/// Waiting past `lock_timeout` here means other completions of the repository held it that
/// long, as SQLite's busy timeout does: [`Transient::Busy`], so the completion is retried
/// whole (`retry_conflicts`) rather than failed while the repository's queue drains.
pub(crate) async fn lock_repository_of(txn: &impl ConnectionTrait, scan_id: Uuid) -> Result<()> {
    if is_postgres(txn) {
        let locked = txn
            .query_one_raw(statement(
                txn,
                "SELECT 1 AS locked FROM repositories \
                  WHERE id = (SELECT repository_id FROM scans WHERE id = $1) FOR NO KEY UPDATE",
                [scan_id.into()],
            ))
            .await;
        if let Err(err) = locked {
            return Err(match Error::from(err) {
                Error::Unavailable {
                    cause: Transient::Timeout,
                    message,
                } => Error::Unavailable {
                    cause: Transient::Busy,
                    message: format!(
                        "other completions held the repository's ingest lock too long: {message}"
                    ),
                },
                other => other,
            });
        }
    }
    Ok(())
}

/// Rows per statement of [`Ingest::write`] on `db`'s engine: what a streamed source should
/// hand it at a time.
pub(crate) fn chunk_size(db: &impl ConnectionTrait) -> usize {
    if is_postgres(db) { PG_CHUNK } else { CHUNK }
}

/// One completion's ingest, inside the scan's transaction and after [`lock_repository_of`]:
/// chunks of findings written as they come ([`Ingest::write`], so a streamed report's memory
/// is one chunk), then [`Ingest::finish`] marks fixed what a full scan of the default branch
/// no longer sees and counts what the scan saw.
pub(crate) struct Ingest<'a, C> {
    txn: &'a C,
    scan: &'a scans::Model,
    role: Role,
    now: chrono::DateTime<chrono::FixedOffset>,
    new: i32,
}

impl<'a, C: ConnectionTrait> Ingest<'a, C> {
    pub(crate) fn new(txn: &'a C, scan: &'a scans::Model) -> Self {
        Self {
            txn,
            scan,
            role: Role::of(scan),
            now: now(),
            new: 0,
        }
    }

    /// Rows per chunk that [`Ingest::write`] sends in one statement.
    pub(crate) fn chunk_size(&self) -> usize {
        chunk_size(self.txn)
    }

    /// Writes prepared findings (deduplicated and sorted by [`dedup`]), split into statements
    /// of [`Ingest::chunk_size`] rows.
    pub(crate) async fn write(&mut self, prepared: &[Prepared]) -> Result<()> {
        for chunk in prepared.chunks(self.chunk_size()) {
            self.new += if is_postgres(self.txn) {
                write_chunk_postgres(self.txn, self.scan, self.role, chunk, self.now).await?
            } else {
                write_chunk_sqlite(self.txn, self.scan, self.role, chunk, self.now).await?
            };
            dismiss_suppressed(self.txn, self.scan, self.role, chunk, self.now).await?;
        }
        Ok(())
    }

    pub(crate) async fn finish(self) -> Result<IngestSummary> {
        let (txn, scan) = (self.txn, self.scan);
        let fixed = if self.role == Role::DefaultFull {
            let result = txn
                .execute_raw(statement(
                    txn,
                    "UPDATE findings SET status = 'fixed', fixed_at = $1, fixed_in_scan_id = $2, \
                            updated_at = $1 \
                      WHERE repository_id = $3 AND status = 'open' AND on_default_branch \
                        AND (last_seen_scan_id IS NULL OR last_seen_scan_id <> $2)",
                    [self.now.into(), scan.id.into(), scan.repository_id.into()],
                ))
                .await?;
            i32::try_from(result.rows_affected()).unwrap_or(i32::MAX)
        } else {
            0
        };
        if self.role == Role::Branch {
            record_deltas(txn, scan).await?;
        }
        // Counted from what was written, by effective severity (a person's override counts)
        // and with dismissed findings apart, whatever the report repeated. One primary-key
        // probe per occurrence, as a correlated subquery: a join lets a cached generic plan,
        // costed for the average scan after large completions, hash the whole findings table
        // for every small one (24 completions/s in the worker loop instead of ~600).
        let rows = txn
            .query_all_raw(statement(
                txn,
                "SELECT k, COUNT(*) AS n FROM ( \
                   SELECT (SELECT f.severity * 2 \
                                  + CASE WHEN f.status = 'dismissed' THEN 1 ELSE 0 END \
                             FROM findings f WHERE f.id = o.finding_id) AS k \
                     FROM finding_occurrences o WHERE o.scan_id = $1) AS seen \
                  GROUP BY k",
                [scan.id.into()],
            ))
            .await?;
        let mut counts = SeverityCounts::default();
        let (mut dismissed, mut total) = (0i64, 0i64);
        for row in &rows {
            let k: i32 = row.try_get("", "k")?;
            let severity = i16::try_from(k / 2).unwrap_or_default();
            let n: i64 = row.try_get("", "n")?;
            total += n;
            if k % 2 == 1 {
                dismissed += n;
            } else {
                counts.add(Severity::from_i16(severity).unwrap_or(Severity::Unknown), n);
            }
        }
        Ok(IngestSummary {
            counts,
            dismissed: i32::try_from(dismissed).unwrap_or(i32::MAX),
            total: i32::try_from(total).unwrap_or(i32::MAX),
            new: self.new,
            fixed,
        })
    }
}

/// Keeps what a branch's scan changes against the default branch as it stands now, in the
/// completion's transaction (under the repository lock, so no default-branch completion moves
/// in between): each sighting is introduced unless its finding is known there (on the
/// default branch and not fixed); a full scan also records the default branch's open findings
/// it did not see. `findings().compare` pages through these rows.
async fn record_deltas(txn: &impl ConnectionTrait, scan: &scans::Model) -> Result<()> {
    txn.execute_raw(statement(
        txn,
        "INSERT INTO scan_deltas (scan_id, delta, finding_id) \
         SELECT $1, CASE WHEN f.on_default_branch AND f.status <> 'fixed' \
                         THEN 'unchanged' ELSE 'introduced' END, o.finding_id \
           FROM finding_occurrences o JOIN findings f ON f.id = o.finding_id \
          WHERE o.scan_id = $1",
        [scan.id.into()],
    ))
    .await?;
    if scan.kind == ScanKind::Full.as_str() {
        // `OFFSET 0` keeps Postgres from turning the NOT EXISTS into an anti-join: with the
        // repository's findings newer than its statistics (estimated at one row), it chose a
        // nested loop whose inner side read every occurrence of the scan for each finding
        // (100,000 × 150,000 comparisons; the full bench's compare rows hit the statement
        // timeout). Kept a subquery, it is one primary-key probe per finding whatever the
        // estimate. SQLite has no OFFSET without LIMIT, and probes the key by itself.
        let fence = if is_postgres(txn) { " OFFSET 0" } else { "" };
        let sql = format!(
            "INSERT INTO scan_deltas (scan_id, delta, finding_id) \
             SELECT $1, 'absent', f.id FROM findings f \
              WHERE f.repository_id = $2 AND f.status = 'open' AND f.on_default_branch \
                AND NOT EXISTS (SELECT 1 FROM finding_occurrences o \
                                 WHERE o.scan_id = $1 AND o.finding_id = f.id{fence})"
        );
        txn.execute_raw(statement(
            txn,
            &sql,
            [scan.id.into(), scan.repository_id.into()],
        ))
        .await?;
    }
    Ok(())
}

/// A chunk's upsert and occurrences on Postgres, in one statement: the chunk travels once, as
/// one array parameter per column (`unnest`), so the statement is parsed and planned once
/// whatever its row count, and nothing comes back but the count of new findings. A finding is
/// new when this statement inserted its row (`xmax = 0`); reopened when its status was
/// `fixed` in the statement's snapshot (and the scan reopens), which under the repository lock
/// is the latest committed status, since only completions move a finding into or out of
/// `fixed`. A branch's scan inserts only the findings nobody has seen and leaves the rest
/// untouched, taking their ids from the lookup.
///
/// sea-query binds arrays without NULL elements, so optional values travel as a sentinel that
/// validation rules out ('' for text, 0 for numbers, JSON `null`) and `NULLIF` turns back
/// into NULL.
async fn write_chunk_postgres(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    role: Role,
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
        (role != Role::Branch).into(),
        (role == Role::DefaultFull).into(),
    ];
    // Each row's prior state is a lateral probe of the unique index, one per row whatever the
    // planner estimates: after five executions Postgres plans this statement generically,
    // guesses ten rows for each `unnest`, and as a plain join it chose a nested loop over the
    // whole chunk for every row (measured: 2.5 s per 5,000 existing findings).
    let only_unseen = if role == Role::Branch {
        "WHERE u.prior_id IS NULL"
    } else {
        ""
    };
    let on_conflict = role.on_conflict();
    let sql = format!(
        "WITH u AS ( \
           SELECT x.*, p.id AS prior_id, p.status AS prior \
             FROM unnest($5::uuid[], $6::bytea[], $7::text[], $8::text[], $9::text[], \
                         $10::text[], $11::int2[], $12::int4[], $13::text[], $14::text[], \
                         $15::int4[], $16::int4[], $17::text[], $18::text[], $19::jsonb[]) \
               AS x(id, fingerprint, scanner, category, rule_id, title, severity, cwe, cve, \
                    file_path, start_line, end_line, package_name, package_version, details) \
             LEFT JOIN LATERAL (SELECT f.id, f.status FROM findings f \
                                 WHERE f.repository_id = $2 AND f.fingerprint = x.fingerprint) p \
               ON true \
         ), upserted AS ( \
           INSERT INTO findings ({FINDING_COLUMNS}) \
           SELECT u.id, $1, $2, u.fingerprint, u.scanner, u.category, u.rule_id, u.title, \
                  u.severity, u.severity, NULLIF(u.cwe, 0), NULLIF(u.cve, ''), \
                  NULLIF(u.file_path, ''), NULLIF(u.start_line, 0), NULLIF(u.end_line, 0), \
                  NULLIF(u.package_name, ''), NULLIF(u.package_version, ''), \
                  NULLIF(u.details, 'null'::jsonb), 'open', $20, $3, $3, $4, $4, 1, $4, $4 \
             FROM u {only_unseen} \
           {on_conflict} \
           RETURNING id, fingerprint, (xmax = 0) AS inserted \
         ), occurrences AS ( \
           INSERT INTO finding_occurrences (scan_id, finding_id, project_id, severity, change, \
                                            file_path, start_line, end_line) \
           SELECT $3, COALESCE(upserted.id, u.prior_id), $1, u.severity, \
                  CASE WHEN upserted.inserted THEN 'new' \
                       WHEN u.prior = 'fixed' AND $21 THEN 'reopened' ELSE 'existing' END, \
                  NULLIF(u.file_path, ''), NULLIF(u.start_line, 0), NULLIF(u.end_line, 0) \
             FROM u LEFT JOIN upserted USING (fingerprint) \
           ON CONFLICT (scan_id, finding_id) DO NOTHING \
           RETURNING change \
         ) \
         SELECT count(*) FILTER (WHERE change = 'new') AS new FROM occurrences"
    );
    let row = txn
        .query_one_raw(statement(txn, &sql, values))
        .await?
        .ok_or_else(|| Error::Database(sea_orm::DbErr::RecordNotFound("ingest count".into())))?;
    let new: i64 = row.try_get("", "new")?;
    Ok(i32::try_from(new).unwrap_or(i32::MAX))
}

/// A chunk's upsert and occurrences on SQLite, which has no arrays and no data-modifying
/// `WITH`: the prior states, then a multi-row upsert returning the ids (a branch's scan
/// inserts only what nobody has seen), then the occurrences. Returns how many findings were
/// new.
async fn write_chunk_sqlite(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    role: Role,
    chunk: &[Prepared],
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<i32> {
    let previous = previous_states(txn, scan.repository_id, chunk).await?;
    let writes: Vec<&Prepared> = chunk
        .iter()
        .filter(|p| role != Role::Branch || !previous.contains_key(&p.fingerprint))
        .collect();
    let mut ids = upsert(txn, scan, role, &writes, now).await?;
    let mut new = 0;
    let mut occurrences = Vec::with_capacity(chunk.len());
    for p in chunk {
        let prior = previous.get(&p.fingerprint);
        let change = match prior.map(|(_, status)| status.as_str()) {
            None => OccurrenceChange::New,
            Some(s) if s == FindingStatus::Fixed.as_str() && role == Role::DefaultFull => {
                OccurrenceChange::Reopened
            }
            Some(_) => OccurrenceChange::Existing,
        };
        new += i32::from(change == OccurrenceChange::New);
        let finding_id = ids
            .remove(&p.fingerprint)
            .or(prior.map(|(id, _)| *id))
            .ok_or_else(|| {
                Error::Database(sea_orm::DbErr::Custom(
                    "upsert returned no id for a finding".into(),
                ))
            })?;
        occurrences.push((finding_id, p, change));
    }
    insert_occurrences(txn, scan, &occurrences).await?;
    Ok(new)
}

/// The id and current status of those fingerprints that already exist in the repository:
/// absent means new, `fixed` means reopened (by a scan that reopens).
async fn previous_states(
    txn: &impl ConnectionTrait,
    repository_id: Uuid,
    chunk: &[Prepared],
) -> Result<HashMap<[u8; 32], (Uuid, String)>> {
    let placeholders = crate::db::sql::placeholders(2, chunk.len());
    let mut values: Vec<Value> = vec![repository_id.into()];
    values.extend(chunk.iter().map(|p| Value::from(p.fingerprint.to_vec())));
    let sql = format!(
        "SELECT id, fingerprint, status FROM findings \
          WHERE repository_id = $1 AND fingerprint IN ({placeholders})"
    );
    let rows = txn.query_all_raw(statement(txn, &sql, values)).await?;
    rows.iter()
        .map(|row| {
            Ok((
                fingerprint_of(row)?,
                (row.try_get("", "id")?, row.try_get("", "status")?),
            ))
        })
        .collect()
}

/// Inserts new findings and, for a default-branch scan, refreshes existing ones (see
/// [`Role`]). Returns each written fingerprint's finding id.
async fn upsert(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    role: Role,
    chunk: &[&Prepared],
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<HashMap<[u8; 32], Uuid>> {
    if chunk.is_empty() {
        return Ok(HashMap::new());
    }
    // $1..$5 are shared by every row; each row adds 15 parameters.
    const SHARED: usize = 5;
    const PER_ROW: usize = 15;
    let mut values: Vec<Value> = Vec::with_capacity(SHARED + chunk.len() * PER_ROW);
    values.extend([
        scan.project_id.into(),
        scan.repository_id.into(),
        scan.id.into(),
        now.into(),
        (role != Role::Branch).into(),
    ]);
    let mut rows = Vec::with_capacity(chunk.len());
    for (i, prepared) in chunk.iter().enumerate() {
        let b = SHARED + i * PER_ROW;
        let p = |k: usize| format!("${}", b + k);
        // Columns in the order of the INSERT below; severity fills both severity columns.
        rows.push(format!(
            "({}, $1, $2, {}, {}, {}, {}, {}, {sev}, {sev}, {}, {}, {}, {}, {}, {}, {}, {}, \
              'open', $5, $3, $3, $4, $4, 1, $4, $4)",
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
        "INSERT INTO findings ({FINDING_COLUMNS}) VALUES {} {} RETURNING id, fingerprint",
        rows.join(", "),
        role.on_conflict()
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
    // A repeat in a later chunk of a streamed report is one sighting.
    txn.execute_raw(statement(
        txn,
        &format!(
            "INSERT INTO finding_occurrences (scan_id, finding_id, project_id, severity, change, \
                                              file_path, start_line, end_line) VALUES {} \
             ON CONFLICT (scan_id, finding_id) DO NOTHING",
            rows.join(", ")
        ),
        values,
    ))
    .await?;
    Ok(())
}

/// Dismisses the open findings a chunk reports as suppressed, one statement per distinct
/// reason and comment (reports use few). A default-branch scan dismisses any open finding it
/// sees suppressed; a branch's scan only those it added, since it changes no other finding.
async fn dismiss_suppressed(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    role: Role,
    chunk: &[Prepared],
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<()> {
    let mut groups: HashMap<&Suppression, Vec<&[u8; 32]>> = HashMap::new();
    for p in chunk {
        if let Some(s) = &p.suppression {
            groups.entry(s).or_default().push(&p.fingerprint);
        }
    }
    for (suppression, fingerprints) in groups {
        let mut values: Vec<Value> = vec![
            now.into(),
            suppression.reason.as_str().into(),
            suppression.comment.clone().into(),
            scan.repository_id.into(),
            scan.project_id.into(),
        ];
        let only_added = if role == Role::Branch {
            values.push(scan.id.into());
            " AND NOT on_default_branch AND first_seen_scan_id = $6"
        } else {
            ""
        };
        let first = values.len() + 1;
        values.extend(fingerprints.iter().map(|f| Value::from(f.to_vec())));
        let sql = format!(
            "UPDATE findings SET status = 'dismissed', dismissed_at = $1, dismissed_reason = $2, \
                    dismissed_comment = $3, dismissed_until = NULL, dismissed_by_user_id = NULL, \
                    confirmed_at = NULL, updated_at = $1 \
              WHERE repository_id = $4 AND project_id = $5 AND status = 'open'{only_added} \
                AND fingerprint IN ({})",
            crate::db::sql::placeholders(first, fingerprints.len())
        );
        txn.execute_raw(statement(txn, &sql, values)).await?;
    }
    Ok(())
}
