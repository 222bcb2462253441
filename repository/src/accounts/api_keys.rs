//! API keys, and authentication: a presented token becomes a [`Principal`].
//!
//! Keys are `vgk_` tokens (see `token.rs`); only their SHA-256 is stored, with the first 12
//! and last 4 characters for display, and the plaintext exists once, in the [`IssuedKey`]
//! returned by [`ApiKeys::issue`].

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{RevokeReason, UserStatus, api_keys};

use crate::accounts::token::{self, ApiToken};
use crate::context::cx::Cx;
use crate::context::principal::{Principal, PrincipalKind, Table, and_reach};
use crate::context::trail::{self, Action, Audit};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};

/// Every scope a key may carry: what each part of the API checks. A key asking for any other
/// is refused, so a typo cannot issue a key that silently grants nothing.
pub const SCOPES: &[&str] = &[
    "projects:read",
    "projects:write",
    "scans:read",
    "scans:write",
    "findings:read",
    "findings:write",
];

/// How often `last_used_at` (and `last_used_ip`) is written for a busy key or credential.
pub const LAST_USED_THROTTLE: Duration = Duration::from_secs(300);

/// A newly issued key: its row and, this once, its plaintext.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// The stored row (hash, prefix, last 4 characters).
    pub key: api_keys::Model,
    /// The plaintext token.
    pub token: ApiToken,
}

/// Input for [`ApiKeys::issue`].
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The owner.
    pub user_id: Uuid,
    /// Restricts the key to one of the owner's projects; `None` for a user-wide key.
    pub project_id: Option<Uuid>,
    /// A label for the owner, 1 to 100 characters.
    pub name: String,
    /// Permissions, e.g. `scans:write`.
    pub scopes: Vec<String>,
    /// When it stops working.
    pub expires_at: Option<DateTime<FixedOffset>>,
}

/// The `api_keys` table.
#[derive(Debug, Clone)]
pub struct ApiKeys<'a> {
    pub(crate) cx: Cx<'a>,
}

#[derive(FromQueryResult)]
struct KeyPrincipal {
    id: Uuid,
    user_id: Uuid,
    project_id: Option<Uuid>,
    token_prefix: String,
    scopes: serde_json::Value,
    last_used_at: Option<DateTime<FixedOffset>>,
}

#[derive(FromQueryResult)]
struct WorkerPrincipal {
    id: Uuid,
    name: String,
    last_used_at: Option<DateTime<FixedOffset>>,
}

