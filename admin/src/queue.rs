//! The queue and scans from the command line: `vega-admin queue` (read-only) and
//! `vega-admin scans show|cancel|retry|rescue|import-sarif|export-sarif`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use uuid::Uuid;
use vega_entity::{ScanKind, TriggerKind};
use vega_repository::{CancelOutcome, ImportProgress, NewScan, QueueSummary, Store};

use crate::print;

/// `vega-admin scans …`.
#[derive(Subcommand)]
pub enum ScansCommand {
    /// One scan: status, lease, attempts, error and counts.
    Show {
        /// The scan's id.
        id: Uuid,
    },
    /// Cancel a queued scan, or ask the worker running it to stop.
    Cancel {
        /// The scan's id.
        id: Uuid,
    },
    /// Queue a failed or canceled scan again, with more attempts allowed.
    Retry {
        /// The scan's id.
        id: Uuid,
    },
    /// Take back running scans whose lease expired (their worker died or stalled):
    /// re-queued after BACKOFF × attempt, or failed once out of attempts.
    Rescue {
        /// The wait before a rescued scan is claimed again, times its attempt.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        backoff: Duration,
    },
    /// Import SARIF 2.1.0 logs as one scan: enqueue, claim and complete from the logs as the
    /// system, then print the scan, its counts and the deviations from SARIF taken with a
    /// fallback (one line per kind). A refused log fails the scan and exits 1.
    ImportSarif {
        /// The repository scanned.
        #[arg(long)]
        repository: Uuid,
        /// The branch or tag scanned (default: the repository's default branch).
        #[arg(long = "ref")]
        ref_name: Option<String>,
        /// A full scan: on the default branch, what the logs do not contain is marked fixed.
        /// Without it the import is a partial (static-analysis) scan that fixes nothing.
        #[arg(long)]
        full: bool,
        /// The logs; several are read as one log with all their runs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write what a scan saw as a SARIF 2.1.0 log.
    ExportSarif {
        /// The scan's id.
        id: Uuid,
        /// Where to write it (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub async fn queue(store: &Store, json: bool) -> Result<()> {
    let summary = store.scans().queue_summary().await?;
    print(json, &summary, || describe(&summary));
    Ok(())
}

fn describe(q: &QueueSummary) -> String {
    let now = chrono::Utc::now();
    let age = |at: chrono::DateTime<chrono::FixedOffset>| {
        let secs = (now - at.to_utc()).num_seconds().max(0);
        humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
            .to_string()
    };
    let mut lines = Vec::new();
    if q.depth.is_empty() {
        lines.push("no scan is queued or running".to_owned());
    }
    for d in &q.depth {
        lines.push(format!(
            "{:<8} priority {:>3}: {}",
            d.status, d.priority, d.scans
        ));
    }
    match q.oldest_due_since {
        Some(at) => lines.push(format!("oldest due scan waiting {} (since {at})", age(at))),
        None => lines.push("no queued scan is due".to_owned()),
    }
    lines.push(format!(
        "scheduled later (backing off or not yet due): {}",
        q.scheduled_later
    ));
    if !q.running.is_empty() {
        lines.push("running per worker:".to_owned());
        for w in &q.running {
            let since = w
                .oldest_claim
                .map(|at| format!(", oldest claimed {} ago", age(at)));
            lines.push(format!(
                "  {}: {}{}",
                w.worker,
                w.scans,
                since.unwrap_or_default()
            ));
        }
    }
    let fix = if q.expired_leases > 0 {
        " (`vega-admin scans rescue` takes them back)"
    } else {
        ""
    };
    lines.push(format!("expired leases: {}{fix}", q.expired_leases));
    if !q.recent_failures.is_empty() {
        lines.push("recent failures:".to_owned());
        for f in &q.recent_failures {
            lines.push(format!(
                "  {} (project {}, attempt {}, {}): {} {}",
                f.id,
                f.project_id,
                f.attempt,
                f.claimed_by.as_deref().unwrap_or("no worker"),
                f.error_code.as_deref().unwrap_or("error"),
                f.error_message.as_deref().unwrap_or_default()
            ));
        }
    }
    lines.join("\n")
}

pub async fn scans(store: &Store, json: bool, command: ScansCommand) -> Result<()> {
    let scans = store.scans();
    match command {
        ScansCommand::Show { id } => {
            let scan = scans.get(id).await?;
            print(json, &scan, || {
                let mut lines = vec![
                    format!(
                        "scan {} ({} of repository {})",
                        scan.id, scan.kind, scan.repository_id
                    ),
                    format!(
                        "status: {} (attempt {} of {})",
                        scan.status, scan.attempt, scan.max_attempts
                    ),
                    format!(
                        "priority {}, scheduled at {}",
                        scan.priority, scan.scheduled_at
                    ),
                ];
                if let Some(worker) = &scan.claimed_by {
                    let until = scan
                        .lease_expires_at
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    lines.push(format!("claimed by {worker}, lease until {until}"));
                }
                if let Some(code) = &scan.error_code {
                    lines.push(format!(
                        "error: {code}: {}",
                        scan.error_message.as_deref().unwrap_or_default()
                    ));
                }
                lines.push(format!(
                    "findings: {} (critical {}, high {}, medium {}, low {}, info {})",
                    scan.findings_total,
                    scan.count_critical,
                    scan.count_high,
                    scan.count_medium,
                    scan.count_low,
                    scan.count_info
                ));
                lines.join("\n")
            });
        }
        ScansCommand::Cancel { id } => {
            let outcome = scans.cancel(id).await?;
            let (state, text) = match outcome {
                CancelOutcome::Canceled => {
                    ("canceled".to_owned(), format!("scan {id} is canceled"))
                }
                CancelOutcome::Requested => (
                    "cancel_requested".to_owned(),
                    format!(
                        "scan {id} is running; its worker is asked to stop at its next heartbeat"
                    ),
                ),
                CancelOutcome::AlreadyFinished(status) => (
                    status.as_str().to_owned(),
                    format!("scan {id} had already finished: {}", status.as_str()),
                ),
            };
            print(json, &json!({ "id": id, "outcome": state }), || text);
        }
        ScansCommand::Retry { id } => {
            let scan = scans.retry(id).await?;
            print(json, &scan, || {
                format!(
                    "scan {id} is queued again (attempt {} of {} used)",
                    scan.attempt, scan.max_attempts
                )
            });
        }
        ScansCommand::Rescue { backoff } => {
            let rescued = scans.rescue_expired(backoff).await?;
            let values: Vec<_> = rescued
                .iter()
                .map(|r| json!({ "id": r.scan_id, "status": r.status.as_str() }))
                .collect();
            print(json, &values, || {
                let mut lines = vec![format!(
                    "rescued {} scans whose lease had expired",
                    rescued.len()
                )];
                lines.extend(
                    rescued
                        .iter()
                        .map(|r| format!("  {}: {}", r.scan_id, r.status.as_str())),
                );
                lines.join("\n")
            });
        }
        ScansCommand::ExportSarif { id, output } => {
            let to_file = output.clone();
            let results = export_sarif(store, id, output).await?;
            // On standard output the log is all there is.
            if let Some(path) = to_file {
                print(json, &json!({ "id": id, "results": results }), || {
                    format!("wrote {results} results of scan {id} to {}", path.display())
                });
            }
        }
        ScansCommand::ImportSarif {
            repository,
            ref_name,
            full,
            files,
        } => {
            let scan = import_sarif(store, repository, ref_name, full, &files).await?;
            let warnings = store.reports().import_warnings(scan.id).await?;
            print(json, &scan, || {
                let mut text = format!(
                    "scan {} succeeded: {} findings ({} new, {} fixed; critical {}, high {}, \
                     medium {}, low {}, info {}, unknown {}; {} dismissed)",
                    scan.id,
                    scan.findings_total,
                    scan.findings_new,
                    scan.findings_fixed,
                    scan.count_critical,
                    scan.count_high,
                    scan.count_medium,
                    scan.count_low,
                    scan.count_info,
                    scan.count_unknown,
                    scan.count_dismissed
                );
                // What the log did not say as SARIF 2.1.0 does, and what was taken instead.
                for w in &warnings {
                    text.push_str(&format!(
                        "\nwarning: {} in {} result(s), first at {}",
                        w.kind, w.count, w.pointer
                    ));
                }
                text
            });
        }
    }
    Ok(())
}

/// The lease an import holds while it reads its logs.
const IMPORT_LEASE: Duration = Duration::from_secs(3600);

async fn import_sarif(
    store: &Store,
    repository: Uuid,
    ref_name: Option<String>,
    full: bool,
    files: &[PathBuf],
) -> Result<vega_entity::scans::Model> {
    let log = read_logs(files).await?;
    let kind = if full { ScanKind::Full } else { ScanKind::Sast };
    let scan = store
        .scans()
        .enqueue(NewScan {
            kind,
            ..NewScan::full(repository, TriggerKind::Manual, ref_name)
        })
        .await?;
    let claim = store
        .scans()
        .claim(scan.id, "vega-admin import-sarif", IMPORT_LEASE)
        .await?;
    let progress = Arc::new(ImportProgress::default());
    let bar = crate::progress::Import::follow(progress.clone());
    let completed = store
        .reports()
        .with_progress(&progress)
        .complete_from_sarif(&claim.lease, &log[..])
        .await;
    drop(bar);
    match completed {
        Ok(scan) => Ok(scan),
        Err(err) => {
            let message = err.to_string();
            store
                .scans()
                .fail(&claim.lease, "invalid_report", &message)
                .await?;
            Err(err.into())
        }
    }
}

/// One file as it is; several as one log holding all their runs (each parsed whole: for a
/// very large report, import it alone).
async fn read_logs(files: &[PathBuf]) -> Result<Vec<u8>> {
    if let [file] = files {
        return Ok(tokio::fs::read(file).await?);
    }
    let mut runs = Vec::new();
    for file in files {
        let mut log: serde_json::Value = serde_json::from_slice(&tokio::fs::read(file).await?)
            .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
        if log["version"] != "2.1.0" {
            return Err(format!("{}: /version must be \"2.1.0\"", file.display()).into());
        }
        match log["runs"].take() {
            serde_json::Value::Array(more) => runs.extend(more),
            _ => return Err(format!("{}: /runs must be an array", file.display()).into()),
        }
    }
    Ok(serde_json::to_vec(
        &json!({ "version": "2.1.0", "runs": runs }),
    )?)
}

/// Writes the scan's SARIF to `output`, or to standard output.
pub async fn export_sarif(store: &Store, id: Uuid, output: Option<PathBuf>) -> Result<u64> {
    let out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match output {
        Some(path) => Box::new(tokio::fs::File::create(&path).await?),
        // The log alone on standard output; the bar is on stderr, drawn on a terminal only.
        None => Box::new(tokio::io::stdout()),
    };
    let mut counted = crate::progress::Counted::new(out, "exporting", false);
    let written = store.reports().export_scan(id, &mut counted).await;
    counted.finish();
    Ok(written?)
}
