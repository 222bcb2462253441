//! `vega-bench`: measures Vega storage's hot paths on the local Postgres, each beside a
//! baseline run in the same process, and prints one table (median, min, max, ratio to the
//! baseline). `--quick` runs tiny sizes so the test command keeps the benchmarks compiling and
//! working; real figures come from `cargo run --release -p vega-bench`.
//!
//! The database is `VEGA_BENCH_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/vega_bench`; it is dropped and re-migrated at start.

/// Errors of the benchmark (it stops at the first).
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
/// Results of the benchmark.
pub(crate) type Result<T> = std::result::Result<T, Error>;

mod blob;
mod concurrency;
mod copy;
mod history;
mod poolers;
mod queue;
mod readers;
mod reads;
mod retention;
mod sarif;
mod sessions;
mod sustained;
mod usage;

use std::time::{Duration, Instant};

use clap::Parser;
use sea_orm::{
    ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait,
};
use vega_entity::{FindingCategory, Provider, Severity, TriggerKind, findings};
use vega_migration::{Migrator, MigratorTrait};
use vega_repository::{
    Lease, NewFinding, NewProject, NewRepository, NewScan, NewUser, PoolOptions, Store,
};

#[derive(Parser)]
#[command(name = "vega-bench")]
struct Args {
    /// Tiny sizes, one run each: checks that every scenario still works.
    #[arg(long)]
    quick: bool,
    /// Findings per ingested scan.
    #[arg(long, default_value_t = 100_000)]
    findings: usize,
    /// Findings shared by the eight scans of the concurrent-completion scenario.
    #[arg(long, default_value_t = 10_000)]
    shared_findings: usize,
    /// Runs per scenario.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Projects in the project-list scenario.
    #[arg(long, default_value_t = 10_000)]
    projects: u64,
    /// Open findings in the big project of the read scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    open_findings: u64,
    /// Queued scans in the worker-loop scenario.
    #[arg(long, default_value_t = 10_000)]
    queue_scans: u64,
    /// Usage records written in the usage scenario.
    #[arg(long, default_value_t = 1_000_000)]
    usage_records: usize,
    /// Old events in the retention scenario (and as many in its raw twin).
    #[arg(long, default_value_t = 1_000_000)]
    retention_events: u64,
    /// Finished scans in the history of the queue-at-scale scenario (`sustained`).
    #[arg(long, default_value_t = 10_000_000)]
    history_scans: u64,
    /// Each window of the queue-at-scale scenario: empty history, full history, and the
    /// first and last of the sustained run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// The sustained worker loop of the queue-at-scale scenario.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    sustained: Duration,
    /// Storage options set on `scans` before the queue-at-scale scenario (a candidate under
    /// measurement), e.g. `fillfactor = 90, autovacuum_vacuum_scale_factor = 0`.
    #[arg(long)]
    scans_storage: Option<String>,
    /// Calls per latency measurement.
    #[arg(long, default_value_t = 500)]
    iterations: usize,
    /// Size of the blob put/get object, in MiB.
    #[arg(long, default_value_t = 1024)]
    blob_mib: u64,
    /// Results in the SARIF log whose ingest is compared with COPY (and in each side of the
    /// comparison benchmark).
    #[arg(long, default_value_t = 100_000)]
    sarif_results: usize,
    /// Results in the SARIF log whose ingest's peak RSS is measured.
    #[arg(long, default_value_t = 1_000_000)]
    sarif_big: usize,
    /// Rescans of one repository's findings (`--findings` of them, 1% changed each time) in
    /// the history scenario, whose storage is compared with one occurrence row per finding
    /// per scan.
    #[arg(long, default_value_t = 100)]
    rescans: usize,
    /// Scenarios to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Bytes a scenario wrote or keeps (WAL, table and index size), beside a baseline's.
#[derive(serde::Serialize)]
pub(crate) struct Volume {
    what: String,
    bytes: u64,
    baseline: Option<String>,
    ratio: Option<f64>,
}

impl Volume {
    pub(crate) fn new(what: &str, bytes: u64, baseline: Option<&Volume>) -> Self {
        Volume {
            what: what.into(),
            bytes,
            baseline: baseline.map(|b| b.what.clone()),
            ratio: baseline.map(|b| bytes as f64 / (b.bytes.max(1)) as f64),
        }
    }
}

/// The WAL position, in bytes from the start.
pub(crate) async fn wal_position(db: &DatabaseConnection) -> Result<u64> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS at",
        ))
        .await?
        .ok_or("no WAL position")?;
    Ok(u64::try_from(row.try_get::<i64>("", "at")?)?)
}

