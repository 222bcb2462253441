//! Test harness: a freshly migrated database per test, on Postgres and on SQLite.
//!
//! **Postgres.** The first test in a process builds a *template* database with every migration
//! applied, named after a digest of the migration sources and the UTC month
//! (`vega_tpl_<digest>_<yyyymm>`, since the migrations create the month's `events` partitions);
//! each test then gets `CREATE DATABASE vega_test_<uuid> TEMPLATE vega_tpl_<digest>_<yyyymm>`,
//! a file copy that takes milliseconds, and [`TestDb`] drops it when the test ends. Building the
//! template happens once per migration change and month across all test processes: it runs under a Postgres advisory lock, is
//! built under a temporary name and renamed when complete, so a crash never leaves a
//! half-migrated template behind. This is the pattern of crates.io's `crates_io_test_db`.
//!
//! The server is `VEGA_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! the user needs `CREATEDB`. Tests fail, rather than skip, when it is unreachable.
//!
//! **SQLite.** [`TestDb::sqlite`] migrates a private in-memory database held by a one-connection
//! pool that never recycles its connection (an in-memory database dies with its connection).
//!
//! **Both.** [`on_both_backends!`] turns one async test body into a `postgres` and a `sqlite`
//! test.
//!
//! **A server of the test's own.** [`pg::PgServer`] `initdb`s a throwaway cluster on a free
//! port for tests that restart, freeze or kill it; the shared server is never touched.
//! [`pgbouncer::PgBouncer`] runs Debian's PgBouncer on a free port in front of a server;
//! [`pg::PgServer::standby_of`] adds a streaming standby, and [`proxy::Proxy`] stands for a
//! cluster endpoint that can fence its host and switch to another.
//!
//! **S3.** [`s3::S3Server`] serves s3s-fs on a real TCP listener at 127.0.0.1:0 inside the
//! test process; [`s3::MotoServer`] runs moto's S3 server, a second and independent
//! implementation, as a child process; [`s3::SilentEndpoint`] accepts connections and never
//! answers. The real aws-sdk-s3 client talks to all three.

// A harness reports a broken environment by panicking: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod pg;
pub mod pgbouncer;
pub mod proxy;
pub mod s3;
pub mod scrape;

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};
use tokio::sync::OnceCell;
use vega_migration::lock::MigrationLock;
use vega_migration::{Migrator, MigratorTrait};

/// Which database a [`TestDb`] runs on.
pub use sea_orm::DbBackend as Backend;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The migrated template of this migration source and this UTC month: a month's template
/// holds the monthly `events` partitions the migrations created (that month and three
/// ahead), so a template kept on a machine past them would refuse today's events.
static TEMPLATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "vega_tpl_{}_{}",
        env!("VEGA_MIGRATIONS_DIGEST"),
        chrono::Utc::now().format("%Y%m")
    )
});

static TEMPLATE_READY: OnceCell<()> = OnceCell::const_new();

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A database that exists for one test.
pub struct TestDb {
    conn: DatabaseConnection,
    url: String,
    /// The Postgres database to drop afterwards (`None` for SQLite).
    owned: Option<String>,
}

impl TestDb {
    /// A new Postgres database with every migration applied.
    pub async fn postgres() -> Self {
        TEMPLATE_READY
            .get_or_init(|| async { build_template().await })
            .await;
        Self::create_postgres(Some(TEMPLATE.as_str())).await
    }

    /// A new, empty Postgres database: for tests of the migrations themselves.
    pub async fn postgres_empty() -> Self {
        Self::create_postgres(None).await
    }

    /// A new in-memory SQLite database with every migration applied.
    pub async fn sqlite() -> Self {
        let url = "sqlite::memory:".to_owned();
        let mut options = ConnectOptions::new(&url);
        options
            .sqlx_logging(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
        let conn = Database::connect(options)
            .await
            .expect("open in-memory SQLite");
        Migrator::up(&conn, None)
            .await
            .expect("migrate in-memory SQLite");
        Self {
            conn,
            url,
            owned: None,
        }
    }

    /// The connection.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The database URL (a fresh in-memory database for SQLite, so only useful for Postgres).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.conn.get_database_backend()
    }

