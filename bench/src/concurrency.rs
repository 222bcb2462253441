//! Calls that meet: eight completions of one repository's scans at once against the same eight
//! one after another, and the project list under 32 concurrent callers on a pool of 10
//! against raw sqlx on a pool of the same size. Both alternate their halves over `runs`
//! rounds, so drift in the machine hits both alike.

use std::future::Future;
use std::time::{Duration, Instant};

use sea_orm::sqlx;
use uuid::Uuid;
use vega_entity::{Provider, TriggerKind};
use vega_repository::{Lease, NewFinding, NewRepository, NewScan, PoolOptions, Store};

use crate::{Result, Row, summary};

const COMPLETIONS: usize = 8;
const CALLERS: usize = 32;

/// Eight completions of `findings` shared findings in one repository: concurrently, and one
/// after another, in fresh repositories of `project_id`.
pub(crate) async fn completions(
    store: &Store,
    project_id: Uuid,
    findings: &[NewFinding],
    runs: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let (mut serial, mut concurrent) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for concurrently in [run % 2 == 0, run % 2 != 0] {
            let repo = store
                .repositories()
                .add(NewRepository {
                    project_id,
                    provider: Provider::Git,
                    provider_xid: Some(format!("concurrency-{run}-{concurrently}")),
                    full_name: None,
                    clone_url: None,
                    default_branch: Some("main".into()),
                })
                .await?;
            let leases = claim(store, repo.id).await?;
            let started = Instant::now();
            if concurrently {
                let tasks: Vec<_> = leases
                    .into_iter()
                    .map(|lease| {
                        let (store, findings) = (store.clone(), findings.to_vec());
                        tokio::spawn(async move { store.scans().complete(&lease, findings).await })
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
                concurrent.push(started.elapsed());
            } else {
                for lease in leases {
                    store.scans().complete(&lease, findings.to_vec()).await?;
                }
                serial.push(started.elapsed());
            }
        }
    }
    let n = COMPLETIONS * findings.len();
    let base = summary(
        &format!("{COMPLETIONS} completions of one repository, one after another"),
        n,
        &serial,
        None,
    );
    rows.push(summary(
        &format!(
            "{COMPLETIONS} completions of one repository at once ({} shared findings)",
            findings.len()
        ),
        n,
        &concurrent,
        Some(&base),
    ));
    rows.push(base);
    Ok(())
}

async fn claim(store: &Store, repository_id: Uuid) -> Result<Vec<Lease>> {
    for _ in 0..COMPLETIONS {
        store
            .scans()
            .enqueue(NewScan::full(
                repository_id,
                TriggerKind::Api,
                Some("main".into()),
            ))
            .await?;
    }
    let claims = store
        .scans()
        .claim_next(
            "bench-concurrency",
            COMPLETIONS as u32,
            Duration::from_secs(3600),
        )
        .await?;
    if claims.len() != COMPLETIONS {
        return Err(format!("claimed {} scans, not {COMPLETIONS}", claims.len()).into());
    }
    Ok(claims.into_iter().map(|c| c.lease).collect())
}

/// The owner's first project-list page, fetched `calls` times by each of 32 callers at once,
/// through the repository (its pool, liveness check and timeouts) and through raw sqlx on a
/// pool of the same size that decodes the rows as the repository does (on two cores shared
/// with the server, decoding is a share of the throughput).
pub(crate) async fn project_list_under_load(
    store: &Store,
    url: &str,
    owner_id: Uuid,
    calls: usize,
    runs: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let size = PoolOptions::default().max_connections;
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .connect(url)
        .await?;
    let (mut raw_times, mut repo_times) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        for repository in [run % 2 == 0, run % 2 != 0] {
            let elapsed = if repository {
                callers(calls, || {
                    let store = store.clone();
                    async move {
                        store.projects().list_for_owner(owner_id, None, 50).await?;
                        Ok(())
                    }
                })
                .await?
            } else {
                callers(calls, || {
                    let raw = raw.clone();
                    async move {
                        let page = sqlx::query(crate::reads::PROJECT_LIST)
                            .bind(owner_id)
                            .fetch_all(&raw)
                            .await?;
                        for row in page {
                            crate::reads::decode::<crate::reads::ProjectRow>(row)?;
                        }
                        Ok(())
                    }
                })
                .await?
            };
            // Round 0 warms both pools and is not counted.
            if run > 0 {
                if repository {
                    repo_times.push(elapsed);
                } else {
                    raw_times.push(elapsed);
                }
            }
        }
    }
    raw.close().await;
    let n = CALLERS * calls;
    let base = summary(
        &format!("project list, {CALLERS} callers: raw sqlx decoded, pool of {size}"),
        n,
        &raw_times,
        None,
    );
    rows.push(summary(
        &format!("project list, {CALLERS} callers: repository, pool of {size}"),
        n,
        &repo_times,
        Some(&base),
    ));
    rows.push(base);
    Ok(())
}

/// Runs `calls` calls in each of [`CALLERS`] tasks at once; returns the wall time.
async fn callers<F, Fut>(calls: usize, call: F) -> Result<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let batch: Vec<Fut> = (0..calls).map(|_| call()).collect();
            tokio::spawn(async move {
                for c in batch {
                    c.await?;
                }
                Ok::<_, crate::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}