#[derive(serde::Serialize)]
pub(crate) struct Row {
    scenario: String,
    rows: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    rows_per_s: f64,
    baseline: Option<String>,
    ratio: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.findings = 200;
        args.shared_findings = 200;
        args.runs = 1;
        args.blob_mib = 8;
        args.projects = 100;
        // Page 1,000 of 50 needs 50k open findings.
        args.open_findings = 50_000;
        args.queue_scans = 50;
        args.usage_records = 2_000;
        args.retention_events = 5_000;
        args.history_scans = 20_000;
        args.window = Duration::from_secs(1);
        args.sustained = Duration::from_secs(2);
        args.iterations = 5;
        args.sarif_results = 2_000;
        args.sarif_big = 5_000;
        args.rescans = 3;
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut rows = Vec::new();
    let mut volumes = Vec::new();
    // Blobs first, so the peak-memory reading is not inflated by the ingest scenarios.
    if wanted("blob") {
        blob::run(args.blob_mib, args.runs, &mut rows).await?;
    }
    let (db, url) = fresh_database().await?;
    // The store as an application builds it: its pool's liveness check and timeouts included.
    let settings = vega_config::Settings {
        database: vega_config::DatabaseSettings::for_url(&url)?,
        reader: None,
        blob: vega_config::BlobSettings::Fs {
            root: std::env::temp_dir().join("vega-bench-blobs"),
            root_source: vega_config::Source::Given,
        },
        pool: PoolOptions::default(),
    };
    let store = Store::connect(&settings).await?;
    if wanted("ingest") {
        ingest(&store, &db, &args, &mut rows, &mut volumes).await?;
    }
    if wanted("history") {
        history::run(
            &store,
            &db,
            args.findings,
            args.rescans,
            &mut rows,
            &mut volumes,
        )
        .await?;
    }
    if wanted("concurrency") {
        let project = bench_project(&store, "concurrency").await?;
        let shared = synthetic_findings(args.shared_findings);
        concurrency::completions(&store, project, &shared, args.runs, &mut rows).await?;
    }
    if wanted("reads") {
        let sizes = reads::Sizes {
            projects: args.projects,
            findings: args.open_findings,
            iterations: args.iterations,
            runs: args.runs,
        };
        reads::run(&store, &db, &url, &sizes, &mut rows).await?;
    }
    if wanted("usage") {
        usage::run(&store, &url, args.usage_records, args.iterations, &mut rows).await?;
    }
    if wanted("retention") {
        retention::run(
            &store,
            &db,
            &url,
            args.retention_events,
            args.iterations,
            &mut rows,
            &mut volumes,
        )
        .await?;
    }
    if wanted("queue") {
        queue::run(&store, &db, &url, args.queue_scans, args.runs, &mut rows).await?;
    }
    if wanted("poolers") {
        let sizes = poolers::Sizes {
            iterations: args.iterations,
            scans: args.queue_scans / 4,
            runs: args.runs,
        };
        poolers::run(&store, &db, &settings, &sizes, &mut rows).await?;
    }
    if wanted("readers") {
        let sizes = readers::Sizes {
            projects: args.projects,
            findings: args.open_findings.min(100_000),
            iterations: args.iterations,
            rounds: if args.quick { 2 } else { 20 },
        };
        readers::run(&sizes, &mut rows).await?;
    }
    // After the queue: the scans it enqueues would otherwise join the worker loop's queue.
    if wanted("sessions") {
        sessions::transaction(&store, &url, args.iterations, &mut rows).await?;
    }
    if wanted("sarif") {
        let sizes = sarif::Sizes {
            results: args.sarif_results,
            big: args.sarif_big,
            runs: args.runs,
            iterations: args.iterations,
        };
        sarif::run(&store, &db, &sizes, &mut rows).await?;
    }
    // Last, on a server of its own: the other rows ran on the shared one.
    if wanted("sustained") {
        let sizes = sustained::Sizes {
            history: args.history_scans,
            window: args.window,
            sustained: args.sustained,
            iterations: args.iterations,
            scans_storage: args.scans_storage.clone(),
        };
        sustained::run(&sizes, &mut rows).await?;
    }
    print(&rows, &volumes);
    if let Some(path) = args.json {
        let all = serde_json::json!({ "rows": rows, "volumes": volumes });
        std::fs::write(path, serde_json::to_vec_pretty(&all)?)?;
    }
    Ok(())
}

