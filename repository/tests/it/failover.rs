//! A writer failover to another host, as Aurora does it: a primary with a synchronous
//! streaming standby, both throwaway clusters, behind a loopback proxy that stands for the
//! cluster endpoint. Under load the standby is promoted, the old writer fenced (its
//! connections go silent, nothing is reset) and the endpoint switched. Then the old writer
//! back as a read-only server with the pool's connections to it still open. The figures they
//! print (`--nocapture`) are the closing note's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use vega_config::PoolOptions;
use vega_repository::{NewUser, Store};
use vega_tests::pg::PgServer;
use vega_tests::proxy::Proxy;

use crate::common;

const CLIENTS: usize = 8;
const BEFORE: Duration = Duration::from_secs(6);
const AFTER: Duration = Duration::from_secs(12);
/// The recovery bound: calls begun this long after the switch all succeed, at at least half
/// the rate before it.
const RECOVERY: Duration = Duration::from_secs(5);

/// One call as a handler makes it: a write, then a read of what it wrote. Returns the user's
/// email when the write was acknowledged.
async fn call(store: &Store) -> Result<String, vega_repository::Error> {
    let user = store
        .users()
        .create(NewUser {
            email: format!("{}@example.com", uuid::Uuid::new_v4().simple()),
            display_name: None,
            is_admin: false,
        })
        .await?;
    store.users().get(user.id).await?;
    Ok(user.email)
}

struct Call {
    begun: Duration,
    ended: Duration,
    written: Option<String>,
    error: Option<String>,
}

async fn sql(url: &str, statement: &str) -> Vec<sea_orm::QueryResult> {
    let db = sea_orm::Database::connect(url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(DbBackend::Postgres, statement))
        .await
        .unwrap();
    db.close().await.ok();
    rows
}

