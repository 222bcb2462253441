//! Read paths beside hand-written SQL on a plain sqlx pool, over data generated inside
//! Postgres: the project list (10k projects), open findings worst first (page 1 and page
//! 1,000), a scan by id, an API-key check, and `vega-migrate up` on an empty database. Each
//! repository call is timed alternately with its baseline ([`measure_pair`]), once against
//! raw sqlx that only fetches the rows and once against raw sqlx that also decodes them into
//! the entity ([`decoded_pair`]).
//!
//! A baseline is the repository's statement written by hand: the same predicates, order and
//! parameters. Before anything is timed, [`same_rows`] checks that both return the same rows
//! in the same order, so a baseline that drifts from the repository stops the run instead of
//! printing a ratio of two different queries.

use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, Row as _};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, QueryResult};
use uuid::Uuid;
use vega_entity::{findings, scans};
use vega_migration::{Migrator, MigratorTrait};
use vega_repository::{FindingCursor, NewApiKey, NewUser, Page, Store};

use crate::{Row, summary};

use crate::Result;

/// The raw baselines' single-row lookups, the statements the repository sends.
const SCAN_BY_ID: &str = "SELECT * FROM scans WHERE id = $1";
const KEY_BY_HASH: &str = "SELECT k.id, k.user_id, k.project_id, k.token_prefix, k.scopes, \
                                  k.last_used_at \
                             FROM api_keys k JOIN users u ON u.id = k.user_id \
                            WHERE k.token_hash = $1 AND k.revoked_at IS NULL \
                              AND (k.expires_at IS NULL OR k.expires_at > $2) \
                              AND u.status = $3";

/// The project list's first page of 50 and its look-ahead row, as the repository sends it.
pub(crate) const PROJECT_LIST: &str = "SELECT p.id, p.name, p.slug, s.id AS scan_id, s.status AS scan_status, s.finished_at, \
            s.count_critical, s.count_high, s.count_medium, s.count_low, s.count_info, \
            s.count_unknown, s.count_dismissed \
       FROM projects p LEFT JOIN scans s ON s.id = p.latest_scan_id \
      WHERE p.owner_id = $1 AND p.archived_at IS NULL ORDER BY p.id DESC LIMIT 51";

/// Sizes of the generated data.
pub(crate) struct Sizes {
    pub projects: u64,
    pub findings: u64,
    pub iterations: usize,
    pub runs: usize,
}

