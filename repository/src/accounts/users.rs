use sea_orm::{ActiveModelTrait, ActiveValue::Set, FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{UserStatus, users};

use crate::context::cx::Cx;
use crate::context::principal::{Principal, PrincipalKind, Table};
use crate::context::trail::{self, Action, Audit};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};

/// Input for [`Users::create`].
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Email address; stored lower-case, unique regardless of case.
    pub email: String,
    /// Display name, up to 255 characters.
    pub display_name: Option<String>,
    /// Whether the user administers the deployment.
    pub is_admin: bool,
}

/// The `users` table.
#[derive(Debug, Clone)]
pub struct Users<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Users<'_> {
    /// Creates an active user and appends `user.created` (the system only). A taken email is
    /// [`Error::Conflict`] on `users_email_key`.
    #[instrument(name = "users.create", skip_all)]
    pub async fn create(&self, input: NewUser) -> Result<users::Model> {
        let email = validate::email("email", &input.email)?;
        let display_name =
            validate::optional_text("display_name", input.display_name.as_deref(), 255)?;
        self.cx.who.require_system("create users")?;
        let now = now();
        let user = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            email: Set(email),
            email_verified_at: Set(None),
            display_name: Set(display_name),
            password_hash: Set(None),
            is_admin: Set(input.is_admin),
            status: Set(UserStatus::Active.as_str().into()),
            last_login_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let unit = self.cx.db().unit().await?;
        let user = user.insert(&unit).await?;
        trail::record(
            &unit,
            self.cx.who,
            vec![Audit::new(Action::UserCreated, ("user", user.id))],
        )
        .await?;
        unit.commit().await?;
        Ok(user)
    }

    /// The user with this id.
    #[instrument(name = "users.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<users::Model> {
        self.find("x.id = $1", vec![id.into()])
            .await?
            .ok_or_else(|| Error::not_found("user", id))
    }

    /// The user with this email, compared case-insensitively; `None` if there is none in reach.
    #[instrument(name = "users.find_by_email", skip_all)]
    pub async fn find_by_email(&self, email: &str) -> Result<Option<users::Model>> {
        let email = validate::no_nul("email", email)?.trim().to_lowercase();
        self.find("x.email = $1", vec![email.into()]).await
    }

    /// The principal of a user the application signed in by its own means (a login, a
    /// session cookie): [`Error::NotFound`] unless the user exists and is active. One query.
    #[instrument(name = "users.principal", skip(self))]
    pub async fn principal(&self, id: Uuid) -> Result<Principal> {
        let values = vec![id.into(), UserStatus::Active.as_str().into()];
        let user = self
            .find("x.id = $1 AND x.status = $2", values)
            .await?
            .ok_or_else(|| Error::not_found("user", id))?;
        Ok(Principal::new(
            PrincipalKind::User { user_id: user.id },
            &user.email,
            None,
            Vec::new(),
            None,
        ))
    }

    /// Sets the user's status, appends `user.status_changed` and returns the updated row (the
    /// system only). A suspended or deleted user's keys stop authenticating at once.
    #[instrument(name = "users.set_status", skip(self))]
    pub async fn set_status(&self, id: Uuid, status: UserStatus) -> Result<users::Model> {
        self.cx.who.require_system("change a user's status")?;
        let unit = self.cx.db().unit().await?;
        let user = users::Model::find_by_statement(statement(
            &unit,
            "UPDATE users SET status = $1, updated_at = $2 WHERE id = $3 RETURNING *",
            [status.as_str().into(), now().into(), id.into()],
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("user", id))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::UserStatusChanged, ("user", id))
                    .data(json!({ "status": status.as_str() })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(user)
    }

    /// Users in the order they were created, `limit` (1 to 500) after the user `after`
    /// (the system only): the operator's view, for `vega-admin users list`.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "users.list", skip(self))]
    pub async fn list(&self, after: Option<Uuid>, limit: u64) -> Result<Vec<users::Model>> {
        let cx = self.cx.replica();
        cx.who.require_system("list users")?;
        let limit = crate::db::page::page_size(limit)?;
        let after = after.unwrap_or_else(Uuid::nil);
        cx.select::<users::Entity>(
            Table::Users,
            "x.id > $1",
            vec![after.into()],
            &format!("ORDER BY x.id {}", crate::db::page::limit_clause(limit)),
        )
        .await
    }

    async fn find(&self, filter: &str, values: Vec<Value>) -> Result<Option<users::Model>> {
        self.cx
            .select_one::<users::Entity>(Table::Users, filter, values)
            .await
    }
}
