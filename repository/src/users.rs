use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{UserStatus, users};

use crate::db::Db;
use crate::store::now;
use crate::{Error, Result, validate};

/// Input for [`Users::create`].
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Email address; stored lower-case, unique regardless of case.
    pub email: String,
    /// Display name, up to 255 characters.
    pub display_name: Option<String>,
}

/// The `users` table.
#[derive(Debug, Clone, Copy)]
pub struct Users<'a> {
    pub(crate) db: &'a Db,
}

impl Users<'_> {
    /// Creates an active user. A taken email is [`Error::Conflict`] on `users_email_key`.
    #[instrument(name = "users.create", skip_all)]
    pub async fn create(&self, input: NewUser) -> Result<users::Model> {
        let email = validate::email("email", &input.email)?;
        let display_name =
            validate::optional_text("display_name", input.display_name.as_deref(), 255)?;
        let now = now();
        let user = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            email: Set(email),
            email_verified_at: Set(None),
            display_name: Set(display_name),
            password_hash: Set(None),
            is_admin: Set(false),
            status: Set(UserStatus::Active.as_str().into()),
            last_login_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        Ok(user.insert(self.db).await?)
    }

    /// The user with this id.
    #[instrument(name = "users.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<users::Model> {
        users::Entity::find_by_id(id)
            .one(self.db)
            .await?
            .ok_or_else(|| Error::not_found("user", id))
    }

    /// The user with this email, compared case-insensitively; `None` if there is none.
    #[instrument(name = "users.find_by_email", skip_all)]
    pub async fn find_by_email(&self, email: &str) -> Result<Option<users::Model>> {
        let email = validate::no_nul("email", email)?.trim().to_lowercase();
        Ok(users::Entity::find()
            .filter(users::Column::Email.eq(email))
            .one(self.db)
            .await?)
    }

    /// Sets the user's status and returns the updated row.
    #[instrument(name = "users.set_status", skip(self))]
    pub async fn set_status(&self, id: Uuid, status: UserStatus) -> Result<users::Model> {
        let user = users::ActiveModel {
            id: Set(id),
            status: Set(status.as_str().into()),
            updated_at: Set(now()),
            ..Default::default()
        };
        match user.update(self.db).await {
            Err(sea_orm::DbErr::RecordNotUpdated) => Err(Error::not_found("user", id)),
            result => Ok(result?),
        }
    }
}
