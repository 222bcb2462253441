//! The store through PgBouncer (Debian's, on a free port in front of the bench database) in
//! session and in transaction mode, beside the same store reached directly: the single-row
//! reads (a scan by id, an API-key check) as alternating pairs, and the worker loop (4
//! workers) in alternating rounds.

use std::time::Instant;

use vega_config::{DatabaseSettings, Pooler, Settings};
use vega_entity::TriggerKind;
use vega_repository::{NewApiKey, NewScan, NewUser, Store};
use vega_tests::pgbouncer::{PgBouncer, PoolMode};

use crate::reads::measure_pair;
use crate::{Result, Row, queue, summary};

const WORKERS: usize = 4;

/// The sizes of the scenario.
pub(crate) struct Sizes {
    pub iterations: usize,
    pub scans: u64,
    pub runs: usize,
}

pub(crate) async fn run(
    direct: &Store,
    db: &sea_orm::DatabaseConnection,
    settings: &Settings,
    sizes: &Sizes,
    rows: &mut Vec<Row>,
) -> Result<()> {
    if !PgBouncer::installed() {
        eprintln!("poolers: skipped, pgbouncer is not installed (apt-get install pgbouncer)");
        return Ok(());
    }
    let url = url::Url::parse(settings.database.url.expose())?;
    let name = url.path().trim_start_matches('/').to_owned();
    let project = crate::bench_project(direct, "poolers").await?;
    let repo = crate::git_repository(direct, project, "poolers", Some("main")).await?;
    let owner = direct
        .users()
        .create(NewUser {
            email: "poolers-key@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let token = direct
        .api_keys()
        .issue(NewApiKey {
            user_id: owner.id,
            project_id: None,
            name: "poolers".into(),
            scopes: vec![],
            expires_at: None,
        })
        .await?
        .token
        .expose()
        .to_owned();

    for (mode, pooler) in [
        (PoolMode::Session, Pooler::Session),
        (PoolMode::Transaction, Pooler::Transaction),
    ] {
        let bouncer = PgBouncer::start(url.port().unwrap_or(5432), mode, 20);
        let pooled = Store::connect(&Settings {
            database: DatabaseSettings {
                pooler,
                ..DatabaseSettings::for_url(bouncer.url(&name))?
            },
            ..settings.clone()
        })
        .await?;
        let label = format!("through PgBouncer, {pooler} mode");
        // Enqueued per mode: the worker loop below starts from an empty scans table.
        let scan = direct
            .scans()
            .enqueue(NewScan::full(
                repo.id,
                TriggerKind::Api,
                Some("main".into()),
            ))
            .await?;

        let get = |store: &Store| {
            let store = store.clone();
            async move {
                store.scans().get(scan.id).await?;
                Ok::<(), crate::Error>(())
            }
        };
        let (base, subject) =
            measure_pair(sizes.iterations, || get(direct), || get(&pooled)).await?;
        pair(rows, "scan by id", &label, 1, &base, &subject);

        let authenticate = |store: &Store| {
            let store = store.clone();
            let token = token.clone();
            async move {
                store
                    .api_keys()
                    .authenticate(&token)
                    .await?
                    .ok_or("key not found")?;
                Ok::<(), crate::Error>(())
            }
        };
        let (base, subject) = measure_pair(
            sizes.iterations,
            || authenticate(direct),
            || authenticate(&pooled),
        )
        .await?;
        pair(rows, "api key", &label, 1, &base, &subject);

        let (mut direct_times, mut pooled_times) = (Vec::new(), Vec::new());
        for _ in 0..sizes.runs {
            for (store, times) in [(direct, &mut direct_times), (&pooled, &mut pooled_times)] {
                queue::enqueue(db, project, repo.id, sizes.scans).await?;
                let started = Instant::now();
                let done = queue::run_workers(WORKERS, |w| {
                    let store = store.clone();
                    tokio::spawn(queue::repository_worker(store, format!("w-{w}")))
                })
                .await?;
                times.push(started.elapsed());
                queue::check_each_claimed_once(db, sizes.scans, done).await?;
            }
        }
        pair(
            rows,
            &format!("claim+heartbeat+complete x{WORKERS}"),
            &label,
            sizes.scans as usize,
            &direct_times,
            &pooled_times,
        );
        drop(pooled);
        drop(bouncer);
    }
    Ok(())
}

fn pair(
    rows: &mut Vec<Row>,
    what: &str,
    label: &str,
    n: usize,
    base: &[std::time::Duration],
    subject: &[std::time::Duration],
) {
    let base = summary(
        &format!("{what}: repository, direct ({label} beside)"),
        n,
        base,
        None,
    );
    rows.push(summary(
        &format!("{what}: repository {label}"),
        n,
        subject,
        Some(&base),
    ));
    rows.push(base);
}