#[tokio::test]
async fn calls_recover_within_seconds_of_a_writer_failover_to_another_host() {
    let setup = Instant::now();
    let primary = PgServer::start(&[]);
    let url = primary.migrated_database("vega").await;
    let standby = PgServer::standby_of(&primary);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(
        &url,
        "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'",
    )
    .await
    .is_empty()
    {
        assert!(Instant::now() < deadline, "the standby never streamed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sql(&url, "ALTER SYSTEM SET synchronous_standby_names = '*'").await;
    sql(&url, "SELECT pg_reload_conf()").await;

    let proxy = Proxy::start(primary.port()).await;
    let endpoint = format!("postgres://postgres@127.0.0.1:{}/vega", proxy.port());
    let store = Store::connect(&common::settings(&endpoint, PoolOptions::default()))
        .await
        .unwrap();

    println!("primary, standby and proxy ready in {:?}", setup.elapsed());
    let started = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop_at = BEFORE + AFTER;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let store = store.clone();
            let log = log.clone();
            tokio::spawn(async move {
                while started.elapsed() < stop_at {
                    let begun = started.elapsed();
                    let result = call(&store).await;
                    let ended = started.elapsed();
                    let (written, error) = match result {
                        Ok(email) => (Some(email), None),
                        Err(err) => (None, Some(err.to_string())),
                    };
                    log.lock().unwrap().push(Call {
                        begun,
                        ended,
                        written,
                        error,
                    });
                }
            })
        })
        .collect();

    tokio::time::sleep(BEFORE.saturating_sub(started.elapsed())).await;
    standby.promote();
    proxy.fence();
    proxy.switch(standby.port());
    let switched = started.elapsed();
    for client in clients {
        client.await.unwrap();
    }
    println!("load ended {:?} after it began", started.elapsed());

    let log = std::mem::take(&mut *log.lock().unwrap());
    let rate = |from: Duration, to: Duration| {
        let n = log
            .iter()
            .filter(|c| c.error.is_none() && c.ended >= from && c.ended < to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    };
    let before = rate(Duration::from_secs(1), switched);
    // The first second after the switch from which the rate holds at half the earlier one.
    let recovered = (0..AFTER.as_secs() - 1)
        .map(Duration::from_secs)
        .find(|s| rate(switched + *s, switched + *s + Duration::from_secs(1)) >= before / 2.0);
    let after = rate(switched + RECOVERY, started.elapsed());
    let failed_late: Vec<_> = log
        .iter()
        .filter(|c| c.begun >= switched + RECOVERY && c.error.is_some())
        .map(|c| c.error.clone().unwrap_or_default())
        .collect();
    let failed: Vec<_> = log.iter().filter(|c| c.error.is_some()).collect();
    let slowest_failure = failed.iter().map(|c| c.ended - c.begun).max();
    println!(
        "failover after {switched:?}: {before:.0} calls/s before, {after:.0} calls/s from \
         {RECOVERY:?} after; rate back to half within {recovered:?} of the switch; {} calls \
         failed (slowest took {slowest_failure:?}), {} of them begun {RECOVERY:?} or more \
         after the switch",
        failed.len(),
        failed_late.len()
    );
    assert!(
        recovered.is_some_and(|r| r < RECOVERY),
        "the rate did not recover to half within {RECOVERY:?}"
    );
    assert!(after >= before / 2.0, "{after} calls/s against {before}");
    assert!(failed_late.is_empty(), "{failed_late:?}");

    // Every acknowledged write is on the new writer (the standby was synchronous).
    let written: Vec<&String> = log.iter().filter_map(|c| c.written.as_ref()).collect();
    let new_writer = standby.url("vega");
    let present = sql(&new_writer, "SELECT email FROM users").await;
    let present: std::collections::HashSet<String> = present
        .iter()
        .map(|r| r.try_get::<String>("", "email").unwrap())
        .collect();
    let lost: Vec<_> = written.iter().filter(|e| !present.contains(**e)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    drop(store);
}

/// The old writer back as a read-only server while the pool's connections to it survive (it
/// rejoined as a replica, and nothing in the path fenced it), the endpoint already on the new
/// writer: a call that meets 25006 condemns the connections of its generation, so the calls
/// after it reach the new writer instead of meeting the old one again.
#[tokio::test]
async fn connections_to_a_writer_that_rejoined_read_only_are_condemned() {
    let old = PgServer::start(&[]);
    let old_url = old.migrated_database("vega").await;
    let new = PgServer::start(&[]);
    let new_url = new.migrated_database("vega").await;
    let proxy = Proxy::start(old.port()).await;
    let endpoint = format!("postgres://postgres@127.0.0.1:{}/vega", proxy.port());
    let pool = PoolOptions {
        max_connections: CLIENTS as u32,
        ..PoolOptions::default()
    };
    let store = Store::connect(&common::settings(&endpoint, pool))
        .await
        .unwrap();
    // Every connection of the pool opened on the old writer.
    let warm: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { call(&store).await })
        })
        .collect();
    for call in warm {
        call.await.unwrap().unwrap();
    }
    proxy.switch(new.port());
    sql(
        &old_url,
        "ALTER SYSTEM SET default_transaction_read_only = on",
    )
    .await;
    sql(&old_url, "SELECT pg_reload_conf()").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let store = store.clone();
            let log = log.clone();
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_secs(3) {
                    let begun = started.elapsed();
                    let result = call(&store).await;
                    let kind = result.as_ref().err().map(vega_repository::Error::kind);
                    log.lock()
                        .unwrap()
                        .push((begun, started.elapsed(), result.ok(), kind));
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    // Each pooled connection still on the old writer fails at most one call (25006, or
    // abandoned when the failure monitor sees the endpoint lead elsewhere), and the first
    // failure condemns them all: a call begun after it gets a new connection. A connection put
    // back in the pool would fail call after call.
    let failed: Vec<_> = log.iter().filter(|c| c.3.is_some()).collect();
    let first_failure = failed.iter().map(|c| c.1).min();
    let read_only = failed.iter().filter(|c| c.3 == Some("read_only")).count();
    println!(
        "{} calls, {} failed ({read_only} met the read-only old writer), the first ending at \
         {first_failure:?}",
        log.len(),
        failed.len()
    );
    assert!(
        failed.len() <= CLIENTS,
        "old connections were used again: {} calls failed, {:?}",
        failed.len(),
        failed.iter().map(|c| (c.0, c.3)).collect::<Vec<_>>()
    );
    let begun_after: Vec<_> = failed
        .iter()
        .filter(|c| first_failure.is_some_and(|f| c.0 > f))
        .map(|c| (c.0, c.3))
        .collect();
    assert!(begun_after.is_empty(), "{begun_after:?}");
    assert!(
        log.iter().filter(|c| c.2.is_some()).count() > CLIENTS,
        "{} calls",
        log.len()
    );
    // What was acknowledged after the switch is on the new writer.
    let present: std::collections::HashSet<String> = sql(&new_url, "SELECT email FROM users")
        .await
        .iter()
        .map(|r| r.try_get::<String>("", "email").unwrap())
        .collect();
    let lost = log
        .iter()
        .filter_map(|c| c.2.as_ref())
        .filter(|e| !present.contains(*e))
        .count();
    assert_eq!(lost, 0, "acknowledged writes missing on the new writer");
}
