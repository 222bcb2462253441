use chrono::{DateTime, FixedOffset};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, Value};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{ActorType, events};

use crate::db::Db;
use crate::page::{Page, limit_clause, page_size};
use crate::store::{now, statement};
use crate::{Error, Result, validate};

/// Input for [`Events::append`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened, e.g. `scan.completed`, `api_key.revoked` (up to 64 characters).
    pub action: String,
    /// Who did it.
    pub actor_type: ActorType,
    /// The acting user, if a user.
    pub actor_user_id: Option<Uuid>,
    /// The acting API key, if a key.
    pub actor_api_key_id: Option<Uuid>,
    /// Who it was at the time (email, key prefix, worker id): kept after they are gone.
    pub actor_label: String,
    /// The project concerned.
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
#[derive(Debug, Clone, Copy)]
pub struct Events<'a> {
    pub(crate) db: &'a Db,
}

impl Events<'_> {
    /// Appends an event.
    #[instrument(name = "events.append", skip_all, fields(action = %input.action))]
    pub async fn append(&self, input: NewEvent) -> Result<events::Model> {
        let action = validate::text("action", &input.action, 1, 64)?;
        let actor_label = validate::text("actor_label", &input.actor_label, 1, 320)?;
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
        let event = events::ActiveModel {
            created_at: Set(now()),
            project_id: Set(input.project_id),
            actor_type: Set(input.actor_type.as_str().into()),
            actor_user_id: Set(input.actor_user_id),
            actor_api_key_id: Set(input.actor_api_key_id),
            actor_label: Set(actor_label),
            action: Set(action),
            subject_type: Set(subject_type),
            subject_id: Set(subject_id),
            request_id: Set(validate::optional_text(
                "request_id",
                input.request_id.as_deref(),
                128,
            )?),
            ip_address: Set(validate::optional_text(
                "ip_address",
                input.ip_address.as_deref(),
                64,
            )?),
            data: Set(input.data),
            ..Default::default()
        };
        Ok(event.insert(self.db).await?)
    }

    /// A page of a feed, newest first.
    #[instrument(name = "events.page", skip(self))]
    pub async fn page(
        &self,
        feed: EventFeed,
        before: Option<EventCursor>,
        limit: u64,
    ) -> Result<Page<events::Model, EventCursor>> {
        let limit = page_size(limit)?;
        let (filter, mut values): (&str, Vec<Value>) = match feed {
            EventFeed::Project(id) => ("project_id = $1", vec![id.into()]),
            EventFeed::Actor(id) => ("actor_user_id = $1", vec![id.into()]),
            EventFeed::Subject(kind, id) => (
                "subject_type = $1 AND subject_id = $2",
                vec![validate::no_nul("subject", &kind)?.into(), id.into()],
            ),
        };
        let cursor = match before {
            Some(c) => {
                values.push(validate::timestamp("before.created_at", c.created_at)?.into());
                values.push(c.id.into());
                let n = values.len();
                format!("AND (created_at, id) < (${}, ${n})", n - 1)
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT * FROM events WHERE {filter} {cursor} ORDER BY created_at DESC, id DESC {}",
            limit_clause(limit + 1)
        );
        let rows = events::Entity::find()
            .from_raw_sql(statement(self.db, &sql, values))
            .all(self.db)
            .await?;
        Ok(Page::from_rows(rows, limit, |e: &events::Model| {
            EventCursor {
                created_at: e.created_at,
                id: e.id,
            }
        }))
    }
}
