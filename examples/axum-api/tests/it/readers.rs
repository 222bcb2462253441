//! The example API with a read replica: a standby that applies WAL a second late. A client that
//! sends back the `Vega-Write-Position` its write answered sees the write in the next request's
//! list, whichever server serves it; a malformed position is the client's error.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use vega_config::{DatabaseSettings, PoolOptions, Settings};
use vega_example_api::WRITE_POSITION;
use vega_repository::{NewApiKey, ReplicaState, Store};
use vega_tests::pg::PgServer;

use crate::common;

const CLIENTS: usize = 8;
const ROUNDS: usize = 5;

#[tokio::test]
async fn clients_that_carry_their_write_position_never_list_stale() {
    let primary = PgServer::start(&[]);
    let url = primary.migrated_database("vega").await;
    let standby = PgServer::standby_with(&primary, &[("recovery_min_apply_delay", "1s")]);
    primary.await_streaming().await;
    let settings = Settings {
        database: DatabaseSettings::for_url(&url).unwrap(),
        reader: Some(DatabaseSettings::for_url(standby.url("vega")).unwrap()),
        blob: vega_tests::scratch_blob_settings(),
        pool: PoolOptions {
            probe_interval: Duration::from_millis(200),
            ..PoolOptions::default()
        },
    };
    let store = Store::connect(&settings).await.unwrap();
    while store.reader_status().unwrap().state != ReplicaState::Serving {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens = common::clients(&store, CLIENTS).await;
    let base = common::serve(store.clone()).await;
    let http = reqwest::Client::new();

    let clients: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut stale = 0;
                for round in 1..=ROUNDS {
                    let created = http
                        .post(format!("{base}/projects"))
                        .bearer_auth(&token)
                        .json(&json!({ "name": "P", "slug": format!("p{round}") }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(created.status(), StatusCode::CREATED);
                    let position = created.headers()[WRITE_POSITION].clone();
                    let page: Value = http
                        .get(format!("{base}/projects"))
                        .bearer_auth(&token)
                        .header(WRITE_POSITION, position)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    if page["items"].as_array().unwrap().len() != round {
                        stale += 1;
                    }
                }
                stale
            })
        })
        .collect();
    let mut stale = 0;
    for c in clients {
        stale += c.await.unwrap();
    }
    assert_eq!(stale, 0, "a list missed the client's own project");

    let token = store
        .api_keys()
        .issue(NewApiKey {
            user_id: store
                .users()
                .find_by_email("c0@example.com")
                .await
                .unwrap()
                .unwrap()
                .id,
            project_id: None,
            name: "late".into(),
            scopes: vec!["projects:read".into()],
            expires_at: None,
        })
        .await
        .unwrap();
    let bad = http
        .get(format!("{base}/projects"))
        .bearer_auth(token.token.expose())
        .header(WRITE_POSITION, "16/B374D848")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = bad.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("write position"),
        "{error}"
    );
}
