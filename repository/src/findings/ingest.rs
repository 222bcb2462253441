//! The ingest engine: a completing scan's findings deduplicated against its repository's,
//! its sightings recorded as runs of its stream (`runs.rs`) and, for a full scan of the
//! tracked branch, what it no longer sees marked fixed. Called by `scans.complete` inside the
//! scan's transaction.
//!
//! Ingestion is set-based: a scan of 100k findings costs a few dozen multi-row statements,
//! never a round trip per finding. It writes what changed: a finding row only when its state
//! does (new, reopened, moved, retitled, rescored, first seen on the default branch), a run
//! only when a finding appears, changes or disappears in the stream. A rescan that sees what
//! the scan before it saw reads every finding and writes none; when it came whole with the
//! digest of the scan before, it does not even compare ([`runs::open_stream`]).

use std::collections::{HashMap, HashSet};

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
use crate::findings::runs::{self, Meeting, Seen, Stream};

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
     first_seen_at, created_at, updated_at";

/// A row of the Postgres ingest statement's `u` as the findings' columns
/// ([`FINDING_COLUMNS`]), the shared values being `$1`–`$4` and `$20`.
const INPUT_ROW: &str = "u.id, $1, $2, u.fingerprint, u.scanner, u.category, u.rule_id, \
     u.title, u.severity, u.severity, NULLIF(u.cwe, 0), NULLIF(u.cve, ''), u.file_path, \
     u.start_line, u.end_line, NULLIF(u.package_name, ''), NULLIF(u.package_version, ''), \
     NULLIF(u.details, 'null'::jsonb), 'open', $20, $3, $4, $4, $4";

/// What a default-branch sighting that changes a finding does to it: mark it seen there,
/// refresh title, location and severity (unless a person overrode it). Only rows whose state
/// differs get here ([`Prior::needs_write`]); when and how often a finding was seen is in
/// its runs.
const REFRESH: &str = "on_default_branch = true, \
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
    /// A scan of any other ref: records what it saw and adds the findings nobody has seen
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
    /// What a scan that reports this finding saw of it.
    pub(crate) fn seen(&self) -> Seen<'_> {
        Seen {
            severity: self.severity.as_i16(),
            file_path: self.file_path.as_deref(),
            start_line: self.start_line,
            end_line: self.end_line,
        }
    }

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
    /// Where the scan stands in its stream, for its row.
    pub stream: Stream,
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
        .map(|(i, f)| prepare_one(f, || format!("findings[{i}]"), None))
        .collect::<Result<Vec<_>>>()?;
    dedup(&mut prepared);
    Ok(prepared)
}

/// What a scan saw, from its prepared findings (sorted by fingerprint): per bucket of
/// fingerprints, eight bytes of the SHA-256 of each finding's fingerprint and of everything a
/// sighting may change on its finding or run (title, severity, location) or ask of it (a
/// suppression), and the SHA-256 of those. Two scans with the same digest write the same
/// rows; two with the same digest in a bucket write the same rows for its findings.
///
/// About four findings per bucket, so that a change touches few of them: 16 to 16,384
/// buckets (8 bytes to 128 KiB per stream). A scan whose bucket count differs from the
/// previous one's compares every finding.
pub(crate) fn digest(prepared: &[Prepared]) -> runs::Digest {
    use sha2::{Digest, Sha256};
    fn text(hasher: &mut Sha256, value: Option<&str>) {
        match value {
            Some(v) => {
                hasher.update([1]);
                hasher.update(u64::try_from(v.len()).unwrap_or(u64::MAX).to_be_bytes());
                hasher.update(v.as_bytes());
            }
            None => hasher.update([0]),
        }
    }
    let bits = (prepared.len() / 4)
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .clamp(4, 14);
    let mut buckets = vec![0u8; 8 << bits];
    let bucket = |p: &Prepared| runs::bucket_of(&p.fingerprint, bits);
    for group in prepared.chunk_by(|a, b| bucket(a) == bucket(b)) {
        let mut hasher = Sha256::new();
        for p in group {
            let f = &p.finding;
            hasher.update(p.fingerprint);
            hasher.update(f.severity.as_i16().to_be_bytes());
            text(&mut hasher, Some(&f.title));
            text(&mut hasher, f.file_path.as_deref());
            for line in [f.start_line, f.end_line] {
                hasher.update(line.unwrap_or(0).to_be_bytes());
            }
            let suppression = p.suppression.as_ref();
            text(&mut hasher, suppression.map(|s| s.reason.as_str()));
            text(&mut hasher, suppression.and_then(|s| s.comment.as_deref()));
        }
        let at = bucket(&group[0]) * 8;
        buckets[at..at + 8].copy_from_slice(&hasher.finalize()[..8]);
    }
    runs::Digest {
        whole: Sha256::digest(&buckets).into(),
        bits,
        buckets,
    }
}

