//! Workers: the service credentials scan workers authenticate with, and their heartbeats.

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::worker_heartbeats;

use crate::accounts::token::{self, ApiToken};
use crate::context::cx::Cx;
use crate::context::trail::{self, Action, Audit};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};

/// Input for [`Workers::heartbeat`].
#[derive(Debug, Clone)]
pub struct WorkerBeat {
    /// Stable for the worker process's life, e.g. `{name}/{hostname}/{pid}`. A worker's
    /// session accepts only its credential's name or ids that start with `{name}/`.
    pub worker_id: String,
    /// Host name.
    pub hostname: Option<String>,
    /// Build or scanner-bundle version.
    pub version: Option<String>,
    /// How many scans it runs at once.
    pub capacity: i32,
}

/// A worker credential as listed: never its hash.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult, serde::Serialize)]
pub struct WorkerCredential {
    /// Its id.
    pub id: Uuid,
    /// The worker's name: the worker id its claims are made under.
    pub name: String,
    /// The token's first 12 characters.
    pub token_prefix: String,
    /// The token's last 4 characters.
    pub token_last4: String,
    /// When it was issued.
    pub created_at: DateTime<FixedOffset>,
    /// When it was last used (throttled).
    pub last_used_at: Option<DateTime<FixedOffset>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<FixedOffset>>,
}

/// A newly issued worker credential and, this once, its plaintext.
#[derive(Debug, Clone)]
pub struct IssuedCredential {
    /// The stored credential.
    pub credential: WorkerCredential,
    /// The plaintext token (`vgw_...`).
    pub token: ApiToken,
}

/// Worker credentials (`worker_credentials`) and heartbeats (`worker_heartbeats`). Scan
/// ownership is decided by scan leases, not by heartbeats; they are for operators and
/// capacity planning.
#[derive(Debug, Clone)]
pub struct Workers<'a> {
    pub(crate) cx: Cx<'a>,
}

const CREDENTIAL_COLUMNS: &str =
    "id, name, token_prefix, token_last4, created_at, last_used_at, revoked_at";

