//! What the HTTP tests share: the API served on a free port, and clients with their keys.

use vega_repository::{NewApiKey, NewUser, Store};

/// Serves the API over `store` on a free loopback port; its base URL.
pub async fn serve(store: Store) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, vega_example_api::router(store)).into_future());
    base
}

/// `n` users (`c0@example.com`, …), each with a key that reads and writes its projects; the
/// keys' tokens.
pub async fn clients(store: &Store, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for i in 0..n {
        let user = store
            .users()
            .create(NewUser {
                email: format!("c{i}@example.com"),
                display_name: None,
                is_admin: false,
            })
            .await
            .unwrap();
        let key = store
            .api_keys()
            .issue(NewApiKey {
                user_id: user.id,
                project_id: None,
                name: "test".into(),
                scopes: vec!["projects:read".into(), "projects:write".into()],
                expires_at: None,
            })
            .await
            .unwrap();
        tokens.push(key.token.expose().to_owned());
    }
    tokens
}