pub(crate) async fn run(
    store: &Store,
    db: &DatabaseConnection,
    url: &str,
    sizes: &Sizes,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect(url)
        .await?;
    let owner = store
        .users()
        .create(NewUser {
            email: "reads@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let big_project = generate(db, owner.id, sizes).await?;

    // Project list, first page of 50.
    let n = sizes.iterations;
    same_rows(
        "project list page",
        sqlx::query(PROJECT_LIST)
            .bind(owner.id)
            .fetch_all(&raw)
            .await?,
        store.projects().list_for_owner(owner.id, None, 50).await?,
        |p| p.id,
    )?;
    let (raw_list, repo_list) = measure_pair(
        n,
        || async {
            sqlx::query(PROJECT_LIST)
                .bind(owner.id)
                .fetch_all(&raw)
                .await?;
            Ok(())
        },
        || async {
            store.projects().list_for_owner(owner.id, None, 50).await?;
            Ok(())
        },
    )
    .await?;
    let base = summary(
        &format!("project list page: raw SQL ({} projects)", sizes.projects),
        1,
        &raw_list,
        None,
    );
    rows.push(summary(
        &format!(
            "project list page: repository ({} findings)",
            sizes.findings
        ),
        1,
        &repo_list,
        Some(&base),
    ));
    rows.push(base);
    let (decoded_list, repo_list) = measure_pair(
        n,
        || async {
            let page = sqlx::query(PROJECT_LIST)
                .bind(owner.id)
                .fetch_all(&raw)
                .await?;
            for row in page {
                decode::<ProjectRow>(row)?;
            }
            Ok(())
        },
        || async {
            store.projects().list_for_owner(owner.id, None, 50).await?;
            Ok(())
        },
    )
    .await?;
    decoded_pair(rows, "project list page", &decoded_list, &repo_list);
    // The same page through the owner's session: the reach predicate's cost.
    let principal = crate::sessions::user_principal(store, owner.id).await?;
    let session = store.session(&principal);
    crate::sessions::scoped_pair(
        "project list page",
        n,
        || async {
            store.projects().list_for_owner(owner.id, None, 50).await?;
            Ok(())
        },
        || async {
            session
                .projects()
                .list_for_owner(owner.id, None, 50)
                .await?;
            Ok(())
        },
        rows,
    )
    .await?;
    crate::sessions::scoped_pair(
        "open findings page 1",
        n,
        || async {
            store.findings().list_open(big_project, None, 50).await?;
            Ok(())
        },
        || async {
            session.findings().list_open(big_project, None, 50).await?;
            Ok(())
        },
        rows,
    )
    .await?;

    // Open findings, worst first: page 1 and page 1,000 (50 per page) by keyset.
    let deep: (i16, chrono::DateTime<chrono::Utc>, Uuid) = sqlx::query_as(
        "SELECT severity, first_seen_at, id FROM findings \
          WHERE project_id = $1 AND status = 'open' AND on_default_branch \
          ORDER BY severity DESC, first_seen_at, id OFFSET 49949 LIMIT 1",
    )
    .bind(big_project)
    .fetch_one(&raw)
    .await?;
    let mut pages = Vec::new();
    for (label, cursor) in [
        ("page 1", None),
        (
            "page 1,000",
            Some(FindingCursor {
                severity: deep.0,
                first_seen_at: deep.1.fixed_offset(),
                id: deep.2,
            }),
        ),
    ] {
        same_rows(
            &format!("open findings {label}"),
            open_page(big_project, cursor).fetch_all(&raw).await?,
            store.findings().list_open(big_project, cursor, 50).await?,
            |f| f.id,
        )?;
        let list_open = || async {
            store.findings().list_open(big_project, cursor, 50).await?;
            Ok(())
        };
        let (raw_page, repo_page) = measure_pair(
            n,
            || async {
                open_page(big_project, cursor).fetch_all(&raw).await?;
                Ok(())
            },
            list_open,
        )
        .await?;
        let base = summary(
            &format!("open findings {label}: raw keyset SQL"),
            1,
            &raw_page,
            None,
        );
        rows.push(summary(
            &format!("open findings {label}: repository"),
            1,
            &repo_page,
            Some(&base),
        ));
        rows.push(base);
        let (decoded_page, repo_page) = measure_pair(
            n,
            || async {
                for row in open_page(big_project, cursor).fetch_all(&raw).await? {
                    decode::<findings::Model>(row)?;
                }
                Ok(())
            },
            list_open,
        )
        .await?;
        decoded_pair(
            rows,
            &format!("open findings {label}"),
            &decoded_page,
            &repo_page,
        );
        pages.push(repo_page);
    }
    // The keyset's promise: a deep page costs what the first does.
    if let [first, deep] = &pages[..] {
        let base = summary("open findings page 1: repository", 1, first, None);
        rows.push(summary(
            "open findings page 1,000 vs page 1: repository",
            1,
            deep,
            Some(&base),
        ));
    }

    // A scan by id.
    let scan_id: Uuid = sqlx::query("SELECT id FROM scans ORDER BY id LIMIT 1 OFFSET 77")
        .fetch_one(&raw)
        .await?
        .get("id");
    let got = store.scans().get(scan_id).await?;
    same_rows(
        "scan by id",
        sqlx::query(SCAN_BY_ID)
            .bind(scan_id)
            .fetch_all(&raw)
            .await?,
        Page {
            items: vec![got],
            next: None::<()>,
        },
        |s| s.id,
    )?;
    let get = || async {
        store.scans().get(scan_id).await?;
        Ok(())
    };
    let (raw_get, repo_get) = measure_pair(
        n,
        || async {
            sqlx::query(SCAN_BY_ID)
                .bind(scan_id)
                .fetch_optional(&raw)
                .await?;
            Ok(())
        },
        get,
    )
    .await?;
    let base = summary("scan by id: raw prepared SELECT", 1, &raw_get, None);
    rows.push(summary("scan by id: repository", 1, &repo_get, Some(&base)));
    rows.push(base);
    let (decoded_get, repo_get) = measure_pair(
        n,
        || async {
            let row = sqlx::query(SCAN_BY_ID)
                .bind(scan_id)
                .fetch_one(&raw)
                .await?;
            decode::<scans::Model>(row)?;
            Ok(())
        },
        get,
    )
    .await?;
    decoded_pair(rows, "scan by id", &decoded_get, &repo_get);

    // API-key authentication (checksum, SHA-256, one indexed lookup).
    let issued = store
        .api_keys()
        .issue(NewApiKey {
            user_id: owner.id,
            project_id: None,
            name: "bench".into(),
            scopes: vec![],
            expires_at: None,
        })
        .await?;
    let token = issued.token.expose().to_owned();
    let hash = issued.key.token_hash.clone();
    let key_by_hash = || {
        sqlx::query(KEY_BY_HASH)
            .bind(hash.clone())
            .bind(chrono::Utc::now().fixed_offset())
            .bind("active")
    };
    let authenticated = store
        .api_keys()
        .authenticate(&token)
        .await?
        .ok_or("key not found")?;
    same_rows(
        "api key",
        key_by_hash().fetch_all(&raw).await?,
        Page {
            items: vec![authenticated],
            next: None::<()>,
        },
        |p| p.key_id(),
    )?;
    let authenticate = || async {
        store
            .api_keys()
            .authenticate(&token)
            .await?
            .ok_or("key not found")?;
        Ok(())
    };
    let (raw_auth, repo_auth) = measure_pair(
        n,
        || async {
            key_by_hash().fetch_optional(&raw).await?;
            Ok(())
        },
        authenticate,
    )
    .await?;
    let base = summary("api key: raw prepared SELECT by hash", 1, &raw_auth, None);
    rows.push(summary(
        "api key: repository authenticate",
        1,
        &repo_auth,
        Some(&base),
    ));
    rows.push(base);
    let (decoded_auth, repo_auth) = measure_pair(
        n,
        || async {
            let row = key_by_hash().fetch_one(&raw).await?;
            decode::<KeyRow>(row)?;
            Ok(())
        },
        authenticate,
    )
    .await?;
    decoded_pair(rows, "api key", &decoded_auth, &repo_auth);

    // Last of the repository rows: it leaves the store's pool with every connection open, and
    // a sequential call that cycles through ten backends finds each colder than the baseline's.
    crate::concurrency::project_list_under_load(store, url, owner.id, n, sizes.runs, rows).await?;

    // vega-migrate's work on an empty database.
    let mut migrate = Vec::new();
    for i in 0..3 {
        let name = format!("vega_bench_migrate_{i}");
        db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let (server, _) = url.rsplit_once('/').ok_or("bad URL")?;
        let empty = sea_orm::Database::connect(format!("{server}/{name}")).await?;
        let started = Instant::now();
        Migrator::up(&empty, None).await?;
        migrate.push(started.elapsed());
        empty.close().await?;
        db.execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await?;
    }
    rows.push(summary(
        "migrate up: every migration on an empty database",
        1,
        &migrate,
        None,
    ));
    Ok(())
}

/// Generates the data inside Postgres: `projects` projects each with a repository and a
/// completed scan (its counts set, as completion writes them), and `findings` open findings
/// in one big project. Returns that project.
pub(crate) async fn generate(db: &DatabaseConnection, owner: Uuid, sizes: &Sizes) -> Result<Uuid> {
    let owner = format!("'{owner}'");
    for sql in [
        format!(
            "INSERT INTO projects (id, owner_id, name, slug, created_at, updated_at) \
             SELECT gen_random_uuid(), {owner}, 'p' || i, 'p-' || i, now(), now() FROM generate_series(1, {}) i",
            sizes.projects
        ),
        format!(
            "INSERT INTO repositories (id, project_id, provider, created_at, updated_at) \
             SELECT gen_random_uuid(), id, 'upload', now(), now() FROM projects WHERE owner_id = {owner}"
        ),
        "INSERT INTO scans (id, project_id, repository_id, kind, trigger_kind, status, scheduled_at, attempt, \
                            max_attempts, finished_at, count_critical, count_high, count_medium, count_low, \
                            findings_total, created_at, updated_at) \
         SELECT gen_random_uuid(), project_id, id, 'full', 'api', 'succeeded', now(), 1, 3, now(), \
                (random() * 5)::int, (random() * 20)::int, (random() * 50)::int, (random() * 90)::int, 165, now(), now() \
           FROM repositories"
            .to_owned(),
        "UPDATE projects p SET latest_scan_id = s.id FROM scans s WHERE s.project_id = p.id".to_owned(),
        "ANALYZE".to_owned(),
    ] {
        db.execute_unprepared(&sql).await?;
    }
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id, project_id FROM repositories ORDER BY id LIMIT 1",
        ))
        .await?
        .ok_or("no repository")?;
    let (repo, project): (Uuid, Uuid) = (row.try_get("", "id")?, row.try_get("", "project_id")?);
    db.execute_unprepared(&format!(
        "INSERT INTO findings (id, project_id, repository_id, fingerprint, scanner, category, rule_id, title, \
                               severity, scanner_severity, file_path, status, first_seen_at, \
                               created_at, updated_at) \
         SELECT gen_random_uuid(), '{project}', '{repo}', sha256(int8send(i)), 'semgrep', 'sast', 'rule-' || (i % 211), \
                'finding ' || i, (i % 6)::smallint, (i % 6)::smallint, 'src/f' || (i % 997) || '.py', 'open', \
                now(), now(), now() \
           FROM generate_series(1, {}) i",
        sizes.findings
    ))
    .await?;
    // VACUUM too, before any timing: otherwise the table's first autovacuum after the bulk
    // load runs during the timed loops (it made the 10M run of 2026-11-23 inconclusive), and
    // index-only scans need the visibility map it writes.
    db.execute_unprepared("VACUUM ANALYZE findings").await?;
    Ok(project)
}

