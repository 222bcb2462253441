//! The example API over HTTP on loopback, against a real Postgres database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use vega_repository::{NewApiKey, NewUser, Store};
use vega_tests::TestDb;

#[tokio::test]
async fn a_project_is_created_scanned_and_listed_with_counts() {
    let db = TestDb::postgres().await;
    let store = Store::from_parts(db.conn().clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap();
    let user = store
        .users()
        .create(NewUser {
            email: "ops@example.com".into(),
            display_name: None,
        })
        .await
        .unwrap();
    let key = |scopes: &[&str]| NewApiKey {
        user_id: user.id,
        project_id: None,
        name: "test".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: None,
    };
    let owner = store
        .api_keys()
        .issue(key(&["projects:read", "projects:write", "scans:write"]))
        .await
        .unwrap();
    let worker = store.api_keys().issue(key(&["worker"])).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, vega_example_api::router(store)).into_future());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(token.to_owned())
    };
    let (owner, worker) = (
        owner.token.expose().to_owned(),
        worker.token.expose().to_owned(),
    );

    let response = http.get(format!("{base}/projects")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = call(reqwest::Method::GET, "/projects", &worker)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let project: Value = call(reqwest::Method::POST, "/projects", &owner)
        .json(&json!({ "name": "Web", "slug": "web" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = call(reqwest::Method::POST, "/projects", &owner)
        .json(&json!({ "name": "Web", "slug": "web" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let response = call(reqwest::Method::POST, "/projects", &owner)
        .json(&json!({ "name": "Web", "slug": "Not A Slug" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.text().await.unwrap().contains("slug"));

    let project_id = project["id"].as_str().unwrap();
    let repository: Value = call(
        reqwest::Method::POST,
        &format!("/projects/{project_id}/repositories"),
        &owner,
    )
    .json(&json!({ "provider": "github", "provider_xid": "42", "default_branch": "main" }))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let repository_id = repository["id"].as_str().unwrap();
    let response = call(
        reqwest::Method::POST,
        &format!("/repositories/{repository_id}/scans"),
        &owner,
    )
    .json(&json!({ "ref_name": "main" }))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let claim: Value = call(reqwest::Method::POST, "/worker/claim", &worker)
        .json(&json!({ "worker_id": "w1", "lease_seconds": 60 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = call(reqwest::Method::POST, "/worker/claim", &worker)
        .json(&json!({ "worker_id": "w2", "lease_seconds": 60 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let finding = json!({
        "scanner": "semgrep", "category": "sast", "rule_id": "eval", "title": "eval of input",
        "severity": "critical", "file_path": "app.py", "start_line": 3, "end_line": 3,
        "location_key": "m0", "cwe": 95, "cve": null, "package_name": null,
        "package_version": null, "details": null
    });
    let completed: Value = call(reqwest::Method::POST, "/worker/complete", &worker)
        .json(&json!({ "lease": claim["lease"], "findings": [finding] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(completed["status"], "succeeded");
    let again = call(reqwest::Method::POST, "/worker/complete", &worker)
        .json(&json!({ "lease": claim["lease"], "findings": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT, "the lease is spent");

    let list: Value = call(reqwest::Method::GET, "/projects", &owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["id"], project["id"]);
    assert_eq!(list["items"][0]["latest_scan"]["counts"]["critical"], 1);
    assert_eq!(list["items"][0]["latest_scan"]["status"], "succeeded");
}
