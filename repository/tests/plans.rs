//! Query plans of the hot repository methods, checked by counts on tables big enough for a
//! bad plan to show (tens of thousands of rows), so a lost index or a page that walks
//! everything before it fails CI instead of waiting for a benchmark.
//!
//! The statements checked are the ones each method sends, captured from the method itself:
//! - **Postgres**: `auto_explain`, loaded for the test's own database, sends the plan of every
//!   statement (`ANALYZE, BUFFERS`, JSON) back to the client as a NOTICE, which sqlx logs;
//!   a page must read at most a small multiple of its rows (index entries and rows a filter
//!   removed) and of its buffers, no filter may remove more rows than the page returns, and no
//!   big table may be read by a sequential scan.
//! - **SQLite**: the driver's statement log gives each statement's text, which is run under
//!   `EXPLAIN QUERY PLAN`; no big table may be scanned whole.
//!
//! Counts, not times: the result is the same on a loaded machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The fixtures of the main test binary; this one uses a few of them.
#[allow(dead_code)]
#[path = "it/common.rs"]
mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde_json::Value as Json;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry, filter::filter_fn};
use uuid::Uuid;
use vega_entity::{Severity, TriggerKind};
use vega_migration::MigratorTrait;
use vega_repository::{Delta, EventFeed, NewApiKey, NewScan, Page, SlaPolicy, Store};
use vega_tests::TestDb;

