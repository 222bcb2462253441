//! `vega-admin`: operator commands over the configured database and blob store (the same
//! `VEGA_*` settings as every Vega binary).
//!
//! - `doctor`: the debugging checklist (settings, reachability, connection, migrations,
//!   foreign-key indexes, blob store), one verdict per check; exit 1 when any fails;
//! - `purge`: delete the objects of deleted projects, scans and snapshots (exit 3 when a
//!   delete failed; it is retried by a later run);
//! - `gc`: find objects no row knows, uploads that never committed and multipart uploads a
//!   crash left, older than a grace period; dry-run unless `--apply`;
//! - `audit`: committed rows whose object is missing or differs (exit 3 when any);
//! - `users`, `keys`, `workers`: accounts, API keys and worker credentials (`accounts.rs`);
//! - `queue`, `scans`: the queue in view, and one scan shown, canceled, retried or rescued
//!   (`queue.rs`);
//! - `maintain`: the periodic jobs (rescue, purge, gc, heartbeat prune, snapshot expiry,
//!   event retention) under a leader lease, safe as several replicas (`maintain.rs`);
//! - `events export`: a project's archived and live events as one stream (`events.rs`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod accounts;
mod doctor;
mod events;
mod maintain;
mod progress;
mod queue;
use vega_repository::{GcOptions, Store};

/// Exit code of `audit` when it finds problems, and of `purge` when a delete failed.
const EXIT_FINDINGS: u8 = 3;

#[derive(Parser)]
#[command(name = "vega-admin", version)]
struct Cli {
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Users: create, list, suspend, activate.
    Users {
        #[command(subcommand)]
        command: accounts::UsersCommand,
    },
    /// API keys: issue, list, revoke, rotate.
    Keys {
        #[command(subcommand)]
        command: accounts::KeysCommand,
    },
    /// Worker credentials: issue-credential.
    Workers {
        #[command(subcommand)]
        command: accounts::WorkersCommand,
    },
    /// Run the periodic jobs (rescue of expired scan leases, purge, gc, heartbeat prune,
    /// snapshot expiry, event retention) until SIGTERM, as the one leader among any number of
    /// replicas.
    Maintain(maintain::MaintainArgs),
    /// The queue: depth by status and priority, the oldest due scan's wait, running scans
    /// per worker, expired leases and recent failures.
    Queue,
    /// Events: export a project's, archived and live.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Scans: show, cancel, retry, rescue.
    Scans {
        #[command(subcommand)]
        command: queue::ScansCommand,
    },
    /// Check the configuration, the database (reachable, connectable, migrated, foreign keys
    /// indexed) and the blob store (write, read back, delete a probe object). Exit 0 only when
    /// every check passes.
    Doctor,
    /// Delete the objects queued by deletes of projects, scans and snapshots. Safe to run
    /// repeatedly and concurrently: runs split the work. A failed delete is reported and
    /// retried by a later run after a backoff.
    Purge,
    /// Remove objects no row references, uploads that never committed and multipart uploads
    /// never completed, older than the grace period. Prints what it would remove unless
    /// --apply is given.
    Gc {
        /// Leave anything younger than this alone: it may be an upload in progress.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Remove what is found (the default is a dry run).
        #[arg(long)]
        apply: bool,
    },
    /// List committed rows whose object is missing or has the wrong size (and, with
    /// --verify-content, the wrong SHA-256), and pending rows older than the grace period.
    Audit {
        /// Pending rows older than this are reported.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Read every object and check its SHA-256 (slow: reads all the bytes).
        #[arg(long)]
        verify_content: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    vega_telemetry::init_logging("info,sqlx=warn");
    match run(Cli::parse()).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Box<dyn std::error::Error>> {
    if let Command::Doctor = cli.command {
        let report = doctor::run(vega_config::Settings::from_env()).await;
        print(cli.json, &report, || report.to_text());
        return Ok(if report.ok { 0 } else { 1 });
    }
    let settings = vega_config::Settings::from_env()?;
    let store = Store::connect(&settings).await?;
    let artifacts = store.artifacts();
    match cli.command {
        Command::Doctor => unreachable!("handled before connecting"),
        Command::Users { command } => accounts::users(&store, cli.json, command).await.map(|()| 0),
        Command::Keys { command } => accounts::keys(&store, cli.json, command).await.map(|()| 0),
        Command::Workers { command } => accounts::workers(&store, cli.json, command)
            .await
            .map(|()| 0),
        Command::Maintain(args) => maintain::run(&store, args).await,
        Command::Queue => queue::queue(&store, cli.json).await.map(|()| 0),
        Command::Events { command } => events::events(&store, command).await.map(|()| 0),
        Command::Scans { command } => queue::scans(&store, cli.json, command).await.map(|()| 0),
        Command::Purge => {
            let report = artifacts.purge().await?;
            print(cli.json, &report, || {
                let mut lines = vec![format!("purged {} objects", report.deleted)];
                lines.extend(report.failed.iter().map(|f| {
                    format!(
                        "  failed ({} attempts, retried after {}): {}: {}",
                        f.attempts, f.retry_after, f.object_key, f.error
                    )
                }));
                lines.join("\n")
            });
            Ok(if report.failed.is_empty() {
                0
            } else {
                EXIT_FINDINGS
            })
        }
        Command::Gc { grace, apply } => {
            let report = artifacts
                .gc(
                    GcOptions {
                        grace,
                        dry_run: !apply,
                    },
                    |scanned| {
                        eprint!("\rlisted {scanned} objects…");
                        let _ = std::io::stderr().flush();
                    },
                )
                .await?;
            eprintln!();
            print(cli.json, &report, || {
                let verb = if report.removed {
                    "removed"
                } else {
                    "would remove (dry run; --apply to remove)"
                };
                format!(
                    "listed {} objects; {verb} {} orphaned objects ({} bytes), {} stale pending \
                     uploads and {} incomplete multipart uploads",
                    report.scanned,
                    report.orphans,
                    report.orphan_bytes,
                    report.stale_pending,
                    report.incomplete_uploads
                )
            });
            Ok(0)
        }
        Command::Audit {
            grace,
            verify_content,
        } => {
            let report = artifacts.check_integrity(grace, verify_content).await?;
            print(cli.json, &report, || {
                let mut lines = vec![format!("checked {} committed objects", report.checked)];
                for (label, keys) in [
                    ("missing", &report.missing),
                    ("wrong size", &report.size_mismatch),
                    ("wrong sha256", &report.sha256_mismatch),
                    ("stale pending", &report.stale_pending),
                    ("incomplete multipart upload", &report.incomplete_uploads),
                ] {
                    lines.extend(keys.iter().map(|k| format!("  {label}: {k}")));
                }
                lines.join("\n")
            });
            Ok(if report.is_clean() { 0 } else { EXIT_FINDINGS })
        }
    }
}

/// Prints the result: `value` as JSON with `--json`, else `text`'s line(s).
fn print(json: bool, value: &impl serde::Serialize, text: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", text());
    }
}
