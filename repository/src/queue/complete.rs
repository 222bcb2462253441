//! Completing a scan: the one completion unit. In the scan's transaction, lock the
//! repository, fence the lease, ingest what a [`FindingSource`] feeds a chunk at a time,
//! succeed the scan, commit. [`Scans::complete`] (findings in memory) and the SARIF imports
//! (findings streamed from a log, the report's row committed with them) are this one unit with
//! a different source.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use vega_entity::scans;

use crate::context::cx::Cx;
use crate::context::trail::{self, Action, Audit};
use crate::db::connection::retry_conflicts;
use crate::db::route::Unit;
use crate::db::sql::{is_postgres, now, statement};
use crate::error::{Error, Result};
use crate::findings::ingest::{
    Ingest, IngestSummary, NewFinding, Prepared, Role, digest, lock_repository_of, prepare,
};
use crate::findings::runs::Digest;
use crate::queue::lease::{Lease, fence};
use crate::queue::scans::Scans;

/// Where a completion's findings come from: chunks, each prepared and deduplicated, that the
/// unit writes one after another.
pub(crate) trait FindingSource: Send {
    /// A chunk of findings.
    type Chunk: Deref<Target = [Prepared]> + Send;

    /// The next chunk; `None` when every finding was handed over.
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Chunk>>> + Send;

    /// The error to report when writing a chunk failed with `err` (a source may know a
    /// better one: the bad result that stopped it).
    fn failed(self, err: Error) -> impl Future<Output = Error> + Send;

    /// The digest of every finding the source will hand over ([`digest`]), when it
    /// knows them before the first chunk.
    fn digest(&self) -> Option<Arc<Digest>> {
        None
    }
}

/// Findings already in memory: one chunk, shared, so a retried completion feeds them again
/// without a copy ([`Ingest::write`] splits it into statements), and their digest, computed
/// once outside the transaction (none for no findings: an empty scan has nothing to skip).
pub(crate) struct InMemory {
    findings: Option<Arc<[Prepared]>>,
    digest: Option<Arc<Digest>>,
}

impl FindingSource for InMemory {
    type Chunk = Arc<[Prepared]>;

    async fn next(&mut self) -> Result<Option<Arc<[Prepared]>>> {
        Ok(self.findings.take())
    }

    async fn failed(self, err: Error) -> Error {
        err
    }

    fn digest(&self) -> Option<Arc<Digest>> {
        self.digest.clone()
    }
}

/// A completion ingested and not yet committed: its transaction, the fenced scan, the counts.
pub(crate) struct Ingested<'a> {
    txn: Unit<'a>,
    scan: scans::Model,
    summary: IngestSummary,
}

impl<'a> Ingested<'a> {
    /// The completion's transaction, for a row that commits with it (the report's).
    pub(crate) fn txn(&self) -> &Unit<'a> {
        &self.txn
    }
}

/// The unit up to its commit: the scan's transaction, under the repository lock and the
/// lease's fence, with every finding of `source` ingested and the fixed ones marked.
pub(crate) async fn ingest<'a>(
    cx: Cx<'a>,
    lease: &Lease,
    mut source: impl FindingSource,
) -> Result<Ingested<'a>> {
    let txn = cx.db().unit().await?;
    lock_repository_of(&txn, lease.scan_id).await?;
    let scan = fence(&txn, lease).await?;
    let summary = {
        let mut ingest = Ingest::start(&txn, &scan, source.digest().as_deref()).await?;
        while let Some(chunk) = source.next().await? {
            if let Err(err) = ingest.write(&chunk).await {
                return Err(source.failed(err).await);
            }
        }
        ingest.finish().await?
    };
    Ok(Ingested { txn, scan, summary })
}

/// The unit's end: the scan succeeded, one commit.
pub(crate) async fn commit(
    cx: Cx<'_>,
    ingested: Ingested<'_>,
    lease: &Lease,
) -> Result<scans::Model> {
    let Ingested { txn, scan, summary } = ingested;
    let completed = succeed(cx, &txn, lease, &scan, &summary).await?;
    txn.commit().await?;
    Ok(completed)
}

