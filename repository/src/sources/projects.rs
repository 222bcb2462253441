use chrono::{DateTime, FixedOffset};
use sea_orm::{FromQueryResult, Value};
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;
use vega_entity::projects;

use crate::context::cx::Cx;
use crate::context::principal::{Table, and_reach};
use crate::context::trail::{self, Action, Audit};
use crate::db::page::{Page, limit_clause, page_size};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};
use crate::findings::reads::SeverityCounts;
use crate::objects::cascade;

/// Input for [`Projects::create`].
#[derive(Debug, Clone)]
pub struct NewProject {
    /// The owning (billing) user.
    pub owner_id: Uuid,
    /// Display name, 1 to 255 characters.
    pub name: String,
    /// URL slug, unique per owner: lower-case letters, digits and hyphens.
    pub slug: String,
    /// Optional description, up to 2,000 characters.
    pub description: Option<String>,
}

/// A row of the project list: the project with its latest completed scan's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectSummary {
    /// The project's id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Slug.
    pub slug: String,
    /// The latest completed scan, if any.
    pub latest_scan: Option<LatestScan>,
}

/// The part of [`ProjectSummary`] that comes from the project's latest scan: the latest full
/// scan of a repository's default branch (scans of other refs never replace it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LatestScan {
    /// The scan's id.
    pub id: Uuid,
    /// Its status.
    pub status: String,
    /// When it finished.
    pub finished_at: Option<DateTime<FixedOffset>>,
    /// Its open findings by severity (confirmed ones included, dismissed ones not), as of
    /// its completion.
    pub counts: SeverityCounts,
    /// The findings it saw that a person (or the tool's suppression) had dismissed.
    pub dismissed: i64,
}

#[derive(FromQueryResult)]
struct SummaryRow {
    id: Uuid,
    name: String,
    slug: String,
    scan_id: Option<Uuid>,
    scan_status: Option<String>,
    finished_at: Option<DateTime<FixedOffset>>,
    count_critical: Option<i32>,
    count_high: Option<i32>,
    count_medium: Option<i32>,
    count_low: Option<i32>,
    count_info: Option<i32>,
    count_unknown: Option<i32>,
    count_dismissed: Option<i32>,
}

impl From<SummaryRow> for ProjectSummary {
    fn from(r: SummaryRow) -> Self {
        let latest_scan = match (r.scan_id, r.scan_status) {
            (Some(id), Some(status)) => Some(LatestScan {
                id,
                status,
                finished_at: r.finished_at,
                counts: SeverityCounts {
                    critical: r.count_critical.unwrap_or_default().into(),
                    high: r.count_high.unwrap_or_default().into(),
                    medium: r.count_medium.unwrap_or_default().into(),
                    low: r.count_low.unwrap_or_default().into(),
                    info: r.count_info.unwrap_or_default().into(),
                    unknown: r.count_unknown.unwrap_or_default().into(),
                },
                dismissed: r.count_dismissed.unwrap_or_default().into(),
            }),
            _ => None,
        };
        ProjectSummary {
            id: r.id,
            name: r.name,
            slug: r.slug,
            latest_scan,
        }
    }
}

