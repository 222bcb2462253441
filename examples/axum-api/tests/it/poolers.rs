//! The example API behind Debian's PgBouncer, in session and in transaction mode (three
//! server connections for eight clients, so that consecutive transactions change server
//! connection): every request of eight concurrent clients (create a project, list, add a
//! repository) answers as it would directly.

use reqwest::StatusCode;
use serde_json::{Value, json};
use vega_config::{DatabaseSettings, PoolOptions, Pooler, Settings};
use vega_repository::Store;
use vega_tests::TestDb;
use vega_tests::pgbouncer::{PgBouncer, PoolMode};

use crate::common;

const CLIENTS: usize = 8;
const ROUNDS: usize = 10;

/// Requests that did not answer as expected, over `ROUNDS` rounds of eight clients that each
/// create a project, list their projects and add a repository to the new one.
async fn serve_through(mode: PoolMode, pooler: Pooler) -> Vec<String> {
    let db = TestDb::postgres().await;
    let upstream = url::Url::parse(db.url()).unwrap();
    let name = upstream.path().trim_start_matches('/').to_owned();
    let server_connections = match mode {
        PoolMode::Session => CLIENTS as u32 + 2,
        PoolMode::Transaction => 3,
    };
    let bouncer = PgBouncer::start(upstream.port().unwrap_or(5432), mode, server_connections);
    let mut database = DatabaseSettings::for_url(bouncer.url(&name)).unwrap();
    database.pooler = pooler;
    let settings = Settings {
        database,
        reader: None,
        blob: vega_tests::scratch_blob_settings(),
        pool: PoolOptions {
            max_connections: CLIENTS as u32,
            ..PoolOptions::default()
        },
    };
    let store = Store::connect(&settings).await.unwrap();
    let tokens = common::clients(&store, CLIENTS).await;
    let base = common::serve(store.clone()).await;
    let http = reqwest::Client::new();
    let clients: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut wrong = Vec::new();
                for round in 1..=ROUNDS {
                    let created = http
                        .post(format!("{base}/projects"))
                        .bearer_auth(&token)
                        .json(&json!({ "name": "P", "slug": format!("p{round}") }))
                        .send()
                        .await
                        .unwrap();
                    if created.status() != StatusCode::CREATED {
                        wrong.push(format!("create: {}", created.text().await.unwrap()));
                        continue;
                    }
                    let id = created.json::<Value>().await.unwrap()["id"].clone();
                    let list = http
                        .get(format!("{base}/projects"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    let page: Value = list.json().await.unwrap();
                    if page["items"].as_array().map(Vec::len) != Some(round) {
                        wrong.push(format!("list after round {round}: {page}"));
                    }
                    let repository = http
                        .post(format!(
                            "{base}/projects/{}/repositories",
                            id.as_str().unwrap_or_default()
                        ))
                        .bearer_auth(&token)
                        .json(&json!({ "provider": "github", "provider_xid": format!("{round}") }))
                        .send()
                        .await
                        .unwrap();
                    if repository.status() != StatusCode::CREATED {
                        wrong.push(format!(
                            "add repository: {}",
                            repository.text().await.unwrap()
                        ));
                    }
                }
                wrong
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for client in clients {
        wrong.extend(client.await.unwrap());
    }
    drop(bouncer);
    wrong
}

#[tokio::test]
async fn eight_clients_over_http_through_pgbouncer_in_session_mode() {
    let wrong = serve_through(PoolMode::Session, Pooler::Session).await;
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn eight_clients_over_http_through_pgbouncer_in_transaction_mode() {
    let wrong = serve_through(PoolMode::Transaction, Pooler::Transaction).await;
    assert!(wrong.is_empty(), "{wrong:#?}");
}
