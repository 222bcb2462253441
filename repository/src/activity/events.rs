use chrono::{DateTime, FixedOffset};
use sea_orm::{FromQueryResult, Value};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::events;

use crate::context::cx::Cx;
use crate::context::principal::{Table, and_reach};
use crate::context::trail;
use crate::db::page::{Page, limit_clause, page_size};
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};

/// Input for [`Events::append`]: an event of the application's own, beside the catalog
/// ([`crate::Action`]) that repository methods write themselves. Its actor is the session's
/// principal.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened, e.g. `report.downloaded` (up to 64 characters).
    pub action: String,
    /// The project concerned (in the session's reach).
    pub project_id: Option<Uuid>,
    /// What it happened to: a type (`scan`, `finding`, ...) and an id.
    pub subject: Option<(String, Uuid)>,
    /// Correlation id of the request.
    pub request_id: Option<String>,
    /// Client address.
    pub ip_address: Option<String>,
    /// Small structured details (up to 16 KiB serialised).
    pub data: serde_json::Value,
}

/// The keyset cursor of event pages: newest first by `(created_at, id)`. Identity values are
/// assigned before commit, so they commit out of order; `id > n` would skip rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventCursor {
    /// The last row's time.
    pub created_at: DateTime<FixedOffset>,
    /// The last row's id.
    pub id: i64,
}

impl EventCursor {
    pub(crate) fn of(e: &events::Model) -> Self {
        Self {
            created_at: e.created_at,
            id: e.id,
        }
    }

    /// ` AND (e.created_at, e.id) <op> (…)` past this cursor (`<` newest first, `>` oldest
    /// first), binding its values; nothing without one.
    pub(crate) fn condition(
        after: Option<Self>,
        op: &str,
        values: &mut Vec<Value>,
    ) -> Result<String> {
        let Some(c) = after else {
            return Ok(String::new());
        };
        values.push(validate::timestamp("cursor.created_at", c.created_at)?.into());
        values.push(c.id.into());
        let n = values.len();
        Ok(format!(" AND (e.created_at, e.id) {op} (${}, ${n})", n - 1))
    }
}

/// Which events a page lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFeed {
    /// A project's activity.
    Project(Uuid),
    /// Everything that happened to one subject (a scan's timeline).
    Subject(String, Uuid),
    /// What one user did.
    Actor(Uuid),
}

/// The `events` table: the append-only activity and audit log.
#[derive(Debug, Clone)]
pub struct Events<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Events<'_> {
    /// Appends an event with the session's principal as its actor. A project out of reach is
    /// [`Error::NotFound`].
    #[instrument(name = "events.append", skip_all, fields(action = %input.action))]
    pub async fn append(&self, input: NewEvent) -> Result<events::Model> {
        let action = validate::text("action", &input.action, 1, 64)?;
        validate::json("data", &input.data)?;
        if serde_json::to_vec(&input.data).map_or(0, |v| v.len()) > 16 * 1024 {
            return Err(Error::invalid(
                "data",
                "must be at most 16 KiB; put large payloads in the blob store",
            ));
        }
        let (subject_type, subject_id) = match input.subject {
            Some((kind, id)) => (Some(validate::text("subject", &kind, 1, 64)?), Some(id)),
            None => (None, None),
        };
        let request_id = validate::optional_text("request_id", input.request_id.as_deref(), 128)?;
        let ip_address = validate::optional_text("ip_address", input.ip_address.as_deref(), 64)?;
        let mut values: Vec<Value> = vec![now().into(), input.project_id.into()];
        let actor = trail::bind_actor_columns(self.cx.who, &mut values);
        let n = values.len();
        values.extend([
            action.into(),
            subject_type.into(),
            subject_id.into(),
            request_id.into(),
            ip_address.into(),
            input.data.into(),
        ]);
        // The project's reach in the insert's own statement: an event of a project out of
        // reach inserts nothing.
        let project = match input.project_id {
            Some(_) => self
                .cx
                .who
                .reach(Table::Projects, "p", &mut values)
                .map(|reach| {
                    format!(" WHERE EXISTS (SELECT 1 FROM projects p WHERE p.id = $2 AND {reach})")
                })
                .unwrap_or_default(),
            None => String::new(),
        };
        let p = |k: usize| format!("${}", n + k);
        let sql = format!(
            "INSERT INTO events (created_at, project_id, actor_type, actor_user_id, \
                                 actor_api_key_id, actor_label, action, subject_type, \
                                 subject_id, request_id, ip_address, data) \
             SELECT $1, $2, {actor}, {}, {}, {}, {}, {}, {}{project} RETURNING *",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6)
        );
        events::Model::find_by_statement(statement(self.cx.db(), &sql, values))
            .one(self.cx.db())
            .await?
            .ok_or_else(|| Error::not_found("project", input.project_id.unwrap_or_default()))
    }

    /// A page of a feed, newest first.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "events.page", skip(self))]
    pub async fn page(
        &self,
        feed: EventFeed,
        before: Option<EventCursor>,
        limit: u64,
    ) -> Result<Page<events::Model, EventCursor>> {
        let cx = self.cx.replica();
        let limit = page_size(limit)?;
        let (filter, mut values): (&str, Vec<Value>) = match feed {
            EventFeed::Project(id) => ("e.project_id = $1", vec![id.into()]),
            EventFeed::Actor(id) => ("e.actor_user_id = $1", vec![id.into()]),
            EventFeed::Subject(kind, id) => (
                "e.subject_type = $1 AND e.subject_id = $2",
                vec![validate::no_nul("subject", &kind)?.into(), id.into()],
            ),
        };
        let cursor = EventCursor::condition(before, "<", &mut values)?;
        let reach = and_reach(cx.who, Table::Events, "e", &mut values);
        let sql = format!(
            "SELECT e.* FROM events e WHERE {filter} {cursor}{reach} \
              ORDER BY e.created_at DESC, e.id DESC {}",
            limit_clause(limit + 1)
        );
        let rows = events::Model::find_by_statement(statement(cx.db(), &sql, values))
            .all(cx.db())
            .await?;
        Ok(Page::from_rows(rows, limit, EventCursor::of))
    }
}
