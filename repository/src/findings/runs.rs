//! Sightings as runs (ARCHITECTURE.md, "Sightings"). A repository's scans of one ref, kind and
//! branch role form a stream (`scan_streams`), numbered in completion order (`stream_seq`).
//! A run (`sighting_runs`) says that every scan of a stream numbered `first_seq` through
//! `last_seq` saw a finding with one severity and location; `last_seq` is `NULL` while the
//! stream's latest scan still sees it.
//!
//! The invariant: a finding has at most one open run per stream, and the open runs of a
//! stream are exactly what its latest scan saw. A completion keeps it by opening a run for
//! each finding that appears or changes, closing the run of each that changed or that it no
//! longer sees ([`close_unseen`]), and touching nothing else.

use std::collections::{HashMap, HashSet};

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;
use vega_entity::{OccurrenceChange, scans};

use crate::db::sql::{is_postgres, placeholders, statement};
use crate::error::{Error, Result};

/// The runs open in the stream `$1` (project), `$2` (stream id), as `o`.
pub(crate) const OPEN_IN_STREAM_1_2: &str =
    "o.project_id = $1 AND o.stream_id = $2 AND o.last_seq IS NULL";

/// The runs `o` that cover the scan `$1`: what it saw. The scan's stream and number are
/// subqueries of their own (one primary-key probe each, run once), so the runs are one
/// range of their primary key `(project, stream, finding)`, walked in finding order; joined
/// to the scan instead, Postgres hashed the stream's every run and sorted them for a page. A
/// scan that did not succeed has no stream, and so no runs.
pub(crate) const SEEN_BY_SCAN_1: &str = "\
       o.project_id = (SELECT project_id FROM scans WHERE id = $1) \
   AND o.stream_id = (SELECT stream_id FROM scans WHERE id = $1) \
   AND o.first_seq <= (SELECT stream_seq FROM scans WHERE id = $1) \
   AND (o.last_seq IS NULL OR o.last_seq >= (SELECT stream_seq FROM scans WHERE id = $1))";

/// What the scan `$1` made of a finding it saw: the run's change for the run's first scan,
/// `existing` for the later ones.
pub(crate) const CHANGE_AT_SCAN_1: &str = "CASE WHEN o.first_seq = \
       (SELECT stream_seq FROM scans WHERE id = $1) THEN o.change ELSE 'existing' END";

/// Rows per `IN (...)` list on SQLite, far below its bind-parameter limit.
const SQLITE_IDS: usize = 1000;

/// A completing scan's place in its stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stream {
    pub project_id: Uuid,
    pub id: Uuid,
    /// The scan's number in the stream; the scan before it is `seq - 1`.
    pub seq: i64,
    /// The scan saw what the scan before it saw (same digest), and nothing else changes the
    /// findings it saw: its ingest writes nothing ([`open_stream`]).
    pub repeats: bool,
}

/// What a scan saw, summed up when it came whole ([`crate::findings::ingest::digest`]): the
/// SHA-256 of it all, and eight bytes of SHA-256 per bucket of fingerprints (the top
/// `bits` bits of each).
#[derive(Debug, Clone)]
pub(crate) struct Digest {
    pub whole: [u8; 32],
    pub bits: u32,
    pub buckets: Vec<u8>,
}

/// A fingerprint's bucket among `2^bits` (at most 16 bits).
pub(crate) fn bucket_of(fingerprint: &[u8], bits: u32) -> usize {
    let top = u16::from_be_bytes([
        fingerprint.first().copied().unwrap_or(0),
        fingerprint.get(1).copied().unwrap_or(0),
    ]);
    usize::from(top >> (16 - bits.clamp(1, 16)))
}

/// The buckets whose digest is the previous scan's ([`open_stream`]): the scan saw there what
/// the scan before it saw, so their findings' runs go on without being compared.
#[derive(Debug, Clone)]
pub(crate) struct Unchanged {
    pub bits: u32,
    pub buckets: Vec<bool>,
}

impl Unchanged {
    /// Whether `fingerprint` falls in an unchanged bucket.
    pub(crate) fn holds(&self, fingerprint: &[u8]) -> bool {
        self.buckets
            .get(bucket_of(fingerprint, self.bits))
            .copied()
            .unwrap_or(false)
    }
}

