//! The store behind Debian's PgBouncer (1.18: no prepared-statement tracking), in session and
//! in transaction mode; in transaction mode with fewer server connections than clients, so
//! that consecutive transactions really land on different server connections.

use std::time::{Duration, Instant};

use sea_orm::{DbBackend, QueryResult, Statement, Value};
use vega_config::{PoolOptions, Pooler};
use vega_entity::{Severity, TriggerKind};
use vega_repository::{Error, NewProject, NewScan, Principal, ServerTimeouts, Store};
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

/// A store on `db` that sends its statements as it would behind a transaction-mode pooler
/// (one simple query each, values as literals), here straight to Postgres.
async fn as_if_behind_a_transaction_pooler(db: &TestDb) -> Store {
    let mut settings = common::settings(db.url(), pool());
    settings.database.pooler = Pooler::Transaction;
    Store::connect(&settings).await.unwrap()
}

fn values() -> Vec<Value> {
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    let strings = [
        "plain",
        "it's",
        "back\\slash",
        "E'\\''",
        "tab\tnew\nline\r",
        "\u{1a}",
        "ünï ☃",
        "$1 inside",
        "-- not a comment",
        "/* nor this */",
        "a,b",
        "{x}",
        "q\"uote",
        "",
    ];
    let mut values = vec![
        Value::Bool(Some(true)),
        Value::Bool(None),
        Value::SmallInt(Some(-7)),
        Value::Int(Some(i32::MIN)),
        Value::BigInt(Some(i64::MAX)),
        Value::BigInt(None),
        Value::Unsigned(Some(u32::MAX)),
        Value::Float(Some(0.1)),
        Value::Double(Some(0.1)),
        Value::Double(Some(f64::NAN)),
        Value::Double(Some(f64::NEG_INFINITY)),
        Value::Double(Some(-0.0)),
        Value::Double(Some(1e300)),
        Value::String(None),
        Value::Char(Some('\'')),
        Value::Bytes(Some(vec![0, 1, 0xff, b'\\', b'\'', b'"'])),
        Value::Bytes(Some(Vec::new())),
        Value::Json(Some(Box::new(
            serde_json::json!({"a": "it's \\ \"q\" \u{1}", "n": [1, 2.5, null]}),
        ))),
        Value::Uuid(Some(uuid::Uuid::new_v4())),
        // Past microseconds: cut as the extended protocol cuts them, after 2000 and before.
        at("2026-12-06T20:00:00.123456789+02:00").into(),
        at("1999-12-31T23:59:59.999999999Z").into(),
        at("1999-12-31T23:59:59.999999999Z").to_utc().into(),
        at("0001-01-01T00:00:00Z").naive_utc().into(),
        chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
            .unwrap()
            .into(),
        chrono::NaiveTime::from_hms_nano_opt(12, 34, 56, 789_123_456)
            .unwrap()
            .into(),
        vec![uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].into(),
        strings
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into(),
        vec!["NULL".to_owned(), "x".to_owned()].into(),
        Vec::<String>::new().into(),
        vec![i64::MIN, 0, i64::MAX].into(),
        vec![true, false].into(),
        vec![at("2026-01-01T00:00:00.5Z"), at("1970-01-01T00:00:00Z")].into(),
        vec![serde_json::json!({"k": "v'\""}), serde_json::json!(null)].into(),
        vec![vec![0u8, 255], Vec::new()].into(),
        Value::Array(sea_orm::sea_query::ArrayType::Uuid, None),
        // A NUL cannot travel in a simple query; it goes the extended way and fails alike.
        "a\0b".into(),
    ];
    values.extend(strings.iter().chain(&["NULL"]).map(|s| Value::from(*s)));
    values
}

/// Each value reaches the server as the same value of the same type whether it is bound as a
/// parameter or written into the statement as a literal, and reads back the same, although
/// the simple protocol answers in text rather than binary.
#[tokio::test]
async fn values_sent_as_literals_reach_the_server_as_bound_parameters_do() {
    let db = TestDb::postgres().await;
    let bound = common::store(&db).await;
    let literal = as_if_behind_a_transaction_pooler(&db).await;
    let sql = "SELECT pg_typeof($1)::text AS ty, $1::text AS text, $1 AS v, $1 IS NULL AS null";
    for (i, value) in values().into_iter().enumerate() {
        // A statement of its own per value: sqlx caches a statement with its first types.
        let sql = format!("{sql} -- value {i}");
        let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, [value.clone()]);
        let answer = |rows: Result<Vec<QueryResult>, vega_repository::Error>| {
            let row = match rows {
                Ok(rows) => rows.into_iter().next().unwrap(),
                Err(err) => return format!("error: {}", err.kind()),
            };
            let text: Option<String> = row.try_get("", "text").unwrap();
            let ty: String = row.try_get("", "ty").unwrap();
            format!("{ty} {text:?} {}", decoded(&row, &value))
        };
        assert_eq!(
            answer(literal.query_all(stmt.clone()).await),
            answer(bound.query_all(stmt).await),
            "{value:?}"
        );
    }
}

