//! Users, their projects, the repositories a project tracks, source snapshots, and API keys.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::ddl::{
    check, create, desc, drop, fk, index, one_of, status, timestamp, timestamp_null, unique,
    uuid_pk,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        create(
            manager,
            vec![
                users(),
                projects(backend),
                repositories(),
                snapshots(),
                api_keys(),
            ],
            vec![
                index("projects", "owner_active")
                    .col("owner_id")
                    .col(desc("id"))
                    .and_where(Expr::cust("archived_at IS NULL"))
                    .take(),
                index("projects", "latest_scan")
                    .col("latest_scan_id")
                    .take(),
                unique("repositories", "provider")
                    .col("project_id")
                    .col("provider")
                    .col("provider_xid")
                    .take(),
                index("repositories", "provider_xid")
                    .col("provider")
                    .col("provider_xid")
                    .take(),
                index("snapshots", "repository")
                    .col("repository_id")
                    .col(desc("id"))
                    .take(),
                index("snapshots", "project").col("project_id").take(),
                index("snapshots", "commit")
                    .col("repository_id")
                    .col("commit_sha")
                    .take(),
                index("snapshots", "expiry")
                    .col("expires_at")
                    .and_where(Expr::cust("status = 'ready'"))
                    .take(),
                index("api_keys", "user")
                    .col("user_id")
                    .col(desc("id"))
                    .take(),
                index("api_keys", "project").col("project_id").take(),
                index("api_keys", "rotated_from")
                    .col("rotated_from_id")
                    .take(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop(
            manager,
            &["api_keys", "snapshots", "repositories", "projects", "users"],
        )
        .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

fn users() -> TableCreateStatement {
    const T: &str = "users";
    Table::create()
        .table(T)
        .col(uuid_pk())
        .col(ColumnDef::new("email").text().not_null())
        .col(timestamp_null("email_verified_at"))
        .col(ColumnDef::new("display_name").text().null())
        .col(ColumnDef::new("password_hash").text().null())
        .col(
            ColumnDef::new("is_admin")
                .boolean()
                .not_null()
                .default(false),
        )
        .col(status("status", "active"))
        .col(timestamp_null("last_login_at"))
        .col(timestamp("created_at"))
        .col(timestamp("updated_at"))
        // Emails are stored folded to lower case by the application, so a plain unique index
        // is a case-insensitive one on both engines (no citext, no expression index).
        .index(unique(T, "email").col("email"))
        .check(check(
            T,
            "email",
            "email = lower(email) AND length(email) BETWEEN 3 AND 320",
        ))
        .check(check(T, "display_name", "length(display_name) <= 255"))
        .check(one_of(T, "status", &["active", "suspended", "deleted"]))
        .take()
}

fn projects(backend: DbBackend) -> TableCreateStatement {
    const T: &str = "projects";
    let mut table = Table::create()
        .table(T)
        .col(uuid_pk())
        .col(ColumnDef::new("owner_id").uuid().not_null())
        .col(ColumnDef::new("name").text().not_null())
        .col(ColumnDef::new("slug").text().not_null())
        .col(ColumnDef::new("description").text().null())
        .col(ColumnDef::new("latest_scan_id").uuid().null())
        .col(timestamp_null("archived_at"))
        .col(timestamp("created_at"))
        .col(timestamp("updated_at"))
        // Billing owner: a user with projects cannot be deleted out from under them.
        .foreign_key(&mut fk(T, "owner_id", "users", ForeignKeyAction::Restrict))
        // Also the index that serves the owner_id foreign key.
        .index(unique(T, "owner_slug").col("owner_id").col("slug"))
        .check(check(T, "name", "length(name) BETWEEN 1 AND 255"))
        .check(check(T, "slug", "length(slug) BETWEEN 1 AND 100"))
        .take();
    // projects.latest_scan_id and scans.project_id point at each other. SQLite cannot add a
    // foreign key later, but accepts one whose parent does not exist yet; Postgres is the
    // other way round, so it gets the constraint in the scans migration.
    if backend == DbBackend::Sqlite {
        table.foreign_key(&mut fk(
            T,
            "latest_scan_id",
            "scans",
            ForeignKeyAction::SetNull,
        ));
    }
    table
}

fn repositories() -> TableCreateStatement {
    const T: &str = "repositories";
    Table::create()
        .table(T)
        .col(uuid_pk())
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(ColumnDef::new("provider").text().not_null())
        .col(ColumnDef::new("provider_xid").text().null())
        .col(ColumnDef::new("full_name").text().null())
        .col(ColumnDef::new("clone_url").text().null())
        .col(ColumnDef::new("default_branch").text().null())
        .col(timestamp_null("archived_at"))
        .col(timestamp("created_at"))
        .col(timestamp("updated_at"))
        .foreign_key(&mut fk(
            T,
            "project_id",
            "projects",
            ForeignKeyAction::Cascade,
        ))
        .check(one_of(
            T,
            "provider",
            &["github", "gitlab", "bitbucket", "git", "upload"],
        ))
        .take()
}

fn snapshots() -> TableCreateStatement {
    const T: &str = "snapshots";
    Table::create()
        .table(T)
        .col(uuid_pk())
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(ColumnDef::new("repository_id").uuid().not_null())
        .col(ColumnDef::new("commit_sha").text().null())
        .col(ColumnDef::new("ref_name").text().null())
        .col(status("status", "pending"))
        .col(ColumnDef::new("file_count").integer().null())
        .col(timestamp("created_at"))
        .col(timestamp_null("ready_at"))
        .col(timestamp_null("expires_at"))
        .foreign_key(&mut fk(
            T,
            "project_id",
            "projects",
            ForeignKeyAction::Cascade,
        ))
        .foreign_key(&mut fk(
            T,
            "repository_id",
            "repositories",
            ForeignKeyAction::Cascade,
        ))
        .check(check(T, "commit_sha", "length(commit_sha) IN (40, 64)"))
        .check(one_of(
            T,
            "status",
            &["pending", "ready", "failed", "expired", "deleted"],
        ))
        .check(check(
            T,
            "ready_at",
            "(status = 'pending') = (ready_at IS NULL)",
        ))
        .check(check(T, "file_count", "file_count >= 0"))
        .take()
}

fn api_keys() -> TableCreateStatement {
    const T: &str = "api_keys";
    Table::create()
        .table(T)
        .col(uuid_pk())
        .col(ColumnDef::new("user_id").uuid().not_null())
        .col(ColumnDef::new("project_id").uuid().null())
        .col(ColumnDef::new("name").text().not_null())
        .col(ColumnDef::new("token_hash").blob().not_null())
        .col(ColumnDef::new("token_prefix").text().not_null())
        .col(ColumnDef::new("token_last4").text().not_null())
        .col(ColumnDef::new("scopes").json_binary().not_null())
        .col(timestamp_null("expires_at"))
        .col(timestamp_null("last_used_at"))
        .col(ColumnDef::new("last_used_ip").text().null())
        .col(timestamp_null("revoked_at"))
        .col(ColumnDef::new("revoked_reason").text().null())
        .col(ColumnDef::new("rotated_from_id").uuid().null())
        .col(timestamp("created_at"))
        .foreign_key(&mut fk(T, "user_id", "users", ForeignKeyAction::Cascade))
        .foreign_key(&mut fk(
            T,
            "project_id",
            "projects",
            ForeignKeyAction::Cascade,
        ))
        .foreign_key(&mut fk(
            T,
            "rotated_from_id",
            "api_keys",
            ForeignKeyAction::SetNull,
        ))
        .index(unique(T, "token_hash").col("token_hash"))
        .check(check(T, "name", "length(name) BETWEEN 1 AND 100"))
        .check(check(T, "token_hash", "length(token_hash) = 32"))
        .check(check(T, "token_last4", "length(token_last4) = 4"))
        .check(one_of(
            T,
            "revoked_reason",
            &["user", "rotated", "leaked", "admin", "expired"],
        ))
        .check(check(
            T,
            "revoked",
            "(revoked_at IS NULL) = (revoked_reason IS NULL)",
        ))
        .take()
}
