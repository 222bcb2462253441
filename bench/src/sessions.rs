//! Sessions beside the unscoped store and beside raw SQL: the project list and the open
//! findings page through a user's session against the same calls on the `Store` (the cost of
//! the reach predicate), and a three-step transaction (create a project, add its repository,
//! enqueue its first scan, each with its event) against the same six inserts as raw SQL in one
//! sqlx transaction.

use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;
use sea_orm::sqlx;
use uuid::Uuid;
use vega_entity::{Provider, TriggerKind};
use vega_repository::{NewApiKey, NewProject, NewRepository, NewScan, NewUser, Principal, Store};

use crate::reads::measure_pair;
use crate::{Result, Row, summary};

/// A user-wide key's principal for `user`, as a request would present it.
pub(crate) async fn user_principal(store: &Store, user: Uuid) -> Result<Principal> {
    let issued = store
        .api_keys()
        .issue(NewApiKey {
            user_id: user,
            project_id: None,
            name: "bench".into(),
            scopes: vec!["projects:read".into()],
            expires_at: None,
        })
        .await?;
    Ok(store
        .api_keys()
        .authenticate(issued.token.expose())
        .await?
        .ok_or("the key did not authenticate")?)
}

/// The reach's cost on a read: `session_call` against `store_call`, one row pair.
pub(crate) async fn scoped_pair<B, BF, S, SF>(
    label: &str,
    n: usize,
    store_call: B,
    session_call: S,
    rows: &mut Vec<Row>,
) -> Result<()>
where
    B: FnMut() -> BF,
    BF: std::future::Future<Output = Result<()>>,
    S: FnMut() -> SF,
    SF: std::future::Future<Output = Result<()>>,
{
    let (unscoped, scoped) = measure_pair(n, store_call, session_call).await?;
    let base = summary(&format!("{label}: unscoped store"), 1, &unscoped, None);
    rows.push(summary(
        &format!("{label}: user's session"),
        1,
        &scoped,
        Some(&base),
    ));
    rows.push(base);
    Ok(())
}

const RAW_EVENT: &str = "INSERT INTO events (created_at, project_id, actor_type, actor_user_id, \
                                             actor_api_key_id, actor_label, action, \
                                             subject_type, subject_id, data) \
                         VALUES ($1, $2, 'api_key', $3, $4, $5, $6, $7, $8, $9)";

/// The three-step transaction through a session and as raw SQL.
pub(crate) async fn transaction(
    store: &Store,
    url: &str,
    n: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?;
    let user = store
        .users()
        .create(NewUser {
            email: "sessions@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let principal = user_principal(store, user.id).await?;
    let key_id = principal.key_id();
    let session = store.session(&principal);
    let next = AtomicUsize::new(0);
    let slug = || format!("p{}", next.fetch_add(1, Ordering::Relaxed));
    let (raw_times, session_times) = measure_pair(
        n,
        || async {
            let slug = slug();
            let now = Utc::now().fixed_offset();
            let (project, repository, scan) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
            let mut tx = raw.begin().await?;
            sqlx::query(
                "INSERT INTO projects (id, owner_id, name, slug, created_at, updated_at) \
                 VALUES ($1, $2, $3, $3, $4, $4) RETURNING *",
            )
            .bind(project)
            .bind(user.id)
            .bind(&slug)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO repositories (id, project_id, provider, provider_xid, full_name, \
                                           default_branch, created_at, updated_at) \
                 VALUES ($1, $2, 'github', $3, $3, 'main', $4, $4) RETURNING *",
            )
            .bind(repository)
            .bind(project)
            .bind(&slug)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO scans (id, project_id, repository_id, kind, trigger_kind, ref_name, \
                                    tracks_default_branch, status, priority, scheduled_at, \
                                    attempt, max_attempts, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'full', 'api', 'main', true, 'queued', 2, $4, 0, 3, $4, $4) \
                 RETURNING *",
            )
            .bind(scan)
            .bind(project)
            .bind(repository)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for (action, subject, id) in [
                ("project.created", "project", project),
                ("repository.added", "repository", repository),
                ("scan.enqueued", "scan", scan),
            ] {
                sqlx::query(RAW_EVENT)
                    .bind(now)
                    .bind(project)
                    .bind(user.id)
                    .bind(key_id)
                    .bind(principal.label())
                    .bind(action)
                    .bind(subject)
                    .bind(id)
                    .bind(serde_json::json!({ "slug": slug }))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        },
        || async {
            let slug = slug();
            let tx = session.begin().await?;
            let project = tx
                .projects()
                .create(NewProject {
                    owner_id: user.id,
                    name: slug.clone(),
                    slug: slug.clone(),
                    description: None,
                })
                .await?;
            let repository = tx
                .repositories()
                .add(NewRepository {
                    project_id: project.id,
                    provider: Provider::Github,
                    provider_xid: Some(slug.clone()),
                    full_name: Some(slug),
                    clone_url: None,
                    default_branch: Some("main".into()),
                })
                .await?;
            tx.scans()
                .enqueue(NewScan::full(
                    repository.id,
                    TriggerKind::Api,
                    Some("main".into()),
                ))
                .await?;
            tx.commit().await?;
            Ok(())
        },
    )
    .await?;
    let base = summary(
        "project + repository + scan, one transaction: raw SQL",
        1,
        &raw_times,
        None,
    );
    rows.push(summary(
        "project + repository + scan, one transaction: session",
        1,
        &session_times,
        Some(&base),
    ));
    rows.push(base);
    Ok(())
}