/// The open-findings page the repository sends (a page of 50 and the look-ahead): after a
/// cursor, the rest of its severity, then what that left of the page from the lower
/// severities, each a range of the index.
fn open_page(
    project: Uuid,
    after: Option<FindingCursor>,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match after {
        None => sqlx::query(
            "SELECT * FROM findings WHERE project_id = $1 AND status = 'open' AND on_default_branch \
              ORDER BY severity DESC, first_seen_at, id LIMIT 51",
        )
        .bind(project),
        Some(c) => sqlx::query(
            "WITH arm0 AS (SELECT * FROM findings \
                 WHERE project_id = $1 AND status = 'open' AND on_default_branch \
                   AND severity = $2 AND (first_seen_at, id) > ($3, $4) \
                 ORDER BY severity DESC, first_seen_at, id LIMIT 51), \
                  arm1 AS (SELECT * FROM findings \
                 WHERE project_id = $1 AND status = 'open' AND on_default_branch AND severity < $2 \
                 ORDER BY severity DESC, first_seen_at, id \
                 LIMIT (SELECT 51 - count(*) FROM (SELECT id FROM arm0) AS done)) \
             SELECT * FROM arm0 UNION ALL SELECT * FROM arm1 \
             ORDER BY severity DESC, first_seen_at, id",
        )
        .bind(project)
        .bind(c.severity)
        .bind(c.first_seen_at)
        .bind(c.id),
    }
}

