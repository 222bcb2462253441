//! API keys: `vgk_` + 30 random base62 characters + a 6-character base62 CRC32 of what precedes
//! it (the format GitHub uses for its tokens). The checksum lets a typo or a random string be
//! refused without touching the database, and lets secret scanners recognise leaked keys.
//! Only the SHA-256 of a key is stored (an unsalted hash is right for a 178-bit random secret),
//! with its first 12 and last 4 characters for display; the plaintext exists once, in the
//! [`IssuedKey`] returned by [`ApiKeys::issue`].

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder,
};
use sha2::{Digest, Sha256};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{RevokeReason, api_keys};

use crate::db::Db;
use crate::store::{now, statement};
use crate::{Error, Result, validate};

const PREFIX: &str = "vgk_";
const RANDOM_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
const TOKEN_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// How often `last_used_at` is written for a busy key.
pub const LAST_USED_THROTTLE: Duration = Duration::from_secs(300);

/// An API key's plaintext. Its `Debug` and `Display` show only the display prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// The full token, to show the user once. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({}…)", &self.0[..12])
    }
}

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
    /// Restricts the key to one project; `None` for a user-wide key.
    pub project_id: Option<Uuid>,
    /// A label for the owner, 1 to 100 characters.
    pub name: String,
    /// Permissions, e.g. `scans:write`.
    pub scopes: Vec<String>,
    /// When it stops working.
    pub expires_at: Option<DateTime<FixedOffset>>,
}

/// The `api_keys` table.
#[derive(Debug, Clone, Copy)]
pub struct ApiKeys<'a> {
    pub(crate) db: &'a Db,
}

impl ApiKeys<'_> {
    /// Issues a key. The plaintext is in the result and nowhere else.
    #[instrument(name = "api_keys.issue", skip_all, fields(user_id = %input.user_id))]
    pub async fn issue(&self, input: NewApiKey) -> Result<IssuedKey> {
        let input = validated(input)?;
        insert(self.db, input, None).await
    }

    /// The key a presented token belongs to, if the token is well-formed, its checksum holds,
    /// and the key is neither revoked nor expired. Malformed tokens are refused without a query.
    #[instrument(name = "api_keys.authenticate", skip_all)]
    pub async fn authenticate(&self, token: &str) -> Result<Option<api_keys::Model>> {
        if !well_formed(token) {
            return Ok(None);
        }
        Ok(api_keys::Entity::find()
            .from_raw_sql(statement(
                self.db,
                "SELECT * FROM api_keys WHERE token_hash = $1 AND revoked_at IS NULL \
                   AND (expires_at IS NULL OR expires_at > $2)",
                [hash(token).to_vec().into(), now().into()],
            ))
            .one(self.db)
            .await?)
    }

    /// Notes that the key was used, at most once per [`LAST_USED_THROTTLE`] so a busy key does
    /// not write on every request. Pass the row [`ApiKeys::authenticate`] returned: when it
    /// shows a recent use, nothing is sent to the database at all; otherwise the statement's
    /// own condition decides, so concurrent requests write once. Returns whether it wrote.
    #[instrument(name = "api_keys.touch", skip_all, fields(id = %key.id))]
    pub async fn touch(&self, key: &api_keys::Model, ip: Option<&str>) -> Result<bool> {
        let now = now();
        let stale = now - chrono::Duration::seconds(LAST_USED_THROTTLE.as_secs() as i64);
        if key.last_used_at.is_some_and(|at| at >= stale) {
            return Ok(false);
        }
        let result = self
            .db
            .execute_raw(statement(
                self.db,
                "UPDATE api_keys SET last_used_at = $1, last_used_ip = $2 \
                  WHERE id = $3 AND (last_used_at IS NULL OR last_used_at < $4)",
                [
                    now.into(),
                    validate::optional_text("ip", ip, 64)?.into(),
                    key.id.into(),
                    stale.into(),
                ],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Revokes a key. Revoking a revoked key keeps the first revocation.
    #[instrument(name = "api_keys.revoke", skip(self))]
    pub async fn revoke(&self, id: Uuid, reason: RevokeReason) -> Result<api_keys::Model> {
        revoke(self.db, id, reason).await?;
        self.get(id).await
    }

    /// Replaces a live key with a new one carrying the same owner, project, name, scopes and
    /// expiry; the old key is revoked as `rotated` in the same transaction.
    #[instrument(name = "api_keys.rotate", skip(self))]
    pub async fn rotate(&self, id: Uuid) -> Result<IssuedKey> {
        let txn = self.db.begin().await?;
        let old = api_keys::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::not_found("api key", id))?;
        if !revoke(&txn, id, RevokeReason::Rotated).await? {
            return Err(Error::Conflict {
                constraint: "api_keys_revoked".into(),
                message: "a revoked key cannot be rotated; issue a new one".into(),
            });
        }
        let scopes = serde_json::from_value(old.scopes)
            .map_err(|e| Error::Database(sea_orm::DbErr::Json(e.to_string())))?;
        let issued = insert(
            &txn,
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
        txn.commit().await?;
        Ok(issued)
    }

    /// The key with this id.
    #[instrument(name = "api_keys.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<api_keys::Model> {
        api_keys::Entity::find_by_id(id)
            .one(self.db)
            .await?
            .ok_or_else(|| Error::not_found("api key", id))
    }

    /// The user's keys, newest first, revoked ones included.
    #[instrument(name = "api_keys.list_for_user", skip(self))]
    pub async fn list_for_user(&self, user_id: Uuid) -> Result<Vec<api_keys::Model>> {
        Ok(api_keys::Entity::find()
            .filter(api_keys::Column::UserId.eq(user_id))
            .order_by_desc(api_keys::Column::Id)
            .all(self.db)
            .await?)
    }
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
    }
    if input.expires_at.is_some_and(|at| at <= now()) {
        return Err(Error::invalid("expires_at", "must be in the future"));
    }
    Ok(input)
}