/// Tables the fixture fills with tens of thousands of rows: a whole scan of one is a lost
/// index.
const BIG: &[&str] = &[
    "findings",
    "sighting_runs",
    "scan_deltas",
    "scans",
    "events",
    "projects",
    "users",
    "api_keys",
];
/// Rows the fixture generates per big table (the findings of one scan, its history, ...).
const MANY: usize = 20_000;
/// A page reads at most this many index entries or rows per row it returns (with its
/// look-ahead row): one range per arm of a worst-first page (`findings.rs`), and the join's
/// probes.
const ROWS_PER_PAGE_ROW: usize = 5;
/// ... and at most this many buffers: an index probe and a heap page per row, for each
/// side of a join.
const BUFFERS_PER_PAGE_ROW: usize = 8;
const PAGE: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_paths_read_what_they_return_on_postgres() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::postgres().await;
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    let fixture = Fixture::seed(db.conn(), common::store(&db).await).await;
    db.conn()
        .execute_unprepared("VACUUM ANALYZE")
        .await
        .unwrap();
    for setting in [
        "session_preload_libraries = 'auto_explain'",
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_analyze = on",
        "auto_explain.log_buffers = on",
        "auto_explain.log_timing = off",
        "auto_explain.log_format = json",
        "auto_explain.log_level = notice",
    ] {
        db.conn()
            .execute_unprepared(&format!("ALTER DATABASE {name} SET {setting}"))
            .await
            .unwrap();
    }
    // One connection, opened now, so it loads auto_explain and a flush reaches its notices.
    let conn = connect(db.url()).await;
    check_all(&fixture.with_connection(conn).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_paths_use_their_indexes_on_sqlite() {
    let _serial = SERIAL.lock().await;
    let conn = connect("sqlite::memory:").await;
    vega_migration::Migrator::up(&conn, None).await.unwrap();
    let store = Store::from_parts(conn.clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap();
    let fixture = Fixture::seed(&conn, store).await;
    conn.execute_unprepared("ANALYZE").await.unwrap();
    check_all(&fixture.with_connection(conn).await).await;
}

/// The capture is process-wide, so the two tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One connection that logs every statement (as an application's pool does), at `url`.
async fn connect(url: &str) -> DatabaseConnection {
    install_capture();
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(true)
        .sqlx_logging_level(log::LevelFilter::Trace)
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None);
    Database::connect(options).await.unwrap()
}

/// The rows the methods read, shaped like a service's: a project with [`MANY`] findings seen
/// by two scans and a branch scan compared with it; another project with ten times as many;
/// ten times [`MANY`] scans and events, a tenth of them the project's (a thousandth of the
/// events on one finding); queued scans;
/// [`MANY`] more projects of the same owner; and [`MANY`] other users and keys.
struct Fixture {
    store: Store,
    conn: Option<DatabaseConnection>,
    owner: Uuid,
    project: Uuid,
    scan: Uuid,
    branch_scan: Uuid,
    finding: Uuid,
    token: String,
}

impl Fixture {
    async fn seed(conn: &DatabaseConnection, store: Store) -> Self {
        let repo = common::repository(&store).await;
        let project = repo.project_id;
        let owner = store.projects().get(project).await.unwrap().owner_id;
        let findings: Vec<_> = (0..MANY)
            .map(|i| {
                common::finding(
                    &format!("rule-{}", i % 97),
                    &format!("src/f{i}.py"),
                    Severity::ALL[i % 6],
                )
            })
            .collect();
        let mut scan = Uuid::nil();
        for _ in 0..2 {
            scan = complete(&store, repo.id, None, findings.clone()).await;
        }
        // A pull request that keeps a tenth, fixes the rest and adds as many new.
        let branch: Vec<_> =
            findings[..MANY / 10]
                .iter()
                .cloned()
                .chain((0..MANY / 10).map(|i| {
                    common::finding("new-rule", &format!("src/new{i}.py"), Severity::High)
                }))
                .collect();
        let branch_scan = complete(&store, repo.id, Some("feature"), branch).await;
        let first = store.findings().list_open(project, None, 1).await.unwrap();
        let finding = first.items[0].id;
        let other = common::user(&store).await;
        // Another project's repository, whose rows every list must skip without reading.
        let elsewhere = common::repository(&store).await;
        let issued = store
            .api_keys()
            .issue(NewApiKey {
                user_id: owner,
                project_id: None,
                name: "plans".into(),
                scopes: vec![],
                expires_at: None,
            })
            .await
            .unwrap();

        let postgres = conn.get_database_backend() == DbBackend::Postgres;
        let uuid = if postgres {
            "gen_random_uuid()"
        } else {
            "randomblob(16)"
        };
        // Events a second apart on Postgres, as a service writes them (SQLite's plans do not
        // depend on the values).
        let earlier = if postgres {
            "$1 - make_interval(secs => i)"
        } else {
            "$1"
        };
        let hash = if postgres {
            "sha256(int8send(i))"
        } else {
            "randomblob(32)"
        };
        let now = chrono::Utc::now().fixed_offset();
        // Another repository's stream of scans, whose sighting runs a scan's reads must skip.
        let elsewhere_stream = Uuid::now_v7();
        conn.execute_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            "INSERT INTO scan_streams (project_id, id, repository_id, ref_name, kind, \
                                       default_branch, last_seq) \
             VALUES ($1, $2, $3, 'main', 'full', TRUE, 1)",
            [
                elsewhere.project_id.into(),
                elsewhere_stream.into(),
                elsewhere.id.into(),
            ],
        ))
        .await
        .unwrap();
        for (rows, sql, values) in [
            (
                10 * MANY,
                format!(
                    "INSERT INTO scans (id, project_id, repository_id, trigger_kind, status, \
                                        scheduled_at, finished_at, created_at, updated_at) \
                     SELECT {uuid}, CASE WHEN i % 10 = 0 THEN $1 ELSE $4 END, \
                            CASE WHEN i % 10 = 0 THEN $2 ELSE $5 END, \
                            'api', 'succeeded', $3, $3, $3, $3 FROM seq"
                ),
                vec![
                    project.into(),
                    repo.id.into(),
                    now.into(),
                    elsewhere.project_id.into(),
                    elsewhere.id.into(),
                ],
            ),
            (
                10 * MANY,
                format!(
                    "INSERT INTO events (created_at, project_id, actor_type, actor_label, action, \
                                         subject_type, subject_id, data) \
                     SELECT {earlier}, CASE WHEN i % 10 = 0 THEN $2 ELSE $4 END, 'system', 'plans', \
                            'finding.confirmed', 'finding', \
                            CASE WHEN i % 1000 = 0 THEN $3 ELSE {uuid} END, '{{}}' FROM seq"
                ),
                vec![
                    now.into(),
                    project.into(),
                    finding.into(),
                    elsewhere.project_id.into(),
                ],
            ),
            (
                10 * MANY,
                format!(
                    "INSERT INTO findings (id, project_id, repository_id, fingerprint, scanner, \
                                           category, rule_id, title, severity, scanner_severity, \
                                           status, first_seen_at, created_at, updated_at) \
                     SELECT {uuid}, $1, $2, {hash}, 'semgrep', 'sast', 'rule', 'seeded', i % 6, \
                            i % 6, 'open', $3, $3, $3 FROM seq"
                ),
                vec![elsewhere.project_id.into(), elsewhere.id.into(), now.into()],
            ),
            (
                MANY,
                format!(
                    "INSERT INTO users (id, email, status, is_admin, created_at, updated_at) \
                     SELECT {uuid}, 'u' || i || '@plans.example', 'active', FALSE, $1, $1 FROM seq"
                ),
                vec![now.into()],
            ),
            (
                MANY,
                format!(
                    "INSERT INTO projects (id, owner_id, name, slug, created_at, updated_at) \
                     SELECT {uuid}, $1, 'p' || i, 'p-' || i, $2, $2 FROM seq"
                ),
                vec![owner.into(), now.into()],
            ),
            (
                MANY,
                format!(
                    "INSERT INTO api_keys (id, user_id, name, token_hash, token_prefix, token_last4, scopes, \
                                           created_at) \
                     SELECT {uuid}, $1, 'k' || i, {hash}, 'vega_' || i, '0000', '[]', $2 FROM seq"
                ),
                vec![other.id.into(), now.into()],
            ),
            (
                10 * MANY,
                format!(
                    "INSERT INTO sighting_runs (project_id, stream_id, finding_id, first_seq, \
                                                change, severity) \
                     SELECT $1, $2, {uuid}, 1, 'new', i % 6 FROM seq"
                ),
                vec![elsewhere.project_id.into(), elsewhere_stream.into()],
            ),
        ] {
            let sql = format!(
                "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {rows}) {sql}"
            );
            conn.execute_raw(Statement::from_sql_and_values(
                conn.get_database_backend(),
                &sql,
                values,
            ))
            .await
            .unwrap();
        }
        // Work queued in another project, for the claim.
        for _ in 0..20 {
            store
                .scans()
                .enqueue(NewScan::full(elsewhere.id, TriggerKind::Api, None))
                .await
                .unwrap();
        }
        Self {
            store,
            conn: None,
            owner,
            project,
            scan,
            branch_scan,
            finding,
            token: issued.token.expose().to_owned(),
        }
    }

    /// The fixture with its store on `conn`.
    async fn with_connection(self, conn: DatabaseConnection) -> Self {
        Self {
            store: Store::from_parts(conn.clone(), vega_tests::scratch_blob_store())
                .await
                .unwrap(),
            conn: Some(conn),
            ..self
        }
    }

    fn conn(&self) -> &DatabaseConnection {
        self.conn.as_ref().expect("the fixture's connection")
    }
}

