//! `vega-admin maintain`: the periodic jobs, in one long-running process that is safe to run
//! as several replicas. One replica leads, holding the `maintain` leader lease
//! (`store.leader_leases()`) and renewing it between jobs and batches; the others wait, and one takes
//! over at most one lease after the leader dies. Every job is also safe to overlap (rescue is
//! fenced per scan, purge claims its entries, gc, prune and expiry are idempotent, a retention
//! batch commits or leaves nothing), so a leader that stalls past its lease costs duplicated
//! work, never a wrong result.
//!
//! SIGTERM or Ctrl-C: the batch in hand finishes, the lease is released (a standby takes over
//! at once), and the process exits 0. `--once` runs every job once and exits. Progress and
//! results are structured logs and, with `--metrics-listen`, Prometheus metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use vega_repository::{GcOptions, MAX_ARCHIVE_EVENTS, Retired, Store};

const LEASE: &str = "maintain";
/// Months of `events` partitions kept ready ahead of now.
const PARTITIONS_AHEAD: u32 = 3;
/// Expired snapshots deleted, or lapsed dismissals reopened, per batch.
const EXPIRE_BATCH: u64 = 100;

/// `vega-admin maintain` options.
#[derive(Args)]
pub struct MaintainArgs {
    /// Run every job once, then exit (for a scheduled task).
    #[arg(long)]
    once: bool,
    /// The leader's lease: a standby takes over at most this long after the leader dies.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How often scans whose lease expired are taken back.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    rescue_every: Duration,
    /// The wait before a rescued scan is claimed again, times its attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    rescue_backoff: Duration,
    /// How often the deletion outbox is purged.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    purge_every: Duration,
    /// How often gc runs (with --apply).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    gc_every: Duration,
    /// gc leaves anything younger than this alone.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    gc_grace: Duration,
    /// How often stale worker heartbeats are pruned.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    prune_every: Duration,
    /// Heartbeats older than this are pruned.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    prune_after: Duration,
    /// How often snapshots past their expiry are deleted (archives queued for purge).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    expire_every: Duration,
    /// How often dismissals past their expiry lapse (the findings reopen).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    dismissals_every: Duration,
    /// How often the monthly partitions of `events` (Postgres) are created three months ahead.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    partitions_every: Duration,
    /// How often events older than --retain-events move to the blob store.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    retention_every: Duration,
    /// Events older than this are archived to the blob store (gzipped JSON lines per project
    /// and day) and leave the table: on Postgres a whole month once it ended this long ago
    /// (its partition is dropped), on SQLite by batch; `vega-admin events export` reads both.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    retain_events: Duration,
    /// The most events per archive object (memory is bounded by one batch).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ARCHIVE_EVENTS)))]
    retention_batch: u32,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 0.0.0.0:9464.
    #[arg(long, env = "VEGA_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
enum Job {
    Rescue,
    Purge,
    Gc,
    Prune,
    Expire,
    Dismissals,
    Partitions,
    Retention,
}

/// What a run did, as `(item, count)` pairs: the log line's fields and the metrics' labels.
type Outcome = Vec<(&'static str, u64)>;

impl Job {
    const ALL: [Job; 8] = [
        Job::Partitions,
        Job::Rescue,
        Job::Purge,
        Job::Gc,
        Job::Prune,
        Job::Expire,
        Job::Dismissals,
        Job::Retention,
    ];

    fn name(self) -> &'static str {
        match self {
            Job::Rescue => "rescue",
            Job::Purge => "purge",
            Job::Gc => "gc",
            Job::Prune => "prune",
            Job::Expire => "expire",
            Job::Dismissals => "dismissals",
            Job::Partitions => "partitions",
            Job::Retention => "retention",
        }
    }

    fn every(self, args: &MaintainArgs) -> Duration {
        match self {
            Job::Rescue => args.rescue_every,
            Job::Purge => args.purge_every,
            Job::Gc => args.gc_every,
            Job::Prune => args.prune_every,
            Job::Expire => args.expire_every,
            Job::Dismissals => args.dismissals_every,
            Job::Partitions => args.partitions_every,
            Job::Retention => args.retention_every,
        }
    }
}

/// The leader's loop and what it shares with its jobs.
struct Runner<'a> {
    store: &'a Store,
    args: &'a MaintainArgs,
    holder: String,
    stop: Arc<AtomicBool>,
}