/// Sorts a chunk by fingerprint and drops repeats (the first sighting wins).
pub(crate) fn dedup(chunk: &mut Vec<Prepared>) {
    chunk.sort_by_key(|p| p.fingerprint);
    chunk.dedup_by_key(|p| p.fingerprint);
}

/// Validates one finding, naming a bad field under `at` (`findings[3].title`); `at` is
/// formatted only for a bad finding, so that a valid one costs no allocation for its name.
pub(crate) fn prepare_one(
    f: NewFinding,
    at: impl FnOnce() -> String,
    suppression: Option<Suppression>,
) -> Result<Prepared> {
    let f = validate_finding(f).map_err(|err| err.within(&at()))?;
    Ok(Prepared {
        fingerprint: f.fingerprint(),
        finding: f,
        suppression,
    })
}

/// A finding's fields checked and trimmed, a bad one named as in [`NewFinding`].
fn validate_finding(mut f: NewFinding) -> Result<NewFinding> {
    f.scanner = validate::text("scanner", &f.scanner, 1, 64)?;
    f.rule_id = validate::text("rule_id", &f.rule_id, 1, 512)?;
    f.title = validate::text("title", &f.title, 1, 512)?;
    f.file_path = validate::optional_text("file_path", f.file_path.as_deref(), 4096)?;
    match (f.start_line, f.end_line) {
        (Some(start), _) if start < 1 => {
            return Err(Error::invalid("start_line", "must be at least 1"));
        }
        (Some(start), Some(end)) if end < start => {
            return Err(Error::invalid("end_line", "must not be before start_line"));
        }
        (None, Some(_)) => {
            return Err(Error::invalid("start_line", "is required with end_line"));
        }
        _ => {}
    }
    f.cve = validate::optional_text("cve", f.cve.as_deref(), 64)?;
    f.package_name = validate::optional_text("package_name", f.package_name.as_deref(), 512)?;
    f.package_version =
        validate::optional_text("package_version", f.package_version.as_deref(), 128)?;
    if f.cwe.is_some_and(|cwe| cwe < 1) {
        return Err(Error::invalid("cwe", "must be a positive CWE number"));
    }
    if f.details.as_ref().is_some_and(serde_json::Value::is_null) {
        f.details = None;
    }
    if let Some(details) = &f.details {
        validate::json("details", details)?;
    }
    Ok(f)
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
/// [`Ingest::start`] numbers the scan in its stream, chunks of findings are written as they
/// come ([`Ingest::write`], so a streamed report's memory is one chunk plus the ids of the
/// runs it kept), then [`Ingest::finish`] closes the runs of what the scan did not see, marks
/// fixed what a full scan of the default branch no longer sees and counts what the scan saw.
pub(crate) struct Ingest<'a, C> {
    txn: &'a C,
    scan: &'a scans::Model,
    role: Role,
    stream: Stream,
    now: chrono::DateTime<chrono::FixedOffset>,
    new: i32,
    /// Findings whose open run from an earlier scan this scan saw unchanged: every other
    /// such run is closed by [`Ingest::finish`].
    kept: HashSet<Uuid>,
    /// The buckets of fingerprints that match the previous scan's, which are not compared,
    /// and the number of findings written there.
    unchanged: Option<runs::Unchanged>,
    skipped: usize,
}

/// What one chunk's statement reports back.
struct Written {
    new: i32,
    kept: Vec<Uuid>,
}

impl<'a, C: ConnectionTrait> Ingest<'a, C> {
    /// Starts the ingest of a scan; `digest` ([`digest`]) sums up what it saw when it came
    /// whole.
    pub(crate) async fn start(
        txn: &'a C,
        scan: &'a scans::Model,
        digest: Option<&runs::Digest>,
    ) -> Result<Self> {
        let (stream, unchanged) = runs::open_stream(txn, scan, digest).await?;
        Ok(Self {
            txn,
            scan,
            role: Role::of(scan),
            stream,
            now: now(),
            new: 0,
            kept: HashSet::new(),
            unchanged,
            skipped: 0,
        })
    }