async fn insert(
    db: &impl ConnectionTrait,
    input: NewApiKey,
    rotated_from: Option<Uuid>,
) -> Result<IssuedKey> {
    let token = generate();
    let key = api_keys::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(input.user_id),
        project_id: Set(input.project_id),
        name: Set(input.name),
        token_hash: Set(hash(&token).to_vec()),
        token_prefix: Set(token[..12].to_owned()),
        token_last4: Set(token[TOKEN_LEN - 4..].to_owned()),
        scopes: Set(serde_json::json!(input.scopes)),
        expires_at: Set(input.expires_at),
        last_used_at: Set(None),
        last_used_ip: Set(None),
        revoked_at: Set(None),
        revoked_reason: Set(None),
        rotated_from_id: Set(rotated_from),
        created_at: Set(now()),
    }
    .insert(db)
    .await?;
    Ok(IssuedKey {
        key,
        token: ApiToken(token),
    })
}

/// Revokes a live key; false when it was already revoked. `NotFound` when it does not exist.
async fn revoke(db: &impl ConnectionTrait, id: Uuid, reason: RevokeReason) -> Result<bool> {
    let result = db
        .execute_raw(statement(
            db,
            "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
            [now().into(), reason.as_str().into(), id.into()],
        ))
        .await?;
    if result.rows_affected() == 1 {
        return Ok(true);
    }
    api_keys::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(|_| false)
        .ok_or_else(|| Error::not_found("api key", id))
}

fn generate() -> String {
    let mut rng = rand::rng();
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(PREFIX);
    for _ in 0..RANDOM_LEN {
        token.push(char::from(BASE62[rng.random_range(0..BASE62.len())]));
    }
    let checksum = checksum(&token);
    token.push_str(&checksum);
    token
}

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token.starts_with(PREFIX)
        && token[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
        && checksum(&token[..TOKEN_LEN - CHECKSUM_LEN]) == token[TOKEN_LEN - CHECKSUM_LEN..]
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_checksummed() {
        let token = generate();
        assert_eq!(token.len(), 40);
        assert!(well_formed(&token));
        // One changed character breaks the checksum.
        let mut typo = token.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert!(!well_formed(&String::from_utf8(typo).unwrap()));
        assert!(!well_formed("vgk_short"));
        assert!(!well_formed(&token.replace("vgk_", "xyz_")));
        assert_ne!(generate(), token);
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = ApiToken(generate());
        let shown = format!("{token:?}");
        assert!(!shown.contains(&token.expose()[12..]), "{shown}");
    }
}
