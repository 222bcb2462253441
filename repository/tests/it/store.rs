//! Start-up: the store refuses a schema it does not match, and says why it cannot connect.

use vega_config::Settings;
use vega_migration::status::known_versions;
use vega_repository::{Error, PoolOptions, Store};
use vega_tests::TestDb;

use crate::common;

#[tokio::test]
async fn an_unmigrated_database_is_refused_with_the_pending_versions() {
    let db = TestDb::postgres_empty().await;
    let err = Store::from_parts(db.conn().clone(), vega_tests::scratch_blob_store())
        .await
        .unwrap_err();
    match &err {
        Error::SchemaOutdated { pending, unknown } => {
            assert_eq!(pending, &known_versions());
            assert!(unknown.is_empty());
        }
        other => panic!("expected SchemaOutdated, got {other:?}"),
    }
    let behind = format!(
        "the database is {} migrations behind this build: run `vega-migrate up`",
        known_versions().len()
    );
    assert!(err.to_string().starts_with(&behind), "{err}");
    assert!(
        matches!(
            err,
            Error::SchemaOutdated { .. } | Error::Unavailable { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_migrated_database_is_accepted_through_the_settings() {
    let db = TestDb::postgres().await;
    let settings = settings(db.url());
    let store = Store::connect(&settings).await.unwrap();
    assert!(
        store
            .users()
            .find_by_email("x@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_with_hints() {
    let settings = settings("postgres://vega:hunter2@127.0.0.1:1/vega");
    let err = Store::connect(&settings).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("pg_isready"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

fn settings(url: &str) -> Settings {
    common::settings(url, PoolOptions::default())
}