    /// Rows per chunk that [`Ingest::write`] sends in one statement.
    pub(crate) fn chunk_size(&self) -> usize {
        chunk_size(self.txn)
    }

    /// Writes prepared findings (deduplicated and sorted by [`dedup`]), split into statements
    /// of [`Ingest::chunk_size`] rows.
    pub(crate) async fn write(&mut self, prepared: &[Prepared]) -> Result<()> {
        // A repeat, or a bucket whose digest is the previous scan's: every finding and run
        // there is as the scan before left it.
        if !self.stream.repeats {
            let changed: Vec<&Prepared> = prepared
                .iter()
                .filter(|p| {
                    !self
                        .unchanged
                        .as_ref()
                        .is_some_and(|u| u.holds(&p.fingerprint))
                })
                .collect();
            self.skipped += prepared.len() - changed.len();
            for chunk in changed.chunks(self.chunk_size()) {
                let written = if is_postgres(self.txn) {
                    self.write_chunk_postgres(chunk).await?
                } else {
                    self.write_chunk_sqlite(chunk).await?
                };
                self.new += written.new;
                self.kept.extend(written.kept);
            }
        }
        // A suppression may still dismiss a finding a person reopened since.
        for chunk in prepared.chunks(self.chunk_size()) {
            dismiss_suppressed(self.txn, self.scan, self.role, chunk, self.now).await?;
        }
        Ok(())
    }

    pub(crate) async fn finish(self) -> Result<IngestSummary> {
        let (txn, scan, stream) = (self.txn, self.scan, &self.stream);
        if !stream.repeats {
            let unchanged = self.unchanged.as_ref().map(|u| (u, self.skipped));
            runs::close_unseen(txn, stream, &self.kept, unchanged).await?;
        }
        let seen = Tally::count(txn, scan, stream, self.role == Role::DefaultFull).await?;
        // A full default-branch scan fixes the open default-branch findings it did not see:
        // as many as the repository has beyond those its stream holds open runs of (one per
        // finding), counted in one snapshot. A rescan that saw them all probes none.
        let fixed = if seen.open_in_repository > seen.open_on_default {
            // One probe of the runs' key per open finding, fenced with `OFFSET 0` on Postgres
            // as in `record_deltas`: planned with a one-row estimate (tables newer than their
            // statistics), the anti-join matched the finding in a join filter after reading
            // every run of the stream, for every finding (5 s for 5,000). A finding this scan
            // added has the run it opened, so it needs no probe.
            let fence = if is_postgres(txn) { " OFFSET 0" } else { "" };
            let result = txn
                .execute_raw(statement(
                    txn,
                    &format!(
                        "UPDATE findings SET status = 'fixed', fixed_at = $3, \
                                fixed_in_scan_id = $4, updated_at = $3 \
                          WHERE repository_id = $5 AND status = 'open' AND on_default_branch \
                            AND (first_seen_scan_id IS NULL OR first_seen_scan_id <> $4) \
                            AND NOT EXISTS (SELECT 1 FROM sighting_runs o \
                                             WHERE {} AND o.finding_id = findings.id{fence})",
                        runs::OPEN_IN_STREAM_1_2
                    ),
                    [
                        stream.project_id.into(),
                        stream.id.into(),
                        self.now.into(),
                        scan.id.into(),
                        scan.repository_id.into(),
                    ],
                ))
                .await?;
            i32::try_from(result.rows_affected()).unwrap_or(i32::MAX)
        } else {
            0
        };
        if self.role == Role::Branch {
            record_deltas(txn, scan, stream).await?;
        }
        Ok(IngestSummary {
            counts: seen.counts,
            dismissed: i32::try_from(seen.dismissed).unwrap_or(i32::MAX),
            total: i32::try_from(seen.total).unwrap_or(i32::MAX),
            new: self.new,
            fixed,
            stream: self.stream,
        })
    }