async fn fresh_database() -> Result<(DatabaseConnection, String)> {
    let url = std::env::var("VEGA_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/vega_bench".into());
    let (server, name) = url
        .rsplit_once('/')
        .ok_or("VEGA_BENCH_DATABASE_URL has no database name")?;
    let admin = Database::connect(format!("{server}/postgres")).await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    admin.close().await?;
    let mut options = ConnectOptions::new(&url);
    options
        .sqlx_logging(false)
        .test_before_acquire(false)
        .max_connections(PoolOptions::default().max_connections);
    let db = Database::connect(options).await?;
    Migrator::up(&db, None).await?;
    Ok((db, url))
}

pub(crate) fn synthetic_findings(n: usize) -> Vec<NewFinding> {
    (0..n).map(synthetic_findings_at).collect()
}

/// The `i`th synthetic finding.
fn synthetic_findings_at(i: usize) -> NewFinding {
    NewFinding {
        scanner: ["semgrep", "gitleaks", "trivy"][i % 3].into(),
        category: [
            FindingCategory::Sast,
            FindingCategory::Secret,
            FindingCategory::Dependency,
        ][i % 3],
        rule_id: format!("rule-{}", i % 211),
        title: format!("Finding {i} of a synthetic scan"),
        severity: Severity::ALL[i % 6],
        file_path: Some(format!("src/module_{}/file_{}.py", i % 97, i)),
        start_line: Some((i % 500 + 1) as i32),
        end_line: Some((i % 500 + 3) as i32),
        location_key: format!("match-{i}"),
        cwe: Some(79),
        cve: None,
        package_name: None,
        package_version: None,
        details: None,
    }
}

/// `batch` with one finding in a hundred moved (its lines shifted by `shift`): a rescan with
/// 1% changed.
pub(crate) fn one_percent_moved(batch: &[NewFinding], shift: i32) -> Vec<NewFinding> {
    batch
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut f = f.clone();
            if i % 100 == 0 {
                f.start_line = f.start_line.map(|l| l + shift);
                f.end_line = f.end_line.map(|l| l + shift);
            }
            f
        })
        .collect()
}