/// The `projects` table.
#[derive(Debug, Clone)]
pub struct Projects<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Projects<'_> {
    /// Creates a project and appends `project.created`. A slug the owner already uses is
    /// [`Error::Conflict`] on `projects_owner_slug_key`; an owner out of the session's reach
    /// is [`Error::NotFound`] (the system gets a conflict on `projects_owner_id_fkey` for an
    /// owner that does not exist).
    #[instrument(name = "projects.create", skip_all, fields(owner_id = %input.owner_id))]
    pub async fn create(&self, input: NewProject) -> Result<projects::Model> {
        let name = validate::text("name", &input.name, 1, 255)?;
        let slug = validate::slug("slug", &input.slug)?;
        let description =
            validate::optional_text("description", input.description.as_deref(), 2000)?;
        self.cx.who.refuse_worker("create projects")?;
        let now = now();
        let mut values: Vec<Value> = vec![
            Uuid::now_v7().into(),
            input.owner_id.into(),
            name.into(),
            slug.clone().into(),
            description.into(),
            now.into(),
        ];
        let owner = self
            .cx
            .who
            .reach(Table::Users, "u", &mut values)
            .map(|reach| {
                format!("WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = $2 AND {reach})")
            })
            .unwrap_or_default();
        let unit = self.cx.db().unit().await?;
        let project = projects::Model::find_by_statement(statement(
            &unit,
            &format!(
                "INSERT INTO projects (id, owner_id, name, slug, description, created_at, \
                                           updated_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $6 {owner} RETURNING *"
            ),
            values,
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("user", input.owner_id))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::ProjectCreated, ("project", project.id))
                    .project(project.id)
                    .data(json!({ "slug": slug })),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(project)
    }

    /// The project with this id.
    #[instrument(name = "projects.get", skip(self))]
    pub async fn get(&self, id: Uuid) -> Result<projects::Model> {
        self.cx
            .select_one::<projects::Entity>(Table::Projects, "x.id = $1", vec![id.into()])
            .await?
            .ok_or_else(|| Error::not_found("project", id))
    }

    /// The owner's project with this slug.
    #[instrument(name = "projects.get_by_slug", skip(self))]
    pub async fn get_by_slug(&self, owner_id: Uuid, slug: &str) -> Result<projects::Model> {
        let values = vec![
            owner_id.into(),
            validate::no_nul("slug", slug)?.to_owned().into(),
        ];
        self.cx
            .select_one::<projects::Entity>(
                Table::Projects,
                "x.owner_id = $1 AND x.slug = $2",
                values,
            )
            .await?
            .ok_or_else(|| Error::not_found("project", format!("{owner_id}/{slug}")))
    }

    /// Archives the project and appends `project.archived`: it leaves the project list; its
    /// data stays. Archiving twice keeps the first time.
    #[instrument(name = "projects.archive", skip(self))]
    pub async fn archive(&self, id: Uuid) -> Result<projects::Model> {
        self.cx.who.refuse_worker("archive projects")?;
        let mut values = vec![now().into(), id.into()];
        let reach = and_reach(self.cx.who, Table::Projects, "p", &mut values);
        let unit = self.cx.db().unit().await?;
        let archived = projects::Model::find_by_statement(statement(
            &unit,
            &format!(
                "UPDATE projects AS p SET archived_at = COALESCE(p.archived_at, $1), \
                            updated_at = $1 \
                      WHERE p.id = $2{reach} RETURNING *"
            ),
            values,
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("project", id))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![Audit::new(Action::ProjectArchived, ("project", id)).project(id)],
        )
        .await?;
        unit.commit().await?;
        Ok(archived)
    }

    /// Sets the project's own SLA days per severity, each from 1 to 3,650 (`None`: the global
    /// default, [`crate::SlaPolicy::DEFAULT`]), and appends `project.sla_changed`.
    #[instrument(name = "projects.set_sla", skip(self))]
    pub async fn set_sla(
        &self,
        id: Uuid,
        sla: crate::findings::sla::SlaPolicy,
    ) -> Result<projects::Model> {
        for (field, days) in [
            ("sla.critical", sla.critical),
            ("sla.high", sla.high),
            ("sla.medium", sla.medium),
            ("sla.low", sla.low),
        ] {
            if days.is_some_and(|d| !(1..=3650).contains(&d)) {
                return Err(Error::invalid(field, "must be between 1 and 3650 days"));
            }
        }
        self.cx.who.refuse_worker("change projects")?;
        let mut values: Vec<Value> = vec![
            now().into(),
            sla.critical.into(),
            sla.high.into(),
            sla.medium.into(),
            sla.low.into(),
            id.into(),
        ];
        let reach = and_reach(self.cx.who, Table::Projects, "p", &mut values);
        let unit = self.cx.db().unit().await?;
        let project = projects::Model::find_by_statement(statement(
            &unit,
            &format!(
                "UPDATE projects AS p SET sla_critical_days = $2, sla_high_days = $3, \
                            sla_medium_days = $4, sla_low_days = $5, updated_at = $1 \
                      WHERE p.id = $6{reach} RETURNING *"
            ),
            values,
        ))
        .one(&unit)
        .await?
        .ok_or_else(|| Error::not_found("project", id))?;
        trail::record(
            &unit,
            self.cx.who,
            vec![
                Audit::new(Action::ProjectSlaChanged, ("project", id))
                    .project(id)
                    .data(json!(sla)),
            ],
        )
        .await?;
        unit.commit().await?;
        Ok(project)
    }

    /// Deletes the project with everything it owns (repositories, snapshots, scans, findings,
    /// keys) and appends `project.deleted`; its objects are queued for `purge` in the same
    /// transaction.
    #[instrument(name = "projects.delete", skip(self))]
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        self.cx.who.refuse_worker("delete projects")?;
        cascade::delete(self.cx.clone(), &cascade::PROJECT, id).await
    }

    /// The owner's active projects, newest first, each with its latest scan's status and
    /// severity counts. One index range scan plus a primary-key probe per row: the counts were
    /// written once when each scan completed, never aggregated here.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "projects.list_for_owner", skip(self))]
    pub async fn list_for_owner(
        &self,
        owner_id: Uuid,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<ProjectSummary, Uuid>> {
        let cx = self.cx.replica();
        let limit = page_size(limit)?;
        // Two statement shapes rather than `($2 IS NULL OR p.id < $2)`, which a cached generic
        // plan cannot turn into an index bound.
        let mut values = vec![owner_id.into()];
        let cursor = match after {
            Some(after) => {
                values.push(after.into());
                "AND p.id < $2"
            }
            None => "",
        };
        let reach = and_reach(cx.who, Table::Projects, "p", &mut values);
        let sql = format!(
            "SELECT p.id, p.name, p.slug, s.id AS scan_id, s.status AS scan_status, \
                    s.finished_at, s.count_critical, s.count_high, s.count_medium, \
                    s.count_low, s.count_info, s.count_unknown, s.count_dismissed \
               FROM projects p LEFT JOIN scans s ON s.id = p.latest_scan_id \
              WHERE p.owner_id = $1 AND p.archived_at IS NULL {cursor}{reach} \
              ORDER BY p.id DESC {}",
            limit_clause(limit + 1)
        );
        let rows = SummaryRow::find_by_statement(statement(cx.db(), &sql, values))
            .all(cx.db())
            .await?;
        let rows = rows.into_iter().map(ProjectSummary::from).collect();
        Ok(Page::from_rows(rows, limit, |p: &ProjectSummary| p.id))
    }
}