    /// A chunk on Postgres, in one statement: the chunk travels once, as one array parameter
    /// per column (`unnest`), so the statement is parsed and planned once whatever its row
    /// count. Each row is compared with its finding and with the finding's open run in the
    /// stream; only what differs is written (see [`Prior::needs_write`] and
    /// [`runs::OpenRun::meets`], the same rules SQLite's path applies in Rust). A finding is
    /// new when this statement inserted its row (`xmax = 0`); reopened when its status was
    /// `fixed` in the statement's snapshot (and the scan reopens), which under the repository
    /// lock is the latest committed status, since only completions move a finding into or out
    /// of `fixed`. A branch's scan inserts only the findings nobody has seen.
    ///
    /// New findings are a plain `INSERT`: only completions insert findings, and they hold the
    /// repository lock, so a fingerprint the probe did not find cannot appear before the
    /// statement ends. `ON CONFLICT` would make each of them a speculative insertion (one more
    /// probe of the unique index and one more WAL record per row: 143–165 ms against 133–151 ms
    /// per 5,000 new findings in the bench); it stays for the existing rows a sighting changes.
    ///
    /// sea-query binds arrays without NULL elements, so optional values travel as a sentinel
    /// that validation rules out ('' for text, 0 for numbers, JSON `null`) and `NULLIF` turns
    /// back into NULL.
    async fn write_chunk_postgres(&self, chunk: &[&Prepared]) -> Result<Written> {
        let (txn, scan, role, stream) = (self.txn, self.scan, self.role, &self.stream);
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let values: Vec<Value> = vec![
            scan.project_id.into(),
            scan.repository_id.into(),
            scan.id.into(),
            self.now.into(),
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
            stream.id.into(),
            stream.seq.into(),
        ];
        // Each row's finding and open run are lateral probes of an index, one per row whatever
        // the planner estimates: after five executions Postgres plans this statement
        // generically, guesses ten rows for each `unnest`, and as a plain join it chose a
        // nested loop over the whole chunk for every row (measured: 2.5 s per 5,000 existing
        // findings). The run's probe is fenced (`OFFSET 0`) so that it stays a subquery whose
        // key is the whole (project, stream, finding) prefix, not a join filter, and the runs
        // that close are found again by the tuple ids that probe read (a TID scan): joined
        // back on their key, a generic plan estimated one run for the stream and looped over
        // the chunk for each of the stream's runs (8.8–12 s per 5,000-row chunk of a rescan
        // of 100,000, until the bench hit the 30 s statement timeout). Under the repository
        // lock nothing else moves those rows in between.
        let on_conflict = role.on_conflict();
        let sql = format!(
            "WITH input AS ( \
               SELECT x.*, NULLIF(x.file_path_, '') AS file_path, \
                      NULLIF(x.start_line_, 0) AS start_line, NULLIF(x.end_line_, 0) AS end_line \
                 FROM unnest($5::uuid[], $6::bytea[], $7::text[], $8::text[], $9::text[], \
                             $10::text[], $11::int2[], $12::int4[], $13::text[], $14::text[], \
                             $15::int4[], $16::int4[], $17::text[], $18::text[], $19::jsonb[]) \
                   AS x(id, fingerprint, scanner, category, rule_id, title, severity, cwe, cve, \
                        file_path_, start_line_, end_line_, package_name, package_version, \
                        details) \
             ), u AS ( \
               SELECT x.*, p.id AS prior_id, p.status AS prior, r.first_seq AS run_first, \
                      r.ctid AS run_ctid, \
                      (p.id IS NULL OR ($20 AND ( \
                         NOT p.on_default_branch OR p.title <> x.title \
                         OR p.scanner_severity <> x.severity \
                         OR (NOT p.severity_overridden AND p.severity <> x.severity) \
                         OR p.file_path IS DISTINCT FROM x.file_path \
                         OR p.start_line IS DISTINCT FROM x.start_line \
                         OR p.end_line IS DISTINCT FROM x.end_line \
                         OR (p.status = 'fixed' AND $21)))) AS write_finding, \
                      (r.first_seq IS DISTINCT FROM $23 AND ( \
                         r.first_seq IS NULL OR r.severity <> x.severity \
                         OR r.file_path IS DISTINCT FROM x.file_path \
                         OR r.start_line IS DISTINCT FROM x.start_line \
                         OR r.end_line IS DISTINCT FROM x.end_line \
                         OR (p.status = 'fixed' AND $21))) AS new_run \
                 FROM input x \
                 LEFT JOIN LATERAL (SELECT f.id, f.status, f.title, f.severity, \
                                           f.scanner_severity, f.severity_overridden, \
                                           f.file_path, f.start_line, f.end_line, \
                                           f.on_default_branch \
                                      FROM findings f \
                                     WHERE f.repository_id = $2 \
                                       AND f.fingerprint = x.fingerprint) p ON true \
                 LEFT JOIN LATERAL (SELECT o.ctid, o.first_seq, o.severity, o.file_path, \
                                           o.start_line, o.end_line \
                                      FROM sighting_runs o \
                                     WHERE o.project_id = $1 AND o.stream_id = $22 \
                                       AND o.finding_id = p.id AND o.last_seq IS NULL \
                                    OFFSET 0) r \
                   ON true \
             ), inserted AS ( \
               INSERT INTO findings ({FINDING_COLUMNS}) \
               SELECT {INPUT_ROW} FROM u WHERE u.prior_id IS NULL \
             ), refreshed AS ( \
               INSERT INTO findings ({FINDING_COLUMNS}) \
               SELECT {INPUT_ROW} FROM u WHERE u.write_finding AND u.prior_id IS NOT NULL \
               {on_conflict} \
             ), closed AS ( \
               UPDATE sighting_runs SET last_seq = $23 - 1 \
                WHERE ctid = ANY (ARRAY(SELECT u.run_ctid FROM u \
                                         WHERE u.new_run AND u.run_ctid IS NOT NULL)) \
             ), opened AS ( \
               INSERT INTO sighting_runs (project_id, stream_id, finding_id, first_seq, change, \
                                          severity, file_path, start_line, end_line) \
               SELECT $1, $22, COALESCE(u.prior_id, u.id), $23, \
                      CASE WHEN u.prior_id IS NULL THEN 'new' \
                           WHEN u.prior = 'fixed' AND $21 THEN 'reopened' ELSE 'existing' END, \
                      u.severity, u.file_path, u.start_line, u.end_line \
                 FROM u WHERE u.new_run \
               RETURNING change \
             ) \
             SELECT (SELECT count(*) FROM opened WHERE change = 'new') AS new, \
                    ARRAY(SELECT u.prior_id FROM u \
                           WHERE NOT u.new_run AND u.run_first < $23) AS kept"
        );
        let row = txn
            .query_one_raw(statement(txn, &sql, values))
            .await?
            .ok_or_else(|| Error::Internal("the ingest statement returned no row".into()))?;
        let new: i64 = row.try_get("", "new")?;
        Ok(Written {
            new: i32::try_from(new).unwrap_or(i32::MAX),
            kept: row.try_get("", "kept")?,
        })
    }