/// Enqueues, claims and completes a full scan of `repo` (on `branch`, else its default).
async fn complete(
    store: &Store,
    repo: Uuid,
    branch: Option<&str>,
    findings: Vec<vega_repository::NewFinding>,
) -> Uuid {
    let scan = store
        .scans()
        .enqueue(NewScan::full(
            repo,
            TriggerKind::Api,
            branch.map(Into::into),
        ))
        .await
        .unwrap();
    let claim = store
        .scans()
        .claim(scan.id, "plans", Duration::from_secs(600))
        .await
        .unwrap();
    store
        .scans()
        .complete(&claim.lease, findings)
        .await
        .unwrap();
    scan.id
}

/// What a method may read.
#[derive(Clone, Copy)]
enum Budget {
    /// A page (or a lookup) of this many rows with its look-ahead row: reads bounded by it.
    Page(u64),
    /// A write of this many rows: its reads bounded as a page's, and its filters may discard
    /// at most that many; its buffers are not bounded, as each of the table's indexes takes
    /// its own.
    Write(u64),
    /// Work in proportion to its input (a completion): only the indexes are checked.
    Indexed,
}

async fn check_all(fx: &Fixture) {
    let (store, project) = (&fx.store, fx.project);
    let mut report = Report::default();

    first_and_deep(
        fx,
        &mut report,
        "findings.list_open",
        |after, limit| async move { store.findings().list_open(project, after, limit).await },
    )
    .await;
    let all_due = SlaPolicy {
        critical: Some(0),
        high: Some(0),
        medium: Some(0),
        low: Some(0),
    };
    first_and_deep(
        fx,
        &mut report,
        "findings.overdue",
        |after, limit| async move {
            store
                .findings()
                .overdue(project, all_due, after, limit)
                .await
        },
    )
    .await;
    first_and_deep(
        fx,
        &mut report,
        "findings.of_scan",
        |after, limit| async move { store.findings().of_scan(fx.scan, after, limit).await },
    )
    .await;
    for delta in [Delta::Introduced, Delta::Unchanged, Delta::Absent] {
        let what = format!("findings.compare {delta:?}");
        first_and_deep(fx, &mut report, &what, |after, limit| async move {
            store
                .findings()
                .compare(fx.branch_scan, delta, after, limit)
                .await
        })
        .await;
    }
    first_and_deep(
        fx,
        &mut report,
        "findings.history",
        |after, limit| async move { store.findings().history(fx.finding, after, limit).await },
    )
    .await;
    first_and_deep(
        fx,
        &mut report,
        "scans.history",
        |before, limit| async move { store.scans().history(project, before, limit).await },
    )
    .await;
    first_and_deep(fx, &mut report, "events.page", |before, limit| async move {
        store
            .events()
            .page(EventFeed::Project(project), before, limit)
            .await
    })
    .await;

    // The export reads the live events in pages of 1,000.
    let until = chrono::Utc::now().fixed_offset() + chrono::Duration::days(1);
    let since = until - chrono::Duration::days(30);
    checked(
        fx,
        &mut report,
        "event_archives.export",
        Budget::Page(1_000),
        || async {
            let mut out = tokio::io::sink();
            store
                .event_archives()
                .export(project, since, until, &mut out)
                .await
        },
    )
    .await;
    first_and_deep(
        fx,
        &mut report,
        "projects.list_for_owner",
        |after, limit| async move {
            store
                .projects()
                .list_for_owner(fx.owner, after, limit)
                .await
        },
    )
    .await;
    let users = checked(
        fx,
        &mut report,
        "users.list",
        Budget::Page(PAGE),
        || async { store.users().list(None, PAGE).await },
    )
    .await;
    let last = users.last().map(|u| u.id);
    checked(
        fx,
        &mut report,
        "users.list page 2",
        Budget::Page(PAGE),
        || async { store.users().list(last, PAGE).await },
    )
    .await;
    checked(
        fx,
        &mut report,
        "api_keys.list_for_user",
        Budget::Page(1),
        || async { store.api_keys().list_for_user(fx.owner).await },
    )
    .await;
    checked(
        fx,
        &mut report,
        "api_keys.authenticate",
        Budget::Page(1),
        || async { store.api_keys().authenticate(&fx.token).await },
    )
    .await;
    checked(fx, &mut report, "scans.get", Budget::Page(1), || async {
        store.scans().get(fx.scan).await
    })
    .await;
    checked(
        fx,
        &mut report,
        "scans.claim_next",
        Budget::Write(1),
        || async {
            store
                .scans()
                .claim_next("plans", 1, Duration::from_secs(60))
                .await
        },
    )
    .await;

    // A rescan of the default branch: the completion's upsert and its fix-up of what the
    // scan no longer sees.
    let repo = store.scans().get(fx.scan).await.unwrap().repository_id;
    let scan = store
        .scans()
        .enqueue(NewScan::full(repo, TriggerKind::Api, None))
        .await
        .unwrap();
    let claim = store
        .scans()
        .claim(scan.id, "plans", Duration::from_secs(600))
        .await
        .unwrap();
    let seen = (0..MANY / 2)
        .map(|i| {
            common::finding(
                &format!("rule-{}", i % 97),
                &format!("src/f{i}.py"),
                Severity::ALL[i % 6],
            )
        })
        .collect::<Vec<_>>();
    checked(
        fx,
        &mut report,
        "scans.complete (rescan)",
        Budget::Indexed,
        || async { store.scans().complete(&claim.lease, seen).await },
    )
    .await;

    // A branch's full scan of a repository whose findings are newer than the statistics: the
    // kept comparison's "absent" part once joined every finding to every occurrence of the
    // scan. Each of its statements may read a few rows per finding, and no filter may discard
    // more than it keeps.
    let fresh = store
        .repositories()
        .add(vega_repository::NewRepository {
            project_id: fx.project,
            provider: vega_entity::Provider::Upload,
            provider_xid: None,
            full_name: None,
            clone_url: None,
            default_branch: Some("main".into()),
        })
        .await
        .unwrap();
    let findings = |from: usize| {
        (from..from + MANY / 4)
            .map(|i| common::finding(&format!("fresh-{i}"), "src/fresh.py", Severity::High))
            .collect::<Vec<_>>()
    };
    // The default branch's first scan (its fix-up passes over what it just wrote, so only
    // its indexes are checked), then the branch's, counted.
    let budgets = [
        ("main", 0, Budget::Indexed),
        ("feature", MANY / 8, Budget::Write(MANY as u64 / 4)),
    ];
    for (branch, from, budget) in budgets {
        let scan = store
            .scans()
            .enqueue(NewScan::full(
                fresh.id,
                TriggerKind::Api,
                Some(branch.into()),
            ))
            .await
            .unwrap();
        let claim = store
            .scans()
            .claim(scan.id, "plans", Duration::from_secs(600))
            .await
            .unwrap();
        let seen = findings(from);
        let what = format!("scans.complete ({branch}, fresh repository)");
        checked(fx, &mut report, &what, budget, || async {
            store.scans().complete(&claim.lease, seen).await
        })
        .await;
    }

    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>8}",
        "method", "statements", "rows read", "removed", "buffers"
    );
    for line in &report.lines {
        println!("{line}");
    }
    assert!(
        report.failures.is_empty(),
        "{} plans over budget:\n\n{}",
        report.failures.len(),
        report.failures.join("\n\n")
    );
}