impl Workers<'_> {
    /// Issues a credential for the worker `name` (lower-case letters, digits and hyphens) and
    /// appends `worker_credential.issued` (the system only). A live credential with the same
    /// name is [`Error::Conflict`].
    #[instrument(name = "workers.issue_credential", skip(self))]
    pub async fn issue_credential(&self, name: &str) -> Result<IssuedCredential> {
        let name = validate::slug("name", name)?;
        self.cx.who.require_system("issue worker credentials")?;
        let token = ApiToken::generate(token::WORKER);
        let unit = self.cx.db().unit().await?;
        let credential = WorkerCredential::find_by_statement(statement(
            &unit,
            &format!(
                "INSERT INTO worker_credentials (id, name, token_hash, token_prefix, token_last4, \
                                                 created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CREDENTIAL_COLUMNS}"
            ),
            [
                Uuid::now_v7().into(),
                name.clone().into(),
                token.hash().to_vec().into(),
                token.display_prefix().to_owned().into(),
                token.last4().to_owned().into(),
                now().into(),
            ],
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::Database(sea_orm::DbErr::RecordNotInserted))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(
                    Action::WorkerCredentialIssued,
                    ("worker_credential", credential.id),
                )
                .data(json!({ "name": name })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(IssuedCredential { credential, token })
    }

    /// Revokes a credential and appends `worker_credential.revoked` (the system only); its
    /// token stops authenticating at once. Revoking twice keeps the first time.
    #[instrument(name = "workers.revoke_credential", skip(self))]
    pub async fn revoke_credential(&self, id: Uuid) -> Result<WorkerCredential> {
        self.cx.who.require_system("revoke worker credentials")?;
        let unit = self.cx.db().unit().await?;
        let revoked = unit
            .execute_raw(statement(
                &unit,
                "UPDATE worker_credentials SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                [now().into(), id.into()],
            ))
            .await?;
        if revoked.rows_affected() == 1 {
            trail::record(
                &unit,
                self.cx.who,
                vec![Audit::new(
                    Action::WorkerCredentialRevoked,
                    ("worker_credential", id),
                )],
            )
            .await?;
        }
        let credential = WorkerCredential::find_by_statement(statement(
            &unit,
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM worker_credentials WHERE id = $1"),
            [id.into()],
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("worker credential", id))?;
        unit.commit().await?;
        Ok(credential)
    }

    /// Every credential, newest first (the system only).
    #[instrument(name = "workers.credentials", skip(self))]
    pub async fn credentials(&self) -> Result<Vec<WorkerCredential>> {
        self.cx.who.require_system("list worker credentials")?;
        Ok(WorkerCredential::find_by_statement(statement(
            self.cx.db(),
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM worker_credentials ORDER BY id DESC"),
            [],
        ))
        .all(self.cx.db())
        .await?)
    }

    /// Records that the worker is alive (insert on first beat, update afterwards). Workers
    /// and the system only.
    #[instrument(name = "workers.heartbeat", skip_all, fields(worker_id = %beat.worker_id))]
    pub async fn heartbeat(&self, beat: WorkerBeat) -> Result<worker_heartbeats::Model> {
        let worker_id = validate::text("worker_id", &beat.worker_id, 1, 200)?;
        if beat.capacity < 0 {
            return Err(Error::invalid("capacity", "must not be negative"));
        }
        let hostname = validate::optional_text("hostname", beat.hostname.as_deref(), 255)?;
        let version = validate::optional_text("version", beat.version.as_deref(), 128)?;
        if let Some(name) = self.cx.who.require_worker("send worker heartbeats")?
            && worker_id != name
            && !worker_id.starts_with(&format!("{name}/"))
        {
            return Err(Error::invalid(
                "worker_id",
                format!("must be `{name}` or start with `{name}/`"),
            ));
        }
        let now = now();
        worker_heartbeats::Model::find_by_statement(statement(
                self.cx.db(),
                "INSERT INTO worker_heartbeats (worker_id, hostname, version, capacity, started_at, last_seen_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (worker_id) DO UPDATE SET hostname = excluded.hostname, \
                        version = excluded.version, capacity = excluded.capacity, \
                        last_seen_at = excluded.last_seen_at \
                 RETURNING *",
                [
                    worker_id.into(),
                    hostname.into(),
                    version.into(),
                    beat.capacity.into(),
                    now.into(),
                ],
            ))
            .one(self.cx.db())
            .await?
            .ok_or_else(|| Error::Database(sea_orm::DbErr::RecordNotInserted))
    }

    /// Workers seen within `window`, most recent first (the system only).
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "workers.live", skip(self))]
    pub async fn live(&self, window: Duration) -> Result<Vec<worker_heartbeats::Model>> {
        let cx = self.cx.replica();
        cx.who.require_system("list workers")?;
        let since = now() - window_duration(window)?;
        Ok(worker_heartbeats::Entity::find()
            .filter(worker_heartbeats::Column::LastSeenAt.gte(since))
            .order_by_desc(worker_heartbeats::Column::LastSeenAt)
            .all(cx.db())
            .await?)
    }

    /// Deletes workers not seen for `older_than`; returns how many (the system only).
    #[instrument(name = "workers.prune", skip(self))]
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        self.cx.who.require_system("prune workers")?;
        let before = now() - window_duration(older_than)?;
        let result = self
            .cx
            .db()
            .execute_raw(statement(
                self.cx.db(),
                "DELETE FROM worker_heartbeats WHERE last_seen_at < $1",
                [before.into()],
            ))
            .await?;
        Ok(result.rows_affected())
    }
}

fn window_duration(d: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(d).map_err(|_| Error::invalid("window", "is too long"))
}
