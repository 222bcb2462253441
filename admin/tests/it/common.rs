//! Fixtures shared by the command-line tests.

use vega_entity::{Provider, repositories};
use vega_repository::{NewProject, NewRepository, NewUser, Store};

/// A user, their project `web` and its GitHub repository `acme/web` (default branch `main`).
pub async fn repository(store: &Store) -> repositories::Model {
    let owner = store
        .users()
        .create(NewUser {
            email: "ops@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await
        .unwrap();
    let project = store
        .projects()
        .create(NewProject {
            owner_id: owner.id,
            name: "Web".into(),
            slug: "web".into(),
            description: None,
        })
        .await
        .unwrap();
    store
        .repositories()
        .add(NewRepository {
            project_id: project.id,
            provider: Provider::Github,
            provider_xid: Some("1296269".into()),
            full_name: Some("acme/web".into()),
            clone_url: None,
            default_branch: Some("main".into()),
        })
        .await
        .unwrap()
}
