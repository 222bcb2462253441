//! The queue at scale, on a throwaway cluster this scenario starts with Postgres' defaults
//! (autovacuum on; `fsync = off`, as in every throwaway cluster): the worker loop (claim,
//! heartbeat, complete; 8 workers) and the claim's latency with an empty history beside the
//! same with `history` finished scans in `scans`, then the loop sustained for `sustained`,
//! its last window's rate beside its first. A feeder keeps the queue between 20,000 and
//! 40,000 due scans throughout, as a busy service would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use uuid::Uuid;
use vega_entity::Provider;
use vega_repository::{NewRepository, PoolOptions, Store};
use vega_tests::pg::PgServer;

use crate::{Result, Row, bench_project, summary};

const LEASE: Duration = Duration::from_secs(300);
const WORKERS: usize = 8;

/// How long each part runs and how big the history is.
pub(crate) struct Sizes {
    /// Finished scans in the history of the second window.
    pub(crate) history: u64,
    /// Each of the empty-history and full-history windows.
    pub(crate) window: Duration,
    /// The sustained run (its first and last `window` are compared).
    pub(crate) sustained: Duration,
    /// Calls per page latency measurement.
    pub(crate) iterations: usize,
    /// Storage settings applied to `scans` before the run, beside those the migrations set
    /// (`ALTER TABLE scans SET (…)` options), to measure a candidate before it becomes one.
    pub(crate) scans_storage: Option<String>,
}

pub(crate) async fn run(sizes: &Sizes, rows: &mut Vec<Row>) -> Result<()> {
    let server = tokio::task::spawn_blocking(|| PgServer::start(&[])).await?;
    let url = server.migrated_database("vega_sustained").await;
    let db = Database::connect(&url).await?;
    if let Some(options) = &sizes.scans_storage {
        db.execute_unprepared(&format!("ALTER TABLE scans SET ({options})"))
            .await?;
    }
    let server_line = server_settings(&db).await?;
    println!(
        "queue-at-scale rows ran on {server_line}; scans storage: {}",
        scans_options(&db).await?
    );
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
    let project = bench_project(&store, "sustained").await?;
    let repo = repository_of(&store, project).await?;
    let queue = Queue {
        db: &db,
        project,
        repo,
    };
    queue.top_up(40_000).await?;
    db.execute_unprepared("VACUUM ANALYZE scans").await?;

    let owner = store.projects().get(project).await?.owner_id;
    let pages_empty = pages(&store, owner, project, sizes.iterations).await?;
    let empty = loop_for(&store, &queue, sizes.window).await?;
    queue.add_history(sizes.history).await?;
    let pages_full = pages(&store, owner, project, sizes.iterations).await?;
    let full = loop_for(&store, &queue, sizes.window).await?;
    let history = format!("{} finished scans", sizes.history);
    for (i, page) in ["project list page", "scan history page"]
        .iter()
        .enumerate()
    {
        let base = summary(&format!("{page}, empty history"), 50, &pages_empty[i], None);
        rows.push(summary(
            &format!("{page}, {history}"),
            50,
            &pages_full[i],
            Some(&base),
        ));
        rows.push(base);
    }
    let base = empty.rate_row("worker loop x8, empty history", None);
    rows.push(full.rate_row(&format!("worker loop x8, {history}"), Some(&base)));
    rows.push(base);
    let base = summary("claim_next latency, empty history", 1, &empty.claims, None);
    rows.push(summary(
        &format!("claim_next latency, {history}"),
        1,
        &full.claims,
        Some(&base),
    ));
    rows.push(base);

    let sustained = sustain(&store, &queue, sizes.sustained, sizes.window).await?;
    let base = sustained
        .first
        .rate_row("worker loop x8 sustained: first window", None);
    rows.push(
        sustained
            .last
            .rate_row("worker loop x8 sustained: last window", Some(&base)),
    );
    rows.push(base);
    println!(
        "sustained {:?}: completions per window {:?}",
        sizes.sustained, sustained.per_window
    );
    db.close().await?;
    drop(store);
    drop(server);
    Ok(())
}