/// The value read back as its own Rust type, for comparison.
fn decoded(row: &QueryResult, value: &Value) -> String {
    fn get<T: sea_orm::TryGetable + std::fmt::Debug>(row: &QueryResult) -> String {
        format!("{:?}", row.try_get::<Option<T>>("", "v"))
    }
    match value {
        // sqlx reads a quoted "NULL" in a text-format array as NULL. The repository reads no
        // arrays back (it sends them, for `unnest`), so only the server's view is compared.
        Value::Array(sea_orm::sea_query::ArrayType::String, Some(items))
            if items.contains(&Value::from("NULL")) =>
        {
            "not decoded".to_owned()
        }
        Value::Bool(_) => get::<bool>(row),
        Value::SmallInt(_) => get::<i16>(row),
        Value::Int(_) => get::<i32>(row),
        Value::BigInt(_) | Value::Unsigned(_) => get::<i64>(row),
        Value::Float(_) => get::<f32>(row),
        Value::Double(_) => get::<f64>(row),
        Value::String(_) | Value::Char(_) => get::<String>(row),
        Value::Bytes(_) => get::<Vec<u8>>(row),
        Value::Json(_) => get::<serde_json::Value>(row),
        Value::Uuid(_) => get::<uuid::Uuid>(row),
        Value::ChronoDateTimeWithTimeZone(_) | Value::ChronoDateTimeUtc(_) => {
            get::<chrono::DateTime<chrono::FixedOffset>>(row)
        }
        Value::ChronoDateTime(_) => get::<chrono::NaiveDateTime>(row),
        Value::ChronoDate(_) => get::<chrono::NaiveDate>(row),
        Value::ChronoTime(_) => get::<chrono::NaiveTime>(row),
        Value::Array(sea_orm::sea_query::ArrayType::Uuid, _) => get::<Vec<uuid::Uuid>>(row),
        Value::Array(sea_orm::sea_query::ArrayType::String, _) => get::<Vec<String>>(row),
        Value::Array(sea_orm::sea_query::ArrayType::BigInt, _) => get::<Vec<i64>>(row),
        Value::Array(sea_orm::sea_query::ArrayType::Bool, _) => get::<Vec<bool>>(row),
        Value::Array(sea_orm::sea_query::ArrayType::Bytes, _) => get::<Vec<Vec<u8>>>(row),
        Value::Array(sea_orm::sea_query::ArrayType::Json, _) => get::<Vec<serde_json::Value>>(row),
        Value::Array(sea_orm::sea_query::ArrayType::ChronoDateTimeWithTimeZone, _) => {
            get::<Vec<chrono::DateTime<chrono::FixedOffset>>>(row)
        }
        other => panic!("no decoder for {other:?} in this test"),
    }
}

/// Behind PgBouncer in transaction mode (3 server connections, 8 clients), transactions
/// nest as they do on a direct connection: a failed step aborts the whole, a failed
/// savepoint rolls back to itself only, a dropped one too, and a kept one stays.
#[tokio::test]
async fn savepoints_behind_a_transaction_pooler_keep_and_undo_what_they_should() {
    let db = TestDb::postgres().await;
    let (_bouncer, settings) = behind(&db, PoolMode::Transaction, Pooler::Transaction);
    let store = Store::connect(&settings).await.unwrap();
    let system = Principal::system("savepoints");
    let session = store.session(&system);
    let owner = common::user(&store).await;
    let new = |slug: &str| NewProject {
        owner_id: owner.id,
        name: "P".into(),
        slug: slug.into(),
        description: None,
    };
    let exists = |slug: &'static str| {
        let store = store.clone();
        async move { store.projects().get_by_slug(owner.id, slug).await.is_ok() }
    };

    let tx = session.begin().await.unwrap();
    tx.projects().create(new("one")).await.unwrap();
    let duplicate = tx.projects().create(new("one")).await;
    assert!(
        matches!(duplicate, Err(Error::Conflict { .. })),
        "{duplicate:?}"
    );
    assert!(matches!(tx.commit().await, Err(Error::Aborted)));
    assert!(!exists("one").await);

    let tx = session.begin().await.unwrap();
    tx.projects().create(new("two")).await.unwrap();
    let failed: Result<(), Error> = tx
        .transaction(|sp| {
            Box::pin(async move {
                sp.projects().create(new("three")).await?;
                sp.projects().create(new("two")).await?;
                Ok(())
            })
        })
        .await;
    assert!(matches!(failed, Err(Error::Conflict { .. })), "{failed:?}");
    let dropped = tx.savepoint().await.unwrap();
    dropped.projects().create(new("four")).await.unwrap();
    drop(dropped);
    let kept = tx.savepoint().await.unwrap();
    kept.projects().create(new("five")).await.unwrap();
    kept.commit().await.unwrap();
    tx.projects().create(new("six")).await.unwrap();
    tx.commit().await.unwrap();
    let mut found = Vec::new();
    for slug in ["two", "three", "four", "five", "six"] {
        if exists(slug).await {
            found.push(slug);
        }
    }
    assert_eq!(found, ["two", "five", "six"]);
}
