//! Reads past the writer, on a throwaway primary and a caught-up streaming standby of its own
//! (the shared server has no standby): the project list and the open-findings page through a
//! session of a store with the standby as its reader, beside the same through the writer-only
//! store (alternating pairs), and the standby's share of the replica reads under a mixed load
//! (8 clients, each a write then 9 lists, every request a session carrying the write
//! position).

use std::time::{Duration, Instant};

use sea_orm::Database;
use uuid::Uuid;
use vega_config::{BlobSettings, DatabaseSettings, PoolOptions, Settings, Source};
use vega_repository::{NewProject, ReplicaState, Store};
use vega_tests::pg::PgServer;

use crate::reads::measure_pair;
use crate::sessions::user_principal;
use crate::{Result, Row, summary};

const CLIENTS: usize = 8;
const READS_PER_WRITE: usize = 9;

/// The sizes of the scenario.
pub(crate) struct Sizes {
    pub projects: u64,
    pub findings: u64,
    pub iterations: usize,
    /// Writes per client in the mixed load.
    pub rounds: usize,
}

pub(crate) async fn run(sizes: &Sizes, rows: &mut Vec<Row>) -> Result<()> {
    let primary = tokio::task::spawn_blocking(|| PgServer::start(&[])).await?;
    let url = primary.migrated_database("vega_readers").await;
    let standby = PgServer::standby_of(&primary);
    primary.await_streaming().await;
    let settings = Settings {
        database: DatabaseSettings::for_url(&url)?,
        reader: None,
        blob: BlobSettings::Fs {
            root: std::env::temp_dir().join("vega-bench-blobs"),
            root_source: Source::Given,
        },
        pool: PoolOptions::default(),
    };
    let writer_only = Store::connect(&settings).await?;
    let routed = Store::connect(&Settings {
        reader: Some(DatabaseSettings::for_url(standby.url("vega_readers"))?),
        ..settings.clone()
    })
    .await?;
    let db = Database::connect(&url).await?;
    let owner = writer_only
        .users()
        .create(vega_repository::NewUser {
            email: "readers@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let project = crate::reads::generate(
        &db,
        owner.id,
        &crate::reads::Sizes {
            projects: sizes.projects,
            findings: sizes.findings,
            iterations: sizes.iterations,
            runs: 1,
        },
    )
    .await?;
    let who = user_principal(&writer_only, owner.id).await?;
    let started = Instant::now();
    while routed.reader_status().ok_or("no reader")?.state != ReplicaState::Serving {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the standby never served".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let before = routed.reader_status().ok_or("no reader")?;
    let list = |store: &Store| {
        let (store, who) = (store.clone(), who.clone());
        async move {
            store
                .session(&who)
                .projects()
                .list_for_owner(owner.id, None, 50)
                .await?;
            Ok(())
        }
    };
    let (base, subject) =
        measure_pair(sizes.iterations, || list(&writer_only), || list(&routed)).await?;
    pair(rows, "project list page", &base, &subject);
    let page = |store: &Store| {
        let (store, who) = (store.clone(), who.clone());
        async move {
            store
                .session(&who)
                .findings()
                .list_open(project, None, 50)
                .await?;
            Ok(())
        }
    };
    let (base, subject) =
        measure_pair(sizes.iterations, || page(&writer_only), || page(&routed)).await?;
    pair(rows, "open findings page 1", &base, &subject);
    let after = routed.reader_status().ok_or("no reader")?;
    let on_standby = after.reads_on_reader - before.reads_on_reader;
    if on_standby < 2 * sizes.iterations as u64 {
        return Err(format!(
            "the routed side read {on_standby} times from the standby, not every time: \
             the pair did not compare the standby with the writer"
        )
        .into());
    }

    // One request per row: the median is a request's, write or list.
    let (share, times) = mixed(&routed, &writer_only, sizes.rounds).await?;
    rows.push(summary(
        &format!(
            "mixed load x{CLIENTS} (1 write, {READS_PER_WRITE} lists): {:.0}% of the lists on \
             the caught-up standby",
            share * 100.0
        ),
        1,
        &times,
        None,
    ));
    drop((routed, writer_only, db));
    drop(standby);
    drop(primary);
    Ok(())
}

/// The mixed load; returns the standby's share of the lists and each request's time.
async fn mixed(routed: &Store, accounts: &Store, rounds: usize) -> Result<(f64, Vec<Duration>)> {
    let before = routed.reader_status().ok_or("no reader")?;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let user = accounts
            .users()
            .create(vega_repository::NewUser {
                email: format!("mixed-{c}@example.com"),
                display_name: None,
                is_admin: false,
            })
            .await?;
        let who = user_principal(accounts, user.id).await?;
        let store = routed.clone();
        clients.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for round in 0..rounds {
                let started = Instant::now();
                let session = store.session(&who);
                session
                    .projects()
                    .create(NewProject {
                        owner_id: user.id,
                        name: format!("m{round}"),
                        slug: format!("m-{round}-{}", Uuid::new_v4().simple()),
                        description: None,
                    })
                    .await?;
                let position = session.write_position().await?.ok_or("no position")?;
                times.push(started.elapsed());
                for _ in 0..READS_PER_WRITE {
                    let started = Instant::now();
                    let page = store
                        .session(&who)
                        .read_after(position)
                        .projects()
                        .list_for_owner(user.id, None, 50)
                        .await?;
                    if page.items.len() != round + 1 {
                        return Err::<_, crate::Error>("a list missed the client's write".into());
                    }
                    times.push(started.elapsed());
                }
            }
            Ok(times)
        }));
    }
    let mut times = Vec::new();
    for c in clients {
        times.extend(c.await??);
    }
    let after = routed.reader_status().ok_or("no reader")?;
    let on_reader = (after.reads_on_reader - before.reads_on_reader) as f64;
    let on_writer = (after.reads_on_writer - before.reads_on_writer) as f64;
    Ok((on_reader / (on_reader + on_writer).max(1.0), times))
}

/// A call per row, as the read rows of `reads.rs` count them.
fn pair(rows: &mut Vec<Row>, what: &str, base: &[Duration], subject: &[Duration]) {
    let base = summary(&format!("{what}: writer-only store"), 1, base, None);
    rows.push(summary(
        &format!("{what}: replica read on a caught-up standby"),
        1,
        subject,
        Some(&base),
    ));
    rows.push(base);
}