/// A line per method, and what failed.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
}

/// Checks a list's first page, follows its cursor forty pages of 500 deep and checks the page
/// there.
async fn first_and_deep<T, C: Copy, F, Fut>(fx: &Fixture, report: &mut Report, what: &str, list: F)
where
    F: Fn(Option<C>, u64) -> Fut,
    Fut: std::future::Future<Output = vega_repository::Result<Page<T, C>>>,
{
    let first = checked(
        fx,
        report,
        &format!("{what} page 1"),
        Budget::Page(PAGE),
        || list(None, PAGE),
    )
    .await;
    let mut next = first.next;
    for _ in 0..40 {
        match list(next, 500).await.unwrap().next {
            Some(cursor) => next = Some(cursor),
            None => break,
        }
    }
    assert!(
        next.is_some(),
        "{what}: the list is long enough to page deep"
    );
    checked(
        fx,
        report,
        &format!("{what} deep"),
        Budget::Page(PAGE),
        || list(next, PAGE),
    )
    .await;
}

/// Runs `call` with the capture on, checks the plan of every statement it sent against
/// `budget`, adds a line to `report` and returns what the call returned.
async fn checked<T, F, Fut>(
    fx: &Fixture,
    report: &mut Report,
    what: &str,
    budget: Budget,
    call: F,
) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = vega_repository::Result<T>>,
{
    take_captured();
    let value = call().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    // The next statement on the one connection: the driver has logged the call's statements
    // and Postgres has sent its plans by the time it answers.
    fx.conn().execute_unprepared("SELECT 1").await.unwrap();
    let postgres = fx.conn().get_database_backend() == DbBackend::Postgres;
    let captured: Vec<Captured> = take_captured()
        .into_iter()
        .filter(|c| matches!(c, Captured::Plan(_)) == postgres)
        .filter(|c| !c.text().trim().starts_with("SELECT 1"))
        .collect();
    assert!(!captured.is_empty(), "{what}: no statement was captured");
    let mut totals = Counts::default();
    for statement in &captured {
        let (counts, mut problems, plan) = match statement {
            Captured::Plan(plan) => postgres_counts(plan),
            Captured::Statement(sql) => sqlite_counts(fx, sql).await,
        };
        if let (Budget::Page(rows) | Budget::Write(rows), Some(c)) = (budget, &counts) {
            let rows = usize::try_from(rows).unwrap() + 1;
            if c.read > ROWS_PER_PAGE_ROW * rows {
                problems.push(format!("reads {} rows for a page of {rows}", c.read));
            }
            if matches!(budget, Budget::Page(_)) && c.buffers > BUFFERS_PER_PAGE_ROW * rows {
                problems.push(format!("reads {} buffers for a page of {rows}", c.buffers));
            }
            // A write returns nothing to count against: its filters may discard up to the
            // rows it was given.
            let kept = match budget {
                Budget::Write(_) => c.returned.max(rows),
                _ => c.returned.max(1),
            };
            if c.removed > kept {
                problems.push(format!(
                    "a filter removes {} rows where it returns {}",
                    c.removed, c.returned
                ));
            }
        }
        if !problems.is_empty() {
            report.failures.push(format!(
                "{what}: {}\n{}\n{plan}",
                problems.join("; "),
                statement.text()
            ));
        }
        if let Some(c) = counts {
            totals.read += c.read;
            totals.removed += c.removed;
            totals.buffers += c.buffers;
        }
    }
    report.lines.push(format!(
        "{what:<34} {:>10} {:>10} {:>8} {:>8}",
        captured.len(),
        totals.read,
        totals.removed,
        totals.buffers
    ));
    value
}

