//! `GET /metrics` of the example API, scraped over HTTP and parsed: statement timings by
//! repository method, errors by kind, the pool's gauges and the queue's depth.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use vega_repository::{NewApiKey, NewUser, Store};
use vega_tests::TestDb;
use vega_tests::scrape::scrape;

#[tokio::test]
async fn the_scrape_parses_and_reports_what_the_requests_did() {
    // As the binary does: logs at any level, and the repository's spans kept for the labels.
    vega_telemetry::init_logging("warn");
    let db = TestDb::postgres().await;
    let store = Store::from_parts(db.conn().clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap();
    let user = store
        .users()
        .create(NewUser {
            email: "ops@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await
        .unwrap();
    let token = store
        .api_keys()
        .issue(NewApiKey {
            user_id: user.id,
            project_id: None,
            name: "metrics".into(),
            scopes: vec!["projects:write".into(), "scans:write".into()],
            expires_at: None,
        })
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    let metrics = vega_telemetry::Metrics::install().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = vega_example_api::with_metrics(store, metrics);
    tokio::spawn(axum::serve(listener, app).into_future());
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    let project: serde_json::Value = post("/projects", json!({ "name": "Web", "slug": "web" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conflict = post("/projects", json!({ "name": "Web", "slug": "web" }))
        .await
        .unwrap();
    assert_eq!(conflict.status().as_u16(), 409);
    let project_id = project["id"].as_str().unwrap();
    let repository: serde_json::Value = post(
        &format!("/projects/{project_id}/repositories"),
        json!({ "provider": "github", "provider_xid": "42", "default_branch": "main" }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let repository_id = repository["id"].as_str().unwrap();
    for _ in 0..3 {
        let scan = post(
            &format!("/repositories/{repository_id}/scans"),
            json!({ "ref_name": "main" }),
        )
        .await
        .unwrap();
        assert!(scan.status().is_success(), "{}", scan.text().await.unwrap());
    }

    let metrics = scrape(&format!("{base}/metrics")).await;
    let text = &metrics.text;
    let statements = |method: &str| {
        metrics
            .value("vega_db_statement_seconds", &[("method", method)])
            .unwrap_or(0.0)
    };
    assert!(statements("projects.create") >= 2.0, "{text}");
    assert!(statements("scans.enqueue") >= 3.0, "{text}");
    assert_eq!(
        metrics.value("vega_db_errors_total", &[("kind", "conflict")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metrics.value(
            "vega_queue_scans",
            &[("status", "queued"), ("priority", "2")]
        ),
        Some(3.0),
        "{text}"
    );
    assert!(metrics.value("vega_queue_oldest_due_seconds", &[]).unwrap() >= 0.0);
    assert_eq!(
        metrics.value("vega_db_pool_waiters", &[]),
        Some(0.0),
        "{text}"
    );
    assert!(metrics.value("vega_db_pool_max_connections", &[]).unwrap() >= 1.0);
    assert!(
        metrics
            .value("vega_db_pool_connections", &[("state", "idle")])
            .is_some(),
        "{text}"
    );
    assert!(metrics.value("vega_db_pool_acquire_seconds", &[]).unwrap() >= 1.0);
    assert!(
        metrics
            .scrape
            .docs
            .contains_key("vega_db_statement_seconds"),
        "help texts are served"
    );
}