/// Numbers a completing scan in its stream, creating the stream with its first scan, and
/// records `digest`, what the scan saw when it came whole (`None` for a streamed report).
/// Under the repository's ingest lock, so completions of a stream are numbered in commit
/// order.
///
/// A digest is compared with the previous scan's only when no other stream can have changed
/// the findings since: a branch's scan changes no existing finding, and a default-branch scan
/// qualifies when its stream is the repository's only default-branch stream (another one may
/// have moved, retitled or fixed a finding in between). Then the scan repeats its predecessor
/// when the whole digests match, and otherwise skips the buckets whose digests match.
pub(crate) async fn open_stream(
    txn: &impl ConnectionTrait,
    scan: &scans::Model,
    digest: Option<&Digest>,
) -> Result<(Stream, Option<Unchanged>)> {
    let ref_name = scan.ref_name.clone().unwrap_or_default();
    let (repeats, unchanged) = match digest {
        Some(digest) => {
            let row = txn
                .query_one_raw(statement(
                    txn,
                    "SELECT last_digest, bucket_digests, \
                            (SELECT COUNT(*) FROM scan_streams o \
                              WHERE o.repository_id = $1 AND o.default_branch \
                                AND NOT (o.ref_name = $2 AND o.kind = $3)) AS others \
                       FROM scan_streams \
                      WHERE repository_id = $1 AND ref_name = $2 AND kind = $3 \
                        AND default_branch = $4",
                    [
                        scan.repository_id.into(),
                        ref_name.clone().into(),
                        scan.kind.clone().into(),
                        scan.tracks_default_branch.into(),
                    ],
                ))
                .await?;
            match row {
                Some(row) => {
                    let last: Option<Vec<u8>> = row.try_get("", "last_digest")?;
                    let buckets: Option<Vec<u8>> = row.try_get("", "bucket_digests")?;
                    let others: i64 = row.try_get("", "others")?;
                    if !scan.tracks_default_branch || others == 0 {
                        let unchanged =
                            buckets
                                .filter(|b| b.len() == digest.buckets.len())
                                .map(|b| Unchanged {
                                    bits: digest.bits,
                                    buckets: b
                                        .chunks(8)
                                        .zip(digest.buckets.chunks(8))
                                        .map(|(was, is)| was == is)
                                        .collect(),
                                });
                        (last.as_deref() == Some(&digest.whole[..]), unchanged)
                    } else {
                        (false, None)
                    }
                }
                None => (false, None),
            }
        }
        None => (false, None),
    };
    let row = txn
        .query_one_raw(statement(
            txn,
            "INSERT INTO scan_streams (project_id, id, repository_id, ref_name, kind, \
                                       default_branch, last_seq, last_digest, bucket_digests) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8) \
             ON CONFLICT (repository_id, ref_name, kind, default_branch, project_id) \
             DO UPDATE SET last_seq = scan_streams.last_seq + 1, \
                           last_digest = excluded.last_digest, \
                           bucket_digests = excluded.bucket_digests \
             RETURNING id, last_seq",
            [
                scan.project_id.into(),
                Uuid::now_v7().into(),
                scan.repository_id.into(),
                ref_name.into(),
                scan.kind.clone().into(),
                scan.tracks_default_branch.into(),
                digest.map(|d| d.whole.to_vec()).into(),
                digest.map(|d| d.buckets.clone()).into(),
            ],
        ))
        .await?
        .ok_or_else(|| Error::Internal("the stream upsert returned no row".into()))?;
    let stream = Stream {
        project_id: scan.project_id,
        id: row.try_get("", "id")?,
        seq: row.try_get("", "last_seq")?,
        repeats,
    };
    Ok((stream, unchanged))
}

/// What a scan saw of a finding: a run holds it unchanged from scan to scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen<'a> {
    pub severity: i16,
    pub file_path: Option<&'a str>,
    pub start_line: Option<i32>,
    pub end_line: Option<i32>,
}

/// A finding's open run in a stream, as a chunk compares a sighting with it.
pub(crate) struct OpenRun {
    first_seq: i64,
    severity: i16,
    file_path: Option<String>,
    start_line: Option<i32>,
    end_line: Option<i32>,
}

/// What a sighting does to its finding's open run ([`OpenRun::meets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meeting {
    /// The scan opened the run itself: a repeat in a later chunk (the first sighting wins).
    Repeat,
    /// The run goes on.
    Kept,
    /// Severity or location changed, or the finding reopens: a new run replaces it.
    Replaced,
}

impl OpenRun {
    /// What a sighting `seen` by the scan numbered `seq` does to this run. Postgres's ingest
    /// statement applies the same rule in SQL.
    pub(crate) fn meets(&self, seen: Seen<'_>, reopened: bool, seq: i64) -> Meeting {
        if self.first_seq == seq {
            Meeting::Repeat
        } else if reopened
            || self.severity != seen.severity
            || self.file_path.as_deref() != seen.file_path
            || self.start_line != seen.start_line
            || self.end_line != seen.end_line
        {
            Meeting::Replaced
        } else {
            Meeting::Kept
        }
    }
}

/// The open runs in `stream` of these findings, by finding (SQLite's ingest).
pub(crate) async fn open_runs(
    txn: &impl ConnectionTrait,
    stream: &Stream,
    finding_ids: &[Uuid],
) -> Result<HashMap<Uuid, OpenRun>> {
    let mut runs = HashMap::with_capacity(finding_ids.len());
    for ids in finding_ids.chunks(SQLITE_IDS) {
        let mut values: Vec<Value> = vec![stream.project_id.into(), stream.id.into()];
        values.extend(ids.iter().map(|id| Value::from(*id)));
        let sql = format!(
            "SELECT finding_id, first_seq, severity, file_path, start_line, end_line \
               FROM sighting_runs o WHERE {OPEN_IN_STREAM_1_2} AND o.finding_id IN ({})",
            placeholders(3, ids.len())
        );
        for row in txn.query_all_raw(statement(txn, &sql, values)).await? {
            runs.insert(
                row.try_get("", "finding_id")?,
                OpenRun {
                    first_seq: row.try_get("", "first_seq")?,
                    severity: row.try_get("", "severity")?,
                    file_path: row.try_get("", "file_path")?,
                    start_line: row.try_get("", "start_line")?,
                    end_line: row.try_get("", "end_line")?,
                },
            );
        }
    }
    Ok(runs)
}