#[derive(Debug, Default)]
struct Counts {
    /// Index entries and rows the scans produced or discarded.
    read: usize,
    /// Rows a filter (or join filter, or recheck) removed.
    removed: usize,
    /// Shared buffers hit or read.
    buffers: usize,
    /// Rows the statement returned.
    returned: usize,
}

/// The counts of one auto_explain plan, what is wrong with it (a big table read whole), and
/// the plan drawn as an indented list of its nodes.
fn postgres_counts(message: &str) -> (Option<Counts>, Vec<String>, String) {
    let Some(json) = message.find('{').map(|i| &message[i..]) else {
        return (None, vec![format!("not a plan: {message}")], String::new());
    };
    let plan: Json = match serde_json::from_str(json) {
        Ok(plan) => plan,
        Err(e) => return (None, vec![format!("{e}: {json}")], String::new()),
    };
    let root = &plan["Plan"];
    let mut counts = Counts {
        buffers: number(root, "Shared Hit Blocks") + number(root, "Shared Read Blocks"),
        returned: number(root, "Actual Rows") * number(root, "Actual Loops").max(1),
        ..Counts::default()
    };
    let (mut problems, mut drawn) = (Vec::new(), String::new());
    visit(root, 0, &mut |node, depth| {
        let kind = node["Node Type"].as_str().unwrap_or_default();
        let relation = node["Relation Name"].as_str().unwrap_or_default();
        let index = node["Index Name"].as_str().unwrap_or_default();
        if kind == "Seq Scan" && BIG.contains(&relation) {
            problems.push(format!("a sequential scan of {relation}"));
        }
        let loops = number(node, "Actual Loops");
        // A CTE's rows are the statement's own, in memory: a filter over them (the ingest's
        // "which rows change") reads no table.
        let removed = if kind == "CTE Scan" {
            0
        } else {
            number(node, "Rows Removed by Filter")
                + number(node, "Rows Removed by Join Filter")
                + number(node, "Rows Removed by Index Recheck")
        };
        counts.removed += removed * loops;
        if kind.ends_with("Scan") && !relation.is_empty() {
            counts.read += (number(node, "Actual Rows") + removed) * loops;
        }
        drawn.push_str(&format!(
            "{:indent$}{kind} {relation} {index}: {} rows x {loops}, {removed} removed\n",
            "",
            number(node, "Actual Rows"),
            indent = 2 * depth
        ));
    });
    (Some(counts), problems, drawn)
}

