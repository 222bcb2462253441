use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{Provider, repositories};

use crate::db::Db;
use crate::store::now;
use crate::{Error, Result, validate};

/// Input for [`Repositories::add`].
#[derive(Debug, Clone)]
pub struct NewRepository {
    /// The project that tracks it.
    pub project_id: Uuid,
    /// Where it is hosted.
    pub provider: Provider,
    /// The provider's id for it (required except for uploads), used to route webhooks.
    pub provider_xid: Option<String>,
    /// `owner/name`.
    pub full_name: Option<String>,
    /// Clone URL, without credentials.
    pub clone_url: Option<String>,
    /// The tracked branch: only full scans of it may mark findings fixed.
    pub default_branch: Option<String>,
}

/// The `repositories` table: the source repositories a project tracks.
#[derive(Debug, Clone, Copy)]
pub struct Repositories<'a> {
    pub(crate) db: &'a Db,
}

impl Repositories<'_> {
    /// Adds a repository to a project. The same provider repository twice in one project is
    /// [`Error::Conflict`] on `repositories_provider_key`.
    #[instrument(name = "repositories.add", skip_all, fields(project_id = %input.project_id))]
    pub async fn add(&self, input: NewRepository) -> Result<repositories::Model> {
        let provider_xid =
            validate::optional_text("provider_xid", input.provider_xid.as_deref(), 255)?;
        if provider_xid.is_none() && input.provider != Provider::Upload {
            return Err(Error::invalid(
                "provider_xid",
                "is required for hosted repositories",
            ));
        }
        let clone_url = validate::optional_text("clone_url", input.clone_url.as_deref(), 2048)?;
        if clone_url.as_deref().is_some_and(carries_credentials) {
            return Err(Error::invalid("clone_url", "must not carry credentials"));
        }
        let now = now();
        let repository = repositories::ActiveModel {
            id: Set(Uuid::now_v7()),
            project_id: Set(input.project_id),
            provider: Set(input.provider.as_str().into()),
            provider_xid: Set(provider_xid),
            full_name: Set(validate::optional_text(
                "full_name",
                input.full_name.as_deref(),
                512,
            )?),
            clone_url: Set(clone_url),
            default_branch: Set(validate::optional_text(
                "default_branch",
                input.default_branch.as_deref(),
                255,
            )?),
            archived_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        Ok(repository.insert(self.db).await?)
    }

    /// The repository with this id.
    #[instrument(name = "repositories.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<repositories::Model> {
        repositories::Entity::find_by_id(id)
            .one(self.db)
            .await?
            .ok_or_else(|| Error::not_found("repository", id))
    }

    /// The project's repositories, oldest first.
    #[instrument(name = "repositories.list_for_project", skip(self))]
    pub async fn list_for_project(&self, project_id: Uuid) -> Result<Vec<repositories::Model>> {
        Ok(repositories::Entity::find()
            .filter(repositories::Column::ProjectId.eq(project_id))
            .order_by_asc(repositories::Column::Id)
            .all(self.db)
            .await?)
    }

    /// Every tracked copy of a provider's repository, for routing a webhook (several projects
    /// may track the same repository).
    #[instrument(name = "repositories.find_by_provider", skip(self))]
    pub async fn find_by_provider(
        &self,
        provider: Provider,
        provider_xid: &str,
    ) -> Result<Vec<repositories::Model>> {
        Ok(repositories::Entity::find()
            .filter(repositories::Column::Provider.eq(provider.as_str()))
            .filter(repositories::Column::ProviderXid.eq(provider_xid))
            .filter(repositories::Column::ArchivedAt.is_null())
            .order_by_asc(repositories::Column::Id)
            .all(self.db)
            .await?)
    }
}

/// `https://user:token@host/...` or `https://token@host/...`; `ssh://git@host/...` names a user
/// but carries no secret.
fn carries_credentials(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.password().is_some() || (!u.username().is_empty() && u.scheme().starts_with("http"))
    })
}
