//! Reads past the writer: a primary and a streaming standby that applies WAL late, both
//! throwaway clusters of this test. Replica reads go to the standby once it has replayed what
//! the session wrote (carried across requests as a `WritePosition`), to the writer before, and
//! to the writer while the standby is stopped or lags past the bound. The figures it prints
//! (`--nocapture`) are the closing note's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use vega_config::{DatabaseSettings, PoolOptions, Settings};
use vega_repository::{NewProject, Principal, ReplicaState, Store, WritePosition};
use vega_tests::pg::PgServer;

use crate::common;

const CLIENTS: usize = 8;

fn settings(writer: &str, reader: &str, pool: PoolOptions) -> Settings {
    Settings {
        reader: Some(DatabaseSettings::for_url(reader).unwrap()),
        ..common::settings(writer, pool)
    }
}

fn pool(max_lag: Duration) -> PoolOptions {
    PoolOptions {
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_secs(1),
        reader_max_lag: max_lag,
        ..PoolOptions::default()
    }
}

/// Waits up to `limit` for the routing to see the reader in `state`.
async fn until(store: &Store, state: ReplicaState, limit: Duration) -> Duration {
    let started = Instant::now();
    while store.reader_status().unwrap().state != state {
        assert!(
            started.elapsed() < limit,
            "the reader's status stayed {:?} for {limit:?}",
            store.reader_status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn transactions_served(url: &str) -> i64 {
    let db = sea_orm::Database::connect(url).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'vega'",
        ))
        .await
        .unwrap()
        .unwrap();
    db.close().await.ok();
    row.try_get("", "xact_commit").unwrap()
}

async fn principal(store: &Store) -> Principal {
    let user = common::user(store).await;
    store.users().principal(user.id).await.unwrap()
}

/// One user as a browser drives the API: each request a session of its own, carrying the
/// write position the last write answered. Creates a project, then lists at once and every
/// 100 ms for `listing`, `rounds` times; returns the lists that missed one of its projects.
async fn client(store: Store, who: Principal, rounds: usize, listing: Duration) -> usize {
    let owner = who.user_id().unwrap();
    let mut position: Option<WritePosition> = None;
    let mut created = 0;
    let mut stale = 0;
    for round in 0..rounds {
        let session = store.session(&who);
        let session = match position {
            Some(p) => session.read_after(p),
            None => session,
        };
        let slug = format!("p{round}-{}", uuid::Uuid::new_v4().simple());
        session
            .projects()
            .create(NewProject {
                owner_id: owner,
                name: slug.clone(),
                slug,
                description: None,
            })
            .await
            .unwrap();
        created += 1;
        position = session.write_position().await.unwrap();
        assert!(position.is_some(), "a write leaves a position to carry");
        let started = Instant::now();
        while started.elapsed() < listing {
            let session = store.session(&who).read_after(position.unwrap());
            let page = session
                .projects()
                .list_for_owner(owner, None, 100)
                .await
                .unwrap();
            if page.items.len() != created {
                stale += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stale
}

#[tokio::test]
async fn replica_reads_see_the_sessions_writes_and_fall_back_to_the_writer() {
    let primary = PgServer::start(&[]);
    let url = primary.migrated_database("vega").await;
    let standby = PgServer::standby_with(&primary, &[("recovery_min_apply_delay", "2s")]);
    primary.await_streaming().await;
    let reader_url = standby.url("vega");
    let store = Store::connect(&settings(&url, &reader_url, pool(Duration::from_secs(10))))
        .await
        .unwrap();
    until(&store, ReplicaState::Serving, Duration::from_secs(10)).await;

    // 1. A lagging reader: every list sees the session's own writes, and most are the
    //    standby's once it has replayed them.
    let mut who = Vec::new();
    for _ in 0..CLIENTS {
        who.push(principal(&store).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the users reach the standby
    let before = store.reader_status().unwrap();
    let served_before = transactions_served(&reader_url).await;
    let clients: Vec<_> = who
        .iter()
        .map(|p| tokio::spawn(client(store.clone(), p.clone(), 2, Duration::from_secs(6))))
        .collect();
    let mut stale = 0;
    for c in clients {
        stale += c.await.unwrap();
    }
    let after = store.reader_status().unwrap();
    let on_reader = after.reads_on_reader - before.reads_on_reader;
    let on_writer = after.reads_on_writer - before.reads_on_writer;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the standby's statistics flush
    let standby_transactions = transactions_served(&reader_url).await - served_before;
    println!(
        "lagging reader (2 s apply delay): {on_reader} lists on the standby, {on_writer} on \
         the writer ({:.0}% on the standby), {stale} stale; the standby counted \
         {standby_transactions} transactions",
        100.0 * on_reader as f64 / (on_reader + on_writer) as f64
    );
    assert_eq!(stale, 0, "a list missed the session's own project");
    assert!(
        on_reader >= on_writer,
        "the standby served {on_reader} lists, the writer {on_writer}"
    );
    assert!(
        standby_transactions >= i64::try_from(on_reader).unwrap(),
        "the standby counted {standby_transactions} transactions for {on_reader} reads"
    );

    // 2. The standby stops mid-run: no read fails, and the reads are back on the writer at
    //    once; restarted, it is readmitted.
    let reads = Arc::new(AtomicU64::new(0));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(1);
    let readers: Vec<_> = who
        .iter()
        .map(|p| {
            let (store, p) = (store.clone(), p.clone());
            let (reads, slowest_ms) = (reads.clone(), slowest_ms.clone());
            tokio::spawn(async move {
                let owner = p.user_id().unwrap();
                let until = stop_at + Duration::from_secs(6);
                while Instant::now() < until {
                    let started = Instant::now();
                    store
                        .session(&p)
                        .projects()
                        .list_for_owner(owner, None, 100)
                        .await
                        .expect("a read while the standby stops");
                    let ms = u64::try_from(started.elapsed().as_millis()).unwrap();
                    slowest_ms.fetch_max(ms, Ordering::Relaxed);
                    reads.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep_until(stop_at.into()).await;
    standby.stop();
    let down_after = until(&store, ReplicaState::Down, Duration::from_secs(5)).await;
    for r in readers {
        r.await.unwrap();
    }
    let slowest = Duration::from_millis(slowest_ms.load(Ordering::Relaxed));
    println!(
        "standby stopped: {} reads, none failed, the slowest {slowest:?}; routing saw it down \
         after {down_after:?}",
        reads.load(Ordering::Relaxed)
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a read waited {slowest:?}"
    );
    let status = store.reader_status().unwrap();
    standby.resume();
    let back_after = until(&store, ReplicaState::Serving, Duration::from_secs(10)).await;
    let someone = &who[0];
    let mut served = store.reader_status().unwrap().reads_on_reader;
    for _ in 0..20 {
        store
            .session(someone)
            .projects()
            .list_for_owner(someone.user_id().unwrap(), None, 10)
            .await
            .unwrap();
        served = store.reader_status().unwrap().reads_on_reader;
    }
    println!("standby restarted: serving again after {back_after:?}");
    assert!(
        served > status.reads_on_reader,
        "the restarted standby served no read"
    );

    // 3. A lag past the bound: reads that could be stale go to the writer.
    standby.set("recovery_min_apply_delay", "3s").await;
    let strict = Store::connect(&settings(&url, &reader_url, pool(Duration::from_secs(1))))
        .await
        .unwrap();
    let writing = {
        let (store, p) = (store.clone(), someone.clone());
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(8);
            while Instant::now() < until {
                common::user(&store).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(p);
        })
    };
    let lagging_after = until(&strict, ReplicaState::Lagging, Duration::from_secs(7)).await;
    let before = strict.reader_status().unwrap();
    for _ in 0..20 {
        strict
            .session(someone)
            .projects()
            .list_for_owner(someone.user_id().unwrap(), None, 10)
            .await
            .unwrap();
    }
    let after = strict.reader_status().unwrap();
    writing.await.unwrap();
    println!(
        "3 s apply delay against a 1 s bound: lagging after {lagging_after:?} (lag {:?}), \
         {} of 20 reads on the writer",
        after.lag,
        after.reads_on_writer - before.reads_on_writer
    );
    assert!(after.lag > Duration::from_secs(1), "{after:?}");
    assert_eq!(after.reads_on_reader, before.reads_on_reader);
    assert_eq!(after.reads_on_writer - before.reads_on_writer, 20);
}

/// Reads' latency in milliseconds, sorted.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Lists `who`'s projects until `stop`, returning each list's latency in milliseconds.
async fn list_until(store: Store, who: Principal, stop: Arc<AtomicU64>) -> Vec<f64> {
    let owner = who.user_id().unwrap();
    let mut latencies = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        let started = Instant::now();
        store
            .session(&who)
            .projects()
            .list_for_owner(owner, None, 50)
            .await
            .expect("a list beside the completions");
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies
}

/// The embedded default under the load: 16 clients each create a project, enqueue
/// its scan, claim one and complete it with 2,000 findings, then list projects; on one store,
/// then on two stores sharing the file (as two API processes do). Every completion succeeds,
/// and lists beside them stay within a small multiple of an idle list: they are served by the
/// read-only connections, not queued behind the writer.
#[tokio::test]
async fn sqlite_reads_do_not_wait_for_completions() {
    const SQLITE_CLIENTS: usize = 16;
    let settings = common::sqlite_file(PoolOptions::default()).await;
    let one = Store::connect(&settings).await.unwrap();
    assert!(
        one.reader_status().is_some(),
        "a file has read-only connections"
    );
    let two = Store::connect(&settings).await.unwrap();
    let watcher = principal(&one).await;
    for i in 0..20 {
        common::project(
            &one,
            &one.users().get(watcher.user_id().unwrap()).await.unwrap(),
            &format!("w{i}"),
        )
        .await;
    }

    for stores in [vec![one.clone()], vec![one.clone(), two.clone()]] {
        let idle = {
            let stop = Arc::new(AtomicU64::new(0));
            let lister = tokio::spawn(list_until(one.clone(), watcher.clone(), stop.clone()));
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.store(1, Ordering::Relaxed);
            let mut idle = lister.await.unwrap();
            idle.sort_by(f64::total_cmp);
            percentile(&idle, 0.5)
        };
        let stop = Arc::new(AtomicU64::new(0));
        let lister = tokio::spawn(list_until(one.clone(), watcher.clone(), stop.clone()));
        let started = Instant::now();
        let clients: Vec<_> = (0..SQLITE_CLIENTS)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                tokio::spawn(async move {
                    let repo = common::repository(&store).await;
                    store
                        .scans()
                        .enqueue(vega_repository::NewScan::full(
                            repo.id,
                            vega_entity::TriggerKind::Api,
                            Some("main".into()),
                        ))
                        .await?;
                    let claim = store
                        .scans()
                        .claim_next(&format!("w{i}"), 1, Duration::from_secs(600))
                        .await?
                        .pop()
                        .expect("a queued scan to claim");
                    let findings = (0..2000)
                        .map(|n| {
                            common::finding(
                                &format!("rule-{}", n % 50),
                                &format!("src/f{n}.py"),
                                vega_entity::Severity::Medium,
                            )
                        })
                        .collect();
                    store.scans().complete(&claim.lease, findings).await?;
                    let owner = repo.project_id;
                    store.projects().get(owner).await?;
                    Ok::<_, vega_repository::Error>(())
                })
            })
            .collect();
        let mut failed = Vec::new();
        for c in clients {
            if let Err(err) = c.await.unwrap() {
                failed.push(err.to_string());
            }
        }
        let took = started.elapsed();
        stop.store(1, Ordering::Relaxed);
        let mut busy = lister.await.unwrap();
        busy.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&busy, 0.5), percentile(&busy, 0.99));
        println!(
            "SQLite, {} store(s) on one file: {SQLITE_CLIENTS} completions of 2,000 findings in \
             {took:?}, {} failed; {} lists beside them: p50 {p50:.1} ms, p99 {p99:.1} ms \
             (idle p50 {idle:.1} ms)",
            stores.len(),
            failed.len(),
            busy.len()
        );
        assert!(failed.is_empty(), "completions failed: {failed:?}");
        assert!(
            p99 <= (20.0 * idle).max(50.0),
            "lists waited for the completions: p99 {p99:.1} ms against an idle {idle:.1} ms"
        );
    }
    drop((one, two));
    let file = settings.database.sqlite_path().unwrap();
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}