fn visit(node: &Json, depth: usize, f: &mut impl FnMut(&Json, usize)) {
    f(node, depth);
    for child in node["Plans"].as_array().into_iter().flatten() {
        visit(child, depth + 1, f);
    }
}

fn number(node: &Json, key: &str) -> usize {
    node[key].as_f64().map_or(0, |n| n.round() as usize)
}

/// `sql`'s SQLite plan: no counts (SQLite reports none), a big table scanned whole as a
/// problem, and the plan's lines.
async fn sqlite_counts(fx: &Fixture, sql: &str) -> (Option<Counts>, Vec<String>, String) {
    let head = sql.trim_start().to_ascii_uppercase();
    if !["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"]
        .iter()
        .any(|k| head.starts_with(k))
    {
        return (None, Vec::new(), String::new());
    }
    let rows = match fx
        .conn()
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {sql}"),
        ))
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            return (
                None,
                vec![format!("EXPLAIN QUERY PLAN: {e}")],
                String::new(),
            );
        }
    };
    let (mut problems, mut drawn) = (Vec::new(), String::new());
    for row in rows {
        let detail: String = row.try_get("", "detail").unwrap();
        drawn.push_str(&detail);
        drawn.push('\n');
        let name = detail
            .strip_prefix("SCAN ")
            .and_then(|rest| rest.split_whitespace().next());
        if let Some(table) = name.and_then(|name| big_table(sql, name)) {
            problems.push(format!("scans {table} whole ({detail})"));
        }
    }
    (None, problems, drawn)
}