    /// A chunk on SQLite, which has no arrays and no data-modifying `WITH`: the findings'
    /// prior states and their open runs, the decisions in Rust, then a multi-row upsert of
    /// the findings that change (a branch's scan inserts only what nobody has seen), the runs
    /// that close and the runs that open.
    async fn write_chunk_sqlite(&self, chunk: &[&Prepared]) -> Result<Written> {
        let (txn, scan, role, stream) = (self.txn, self.scan, self.role, &self.stream);
        let previous = previous_states(txn, scan.repository_id, chunk).await?;
        let ids: Vec<Uuid> = previous.values().map(|p| p.id).collect();
        let open = runs::open_runs(txn, stream, &ids).await?;
        let reopens = role == Role::DefaultFull;
        let writes: Vec<&Prepared> = chunk
            .iter()
            .copied()
            .filter(|p| match previous.get(&p.fingerprint) {
                None => true,
                Some(prior) => role != Role::Branch && prior.needs_write(&p.finding, reopens),
            })
            .collect();
        let mut written = upsert(txn, scan, role, &writes, self.now).await?;
        let mut outcome = Written {
            new: 0,
            kept: Vec::new(),
        };
        let (mut closing, mut opening) = (Vec::new(), Vec::new());
        for p in chunk {
            let prior = previous.get(&p.fingerprint);
            let Some(finding_id) = prior
                .map(|prior| prior.id)
                .or_else(|| written.remove(&p.fingerprint))
            else {
                return Err(Error::Internal(
                    "the upsert returned no id for a finding".into(),
                ));
            };
            let reopened =
                reopens && prior.is_some_and(|p| p.status == FindingStatus::Fixed.as_str());
            let run = open.get(&finding_id);
            match run.map(|run| run.meets(p.finding.seen(), reopened, stream.seq)) {
                Some(Meeting::Repeat) => continue,
                Some(Meeting::Kept) => {
                    outcome.kept.push(finding_id);
                    continue;
                }
                Some(Meeting::Replaced) => closing.push(finding_id),
                None => {}
            }
            let change = match prior {
                None => OccurrenceChange::New,
                Some(_) if reopened => OccurrenceChange::Reopened,
                Some(_) => OccurrenceChange::Existing,
            };
            outcome.new += i32::from(change == OccurrenceChange::New);
            opening.push((finding_id, p.finding.seen(), change));
        }
        runs::close(txn, stream, &closing).await?;
        runs::open(txn, stream, &opening).await?;
        Ok(outcome)
    }
}