impl Runner<'_> {
    /// Renews the lease; false when another instance holds it now.
    async fn renew(&self) -> bool {
        match self
            .store
            .leader_leases()
            .hold(LEASE, &self.holder, self.args.lease)
            .await
        {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(error = %err, "could not renew the lease; standing by");
                false
            }
        }
    }

    /// Runs the job, logs and counts what it did; a failure is logged and the next run
    /// retries. False when the lease was lost during the run.
    async fn run(&self, job: Job) -> bool {
        let started = Instant::now();
        let mut still_leading = true;
        let outcome = self.run_once(job, &mut still_leading).await;
        let seconds = started.elapsed().as_secs_f64();
        let ms = started.elapsed().as_millis();
        metrics::histogram!("vega_maintenance_run_seconds", "job" => job.name()).record(seconds);
        match outcome {
            Ok(items) => {
                metrics::counter!("vega_maintenance_runs_total", "job" => job.name(), "outcome" => "ok")
                    .increment(1);
                for (item, n) in &items {
                    metrics::counter!("vega_maintenance_items_total", "job" => job.name(), "item" => *item)
                        .increment(*n);
                }
                let result = items
                    .iter()
                    .map(|(item, n)| format!("{item}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::info!(job = job.name(), ms, result, "maintenance run");
            }
            Err(err) => {
                metrics::counter!("vega_maintenance_runs_total", "job" => job.name(), "outcome" => "failed")
                    .increment(1);
                tracing::warn!(job = job.name(), ms, error = %err, kind = err.kind(), "maintenance run failed; the next run retries");
            }
        }
        still_leading
    }

    async fn run_once(
        &self,
        job: Job,
        still_leading: &mut bool,
    ) -> Result<Outcome, vega_repository::Error> {
        let (store, args) = (self.store, self.args);
        Ok(match job {
            Job::Rescue => {
                let rescued = store.scans().rescue_expired(args.rescue_backoff).await?;
                vec![("rescued", rescued.len() as u64)]
            }
            Job::Purge => {
                let report = store.artifacts().purge().await?;
                vec![
                    ("deleted", report.deleted),
                    ("failed", report.failed.len() as u64),
                ]
            }
            Job::Gc => {
                let options = GcOptions {
                    grace: args.gc_grace,
                    dry_run: false,
                };
                let r = store.artifacts().gc(options, |_| {}).await?;
                vec![
                    ("scanned", r.scanned),
                    ("orphans", r.orphans),
                    ("stale_pending", r.stale_pending),
                    ("incomplete_uploads", r.incomplete_uploads),
                ]
            }
            Job::Prune => vec![("pruned", store.workers().prune(args.prune_after).await?)],
            Job::Expire => vec![(
                "expired",
                self.drain(|| async { store.snapshots().expire(EXPIRE_BATCH).await })
                    .await?,
            )],
            Job::Dismissals => vec![(
                "reopened",
                self.drain(|| async { store.findings().expire_dismissals(EXPIRE_BATCH).await })
                    .await?,
            )],
            Job::Partitions => {
                let now = chrono::Utc::now().fixed_offset();
                let created = store
                    .event_archives()
                    .ensure_partitions(now, now + chrono::Months::new(PARTITIONS_AHEAD))
                    .await?;
                for name in &created {
                    tracing::info!(partition = %name, "event partition created");
                }
                vec![("created", created.len() as u64)]
            }
            Job::Retention => self.retention(still_leading).await?,
        })
    }

    /// Runs a batch of [`EXPIRE_BATCH`] until one comes back short or a stop is asked for;
    /// the total.
    async fn drain<F>(&self, mut batch: impl FnMut() -> F) -> Result<u64, vega_repository::Error>
    where
        F: std::future::Future<Output = Result<u64, vega_repository::Error>>,
    {
        let mut total = 0;
        loop {
            let n = batch().await?;
            total += n;
            if n < EXPIRE_BATCH || self.stopping() {
                return Ok(total);
            }
        }
    }

    /// Retires events step by step (an archive, or a month dropped) until none is old enough,
    /// a stop is asked for (the step in hand commits first) or the lease is lost.
    async fn retention(&self, still_leading: &mut bool) -> Result<Outcome, vega_repository::Error> {
        let age =
            chrono::Duration::from_std(self.args.retain_events).unwrap_or(chrono::Duration::MAX);
        let before = chrono::Utc::now()
            .checked_sub_signed(age)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
            .fixed_offset();
        let (mut archives, mut events, mut bytes, mut months) = (0, 0, 0, 0);
        let mut renewed = Instant::now();
        let mut retirement = self
            .store
            .event_archives()
            .retirement(before, self.args.retention_batch)?;
        while let Some(step) = retirement.next().await? {
            match step {
                Retired::Archived(batch) => {
                    archives += 1;
                    events += batch.events;
                    bytes += batch.size_bytes;
                    tracing::debug!(key = %batch.object_key, events = batch.events, "events archived");
                }
                Retired::Dropped { partition, .. } => {
                    months += 1;
                    tracing::info!(%partition, "event partition archived and dropped");
                }
            }
            if self.stopping() {
                break;
            }
            if renewed.elapsed() >= self.args.lease / 3 {
                if !self.renew().await {
                    *still_leading = false;
                    break;
                }
                renewed = Instant::now();
            }
        }
        Ok(vec![
            ("archives", archives),
            ("events", events),
            ("bytes", bytes),
            ("months", months),
        ])
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

pub async fn run(store: &Store, args: MaintainArgs) -> Result<u8, Box<dyn std::error::Error>> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let holder = format!(
        "{host}/{}/{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(Notify::new());
    watch_signals(stop.clone(), stopped.clone())?;
    if let Some(addr) = args.metrics_listen {
        let metrics = vega_telemetry::Metrics::install()?;
        let shutdown = {
            let stopped = stopped.clone();
            async move { stopped.notified().await }
        };
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(err) = metrics.serve(addr, store, shutdown).await {
                tracing::error!(error = %err, "the metrics endpoint stopped");
            }
        });
    }
    let runner = Runner {
        store,
        args: &args,
        holder,
        stop,
    };
    // Each job and when it is next due: all of them when an instance first leads.
    let mut schedule = Job::ALL.map(|job| (job, Instant::now()));
    let tick = (args.lease / 3).max(Duration::from_millis(100));
    let mut leading = false;
    tracing::info!(holder = %runner.holder, lease = ?args.lease, "maintain started");
    while !runner.stopping() {
        match (runner.renew().await, leading) {
            (true, false) => {
                tracing::info!(holder = %runner.holder, "leading: running the maintenance jobs");
                leading = true;
            }
            (false, true) => {
                tracing::warn!(holder = %runner.holder, "lost the lease to another instance");
                leading = false;
            }
            _ => {}
        }
        if leading {
            for (job, at) in &mut schedule {
                if *at > Instant::now() || runner.stopping() {
                    continue;
                }
                // On a terminal, `--once` shows which job is running (a scheduled task's log
                // gets the job's own line when it ends).
                let spinner = args.once.then(|| crate::progress::spinner(job.name()));
                leading = runner.run(*job).await;
                if let Some(spinner) = spinner {
                    spinner.finish_and_clear();
                }
                *at = Instant::now() + job.every(&args);
                // Renew between jobs, so a long run does not outlive the lease.
                if !leading || !runner.renew().await {
                    leading = false;
                    break;
                }
            }
        }
        if args.once {
            if !leading {
                tracing::info!("another instance leads; nothing run");
            }
            break;
        }
        let next = schedule
            .iter()
            .map(|(_, at)| *at)
            .min()
            .unwrap_or_else(Instant::now);
        let wait = tick
            .min(next.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(50));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped.notified() => {}
        }
    }
    if leading {
        store.leader_leases().release(LEASE, &runner.holder).await?;
    }
    tracing::info!(holder = %runner.holder, "maintain stopped");
    Ok(0)
}

/// SIGTERM and Ctrl-C set `stop` (checked between jobs and batches) and wake the loop.
fn watch_signals(stop: Arc<AtomicBool>, stopped: Arc<Notify>) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("stopping: finishing the batch in hand");
        stop.store(true, Ordering::Relaxed);
        stopped.notify_waiters();
        // A loop not yet waiting still sees the flag; the permit wakes one that is about to.
        stopped.notify_one();
    });
    Ok(())
}