impl ApiKeys<'_> {
    /// Issues a key and appends `api_key.issued`. The plaintext is in the result and nowhere
    /// else. The owner must be in the session's reach, and a project the key is restricted to
    /// must be the owner's ([`Error::NotFound`] otherwise).
    #[instrument(name = "api_keys.issue", skip_all, fields(user_id = %input.user_id))]
    pub async fn issue(&self, input: NewApiKey) -> Result<IssuedKey> {
        let input = validated(input)?;
        self.cx.who.refuse_worker("issue API keys")?;
        let unit = self.cx.db().unit().await?;
        let issued = insert(&unit, self.cx.who, input, None).await?;
        unit.commit().await?;
        Ok(issued)
    }

    /// The principal a presented token stands for: an API key (`vgk_`) that is neither
    /// revoked nor expired and whose user is active, or a worker credential (`vgw_`) that is
    /// not revoked. One query; malformed tokens are refused without one. `None` means
    /// "unauthenticated", whatever the reason, so a caller learns nothing about other keys.
    #[instrument(name = "api_keys.authenticate", skip_all)]
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        let Some(kind) = token::kind_of(token) else {
            return Ok(None);
        };
        let hash = token::hash(token).to_vec();
        if kind == token::WORKER {
            let worker = WorkerPrincipal::find_by_statement(statement(
                self.cx.db(),
                "SELECT id, name, last_used_at FROM worker_credentials \
                  WHERE token_hash = $1 AND revoked_at IS NULL",
                [hash.into()],
            ))
            .one(self.cx.db())
            .await?;
            return Ok(worker.map(|w| {
                Principal::new(
                    PrincipalKind::Worker {
                        credential_id: w.id,
                    },
                    &w.name,
                    Some(w.id),
                    Vec::new(),
                    w.last_used_at,
                )
            }));
        }
        let key = KeyPrincipal::find_by_statement(statement(
            self.cx.db(),
            "SELECT k.id, k.user_id, k.project_id, k.token_prefix, k.scopes, k.last_used_at \
               FROM api_keys k JOIN users u ON u.id = k.user_id \
              WHERE k.token_hash = $1 AND k.revoked_at IS NULL \
                AND (k.expires_at IS NULL OR k.expires_at > $2) AND u.status = $3",
            [
                hash.into(),
                now().into(),
                UserStatus::Active.as_str().into(),
            ],
        ))
        .one(self.cx.db())
        .await?;
        let Some(key) = key else { return Ok(None) };
        let kind = match key.project_id {
            Some(project_id) => PrincipalKind::ProjectKey {
                user_id: key.user_id,
                project_id,
            },
            None => PrincipalKind::User {
                user_id: key.user_id,
            },
        };
        let scopes = serde_json::from_value(key.scopes).unwrap_or_default();
        Ok(Some(Principal::new(
            kind,
            &key.token_prefix,
            Some(key.id),
            scopes,
            key.last_used_at,
        )))
    }

    /// Notes that the principal's key or worker credential was used, from `ip`, at most once
    /// per [`LAST_USED_THROTTLE`] so a busy key does not write on every request. When the
    /// principal shows a recent use, nothing is sent to the database at all; otherwise the
    /// statement's own condition decides, so concurrent requests write once. Returns whether
    /// it wrote (never for a login or the system).
    #[instrument(name = "api_keys.touch", skip_all)]
    pub async fn touch(&self, principal: &Principal, ip: Option<&str>) -> Result<bool> {
        let table = match principal.kind() {
            PrincipalKind::Worker { .. } => "worker_credentials",
            PrincipalKind::User { .. } | PrincipalKind::ProjectKey { .. } => "api_keys",
            PrincipalKind::System => return Ok(false),
        };
        let Some(id) = principal.key_id() else {
            return Ok(false);
        };
        let ip = validate::optional_text("ip", ip, 64)?;
        let now = now();
        let stale = now - chrono::Duration::seconds(LAST_USED_THROTTLE.as_secs() as i64);
        if principal.last_used_at.is_some_and(|at| at >= stale) {
            return Ok(false);
        }
        let result = self
            .cx
            .db()
            .execute_raw(statement(
                self.cx.db(),
                &format!(
                    "UPDATE {table} SET last_used_at = $1, last_used_ip = $2 \
                      WHERE id = $3 AND (last_used_at IS NULL OR last_used_at < $4)"
                ),
                [now.into(), ip.into(), id.into(), stale.into()],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Revokes a key in reach and appends `api_key.revoked`. Revoking a revoked key keeps the
    /// first revocation and appends nothing.
    #[instrument(name = "api_keys.revoke", skip(self))]
    pub async fn revoke(&self, id: Uuid, reason: RevokeReason) -> Result<api_keys::Model> {
        self.cx.who.refuse_worker("revoke API keys")?;
        let unit = self.cx.db().unit().await?;
        revoke(&unit, self.cx.who, id, reason).await?;
        let key = find(&unit, self.cx.who, id).await?;
        unit.commit().await?;
        key.ok_or_else(|| Error::not_found("api key", id))
    }

    /// Replaces a live key with a new one carrying the same owner, project, name, scopes and
    /// expiry; the old key is revoked as `rotated` in the same transaction (two events:
    /// `api_key.revoked`, `api_key.issued`).
    #[instrument(name = "api_keys.rotate", skip(self))]
    pub async fn rotate(&self, id: Uuid) -> Result<IssuedKey> {
        self.cx.who.refuse_worker("rotate API keys")?;
        let unit = self.cx.db().unit().await?;
        let old = find(&unit, self.cx.who, id)
            .await?
            .ok_or_else(|| Error::not_found("api key", id))?;
        if !revoke(&unit, self.cx.who, id, RevokeReason::Rotated).await? {
            return Err(Error::Conflict {
                constraint: "api_keys_revoked".into(),
                message: "a revoked key cannot be rotated; issue a new one".into(),
            });
        }
        let scopes = serde_json::from_value(old.scopes)
            .map_err(|e| Error::Database(sea_orm::DbErr::Json(e.to_string())))?;
        let issued = insert(
            &unit,
            self.cx.who,
            NewApiKey {
                user_id: old.user_id,
                project_id: old.project_id,
                name: old.name,
                scopes,
                expires_at: old.expires_at,
            },
            Some(id),
        )
        .await?;
        unit.commit().await?;
        Ok(issued)
    }

    /// The key with this id.
    #[instrument(name = "api_keys.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<api_keys::Model> {
        find(self.cx.db(), self.cx.who, id)
            .await?
            .ok_or_else(|| Error::not_found("api key", id))
    }

    /// The user's keys, newest first, revoked ones included.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "api_keys.list_for_user", skip(self))]
    pub async fn list_for_user(&self, user_id: Uuid) -> Result<Vec<api_keys::Model>> {
        let cx = self.cx.replica();
        let mut values = vec![user_id.into()];
        let reach = and_reach(cx.who, Table::ApiKeys, "k", &mut values);
        Ok(api_keys::Model::find_by_statement(statement(
            cx.db(),
            &format!("SELECT k.* FROM api_keys k WHERE k.user_id = $1{reach} ORDER BY k.id DESC"),
            values,
        ))
        .all(cx.db())
        .await?)
    }
}

async fn find(
    db: &impl ConnectionTrait,
    who: &Principal,
    id: Uuid,
) -> Result<Option<api_keys::Model>> {
    let mut values = vec![id.into()];
    let reach = and_reach(who, Table::ApiKeys, "k", &mut values);
    Ok(api_keys::Model::find_by_statement(statement(
        db,
        &format!("SELECT k.* FROM api_keys k WHERE k.id = $1{reach}"),
        values,
    ))
    .one(db)
    .await?)
}

fn validated(mut input: NewApiKey) -> Result<NewApiKey> {
    input.name = validate::text("name", &input.name, 1, 100)?;
    input.expires_at = input
        .expires_at
        .map(|at| validate::timestamp("expires_at", at))
        .transpose()?;
    for (i, scope) in input.scopes.iter_mut().enumerate() {
        let ok = !scope.is_empty()
            && scope.len() <= 64
            && scope
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == ':' || c == '_');
        if !ok {
            return Err(Error::invalid(
                &format!("scopes[{i}]"),
                "must look like `scans:write`",
            ));
        }
        if !SCOPES.contains(&scope.as_str()) {
            return Err(Error::invalid(
                &format!("scopes[{i}]"),
                format!("`{scope}` is not a scope; scopes are {}", SCOPES.join(", ")),
            ));
        }
    }
    if input.expires_at.is_some_and(|at| at <= now()) {
        return Err(Error::invalid("expires_at", "must be in the future"));
    }
    Ok(input)
}