/// What a completed scan saw, counted from its stream's open runs (exactly what it saw, once
/// [`runs::close_unseen`] ran): by effective severity (a person's override counts), with
/// dismissed findings apart.
struct Tally {
    counts: SeverityCounts,
    dismissed: i64,
    total: i64,
    /// Of those, the findings open on the default branch.
    open_on_default: i64,
    /// The repository's findings open on the default branch, when asked for (else 0).
    open_in_repository: i64,
}

impl Tally {
    /// One statement, so one snapshot for both sides of the fixed sweep's test. One
    /// primary-key probe per run, as a correlated subquery: a join lets a cached generic
    /// plan, costed for the average scan after large completions, hash the whole findings
    /// table for every small one. The repository's open findings are a range of the partial
    /// index `findings_repository_default_open_idx`.
    async fn count(
        txn: &impl ConnectionTrait,
        scan: &scans::Model,
        stream: &Stream,
        with_repository: bool,
    ) -> Result<Self> {
        // k = severity * 4 + 1 (dismissed) or + 2 (open on the default branch); -1 is the
        // repository's row.
        let repository = if with_repository {
            " UNION ALL SELECT -1 AS k, COUNT(*) AS n FROM findings \
               WHERE repository_id = $3 AND status = 'open' AND on_default_branch"
        } else {
            ""
        };
        let mut values: Vec<Value> = vec![stream.project_id.into(), stream.id.into()];
        if with_repository {
            values.push(scan.repository_id.into());
        }
        let rows = txn
            .query_all_raw(statement(
                txn,
                &format!(
                    "SELECT k, COUNT(*) AS n FROM ( \
                       SELECT (SELECT f.severity * 4 \
                                      + CASE WHEN f.status = 'dismissed' THEN 1 \
                                             WHEN f.status = 'open' AND f.on_default_branch \
                                             THEN 2 ELSE 0 END \
                                 FROM findings f WHERE f.id = o.finding_id) AS k \
                         FROM sighting_runs o WHERE {}) AS seen \
                      GROUP BY k{repository}",
                    runs::OPEN_IN_STREAM_1_2
                ),
                values,
            ))
            .await?;
        let mut seen = Tally {
            counts: SeverityCounts::default(),
            dismissed: 0,
            total: 0,
            open_on_default: 0,
            open_in_repository: 0,
        };
        for row in &rows {
            let k: i32 = row.try_get("", "k")?;
            let n: i64 = row.try_get("", "n")?;
            if k < 0 {
                seen.open_in_repository = n;
                continue;
            }
            seen.total += n;
            match k % 4 {
                1 => seen.dismissed += n,
                bits => {
                    if bits == 2 {
                        seen.open_on_default += n;
                    }
                    let severity = i16::try_from(k / 4).unwrap_or_default();
                    let severity = Severity::from_i16(severity).unwrap_or(Severity::Unknown);
                    seen.counts.add(severity, n);
                }
            }
        }
        Ok(seen)
    }
}

