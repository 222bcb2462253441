//! The store behind Debian's PgBouncer (1.18: no prepared-statement tracking), in session and
//! in transaction mode; in transaction mode with fewer server connections than clients, so
//! that consecutive transactions really land on different server connections.

use std::time::{Duration, Instant};

use vega_config::{PoolOptions, Pooler};
use vega_entity::{Severity, TriggerKind};
use vega_repository::{NewScan, ServerTimeouts, Store};
use vega_tests::TestDb;
use vega_tests::pgbouncer::{PgBouncer, PoolMode};

use crate::common;

const CLIENTS: usize = 8;
const ROUNDS: usize = 15;

fn pool() -> PoolOptions {
    PoolOptions {
        max_connections: CLIENTS as u32,
        statement_timeout: Duration::from_secs(7),
        lock_timeout: Duration::from_secs(3),
        idle_in_transaction_timeout: Duration::from_secs(11),
        ..PoolOptions::default()
    }
}

/// A bouncer in `mode` in front of `db`'s server, and the settings that reach `db` through it.
/// Session mode holds a server connection per client connection, so its pool covers the
/// store's; transaction mode gets fewer server connections than clients.
fn behind(db: &TestDb, mode: PoolMode, pooler: Pooler) -> (PgBouncer, vega_config::Settings) {
    let upstream = url::Url::parse(db.url()).unwrap();
    let name = upstream.path().trim_start_matches('/').to_owned();
    let server_connections = match mode {
        PoolMode::Session => CLIENTS as u32,
        PoolMode::Transaction => 3,
    };
    let bouncer = PgBouncer::start(upstream.port().unwrap_or(5432), mode, server_connections);
    let mut settings = common::settings(&bouncer.url(&name), pool());
    settings.database.pooler = pooler;
    (bouncer, settings)
}

/// One client's work, as a worker and a handler do it: enqueue a scan, claim it, complete it
/// with findings, read it back.
async fn client(store: Store, repository_id: uuid::Uuid, client: usize) -> usize {
    let mut errors = 0;
    for round in 0..ROUNDS {
        let work = async {
            let branch = format!("c{client}-{round}");
            store
                .scans()
                .enqueue(NewScan::full(repository_id, TriggerKind::Api, Some(branch)))
                .await?;
            let worker = format!("worker-{client}");
            let Some(claim) = store
                .scans()
                .claim_next(&worker, 1, Duration::from_secs(60))
                .await?
                .pop()
            else {
                return Ok(());
            };
            let findings = (0..5)
                .map(|i| common::finding(&format!("r{i}"), "a.py", Severity::High))
                .collect();
            let done = store.scans().complete(&claim.lease, findings).await?;
            store.scans().get(done.id).await.map(|_| ())
        };
        if let Err(err) = work.await {
            eprintln!("client {client}, round {round}: {err}");
            errors += 1;
        }
    }
    errors
}

async fn serves_concurrent_clients(mode: PoolMode, pooler: Pooler) {
    let db = TestDb::postgres().await;
    let (bouncer, settings) = behind(&db, mode, pooler);
    let store = Store::connect(&settings).await.unwrap();

    assert_eq!(
        store.server_timeouts().await.unwrap(),
        Some(ServerTimeouts::wanted(&pool())),
        "the timeouts as the server sees them, through {mode:?} mode"
    );

    let repository = common::repository(&store).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(store.clone(), repository.id, c)))
        .collect();
    let mut errors = 0;
    for c in clients {
        errors += c.await.unwrap();
    }
    let done = store.scans().queue_summary().await.unwrap();
    println!(
        "{mode:?} mode: {} rounds by {CLIENTS} clients in {:?}, {errors} errors; {done:?}",
        CLIENTS * ROUNDS,
        started.elapsed()
    );
    assert_eq!(errors, 0, "pgbouncer log:\n{}", bouncer.log());
    assert_eq!(
        store.server_timeouts().await.unwrap(),
        Some(ServerTimeouts::wanted(&pool())),
        "still applied after the load"
    );
    drop(store);
}

#[tokio::test]
async fn session_mode_serves_concurrent_clients_with_the_timeouts_applied() {
    serves_concurrent_clients(PoolMode::Session, Pooler::Session).await;
}

#[tokio::test]
async fn transaction_mode_serves_concurrent_clients_with_the_timeouts_applied() {
    serves_concurrent_clients(PoolMode::Transaction, Pooler::Transaction).await;
}

/// Told nothing about the pooler, the store is refused at connect (the timeouts ride in the
/// startup packet's `options`), and the error names the pooler and the setting, not "is
/// Postgres running".
#[tokio::test]
async fn an_undeclared_pooler_is_named_at_connect() {
    let db = TestDb::postgres().await;
    let (_bouncer, settings) = behind(&db, PoolMode::Transaction, Pooler::None);
    let err = Store::connect(&settings).await.unwrap_err().to_string();
    assert!(err.contains("unsupported startup parameter"), "{err}");
    assert!(
        err.contains("VEGA_DB_POOLER") && !err.contains("pg_isready"),
        "{err}"
    );
}

/// Declared as a session pooler, a transaction-mode pooler accepts the connections (the
/// timeouts travel as SQL) and then mixes up the clients' prepared statements on its few
/// server connections: usually already among the statements `Store::connect` runs, else in
/// the first calls. Either way the error names the setting, not a bare driver error.
#[tokio::test]
async fn a_transaction_pooler_declared_as_session_is_named() {
    let db = TestDb::postgres().await;
    let repo = common::repository(&common::store(&db).await).await;
    let (_bouncer, settings) = behind(&db, PoolMode::Transaction, Pooler::Session);
    let store = match Store::connect(&settings).await {
        Ok(store) => store,
        Err(err) => {
            let err = err.to_string();
            assert!(
                err.contains("prepared statement") && err.contains("VEGA_DB_POOLER=transaction"),
                "{err}"
            );
            return;
        }
    };
    let calls = (0..CLIENTS).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..ROUNDS {
                if let Err(err) = store.repositories().get(repo.id).await {
                    errors.push(err);
                }
                if let Err(err) = store.projects().get(repo.project_id).await {
                    errors.push(err);
                }
            }
            errors
        })
    });
    let mut errors = Vec::new();
    for call in calls {
        errors.extend(call.await.unwrap());
    }
    let statements: Vec<String> = errors
        .iter()
        .map(ToString::to_string)
        .filter(|e| e.contains("prepared statement"))
        .collect();
    assert!(
        !statements.is_empty(),
        "no call met another client's statement: {errors:?}"
    );
    for err in &statements {
        assert!(err.contains("VEGA_DB_POOLER=transaction"), "{err}");
    }
    assert!(
        errors
            .iter()
            .filter(|e| e.to_string().contains("prepared statement"))
            .all(|e| e.kind() == "database" && !e.is_retryable()),
        "{errors:?}"
    );
}
