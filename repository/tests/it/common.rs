//! Fixtures shared by the repository tests.

use vega_entity::{
    FindingCategory, Provider, Severity, TriggerKind, projects, repositories, users,
};
use vega_repository::{NewFinding, NewProject, NewRepository, NewScan, NewUser, Store};
use vega_tests::TestDb;

/// Settings for the database at `url`, a scratch blob directory and these pool options.
pub fn settings(url: &str, pool: vega_config::PoolOptions) -> vega_config::Settings {
    vega_config::Settings {
        database: vega_config::DatabaseSettings::for_url(url).unwrap(),
        reader: None,
        blob: vega_tests::scratch_blob_settings(),
        pool,
    }
}

/// Settings for a new, migrated SQLite file in a directory of its own (which several stores,
/// as several processes, can share) with these pool options.
pub async fn sqlite_file(pool: vega_config::PoolOptions) -> vega_config::Settings {
    use vega_migration::MigratorTrait;
    let dir = std::env::temp_dir().join(format!("vega-sqlite-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/vega.sqlite3?mode=rwc", dir.display());
    let settings = settings(&url, pool);
    let conn = settings
        .database
        .connect(settings.database.connect_options())
        .await
        .unwrap();
    vega_migration::Migrator::up(&conn, None).await.unwrap();
    conn.close().await.unwrap();
    settings
}

pub async fn store(db: &TestDb) -> Store {
    Store::from_parts(db.conn().clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap()
}

pub async fn user(store: &Store) -> users::Model {
    store
        .users()
        .create(NewUser {
            email: format!("{}@Example.com", uuid::Uuid::new_v4().simple()),
            display_name: Some("Ada".into()),
            is_admin: false,
        })
        .await
        .unwrap()
}

pub async fn project(store: &Store, owner: &users::Model, slug: &str) -> projects::Model {
    store
        .projects()
        .create(NewProject {
            owner_id: owner.id,
            name: format!("Project {slug}"),
            slug: slug.into(),
            description: None,
        })
        .await
        .unwrap()
}

/// A user, a project and a GitHub repository whose default branch is `main`.
pub async fn repository(store: &Store) -> repositories::Model {
    let owner = user(store).await;
    let project = project(store, &owner, "web").await;
    store
        .repositories()
        .add(NewRepository {
            project_id: project.id,
            provider: Provider::Github,
            provider_xid: Some(uuid::Uuid::new_v4().to_string()),
            full_name: Some("acme/web".into()),
            clone_url: Some("https://github.com/acme/web.git".into()),
            default_branch: Some("main".into()),
        })
        .await
        .unwrap()
}

pub fn finding(rule: &str, path: &str, severity: Severity) -> NewFinding {
    NewFinding {
        scanner: "semgrep".into(),
        category: FindingCategory::Sast,
        rule_id: rule.into(),
        title: format!("{rule} in {path}"),
        severity,
        file_path: Some(path.into()),
        start_line: Some(10),
        end_line: Some(12),
        location_key: "match-0".into(),
        cwe: Some(95),
        cve: None,
        package_name: None,
        package_version: None,
        details: None,
    }
}

/// The name this binary's test filter knows the test `name` of module `module` (its
/// `module_path!()`) by: the path without the crate's name, for a test that runs a child of
/// itself with `--exact`.
pub fn test_name(module: &str, name: &str) -> String {
    let module = module.split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

/// Enqueues, claims and completes one scan of `ref_name` with these findings.
pub async fn scan_with(
    store: &Store,
    repository_id: uuid::Uuid,
    ref_name: &str,
    findings: Vec<NewFinding>,
) -> vega_entity::scans::Model {
    let scan = NewScan::full(repository_id, TriggerKind::Api, Some(ref_name.into()));
    complete_scan(store, scan, findings).await
}

/// Enqueues, claims and completes `scan` with these findings.
pub async fn complete_scan(
    store: &Store,
    scan: NewScan,
    findings: Vec<NewFinding>,
) -> vega_entity::scans::Model {
    store.scans().enqueue(scan).await.unwrap();
    let claim = store
        .scans()
        .claim_next("w", 1, std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    store
        .scans()
        .complete(&claim.lease, findings)
        .await
        .unwrap()
}