/// Keeps what a branch's scan changes against the default branch as it stands now, in the
/// completion's transaction (under the repository lock, so no default-branch completion moves
/// in between): each sighting is introduced unless its finding is known there (on the
/// default branch and not fixed); a full scan also records the default branch's open findings
/// it did not see. `findings().compare` pages through these rows. What the scan saw is its
/// stream's open runs.
async fn record_deltas(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    stream: &Stream,
) -> Result<()> {
    txn.execute_raw(statement(
        txn,
        &format!(
            "INSERT INTO scan_deltas (scan_id, delta, finding_id) \
             SELECT $3, CASE WHEN f.on_default_branch AND f.status <> 'fixed' \
                             THEN 'unchanged' ELSE 'introduced' END, o.finding_id \
               FROM sighting_runs o JOIN findings f ON f.id = o.finding_id \
              WHERE {}",
            runs::OPEN_IN_STREAM_1_2
        ),
        [stream.project_id.into(), stream.id.into(), scan.id.into()],
    ))
    .await?;
    if scan.kind == ScanKind::Full.as_str() {
        // `OFFSET 0` keeps Postgres from turning the NOT EXISTS into an anti-join: with the
        // repository's findings newer than its statistics (estimated at one row), it chose a
        // nested loop whose inner side read every sighting of the scan for each finding
        // (100,000 × 150,000 comparisons; the full bench's compare rows hit the statement
        // timeout). Kept a subquery, it is one primary-key probe per finding whatever the
        // estimate. SQLite has no OFFSET without LIMIT, and probes the key by itself.
        let fence = if is_postgres(txn) { " OFFSET 0" } else { "" };
        let sql = format!(
            "INSERT INTO scan_deltas (scan_id, delta, finding_id) \
             SELECT $3, 'absent', f.id FROM findings f \
              WHERE f.repository_id = $4 AND f.status = 'open' AND f.on_default_branch \
                AND NOT EXISTS (SELECT 1 FROM sighting_runs o \
                                 WHERE {} AND o.finding_id = f.id{fence})",
            runs::OPEN_IN_STREAM_1_2
        );
        txn.execute_raw(statement(
            txn,
            &sql,
            [
                stream.project_id.into(),
                stream.id.into(),
                scan.id.into(),
                scan.repository_id.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

/// A finding as it stands before a chunk writes it: enough to tell whether the chunk's
/// sighting changes it.
struct Prior {
    id: Uuid,
    status: String,
    title: String,
    severity: i16,
    scanner_severity: i16,
    severity_overridden: bool,
    file_path: Option<String>,
    start_line: Option<i32>,
    end_line: Option<i32>,
    on_default_branch: bool,
}

impl Prior {
    /// Whether a default-branch sighting of `f` changes this finding's row (the upsert's
    /// `REFRESH`, and `REOPEN` when the scan `reopens`): Postgres's statement applies the same
    /// rule in SQL.
    fn needs_write(&self, f: &NewFinding, reopens: bool) -> bool {
        let severity = f.severity.as_i16();
        !self.on_default_branch
            || self.title != f.title
            || self.scanner_severity != severity
            || (!self.severity_overridden && self.severity != severity)
            || self.file_path != f.file_path
            || self.start_line != f.start_line
            || self.end_line != f.end_line
            || (reopens && self.status == FindingStatus::Fixed.as_str())
    }
}

/// The prior state of those fingerprints that already exist in the repository: absent means
/// new, `fixed` means reopened (by a scan that reopens).
async fn previous_states(
    txn: &impl ConnectionTrait,
    repository_id: Uuid,
    chunk: &[&Prepared],
) -> Result<HashMap<[u8; 32], Prior>> {
    let placeholders = crate::db::sql::placeholders(2, chunk.len());
    let mut values: Vec<Value> = vec![repository_id.into()];
    values.extend(chunk.iter().map(|p| Value::from(p.fingerprint.to_vec())));
    let sql = format!(
        "SELECT id, fingerprint, status, title, severity, scanner_severity, severity_overridden, \
                file_path, start_line, end_line, on_default_branch FROM findings \
          WHERE repository_id = $1 AND fingerprint IN ({placeholders})"
    );
    let rows = txn.query_all_raw(statement(txn, &sql, values)).await?;
    rows.iter()
        .map(|row| {
            Ok((
                fingerprint_of(row)?,
                Prior {
                    id: row.try_get("", "id")?,
                    status: row.try_get("", "status")?,
                    title: row.try_get("", "title")?,
                    severity: row.try_get("", "severity")?,
                    scanner_severity: row.try_get("", "scanner_severity")?,
                    severity_overridden: row.try_get("", "severity_overridden")?,
                    file_path: row.try_get("", "file_path")?,
                    start_line: row.try_get("", "start_line")?,
                    end_line: row.try_get("", "end_line")?,
                    on_default_branch: row.try_get("", "on_default_branch")?,
                },
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
              'open', $5, $3, $4, $4, $4)",
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