/// Checks that a raw baseline (`raw`, with its look-ahead row) and the repository (`page`)
/// return the same rows in the same order, before either is timed.
fn same_rows<T, C, K>(
    what: &str,
    raw: Vec<sqlx::postgres::PgRow>,
    page: Page<T, C>,
    key: impl Fn(&T) -> K,
) -> Result<()>
where
    K: PartialEq + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let raw = raw
        .iter()
        .map(|r| r.try_get::<K, _>("id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let repo: Vec<K> = page.items.iter().map(key).collect();
    let look_ahead = usize::from(page.next.is_some());
    if repo.is_empty() || raw.len() != repo.len() + look_ahead || raw[..repo.len()] != repo[..] {
        return Err(format!(
            "{what}: the raw baseline and the repository return different rows (raw {}, \
             repository {} and {look_ahead} look-ahead): the baseline no longer measures the \
             repository's statement",
            raw.len(),
            repo.len()
        )
        .into());
    }
    Ok(())
}

/// The project list's columns, as the repository decodes them.
#[derive(FromQueryResult)]
#[allow(dead_code)] // decoded to be measured, never read
pub(crate) struct ProjectRow {
    id: Uuid,
    name: String,
    slug: String,
    scan_id: Option<Uuid>,
    scan_status: Option<String>,
    finished_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    count_critical: Option<i32>,
    count_high: Option<i32>,
    count_medium: Option<i32>,
    count_low: Option<i32>,
    count_info: Option<i32>,
    count_unknown: Option<i32>,
    count_dismissed: Option<i32>,
}

/// The columns authentication reads, as the repository decodes them.
#[derive(FromQueryResult)]
#[allow(dead_code)] // decoded to be measured, never read
struct KeyRow {
    id: Uuid,
    user_id: Uuid,
    project_id: Option<Uuid>,
    token_prefix: String,
    scopes: serde_json::Value,
    last_used_at: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// Decodes a row into an entity model the way SeaORM decodes the repository's rows, so a
/// baseline that uses it differs from the repository only in how the query is executed.
pub(crate) fn decode<M: FromQueryResult>(row: sqlx::postgres::PgRow) -> Result<M> {
    Ok(M::from_query_result(&QueryResult::from(row), "")?)
}

/// The rows of a repository call measured against raw sqlx that also decodes its rows into the
/// entity: the cost of the repository's execution path alone, without the mapping that the
/// bare raw baselines skip.
fn decoded_pair(rows: &mut Vec<Row>, what: &str, decoded: &[Duration], repo: &[Duration]) {
    let base = summary(
        &format!("{what}: raw sqlx, decoded into the entity"),
        1,
        decoded,
        None,
    );
    rows.push(summary(
        &format!("{what}: repository vs decoded raw"),
        1,
        repo,
        Some(&base),
    ));
    rows.push(base);
}

/// Times `baseline` and `subject` in alternation, one call each per round (after a short
/// warm-up), so that drift in the machine or the server (autovacuum, checkpoints, cache
/// warm-up) lands on both sides of the ratio instead of on whichever ran second. Returns
/// (baseline times, subject times).
pub(crate) async fn measure_pair<B, BF, S, SF>(
    n: usize,
    mut baseline: B,
    mut subject: S,
) -> Result<(Vec<Duration>, Vec<Duration>)>
where
    B: FnMut() -> BF,
    BF: std::future::Future<Output = Result<()>>,
    S: FnMut() -> SF,
    SF: std::future::Future<Output = Result<()>>,
{
    for _ in 0..n.min(20) {
        baseline().await?;
        subject().await?;
    }
    let (mut base, mut subj) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for round in 0..n {
        // Alternate which goes first too: the second call of a round can find warmer caches.
        for first in [round % 2 == 0, round % 2 != 0] {
            let started = Instant::now();
            if first {
                baseline().await?;
                base.push(started.elapsed());
            } else {
                subject().await?;
                subj.push(started.elapsed());
            }
        }
    }
    Ok((base, subj))
}
