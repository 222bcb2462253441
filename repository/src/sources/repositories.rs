use sea_orm::{FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{Provider, repositories};

use crate::context::cx::Cx;
use crate::context::principal::Table;
use crate::context::trail::{self, Action, Audit};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};

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
#[derive(Debug, Clone)]
pub struct Repositories<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Repositories<'_> {
    /// Adds a repository to a project in the session's reach and appends `repository.added`.
    /// The same provider repository twice in one project is [`Error::Conflict`] on
    /// `repositories_provider_key`.
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
        let full_name = validate::optional_text("full_name", input.full_name.as_deref(), 512)?;
        let default_branch =
            validate::optional_text("default_branch", input.default_branch.as_deref(), 255)?;
        self.cx.who.refuse_worker("add repositories")?;
        let now = now();
        let mut values: Vec<Value> = vec![
            Uuid::now_v7().into(),
            input.project_id.into(),
            input.provider.as_str().into(),
            provider_xid.into(),
            full_name.clone().into(),
            clone_url.into(),
            default_branch.into(),
            now.into(),
        ];
        let project = self
            .cx
            .who
            .reach(Table::Projects, "p", &mut values)
            .map(|reach| {
                format!("WHERE EXISTS (SELECT 1 FROM projects p WHERE p.id = $2 AND {reach})")
            })
            .unwrap_or_default();
        let unit = self.cx.db().unit().await?;
        let repository = repositories::Model::find_by_statement(statement(
            &unit,
            &format!(
                "INSERT INTO repositories (id, project_id, provider, provider_xid, full_name, \
                                               clone_url, default_branch, created_at, updated_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8 {project} RETURNING *"
            ),
            values,
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("project", input.project_id))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::RepositoryAdded, ("repository", repository.id))
                    .project(repository.project_id)
                    .data(json!({
                        "provider": repository.provider,
                        "full_name": full_name,
                    })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(repository)
    }

    /// The repository with this id.
    #[instrument(name = "repositories.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<repositories::Model> {
        self.select("x.id = $1", vec![id.into()])
            .await?
            .pop()
            .ok_or_else(|| Error::not_found("repository", id))
    }

    /// The project's repositories, oldest first.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "repositories.list_for_project", skip(self))]
    pub async fn list_for_project(&self, project_id: Uuid) -> Result<Vec<repositories::Model>> {
        self.cx
            .replica()
            .select::<repositories::Entity>(
                Table::Repositories,
                "x.project_id = $1",
                vec![project_id.into()],
                "ORDER BY x.id",
            )
            .await
    }

    /// Every tracked copy of a provider's repository in reach, for routing a webhook (several
    /// projects may track the same repository).
    #[instrument(name = "repositories.find_by_provider", skip(self))]
    pub async fn find_by_provider(
        &self,
        provider: Provider,
        provider_xid: &str,
    ) -> Result<Vec<repositories::Model>> {
        let provider_xid = validate::no_nul("provider_xid", provider_xid)?;
        self.select(
            "x.provider = $1 AND x.provider_xid = $2 AND x.archived_at IS NULL",
            vec![provider.as_str().into(), provider_xid.into()],
        )
        .await
    }

    /// The rows matching `filter` in reach, by id.
    async fn select(&self, filter: &str, values: Vec<Value>) -> Result<Vec<repositories::Model>> {
        self.cx
            .select::<repositories::Entity>(Table::Repositories, filter, values, "ORDER BY x.id")
            .await
    }
}

/// `https://user:token@host/...` or `https://token@host/...`; `ssh://git@host/...` names a user
/// but carries no secret.
fn carries_credentials(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.password().is_some() || (!u.username().is_empty() && u.scheme().starts_with("http"))
    })
}