/// Inserts the key if its owner is in `who`'s reach and its project (if any) is the owner's,
/// with its `api_key.issued` event.
async fn insert(
    db: &impl ConnectionTrait,
    who: &Principal,
    input: NewApiKey,
    rotated_from: Option<Uuid>,
) -> Result<IssuedKey> {
    let token = ApiToken::generate(token::API_KEY);
    let mut values: Vec<Value> = vec![
        Uuid::now_v7().into(),
        input.user_id.into(),
        input.project_id.into(),
        input.name.clone().into(),
        token.hash().to_vec().into(),
        token.display_prefix().to_owned().into(),
        token.last4().to_owned().into(),
        json!(input.scopes).into(),
        input.expires_at.into(),
        rotated_from.into(),
        now().into(),
    ];
    let owner = and_reach(who, Table::Users, "u", &mut values);
    let project = match input.project_id {
        Some(_) => " AND EXISTS (SELECT 1 FROM projects p WHERE p.id = $3 AND p.owner_id = $2)",
        None => "",
    };
    let key = api_keys::Model::find_by_statement(statement(
        db,
        &format!(
            "INSERT INTO api_keys (id, user_id, project_id, name, token_hash, token_prefix, \
                                       token_last4, scopes, expires_at, rotated_from_id, \
                                       created_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
                  WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = $2{owner}){project} \
                 RETURNING *"
        ),
        values,
    ))
    .one(db)
    .await?;
    let key = match key {
        Some(key) => key,
        None if input.project_id.is_some() => {
            return Err(Error::not_found(
                "project",
                input.project_id.unwrap_or_default(),
            ));
        }
        None => return Err(Error::not_found("user", input.user_id)),
    };
    trail::record(
        db,
        who,
        vec![
            Audit::new(Action::ApiKeyIssued, ("api_key", key.id))
                .project_opt(key.project_id)
                .data(json!({
                    "name": key.name,
                    "scopes": key.scopes,
                    "project_id": key.project_id,
                })),
        ],
    )
    .await?;
    Ok(IssuedKey { key, token })
}

/// Revokes a live key in reach, with its `api_key.revoked` event; false when it was already
/// revoked, `NotFound` when it is not in reach.
async fn revoke(
    db: &impl ConnectionTrait,
    who: &Principal,
    id: Uuid,
    reason: RevokeReason,
) -> Result<bool> {
    let mut values = vec![now().into(), reason.as_str().into(), id.into()];
    let reach = and_reach(who, Table::ApiKeys, "api_keys", &mut values);
    let revoked = db
        .query_one_raw(statement(
            db,
            &format!(
                "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 \
                  WHERE id = $3 AND revoked_at IS NULL{reach} RETURNING project_id"
            ),
            values,
        ))
        .await?;
    let Some(revoked) = revoked else {
        return find(db, who, id)
            .await?
            .map(|_| false)
            .ok_or_else(|| Error::not_found("api key", id));
    };
    trail::record(
        db,
        who,
        vec![
            Audit::new(Action::ApiKeyRevoked, ("api_key", id))
                .project_opt(revoked.try_get("", "project_id")?)
                .data(json!({ "reason": reason.as_str() })),
        ],
    )
    .await?;
    Ok(true)
}
