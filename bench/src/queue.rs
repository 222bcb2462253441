//! The worker loop — claim, heartbeat, complete — over 10k queued scans at 1, 4 and 8
//! concurrent workers, through the repository and through the same statements in raw sqlx,
//! in alternating rounds.

use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, PgPool};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use uuid::Uuid;
use vega_entity::Provider;
use vega_repository::{NewProject, NewRepository, NewUser, Store};

use crate::{Row, summary};

use crate::Result;

const LEASE: Duration = Duration::from_secs(300);

pub(crate) async fn run(
    store: &Store,
    db: &DatabaseConnection,
    url: &str,
    scans: u64,
    runs: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .test_before_acquire(false)
        .connect(url)
        .await?;
    let owner = store
        .users()
        .create(NewUser {
            email: "queue@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let project = store
        .projects()
        .create(NewProject {
            owner_id: owner.id,
            name: "queue".into(),
            slug: "queue".into(),
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
    for workers in [1, 4, 8] {
        // Alternating rounds, so drift in the disk's fsync latency (each scan is a commit)
        // lands on both sides rather than on whichever ran second.
        let (mut repo_times, mut raw_times) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            enqueue(db, project.id, repo.id, scans).await?;
            let started = Instant::now();
            let done = run_workers(workers, |w| {
                let store = store.clone();
                tokio::spawn(async move { repository_worker(store, format!("repo-{w}")).await })
            })
            .await?;
            repo_times.push(started.elapsed());
            check_each_claimed_once(db, scans, done).await?;

            enqueue(db, project.id, repo.id, scans).await?;
            let started = Instant::now();
            let done = run_workers(workers, |w| {
                let raw = raw.clone();
                tokio::spawn(async move { raw_worker(raw, format!("raw-{w}")).await })
            })
            .await?;
            raw_times.push(started.elapsed());
            check_each_claimed_once(db, scans, done).await?;
        }
        let base = summary(
            &format!("claim+heartbeat+complete x{workers}: raw SQL"),
            scans as usize,
            &raw_times,
            None,
        );
        rows.push(summary(
            &format!("claim+heartbeat+complete x{workers}: repository"),
            scans as usize,
            &repo_times,
            Some(&base),
        ));
        rows.push(base);
    }
    Ok(())
}

/// Starts `workers` workers and waits for all of them; returns the scans they completed.
pub(crate) async fn run_workers(
    workers: usize,
    spawn: impl Fn(usize) -> tokio::task::JoinHandle<Result<u64>>,
) -> Result<u64> {
    let tasks: Vec<_> = (0..workers).map(spawn).collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.map_err(|e| e.to_string())??;
    }
    Ok(done)
}

pub(crate) async fn enqueue(
    db: &DatabaseConnection,
    project: Uuid,
    repo: Uuid,
    n: u64,
) -> Result<()> {
    db.execute_unprepared("DELETE FROM scans").await?;
    db.execute_unprepared(&format!(
        "INSERT INTO scans (id, project_id, repository_id, kind, trigger_kind, tracks_default_branch, status, \
                            priority, scheduled_at, attempt, max_attempts, created_at, updated_at) \
         SELECT gen_random_uuid(), '{project}', '{repo}', 'full', 'api', true, 'queued', 2, now() - interval '1 second', \
                0, 3, now(), now() FROM generate_series(1, {n})"
    ))
    .await?;
    db.execute_unprepared("VACUUM ANALYZE scans").await?;
    Ok(())
}

/// Every scan succeeded exactly once, on its first claim.
pub(crate) async fn check_each_claimed_once(
    db: &DatabaseConnection,
    n: u64,
    done: u64,
) -> Result<()> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) FILTER (WHERE status = 'succeeded' AND attempt = 1) AS ok, count(*) AS total FROM scans",
        ))
        .await?
        .ok_or("no row")?;
    let (ok, total): (i64, i64) = (row.try_get("", "ok")?, row.try_get("", "total")?);
    if ok as u64 != n || total as u64 != n || done != n {
        return Err(format!(
            "double or lost claims: {ok} of {total} succeeded once, workers reported {done}"
        )
        .into());
    }
    Ok(())
}

