//! `vega-admin maintain`: the periodic jobs, in one long-running process that is safe to run
//! as several replicas. One replica leads, holding the `maintain` leader lease
//! (`store.leases()`) and renewing it between jobs; the others wait, and one takes over at
//! most one lease after the leader dies. Every job is also safe to overlap (rescue is fenced
//! per scan, purge claims its entries, gc and prune are idempotent), so a leader that stalls
//! past its lease costs duplicated work, never a wrong result.
//!
//! SIGTERM or Ctrl-C: the job in hand finishes, the lease is released (a standby takes over at
//! once), and the process exits 0. `--once` runs every job once and exits. Progress and
//! results are structured logs.

use std::time::{Duration, Instant};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use vega_repository::{GcOptions, Store};

const LEASE: &str = "maintain";

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
}

#[derive(Debug, Clone, Copy)]
enum Job {
    Rescue,
    Purge,
    Gc,
    Prune,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Rescue => "rescue",
            Job::Purge => "purge",
            Job::Gc => "gc",
            Job::Prune => "prune",
        }
    }

    fn every(self, args: &MaintainArgs) -> Duration {
        match self {
            Job::Rescue => args.rescue_every,
            Job::Purge => args.purge_every,
            Job::Gc => args.gc_every,
            Job::Prune => args.prune_every,
        }
    }

    /// Runs the job and logs what it did; a failure is logged and the next run retries.
    async fn run(self, store: &Store, args: &MaintainArgs) {
        let started = Instant::now();
        let outcome: Result<String, vega_repository::Error> =
            match self {
                Job::Rescue => store
                    .scans()
                    .rescue_expired(args.rescue_backoff)
                    .await
                    .map(|rescued| format!("rescued={}", rescued.len())),
                Job::Purge => store.artifacts().purge().await.map(|report| {
                    format!("deleted={} failed={}", report.deleted, report.failed.len())
                }),
                Job::Gc => store
                    .artifacts()
                    .gc(
                        GcOptions {
                            grace: args.gc_grace,
                            dry_run: false,
                        },
                        |_| {},
                    )
                    .await
                    .map(|r| {
                        format!(
                            "scanned={} orphans={} stale_pending={} incomplete_uploads={}",
                            r.scanned, r.orphans, r.stale_pending, r.incomplete_uploads
                        )
                    }),
                Job::Prune => store
                    .workers()
                    .prune(args.prune_after)
                    .await
                    .map(|pruned| format!("pruned={pruned}")),
            };
        let ms = started.elapsed().as_millis();
        match outcome {
            Ok(result) => tracing::info!(job = self.name(), ms, result, "maintenance run"),
            Err(err) => {
                tracing::warn!(job = self.name(), ms, error = %err, "maintenance run failed; the next run retries")
            }
        }
    }
}

pub async fn run(store: &Store, args: MaintainArgs) -> Result<u8, Box<dyn std::error::Error>> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let holder = format!(
        "{host}/{}/{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Each job and when it is next due: all of them when an instance first leads.
    let mut schedule =
        [Job::Rescue, Job::Purge, Job::Gc, Job::Prune].map(|job| (job, Instant::now()));
    let tick = (args.lease / 3).max(Duration::from_millis(100));
    let mut leading = false;
    tracing::info!(%holder, lease = ?args.lease, "maintain started");
    loop {
        match store.leases().hold(LEASE, &holder, args.lease).await {
            Ok(true) if !leading => {
                tracing::info!(%holder, "leading: running the maintenance jobs");
                leading = true;
            }
            Ok(true) => {}
            Ok(false) => {
                if leading {
                    tracing::warn!(%holder, "lost the lease to another instance");
                }
                leading = false;
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not renew the lease; standing by");
                leading = false;
            }
        }
        if leading {
            for (job, at) in &mut schedule {
                if *at <= Instant::now() {
                    job.run(store, &args).await;
                    *at = Instant::now() + job.every(&args);
                    // Renew between jobs, so a long run does not outlive the lease.
                    if !store
                        .leases()
                        .hold(LEASE, &holder, args.lease)
                        .await
                        .unwrap_or(false)
                    {
                        leading = false;
                        break;
                    }
                }
            }
        }
        if args.once {
            if leading {
                let _ = store.leases().release(LEASE, &holder).await;
            } else {
                tracing::info!("another instance leads; nothing run");
            }
            return Ok(0);
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
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if leading {
        store.leases().release(LEASE, &holder).await?;
    }
    tracing::info!(%holder, "maintain stopped");
    Ok(0)
}