/// The owner's project list and the project's scan history, first pages, `n` calls each
/// (alternating), with the time of each call.
async fn pages(store: &Store, owner: Uuid, project: Uuid, n: usize) -> Result<[Vec<Duration>; 2]> {
    let (mut list, mut history) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let started = Instant::now();
        store.projects().list_for_owner(owner, None, 50).await?;
        list.push(started.elapsed());
        let started = Instant::now();
        store.scans().history(project, None, 50).await?;
        history.push(started.elapsed());
    }
    Ok([list, history])
}

/// What one window of the worker loop did.
struct Window {
    completed: u64,
    elapsed: Duration,
    claims: Vec<Duration>,
}

impl Window {
    /// The window as "time per 1,000 scans", so a row's rate is scans per second and its
    /// ratio compares rates (as times).
    fn per_thousand(&self) -> Duration {
        self.elapsed.mul_f64(1000.0 / self.completed.max(1) as f64)
    }

    fn rate_row(&self, scenario: &str, base: Option<&Row>) -> Row {
        summary(scenario, 1000, &[self.per_thousand()], base)
    }
}

struct Sustained {
    first: Window,
    last: Window,
    per_window: Vec<u64>,
}

/// The bench's queue: its fixture and the feeder's statements.
struct Queue<'a> {
    db: &'a DatabaseConnection,
    project: Uuid,
    repo: Uuid,
}

impl Queue<'_> {
    async fn queued(&self) -> Result<i64> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM scans WHERE status = 'queued'",
            ))
            .await?
            .ok_or("no row")?;
        Ok(row.try_get("", "n")?)
    }

    /// Adds scans until `target` are queued.
    async fn top_up(&self, target: i64) -> Result<()> {
        let missing = target - self.queued().await?;
        if missing > 0 {
            self.insert(missing as u64, "queued").await?;
        }
        Ok(())
    }

    /// `n` scans that finished long ago, as a service's history.
    async fn add_history(&self, n: u64) -> Result<()> {
        const CHUNK: u64 = 1_000_000;
        let mut left = n;
        while left > 0 {
            let chunk = left.min(CHUNK);
            self.insert(chunk, "succeeded").await?;
            left -= chunk;
        }
        self.db.execute_unprepared("VACUUM ANALYZE scans").await?;
        Ok(())
    }

    async fn insert(&self, n: u64, status: &str) -> Result<()> {
        let (finished, attempt, age) = match status {
            "queued" => ("NULL", 0, "1 second"),
            _ => ("now() - interval '30 days'", 1, "30 days"),
        };
        self.db
            .execute_unprepared(&format!(
                "INSERT INTO scans (id, project_id, repository_id, kind, trigger_kind, \
                                    tracks_default_branch, status, priority, scheduled_at, attempt, \
                                    max_attempts, finished_at, created_at, updated_at) \
                 SELECT {UUID_V7}, '{}', '{}', 'full', 'api', true, '{status}', 2, \
                        now() - interval '{age}', {attempt}, 3, {finished}, now() - interval '{age}', \
                        now() - interval '{age}' \
                 FROM generate_series(1, {n})",
                self.project, self.repo
            ))
            .await?;
        Ok(())
    }
}

/// A time-ordered id as the application makes them (UUIDv7: 48 bits of Unix milliseconds,
/// then random bits), so history is inserted at the end of the primary key as it would have
/// been, not at random places in it.
const UUID_V7: &str = "(lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') \
                        || '7' || substr(md5(random()::text), 1, 19))::uuid";