pub(crate) async fn repository_worker(store: Store, worker: String) -> Result<u64> {
    let mut done = 0;
    loop {
        let Some(claim) = store.scans().claim_next(&worker, 1, LEASE).await?.pop() else {
            return Ok(done);
        };
        store.scans().heartbeat(&claim.lease, LEASE).await?;
        store.scans().complete(&claim.lease, Vec::new()).await?;
        done += 1;
    }
}

/// The same statements the repository runs, hand-written on a plain sqlx pool, the audit
/// events included (`scan.claimed` in the claim's statement, `scan.completed` in the
/// completion's transaction), so both sides do the same work.
async fn raw_worker(pool: PgPool, worker: String) -> Result<u64> {
    let mut done = 0;
    loop {
        let claimed: Option<(Uuid, Uuid, Uuid, i16)> = sqlx::query_as(
            "WITH next AS (SELECT id FROM scans WHERE status = 'queued' AND scheduled_at <= now() \
                            ORDER BY priority, scheduled_at, id LIMIT 1 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
               UPDATE scans s SET status = 'running', attempt = s.attempt + 1, claimed_by = $1, claimed_at = now(), \
                      heartbeat_at = now(), lease_expires_at = now() + interval '5 minutes', \
                      started_at = COALESCE(s.started_at, now()), updated_at = now() \
                 FROM next WHERE s.id = next.id RETURNING s.id, s.project_id, s.repository_id, s.attempt), \
             logged AS ( \
               INSERT INTO events (created_at, project_id, actor_type, actor_label, action, subject_type, \
                                   subject_id, data) \
               SELECT now(), project_id, 'worker', $1, 'scan.claimed', 'scan', id, \
                      jsonb_build_object('worker_id', $1::text, 'attempt', attempt) FROM claimed) \
             SELECT * FROM claimed",
        )
        .bind(&worker)
        .fetch_optional(&pool)
        .await?;
        let Some((id, project, repository, attempt)) = claimed else {
            return Ok(done);
        };
        sqlx::query(
            "UPDATE scans SET heartbeat_at = now(), lease_expires_at = now() + interval '5 minutes', updated_at = now() \
              WHERE id = $1 AND status = 'running' AND claimed_by = $2 AND attempt = $3 RETURNING cancel_requested_at",
        )
        .bind(id)
        .bind(&worker)
        .bind(attempt)
        .fetch_one(&pool)
        .await?;
        let mut tx = pool.begin().await?;
        sqlx::query("UPDATE scans SET updated_at = now() WHERE id = $1 AND status = 'running' AND claimed_by = $2 AND attempt = $3 RETURNING *")
            .bind(id)
            .bind(&worker)
            .bind(attempt)
            .fetch_one(&mut *tx)
            .await?;
        let (stream, seq): (Uuid, i64) = sqlx::query_as(
            "INSERT INTO scan_streams (project_id, id, repository_id, ref_name, kind, default_branch, last_seq) \
             VALUES ($1, $2, $3, 'main', 'full', true, 1) \
             ON CONFLICT (repository_id, ref_name, kind, default_branch, project_id) \
             DO UPDATE SET last_seq = scan_streams.last_seq + 1 RETURNING id, last_seq",
        )
        .bind(project)
        .bind(Uuid::now_v7())
        .bind(repository)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE findings SET status = 'fixed', fixed_at = now(), fixed_in_scan_id = $1, updated_at = now() \
              WHERE repository_id = $2 AND status = 'open' AND on_default_branch \
                AND NOT EXISTS (SELECT 1 FROM sighting_runs o WHERE o.project_id = $3 AND o.stream_id = $4 \
                                   AND o.last_seq IS NULL AND o.finding_id = findings.id)",
        )
        .bind(id)
        .bind(repository)
        .bind(project)
        .bind(stream)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE scans SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL, updated_at = now(), \
                    stream_id = $2, stream_seq = $3 WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(stream)
        .bind(seq)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE projects SET latest_scan_id = $1, updated_at = now() WHERE id = $2 AND (latest_scan_id IS NULL OR latest_scan_id < $1)")
            .bind(id)
            .bind(project)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO events (created_at, project_id, actor_type, actor_label, action, subject_type, \
                                 subject_id, data) \
             VALUES (now(), $1, 'worker', $2, 'scan.completed', 'scan', $3, $4)",
        )
        .bind(project)
        .bind(&worker)
        .bind(id)
        .bind(serde_json::json!({ "findings_total": 0, "findings_new": 0, "findings_fixed": 0 }))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done += 1;
    }
}