impl Scans<'_> {
    /// Completes the scan with its findings, in one transaction: deduplicates the findings
    /// against the repository's, records what this scan saw as runs of its stream (writing
    /// only what changed since the stream's previous scan), marks fixed what a full scan
    /// of the tracked branch no longer sees, writes the scan's severity counts, succeeds the
    /// scan, points its project at it and appends `scan.completed`. Fenced on the lease:
    /// [`Error::LeaseLost`] writes nothing.
    #[instrument(name = "scans.complete", skip(self, findings), fields(scan_id = %lease.scan_id, findings = findings.len()))]
    pub async fn complete(&self, lease: &Lease, findings: Vec<NewFinding>) -> Result<scans::Model> {
        let lease = lease.validated(self.cx.who, "complete scans")?;
        let prepared: Arc<[Prepared]> = prepare(findings)?.into();
        let digest = (!prepared.is_empty()).then(|| Arc::new(digest(&prepared)));
        if !self.cx.db().owns_transactions() {
            return self.complete_once(&lease, prepared, digest).await;
        }
        // Safe to repeat whole: each run re-reads the lease and everything it counts.
        retry_conflicts("scans.complete", || {
            self.complete_once(&lease, prepared.clone(), digest.clone())
        })
        .await
    }

    async fn complete_once(
        &self,
        lease: &Lease,
        prepared: Arc<[Prepared]>,
        digest: Option<Arc<Digest>>,
    ) -> Result<scans::Model> {
        let findings = InMemory {
            findings: Some(prepared),
            digest,
        };
        let ingested = ingest(self.cx.clone(), lease, findings).await?;
        commit(self.cx.clone(), ingested, lease).await
    }
}

/// Succeeds a fenced scan with its ingest's summary, points its project at it when it is
/// a full scan of the default branch (the project list shows that branch), and appends
/// `scan.completed`.
async fn succeed(
    cx: Cx<'_>,
    txn: &Unit<'_>,
    lease: &Lease,
    scan: &scans::Model,
    summary: &IngestSummary,
) -> Result<scans::Model> {
    let now = now();
    let mut values: Vec<Value> = vec![
        now.into(),
        summary.counts.critical.into(),
        summary.counts.high.into(),
        summary.counts.medium.into(),
        summary.counts.low.into(),
        summary.counts.info.into(),
        summary.counts.unknown.into(),
        summary.total.into(),
        summary.new.into(),
        summary.fixed.into(),
        summary.dismissed.into(),
        summary.stream.id.into(),
        summary.stream.seq.into(),
        scan.id.into(),
        (Role::of(scan) == Role::DefaultFull).into(),
    ];
    const SUCCEED: &str = "UPDATE scans SET status = 'succeeded', finished_at = $1, \
                lease_expires_at = NULL, updated_at = $1, count_critical = $2, \
                count_high = $3, count_medium = $4, count_low = $5, count_info = $6, \
                count_unknown = $7, findings_total = $8, findings_new = $9, \
                findings_fixed = $10, count_dismissed = $11, stream_id = $12, stream_seq = $13 \
          WHERE id = $14 RETURNING *";
    // UUIDv7 order is creation order: a late completion of an older scan does not replace
    // a newer one.
    const LATEST: &str = "UPDATE projects SET latest_scan_id = $1, updated_at = $2 \
          WHERE id = $3 AND $4 AND (latest_scan_id IS NULL OR latest_scan_id < $1)";
    let completed = if is_postgres(txn) {
        // The scan, the project's pointer and the event in one statement: completions of
        // one repository run one after another under its lock, so every round trip saved
        // here is saved from the queue's serial section.
        let actor = trail::bind_actor(cx.who, Action::ScanCompleted, &mut values);
        let sql = format!(
            "WITH done AS ({SUCCEED}), \
             latest AS ( \
               UPDATE projects p SET latest_scan_id = d.id, updated_at = $1 FROM done d \
                WHERE p.id = d.project_id AND $15 \
                  AND (p.latest_scan_id IS NULL OR p.latest_scan_id < d.id)), \
             logged AS ( \
               INSERT INTO events ({columns}) \
               SELECT $1, d.project_id, {actor}, 'scan', d.id, \
                      jsonb_build_object('findings_total', d.findings_total, \
                                         'findings_new', d.findings_new, \
                                         'findings_fixed', d.findings_fixed) \
                 FROM done d) \
             SELECT * FROM done",
            columns = trail::EVENT_COLUMNS,
        );
        scans::Model::find_by_statement(statement(txn, &sql, values))
            .one(txn)
            .await?
            .ok_or(Error::LeaseLost {
                scan_id: lease.scan_id,
            })?
    } else {
        let latest = values.pop().unwrap_or_else(|| false.into());
        let completed = scans::Model::find_by_statement(statement(txn, SUCCEED, values))
            .one(txn)
            .await?
            .ok_or(Error::LeaseLost {
                scan_id: lease.scan_id,
            })?;
        txn.execute_raw(statement(
            txn,
            LATEST,
            [scan.id.into(), now.into(), scan.project_id.into(), latest],
        ))
        .await?;
        trail::record(
            txn,
            cx.who,
            vec![
                Audit::new(Action::ScanCompleted, ("scan", scan.id))
                    .project(scan.project_id)
                    .data(json!({
                        "findings_total": summary.total,
                        "findings_new": summary.new,
                        "findings_fixed": summary.fixed,
                    })),
            ],
        )
        .await?;
        completed
    };
    Ok(completed)
}