async fn repository_of(store: &Store, project: Uuid) -> Result<Uuid> {
    let repo = store
        .repositories()
        .add(NewRepository {
            project_id: project,
            provider: Provider::Upload,
            provider_xid: None,
            full_name: None,
            clone_url: None,
            default_branch: Some("main".into()),
        })
        .await?;
    Ok(repo.id)
}

async fn scans_options(db: &DatabaseConnection) -> Result<String> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT coalesce(array_to_string(reloptions, ', '), 'defaults') AS o \
               FROM pg_class WHERE relname = 'scans'",
        ))
        .await?
        .ok_or("no scans table")?;
    Ok(row.try_get("", "o")?)
}

async fn server_settings(db: &DatabaseConnection) -> Result<String> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('server_version') AS v, current_setting('autovacuum') AS av, \
                    current_setting('autovacuum_vacuum_scale_factor') AS sf, \
                    current_setting('autovacuum_naptime') AS nap, current_setting('fsync') AS fsync, \
                    current_setting('shared_buffers') AS sb",
        ))
        .await?
        .ok_or("no row")?;
    let get = |c: &str| row.try_get::<String>("", c);
    Ok(format!(
        "a throwaway cluster (Postgres {}; autovacuum {}, scale factor {}, naptime {}; fsync {}; \
         shared_buffers {})",
        get("v")?,
        get("av")?,
        get("sf")?,
        get("nap")?,
        get("fsync")?,
        get("sb")?
    ))
}

/// Runs the feeder and 8 workers for `duration`; returns what they did.
async fn loop_for(store: &Store, queue: &Queue<'_>, duration: Duration) -> Result<Window> {
    let s = sustain(store, queue, duration, duration).await?;
    Ok(s.first)
}

/// Runs the loop for `duration`, counting completions per `window`.
async fn sustain(
    store: &Store,
    queue: &Queue<'_>,
    duration: Duration,
    window: Duration,
) -> Result<Sustained> {
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (store, stop, completed) = (store.clone(), stop.clone(), completed.clone());
            tokio::spawn(async move { worker(store, format!("w{w}"), stop, completed).await })
        })
        .collect();
    let started = Instant::now();
    let mut marks = vec![(Duration::ZERO, 0)];
    let fed = async {
        let mut next_mark = window;
        while started.elapsed() < duration {
            queue.top_up(40_000).await?;
            // Top up when fewer than 20,000 are left: at ~2,000 claims/s that is 10 s ahead.
            while started.elapsed() < duration && queue.queued().await? > 20_000 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if started.elapsed() >= next_mark {
                    marks.push((started.elapsed(), completed.load(Ordering::Relaxed)));
                    next_mark += window;
                }
            }
        }
        Ok::<_, crate::Error>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    marks.push((started.elapsed(), completed.load(Ordering::Relaxed)));
    let mut claims = Vec::new();
    for task in workers {
        claims.extend(task.await??);
    }
    fed?;
    let per_window: Vec<u64> = marks.windows(2).map(|w| w[1].1 - w[0].1).collect();
    let window_of = |i: usize| Window {
        completed: marks[i + 1].1 - marks[i].1,
        elapsed: marks[i + 1].0 - marks[i].0,
        claims: Vec::new(),
    };
    // The last whole window: the run's end may leave a sliver after the last mark.
    let last = (0..marks.len() - 1)
        .rev()
        .find(|&i| marks[i + 1].0 - marks[i].0 >= window / 2)
        .unwrap_or(0);
    let mut first = window_of(0);
    first.claims = claims;
    Ok(Sustained {
        first,
        last: window_of(last),
        per_window,
    })
}

async fn worker(
    store: Store,
    name: String,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
) -> Result<Vec<Duration>> {
    let mut claims = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let Some(claim) = store.scans().claim_next(&name, 1, LEASE).await?.pop() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        claims.push(started.elapsed());
        store.scans().heartbeat(&claim.lease, LEASE).await?;
        store.scans().complete(&claim.lease, Vec::new()).await?;
        completed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(claims)
}
