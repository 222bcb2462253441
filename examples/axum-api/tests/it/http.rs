//! The example API over HTTP on loopback, against a real Postgres database.

use reqwest::StatusCode;
use serde_json::{Value, json};
use vega_repository::{NewApiKey, NewUser, Store};
use vega_tests::TestDb;

use crate::common;

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
            is_admin: false,
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
    // There is no `worker` scope to give a user's key: workers use credentials. A user's key
    // with any scope is still a user's key.
    assert!(matches!(
        store.api_keys().issue(key(&["worker"])).await,
        Err(vega_repository::Error::Invalid { .. })
    ));
    let user_worker = store.api_keys().issue(key(&["scans:read"])).await.unwrap();
    let worker = store.workers().issue_credential("w1").await.unwrap();

    let base = common::serve(store).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(token.to_owned())
    };
    let (owner, worker, user_worker) = (
        owner.token.expose().to_owned(),
        worker.token.expose().to_owned(),
        user_worker.token.expose().to_owned(),
    );

    let response = http.get(format!("{base}/projects")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = call(reqwest::Method::GET, "/projects", &user_worker)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = call(reqwest::Method::GET, "/projects", &worker)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a worker is not a user"
    );

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

    let response = call(reqwest::Method::POST, "/worker/claim", &user_worker)
        .json(&json!({ "lease_seconds": 60 }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a user's key cannot claim"
    );
    let claim: Value = call(reqwest::Method::POST, "/worker/claim", &worker)
        .json(&json!({ "lease_seconds": 60 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = call(reqwest::Method::POST, "/worker/claim", &worker)
        .json(&json!({ "lease_seconds": 60 }))
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

/// Two users, a project key and a suspended user, each over HTTP: what another tenant owns
/// answers 404, and nothing of it changes.
#[tokio::test]
async fn tenancy_rules_hold_over_http() {
    let db = TestDb::postgres().await;
    let store = Store::from_parts(db.conn().clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap();
    let user = |email: &str| {
        let store = store.clone();
        let email = email.to_owned();
        async move {
            store
                .users()
                .create(NewUser {
                    email,
                    display_name: None,
                    is_admin: false,
                })
                .await
                .unwrap()
        }
    };
    let (ada, bob) = (user("ada@example.com").await, user("bob@example.com").await);
    let scopes = ["projects:read", "projects:write", "scans:write"];
    let key = |user_id, project_id| {
        let store = store.clone();
        async move {
            store
                .api_keys()
                .issue(NewApiKey {
                    user_id,
                    project_id,
                    name: "k".into(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    expires_at: None,
                })
                .await
                .unwrap()
                .token
                .expose()
                .to_owned()
        }
    };
    let (ada_key, bob_key) = (key(ada.id, None).await, key(bob.id, None).await);

    let base = common::serve(store.clone()).await;
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: String, token: &str, body: Value| {
        let request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token.to_owned())
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let post = reqwest::Method::POST;

    // Ada's two projects, one with a repository and its first scan (one transaction).
    let web: Value = send(
        post.clone(),
        "/projects".into(),
        &ada_key,
        json!({ "name": "Web", "slug": "web",
                "repository": { "provider": "github", "provider_xid": "1", "default_branch": "main" } }),
    )
    .await
    .json()
    .await
    .unwrap();
    let api: Value = send(
        post.clone(),
        "/projects".into(),
        &ada_key,
        json!({ "name": "Api", "slug": "api" }),
    )
    .await
    .json()
    .await
    .unwrap();
    let (web_id, api_id) = (web["id"].as_str().unwrap(), api["id"].as_str().unwrap());
    let repo: Value = send(
        post.clone(),
        format!("/projects/{api_id}/repositories"),
        &ada_key,
        json!({ "provider": "github", "provider_xid": "2" }),
    )
    .await
    .json()
    .await
    .unwrap();
    let repo_id = repo["id"].as_str().unwrap();
    assert!(!repo.to_string().contains("hash"), "{repo}");
    let events = store
        .events()
        .page(vega_repository::EventFeed::Actor(ada.id), None, 50)
        .await
        .unwrap();
    let actions: Vec<_> = events
        .items
        .iter()
        .rev()
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "project.created",
            "repository.added",
            "scan.enqueued",
            "project.created",
            "repository.added"
        ]
    );

    // Bob reaches none of it.
    let response = send(
        post.clone(),
        format!("/projects/{api_id}/repositories"),
        &bob_key,
        json!({ "provider": "github", "provider_xid": "3" }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = send(
        post.clone(),
        format!("/repositories/{repo_id}/scans"),
        &bob_key,
        json!({}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let listed: Value = send(
        reqwest::Method::GET,
        "/projects".into(),
        &bob_key,
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(listed["items"], json!([]));

    // A key restricted to Web lists Web only, and cannot reach Api or make projects.
    let web_key = key(ada.id, Some(web_id.parse().unwrap())).await;
    let listed: Value = send(
        reqwest::Method::GET,
        "/projects".into(),
        &web_key,
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["id"], web["id"]);
    let response = send(
        post.clone(),
        format!("/repositories/{repo_id}/scans"),
        &web_key,
        json!({}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = send(
        post.clone(),
        "/projects".into(),
        &web_key,
        json!({ "name": "New", "slug": "new" }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = send(
        post.clone(),
        "/projects".into(),
        &ada_key,
        json!({ "name": "Dup", "slug": "web" }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    // A failed step of the create-with-repository transaction leaves no project.
    let response = send(
        post.clone(),
        "/projects".into(),
        &ada_key,
        json!({ "name": "Half", "slug": "half", "repository": { "provider": "github" } }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let listed: Value = send(
        reqwest::Method::GET,
        "/projects".into(),
        &ada_key,
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");

    // A suspended user's keys stop working at once; a revoked key too.
    store
        .users()
        .set_status(bob.id, vega_entity::UserStatus::Suspended)
        .await
        .unwrap();
    let response = send(
        reqwest::Method::GET,
        "/projects".into(),
        &bob_key,
        json!({}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let web_key_id = store.api_keys().list_for_user(ada.id).await.unwrap()[0].id;
    store
        .api_keys()
        .revoke(web_key_id, vega_entity::RevokeReason::User)
        .await
        .unwrap();
    let response = send(
        reqwest::Method::GET,
        "/projects".into(),
        &web_key,
        json!({}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
