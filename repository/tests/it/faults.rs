//! The pool under server faults: restarts, terminated backends, a frozen server, a server
//! turned read-only. Each test owns a throwaway server ([`PgServer`]); the figures it prints
//! (`--nocapture`) are the closing note's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use vega_config::PoolOptions;
use vega_repository::{Error, NewUser, Store, Transient};
use vega_tests::pg::PgServer;

use crate::common;

async fn store_on(server: &PgServer, pool: PoolOptions) -> Store {
    let url = server.migrated_database("vega").await;
    Store::connect(&common::settings(&url, pool)).await.unwrap()
}

/// One call as a handler makes it: a write, then a read of what it wrote.
async fn call(store: &Store) -> Result<(), Error> {
    let user = store
        .users()
        .create(NewUser {
            email: format!("{}@example.com", uuid::Uuid::new_v4().simple()),
            display_name: None,
            is_admin: false,
        })
        .await?;
    store.users().get(user.id).await.map(|_| ())
}

/// Opens `n` connections by running `n` calls at once.
async fn warm(store: &Store, n: usize) {
    let calls: Vec<_> = (0..n).map(|_| call(store)).collect();
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
}

/// Runs `n` calls one after another and returns the failures.
async fn failures_of(store: &Store, n: usize) -> Vec<Error> {
    let mut failures = Vec::new();
    for _ in 0..n {
        if let Err(err) = call(store).await {
            failures.push(err);
        }
    }
    failures
}

#[tokio::test]
async fn an_idle_pool_rides_through_a_restart() {
    let server = PgServer::start(&[]);
    let pool = PoolOptions::default();
    let store = store_on(&server, pool.clone()).await;
    warm(&store, 10).await;
    tokio::time::sleep(pool.idle_check_after + Duration::from_millis(200)).await;
    server.restart();
    let failures = failures_of(&store, 20).await;
    println!("idle pool + restart: {} failed calls of 20", failures.len());
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn an_idle_pool_rides_through_terminated_backends() {
    let server = PgServer::start(&[]);
    let pool = PoolOptions::default();
    let store = store_on(&server, pool.clone()).await;
    warm(&store, 10).await;
    tokio::time::sleep(pool.idle_check_after + Duration::from_millis(200)).await;
    let ended = server.terminate_backends("vega").await;
    assert!(ended > 0, "the warmed pool held connections");
    let failures = failures_of(&store, 20).await;
    println!(
        "idle pool + {ended} backends terminated: {} failed calls of 20",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
}

/// Eight callers in a loop while the server restarts: calls that fail are the retryable error,
/// and none that starts once the server is back fails.
#[tokio::test]
async fn a_restart_under_load_fails_only_calls_in_flight_and_only_retryably() {
    let server = Arc::new(PgServer::start(&[]));
    let store = store_on(&server, PoolOptions::default()).await;
    warm(&store, 8).await;
    let started = Instant::now();
    let stop_at = Duration::from_secs(4);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut log = Vec::new();
                while started.elapsed() < stop_at {
                    let begun = started.elapsed();
                    let result = call(&store).await;
                    log.push((begun, started.elapsed(), result));
                }
                log
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarting = started.elapsed();
    let back = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            server.restart();
            started.elapsed()
        })
        .await
        .unwrap()
    };
    let mut log = Vec::new();
    for caller in callers {
        log.extend(caller.await.unwrap());
    }
    let failed: Vec<_> = log.iter().filter(|(_, _, r)| r.is_err()).collect();
    let after_back = failed.iter().filter(|(begun, _, _)| *begun >= back).count();
    let recovered = failed
        .iter()
        .map(|(_, ended, _)| *ended)
        .max()
        .unwrap_or(restarting);
    println!(
        "restart under load: {} calls, {} failed (all begun before the server was back: {}), \
         restart took {:?}, last failure {:?} after the restart began",
        log.len(),
        failed.len(),
        after_back == 0,
        back - restarting,
        recovered.saturating_sub(restarting)
    );
    for (_, _, result) in &failed {
        let err = result.as_ref().unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            matches!(
                err,
                Error::SchemaOutdated { .. } | Error::Unavailable { .. }
            ),
            "{err:?}"
        );
    }
    assert_eq!(
        after_back, 0,
        "calls begun after the server was back failed"
    );
}

/// A frozen server (SIGSTOP) answers nothing, so only the client's own deadline ends a call:
/// every call returns the retryable error within acquire timeout + statement timeout.
#[tokio::test]
async fn a_frozen_server_gets_the_retryable_error_within_the_bound() {
    let server = PgServer::start(&[]);
    let pool = PoolOptions {
        statement_timeout: Duration::from_secs(1),
        acquire_timeout: Duration::from_secs(1),
        ..PoolOptions::default()
    };
    let bound = pool.acquire_timeout + pool.statement_timeout;
    let store = store_on(&server, pool).await;
    warm(&store, 4).await;
    server.freeze();
    let frozen = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                (call(&store).await, begun.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in calls {
        let (result, took) = task.await.unwrap();
        let err = result.expect_err("a frozen server cannot answer");
        assert!(err.is_retryable(), "{err:?}");
        // Scheduling slack on a loaded machine; the bound itself is the deadline.
        assert!(
            took <= bound + Duration::from_millis(300),
            "took {took:?}: {err}"
        );
        slowest = slowest.max(took);
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(frozen.elapsed())).await;
    server.thaw();
    let thawed = Instant::now();
    let mut recovered = None;
    while thawed.elapsed() < Duration::from_secs(10) {
        if call(&store).await.is_ok() {
            recovered = Some(thawed.elapsed());
            break;
        }
    }
    let failures = failures_of(&store, 10).await;
    println!(
        "frozen 3 s, bound {bound:?}: 8 of 8 calls failed retryably, slowest {slowest:?}; \
         first success {recovered:?} after thaw; then {} failures of 10",
        failures.len()
    );
    assert!(
        recovered.is_some(),
        "the pool recovers once the server answers"
    );
    assert!(failures.is_empty(), "{failures:?}");
}

/// After a failover a connection may still reach the old writer, now a standby: its writes
/// answer 25006. That is the retryable `ReadOnly` error, and the pool drops the connections
/// that reached it.
#[tokio::test]
async fn a_read_only_server_is_retryable_and_its_connections_are_dropped() {
    let server = PgServer::start(&[]);
    let store = store_on(&server, PoolOptions::default()).await;
    warm(&store, 4).await;
    let admin = sea_orm::Database::connect(server.url("postgres"))
        .await
        .unwrap();
    let set_read_only = |on: bool| {
        let admin = admin.clone();
        async move {
            let value = if on { "on" } else { "off" };
            admin
                .execute_unprepared(&format!(
                    "ALTER SYSTEM SET default_transaction_read_only = {value}"
                ))
                .await
                .unwrap();
            admin
                .execute_unprepared("SELECT pg_reload_conf()")
                .await
                .unwrap();
            // The reload reaches the backends when they next read a command.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    set_read_only(true).await;
    let err = call(&store).await.expect_err("a standby refuses writes");
    let refused_at = chrono::Utc::now();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                cause: Transient::ReadOnly,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    set_read_only(false).await;
    let failures = failures_of(&store, 10).await;
    let old = admin
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = 'vega' AND backend_start < $1",
            [refused_at.into()],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    println!(
        "read-only server: {err}; after it turned writable: {} failures of 10, {old} connections from before the refusal left",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        old, 0,
        "connections that reached the read-only server were dropped"
    );
    admin.close().await.unwrap();
}