    async fn create_postgres(template: Option<&str>) -> Self {
        let name = format!("vega_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_connection().await;
        let sql = match template {
            Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}"),
            None => format!("CREATE DATABASE {name}"),
        };
        admin
            .execute_unprepared(&sql)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = database_url(&name);
        let mut options = ConnectOptions::new(&url);
        options.sqlx_logging(false).max_connections(8);
        let conn = Database::connect(options)
            .await
            .expect("connect to test database");
        Self {
            conn,
            url,
            owned: Some(name),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.owned.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // thread with its own runtime does the cleanup. FORCE ends the test's own sessions.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = Database::connect(admin_url())
                    .await
                    .map_err(std::io::Error::other)?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(std::io::Error::other)?;
                admin.close().await.map_err(std::io::Error::other)
            })
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("warning: could not drop a test database: {err}");
        }
    }
}

/// Runs one async test body as two tests, `postgres` and `sqlite`, in a module named after it.
///
/// ```ignore
/// vega_tests::on_both_backends! {
///     async fn rejects_duplicate_emails(db: &TestDb) {
///         // ... use db.conn() ...
///     }
/// }
/// ```
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($db:ident: &TestDb) $body:block)+) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn body($db: &$crate::TestDb) $body

                #[tokio::test]
                async fn postgres() {
                    body(&$crate::TestDb::postgres().await).await
                }

                #[tokio::test]
                async fn sqlite() {
                    body(&$crate::TestDb::sqlite().await).await
                }
            }
        )+
    };
}

/// Every `.rs` file under `dir`, for tests that read the workspace's own sources.
pub fn rust_sources(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            files.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// A filesystem blob store in a fresh temporary directory.
pub fn scratch_blob_store() -> vega_blobstore::BlobStore {
    vega_blobstore::BlobStore::filesystem(scratch_blob_dir())
        .expect("create a scratch blob directory")
}

/// Blob settings for a filesystem store in a fresh temporary directory, for a test that
/// builds a store from `Settings` as a service does.
pub fn scratch_blob_settings() -> vega_config::BlobSettings {
    vega_config::BlobSettings::Fs {
        root: scratch_blob_dir(),
        root_source: vega_config::Source::Given,
    }
}

fn scratch_blob_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vega-blobs-{}", uuid::Uuid::new_v4()))
}

fn admin_url() -> String {
    std::env::var("VEGA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("VEGA_TEST_POSTGRES_URL is a URL");
    url.set_path(name);
    url.to_string()
}

async fn admin_connection() -> DatabaseConnection {
    let mut options = ConnectOptions::new(admin_url());
    options
        .sqlx_logging(false)
        .max_connections(2)
        .connect_timeout(Duration::from_secs(5));
    Database::connect(options).await.unwrap_or_else(|err| {
        panic!(
            "cannot reach the test Postgres at {} ({err}); start it (scripts/test does) or set \
             VEGA_TEST_POSTGRES_URL",
            vega_config::DatabaseSettings::for_url(admin_url())
                .map(|s| s.target())
                .unwrap_or_default()
        )
    })
}

async fn build_template() {
    let admin = admin_connection().await;
    assert_eq!(admin.get_database_backend(), DbBackend::Postgres);
    let lock = MigrationLock::acquire(&admin, Duration::from_secs(120))
        .await
        .expect("template lock");
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT 1 AS one FROM pg_database WHERE datname = '{}'",
                *TEMPLATE
            ),
        ))
        .await
        .expect("look up template")
        .is_some();
    if !exists {
        let building = format!("{}_building", *TEMPLATE);
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop leftover template");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {building}"))
            .await
            .expect("create template");
        let db = Database::connect(database_url(&building))
            .await
            .expect("connect template");
        Migrator::up(&db, None).await.expect("migrate template");
        db.close().await.expect("close template");
        admin
            .execute_unprepared(&format!(
                "ALTER DATABASE {building} RENAME TO {}",
                *TEMPLATE
            ))
            .await
            .expect("publish template");
        drop_stale_templates(&admin).await;
    }
    lock.release().await.expect("release template lock");
    admin.close().await.ok();
}

/// Templates of earlier migration sources are never used again.
async fn drop_stale_templates(admin: &DatabaseConnection) {
    let rows = admin
        .query_all_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT datname FROM pg_database \
                 WHERE datname LIKE 'vega\\_tpl\\_%' AND datname <> '{}'",
                *TEMPLATE
            ),
        ))
        .await
        .expect("list templates");
    for row in rows {
        let name: String = row.try_get("", "datname").expect("datname");
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await;
    }
}