/// Scan completion with N findings: all new, then the same findings again on the same
/// repository (a rescan, all unchanged), then again with 1% moved, beside COPY of the rows a
/// first ingest writes and SeaORM `insert_many` of the bare finding rows; and the WAL the
/// rescans and COPY wrote.
async fn ingest(
    store: &Store,
    db: &DatabaseConnection,
    args: &Args,
    rows: &mut Vec<Row>,
    volumes: &mut Vec<Volume>,
) -> Result<()> {
    let owner = store
        .users()
        .create(NewUser {
            email: "bench@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let batch = synthetic_findings(args.findings);
    let changed = one_percent_moved(&batch, 1000);
    let (mut fresh, mut again, mut moved, mut bare, mut copied) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut again_wal, mut moved_wal, mut copy_wal) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let project = store
            .projects()
            .create(NewProject {
                owner_id: owner.id,
                name: "bench".into(),
                slug: format!("bench-{run}"),
                description: None,
            })
            .await?;
        let repo = store
            .repositories()
            .add(NewRepository {
                project_id: project.id,
                provider: Provider::Upload,
                provider_xid: None,
                full_name: None,
                clone_url: None,
                default_branch: Some("main".into()),
            })
            .await?;
        for (times, findings, wal) in [
            (&mut fresh, &batch, None),
            (&mut again, &batch, Some(&mut again_wal)),
            (&mut moved, &changed, Some(&mut moved_wal)),
        ] {
            let lease = claim_main(store, repo.id).await?;
            settle(db).await?;
            let before = wal_position(db).await?;
            let started = Instant::now();
            store.scans().complete(&lease, findings.clone()).await?;
            times.push(started.elapsed());
            if let Some(wal) = wal {
                wal.push(wal_position(db).await? - before);
            }
        }

        // Baselines: the same finding rows, bare, through SeaORM's insert_many in 1,000-row
        // statements (no dedup, no runs, no counts), and through COPY with their runs, each
        // into a fresh repository and a scan that is only a row to point at.
        let (bare_repo, bare_scan) =
            baseline_target(store, project.id, &format!("bare-{run}")).await?;
        let (copy_repo, copy_scan) =
            baseline_target(store, project.id, &format!("copy-{run}")).await?;
        let now = chrono::Utc::now().fixed_offset();
        let models: Vec<findings::ActiveModel> = batch
            .iter()
            .map(|f| findings::ActiveModel {
                id: Set(uuid::Uuid::now_v7()),
                project_id: Set(project.id),
                repository_id: Set(bare_repo.id),
                fingerprint: Set(f.fingerprint().to_vec()),
                scanner: Set(f.scanner.clone()),
                category: Set(f.category.as_str().into()),
                rule_id: Set(f.rule_id.clone()),
                title: Set(f.title.clone()),
                severity: Set(f.severity.as_i16()),
                scanner_severity: Set(f.severity.as_i16()),
                severity_overridden: Set(false),
                cwe: Set(f.cwe),
                cve: Set(None),
                file_path: Set(f.file_path.clone()),
                start_line: Set(f.start_line),
                end_line: Set(f.end_line),
                package_name: Set(None),
                package_version: Set(None),
                status: Set("open".into()),
                dismissed_reason: Set(None),
                dismissed_at: Set(None),
                dismissed_by_user_id: Set(None),
                dismissed_comment: Set(None),
                dismissed_until: Set(None),
                confirmed_at: Set(None),
                severity_reason: Set(None),
                on_default_branch: Set(true),
                first_seen_scan_id: Set(Some(bare_scan.id)),
                fixed_in_scan_id: Set(None),
                first_seen_at: Set(now),
                fixed_at: Set(None),
                details: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .collect();
        settle(db).await?;
        let before = wal_position(db).await?;
        let started = Instant::now();
        copy::copy_findings(db, project.id, copy_repo.id, copy_scan.id, &batch).await?;
        copied.push(started.elapsed());
        copy_wal.push(wal_position(db).await? - before);

        settle(db).await?;
        let started = Instant::now();
        let txn = sea_orm::TransactionTrait::begin(db).await?;
        for chunk in models.chunks(1000) {
            findings::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        bare.push(started.elapsed());
    }
    let n = args.findings;
    let copy = summary("findings+runs: COPY BINARY (ceiling)", n, &copied, None);
    let bare = summary(
        "findings: SeaORM insert_many of bare rows",
        n,
        &bare,
        Some(&copy),
    );
    rows.push(summary(
        "scan complete: ingest, all new",
        n,
        &fresh,
        Some(&copy),
    ));
    rows.push(summary(
        "scan complete: rescan, all unchanged",
        n,
        &again,
        Some(&copy),
    ));
    rows.push(summary(
        "scan complete: rescan, 1% changed",
        n,
        &moved,
        Some(&copy),
    ));
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let copy_volume = Volume::new(
        "WAL: findings+runs COPY BINARY",
        median(&mut copy_wal),
        None,
    );
    volumes.push(Volume::new(
        "WAL: rescan, all unchanged",
        median(&mut again_wal),
        Some(&copy_volume),
    ));
    volumes.push(Volume::new(
        "WAL: rescan, 1% changed",
        median(&mut moved_wal),
        Some(&copy_volume),
    ));
    volumes.push(copy_volume);
    rows.push(bare);
    rows.push(copy);
    Ok(())
}

/// Enqueues a full scan of `main` in the repository and claims it.
pub(crate) async fn claim_main(store: &Store, repository_id: uuid::Uuid) -> Result<Lease> {
    store
        .scans()
        .enqueue(NewScan::full(
            repository_id,
            TriggerKind::Api,
            Some("main".into()),
        ))
        .await?;
    Ok(store
        .scans()
        .claim_next("bench", 1, Duration::from_secs(3600))
        .await?
        .remove(0)
        .lease)
}

/// A project of its own for a scenario, owned by a user of its own.
pub(crate) async fn bench_project(store: &Store, name: &str) -> Result<uuid::Uuid> {
    let owner = store
        .users()
        .create(NewUser {
            email: format!("{name}@example.com"),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let project = store
        .projects()
        .create(NewProject {
            owner_id: owner.id,
            name: name.into(),
            slug: name.into(),
            description: None,
        })
        .await?;
    Ok(project.id)
}

/// A git repository named `name` in the project.
pub(crate) async fn git_repository(
    store: &Store,
    project_id: uuid::Uuid,
    name: &str,
    default_branch: Option<&str>,
) -> Result<vega_entity::repositories::Model> {
    Ok(store
        .repositories()
        .add(NewRepository {
            project_id,
            provider: Provider::Git,
            provider_xid: Some(name.into()),
            full_name: None,
            clone_url: None,
            default_branch: default_branch.map(Into::into),
        })
        .await?)
}

/// A fresh repository for a baseline's rows, and a scan in it that is only a row for them to
/// point at: cancelled at once, so that a later run's claim cannot take it.
async fn baseline_target(
    store: &Store,
    project_id: uuid::Uuid,
    name: &str,
) -> Result<(vega_entity::repositories::Model, vega_entity::scans::Model)> {
    let repo = git_repository(store, project_id, name, None).await?;
    let scan = store
        .scans()
        .enqueue(NewScan::full(repo.id, TriggerKind::Api, None))
        .await?;
    store.scans().cancel(scan.id).await?;
    Ok((repo, scan))
}

/// Checkpoints before a timed bulk write, so each starts with no WAL owed. With the default
/// `max_wal_size` (1 GB) a checkpoint starts every ~530 MB of WAL; in the 2026-12-01 full run
/// that was every 14–20 s of ingest, landing on whichever write happened to be running.
pub(crate) async fn settle(db: &DatabaseConnection) -> Result<()> {
    db.execute_unprepared("CHECKPOINT").await?;
    Ok(())
}

pub(crate) fn summary(scenario: &str, n: usize, times: &[Duration], baseline: Option<&Row>) -> Row {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or_default();
    Row {
        scenario: scenario.into(),
        rows: n,
        median_ms: median,
        min_ms: ms.first().copied().unwrap_or_default(),
        max_ms: ms.last().copied().unwrap_or_default(),
        rows_per_s: if median > 0.0 {
            n as f64 / (median / 1e3)
        } else {
            0.0
        },
        baseline: baseline.map(|b| b.scenario.clone()),
        ratio: baseline.map(|b| median / b.median_ms),
    }
}

fn print(rows: &[Row], volumes: &[Volume]) {
    let width = rows
        .iter()
        .map(|r| r.scenario.len())
        .max()
        .unwrap_or(0)
        .max(8);
    println!(
        "{:<width$} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "scenario", "rows/MiB", "median ms", "min ms", "max ms", "per s", "ratio"
    );
    for r in rows {
        println!(
            "{:<width$} {:>9} {:>10.3} {:>10.3} {:>10.3} {:>10.0} {:>7}",
            r.scenario,
            r.rows,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.rows_per_s,
            r.ratio
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "base".into())
        );
    }
    if !volumes.is_empty() {
        let width = volumes
            .iter()
            .map(|v| v.what.len())
            .max()
            .unwrap_or(0)
            .max(8);
        println!();
        println!("{:<width$} {:>14} {:>9}", "volume", "bytes", "ratio");
        for v in volumes {
            println!(
                "{:<width$} {:>14} {:>9}",
                v.what,
                v.bytes,
                v.ratio
                    .map(|x| format!("{x:.4}x"))
                    .unwrap_or_else(|| "base".into())
            );
        }
    }
    // A ratio this far from 1 more often means the two sides no longer do the same work
    // than that either got this much faster or slower.
    for r in rows {
        if let (Some(ratio), Some(base)) = (r.ratio, &r.baseline)
            && !(0.5..=3.0).contains(&ratio)
        {
            println!(
                "warning: {} is {ratio:.2}x {base}, outside 0.5x-3x: check that both measure the same work",
                r.scenario
            );
        }
    }
}

/// The process's resident memory, from `/proc/self/status` (Linux; `None` elsewhere).
pub(crate) mod peak_rss {
    fn field_kib(name: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// VmHWM: the most resident memory this process has used (since the last [`reset`]).
    pub(crate) fn peak_kib() -> Option<u64> {
        field_kib("VmHWM:")
    }

    /// VmRSS: resident memory now.
    pub(crate) fn current_kib() -> Option<u64> {
        field_kib("VmRSS:")
    }

    /// Starts a new peak from the current resident size (`clear_refs` mode 5, Linux 4.0+), so
    /// one scenario's peak is not an earlier one's.
    pub(crate) fn reset() {
        std::fs::write("/proc/self/clear_refs", "5").ok();
    }
}