/// Opens a run at `stream`'s scan for each sighting (SQLite's ingest).
pub(crate) async fn open(
    txn: &impl ConnectionTrait,
    stream: &Stream,
    sightings: &[(Uuid, Seen<'_>, OccurrenceChange)],
) -> Result<()> {
    const SHARED: usize = 3;
    const PER_ROW: usize = 6;
    for chunk in sightings.chunks(SQLITE_IDS) {
        let mut values: Vec<Value> = Vec::with_capacity(SHARED + chunk.len() * PER_ROW);
        values.extend([
            stream.project_id.into(),
            stream.id.into(),
            stream.seq.into(),
        ]);
        let mut rows = Vec::with_capacity(chunk.len());
        for (i, (finding_id, seen, change)) in chunk.iter().enumerate() {
            rows.push(format!(
                "($1, $2, $3, {})",
                placeholders(SHARED + i * PER_ROW + 1, PER_ROW)
            ));
            values.extend([
                (*finding_id).into(),
                change.as_str().into(),
                seen.severity.into(),
                seen.file_path.map(str::to_owned).into(),
                seen.start_line.into(),
                seen.end_line.into(),
            ]);
        }
        txn.execute_raw(statement(
            txn,
            &format!(
                "INSERT INTO sighting_runs (project_id, stream_id, first_seq, finding_id, change, \
                                            severity, file_path, start_line, end_line) VALUES {}",
                rows.join(", ")
            ),
            values,
        ))
        .await?;
    }
    Ok(())
}

/// Closes the open runs in `stream` of these findings at the scan before this one.
pub(crate) async fn close(
    txn: &impl ConnectionTrait,
    stream: &Stream,
    finding_ids: &[Uuid],
) -> Result<()> {
    const SET: &str = "UPDATE sighting_runs SET last_seq = $3 - 1 \
                        WHERE project_id = $1 AND stream_id = $2 AND last_seq IS NULL \
                          AND first_seq < $3";
    if finding_ids.is_empty() {
        return Ok(());
    }
    let shared = || -> Vec<Value> {
        vec![
            stream.project_id.into(),
            stream.id.into(),
            stream.seq.into(),
        ]
    };
    if is_postgres(txn) {
        let mut values = shared();
        values.push(finding_ids.to_vec().into());
        txn.execute_raw(statement(
            txn,
            &format!("{SET} AND finding_id = ANY($4)"),
            values,
        ))
        .await?;
        return Ok(());
    }
    for ids in finding_ids.chunks(SQLITE_IDS) {
        let mut values = shared();
        values.extend(ids.iter().map(|id| Value::from(*id)));
        let sql = format!("{SET} AND finding_id IN ({})", placeholders(4, ids.len()));
        txn.execute_raw(statement(txn, &sql, values)).await?;
    }
    Ok(())
}

/// Closes the runs of what the completing scan did not see: the runs open from earlier scans
/// that it did not keep, outside the buckets it did not compare (`unchanged`, with the number
/// of its findings there). When their number is the number kept plus those findings (the
/// usual rescan), there is none, and only that count is read.
pub(crate) async fn close_unseen(
    txn: &impl ConnectionTrait,
    stream: &Stream,
    kept: &HashSet<Uuid>,
    unchanged: Option<(&Unchanged, usize)>,
) -> Result<()> {
    let values = || -> Vec<Value> {
        vec![
            stream.project_id.into(),
            stream.id.into(),
            stream.seq.into(),
        ]
    };
    let older = format!("FROM sighting_runs o WHERE {OPEN_IN_STREAM_1_2} AND o.first_seq < $3");
    let count = txn
        .query_one_raw(statement(
            txn,
            &format!("SELECT COUNT(*) AS n {older}"),
            values(),
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or_default();
    // The unchanged buckets' runs all go on: there are as many as the scan's findings there.
    let skipped = unchanged.map_or(0, |(_, findings)| findings);
    if usize::try_from(count).unwrap_or(usize::MAX) == kept.len() + skipped {
        return Ok(());
    }
    let open = txn
        .query_all_raw(statement(
            txn,
            &format!(
                "SELECT o.finding_id, \
                        (SELECT f.fingerprint FROM findings f WHERE f.id = o.finding_id) \
                          AS fingerprint {older}"
            ),
            values(),
        ))
        .await?;
    let mut unseen = Vec::new();
    for row in &open {
        let id: Uuid = row.try_get("", "finding_id")?;
        let fingerprint: Vec<u8> = row.try_get("", "fingerprint")?;
        let goes_on = unchanged.is_some_and(|(u, _)| u.holds(&fingerprint));
        if !kept.contains(&id) && !goes_on {
            unseen.push(id);
        }
    }
    close(txn, stream, &unseen).await
}