/// The big table `name` is, or is the alias of in `sql` (SQLite's plans name aliases).
fn big_table(sql: &str, name: &str) -> Option<&'static str> {
    BIG.iter().copied().find(|&table| {
        table == name
            || [format!("{table} {name} "), format!("{table} AS {name} ")]
                .iter()
                .any(|aliased| format!("{sql} ").contains(aliased.as_str()))
    })
}

/// A statement the driver sent, as the capture saw it.
enum Captured {
    /// An auto_explain notice (Postgres): the plan, its text inside.
    Plan(String),
    /// A statement's text (SQLite).
    Statement(String),
}

impl Captured {
    fn text(&self) -> &str {
        match self {
            Captured::Plan(p) => p
                .find("\"Query Text\": \"")
                .and_then(|i| p[i + 15..].split("\",\n").next())
                .unwrap_or(p),
            Captured::Statement(s) => s,
        }
    }
}

static CAPTURED: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

fn take_captured() -> Vec<Captured> {
    std::mem::take(&mut *CAPTURED.lock().unwrap())
}

fn install_capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let layer = Capture.with_filter(filter_fn(|m| m.target().starts_with("sqlx::")));
        tracing::subscriber::set_global_default(Registry::default().with(layer)).unwrap();
    });
}

/// Keeps auto_explain's notices and the driver's statement log; [`checked`] uses the
/// notices on Postgres (they carry the text) and the log on SQLite.
struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let captured = match event.metadata().target() {
            "sqlx::postgres::notice" if fields.message.contains("\"Query Text\"") => {
                Captured::Plan(fields.message)
            }
            "sqlx::query" => Captured::Statement(if fields.statement.trim().is_empty() {
                fields.summary
            } else {
                fields.statement.trim().to_owned()
            }),
            _ => return,
        };
        CAPTURED.lock().unwrap().push(captured);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    summary: String,
    statement: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.statement = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}
