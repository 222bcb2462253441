//! Who acts: a [`Principal`], and what it may reach.
//!
//! A principal is established once per request (`ApiKeys::authenticate`, `Users::principal`,
//! [`Principal::system`]) and handed to [`crate::Store::session`]. Its *reach* is the set of
//! rows it may see and change; every statement a session runs carries the reach as a
//! predicate of its own, so a row out of reach is never read, never written and reported as
//! [`crate::Error::NotFound`], exactly like a row that does not exist.

use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use sea_orm::Value;
use uuid::Uuid;
use vega_entity::ActorType;

use crate::error::{Error, Result};

/// Who acts in a session: whose rows it reaches, and the actor of the events it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    kind: PrincipalKind,
    label: Arc<str>,
    key_id: Option<Uuid>,
    scopes: Arc<[String]>,
    pub(crate) last_used_at: Option<DateTime<FixedOffset>>,
}

/// The kinds of principal, with what each reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// Vega itself and its operators' tools: everything.
    System,
    /// A user, through a user-wide key or a login: the projects it owns and all under them.
    User {
        /// The user.
        user_id: Uuid,
    },
    /// A key restricted to one project: that project and all under it.
    ProjectKey {
        /// The key's owner.
        user_id: Uuid,
        /// The one project it reaches.
        project_id: Uuid,
    },
    /// A scan worker's service credential: the scans it holds a lease on and what completing
    /// them needs (their project, repository, snapshot and artifacts). Only workers (and the
    /// system) claim, heartbeat, complete and fail scans.
    Worker {
        /// The credential.
        credential_id: Uuid,
    },
}

impl Principal {
    /// The system, acting as `label` (`"vega-admin"`, `"maintain"`): its events name it.
    pub fn system(label: &str) -> Self {
        Self::new(PrincipalKind::System, label, None, Vec::new(), None)
    }

    pub(crate) fn new(
        kind: PrincipalKind,
        label: &str,
        key_id: Option<Uuid>,
        scopes: Vec<String>,
        last_used_at: Option<DateTime<FixedOffset>>,
    ) -> Self {
        Self {
            kind,
            label: label.into(),
            key_id,
            scopes: scopes.into(),
            last_used_at,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// How events name it: an email, a key's display prefix, a worker's name, a tool.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The API key or worker credential it authenticated with, if any.
    pub fn key_id(&self) -> Option<Uuid> {
        self.key_id
    }

    /// The user it acts for, if any.
    pub fn user_id(&self) -> Option<Uuid> {
        match self.kind {
            PrincipalKind::User { user_id } | PrincipalKind::ProjectKey { user_id, .. } => {
                Some(user_id)
            }
            PrincipalKind::System | PrincipalKind::Worker { .. } => None,
        }
    }

    /// The key's permissions (`projects:write`, ...). Reach decides *which* rows; scopes,
    /// checked by the application, decide *what* a key may do with them. A login has none.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// True when the key carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// `"the system"`, `"a user"`, ...: for messages.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            PrincipalKind::System => "the system",
            PrincipalKind::User { .. } => "a user",
            PrincipalKind::ProjectKey { .. } => "a project key",
            PrincipalKind::Worker { .. } => "a worker",
        }
    }

    /// The actor columns of its events: type, user, key and label.
    pub(crate) fn actor(&self) -> (ActorType, Option<Uuid>, Option<Uuid>, &str) {
        let actor_type = match (self.kind, self.key_id) {
            (PrincipalKind::System, _) => ActorType::System,
            (PrincipalKind::Worker { .. }, _) => ActorType::Worker,
            (_, Some(_)) => ActorType::ApiKey,
            (_, None) => ActorType::User,
        };
        let key = match self.kind {
            PrincipalKind::Worker { .. } => None,
            _ => self.key_id,
        };
        (actor_type, self.user_id(), key, &self.label)
    }

    /// Refuses anyone but the system.
    pub(crate) fn require_system(&self, action: &'static str) -> Result<()> {
        match self.kind {
            PrincipalKind::System => Ok(()),
            _ => Err(self.forbidden(action)),
        }
    }

    /// Refuses anyone but a worker or the system; a worker's name is the only worker id it
    /// may claim and write under.
    pub(crate) fn require_worker(&self, action: &'static str) -> Result<Option<&str>> {
        match self.kind {
            PrincipalKind::System => Ok(None),
            PrincipalKind::Worker { .. } => Ok(Some(&self.label)),
            _ => Err(self.forbidden(action)),
        }
    }

    /// Refuses a worker: its reach is the scans it holds, not the projects' administration.
    pub(crate) fn refuse_worker(&self, action: &'static str) -> Result<()> {
        match self.kind {
            PrincipalKind::Worker { .. } => Err(self.forbidden(action)),
            _ => Ok(()),
        }
    }

    fn forbidden(&self, action: &'static str) -> Error {
        Error::Forbidden {
            action,
            principal: self.kind_name(),
        }
    }

    /// The reach of this principal over `table`'s rows aliased `alias`, as a predicate whose
    /// parameters are appended to `values`; `None` when it reaches every row. Every statement
    /// a session runs carries it, so scoping costs no second query.
    pub(crate) fn reach(
        &self,
        table: Table,
        alias: &str,
        values: &mut Vec<Value>,
    ) -> Option<String> {
        let mut bind = |value: Value| {
            values.push(value);
            format!("${}", values.len())
        };
        Some(match (self.kind, table) {
            (PrincipalKind::System, _) => return None,
            (PrincipalKind::User { user_id }, Table::Projects) => {
                format!("{alias}.owner_id = {}", bind(user_id.into()))
            }
            (PrincipalKind::User { user_id }, Table::Users) => {
                format!("{alias}.id = {}", bind(user_id.into()))
            }
            (PrincipalKind::User { user_id }, Table::ApiKeys) => {
                format!("{alias}.user_id = {}", bind(user_id.into()))
            }
            (PrincipalKind::User { user_id }, Table::Usage) => {
                format!("{alias}.account_id = {}", bind(user_id.into()))
            }
            (PrincipalKind::User { user_id }, Table::Events) => {
                let user = bind(user_id.into());
                format!(
                    "({alias}.actor_user_id = {user} OR EXISTS (SELECT 1 FROM projects reach_p \
                      WHERE reach_p.id = {alias}.project_id AND reach_p.owner_id = {user}))"
                )
            }
            (PrincipalKind::ProjectKey { project_id, .. }, Table::Projects) => {
                format!("{alias}.id = {}", bind(project_id.into()))
            }
            (PrincipalKind::ProjectKey { .. }, Table::Users | Table::ApiKeys) => "1 = 0".into(),
            (PrincipalKind::Worker { .. }, Table::Scans) => format!(
                "{alias}.status = 'running' AND {alias}.claimed_by = {}",
                bind(self.label().into())
            ),
            (PrincipalKind::Worker { .. }, Table::Projects) => {
                format!("{alias}.id IN ({})", running(&bind(self.label().into())))
            }
            _ => return self.project_reach(table, &format!("{alias}.project_id"), values),
        })
    }

    /// The reach over rows of `table` whose project is the SQL expression `project`: the
    /// row's `x.project_id`, or a parameter when the statement fixes the project. With a
    /// parameter the check is uncorrelated, one probe of one project row for the whole
    /// statement; correlated, it is a semi-join on the row's project, still never a hash of
    /// all an owner's projects.
    pub(crate) fn project_reach(
        &self,
        table: Table,
        project: &str,
        values: &mut Vec<Value>,
    ) -> Option<String> {
        let mut bind = |value: Value| {
            values.push(value);
            format!("${}", values.len())
        };
        Some(match self.kind {
            PrincipalKind::System => return None,
            PrincipalKind::User { user_id } => format!(
                "EXISTS (SELECT 1 FROM projects reach_p WHERE reach_p.id = {project} AND reach_p.owner_id = {})",
                bind(user_id.into())
            ),
            PrincipalKind::ProjectKey { project_id, .. } => {
                format!("{project} = {}", bind(project_id.into()))
            }
            PrincipalKind::Worker { .. } => match table {
                Table::Repositories | Table::Snapshots | Table::Artifacts => {
                    format!("{project} IN ({})", running(&bind(self.label().into())))
                }
                _ => "1 = 0".into(),
            },
        })
    }
}

/// The projects of the scans a worker runs under `name` (a bound parameter).
fn running(name: &str) -> String {
    format!("SELECT project_id FROM scans WHERE status = 'running' AND claimed_by = {name}")
}

/// The tables a reach predicate is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Users,
    ApiKeys,
    Projects,
    Repositories,
    Snapshots,
    Scans,
    Findings,
    Artifacts,
    Events,
    Usage,
}

impl Table {
    /// Its name in SQL.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::ApiKeys => "api_keys",
            Table::Projects => "projects",
            Table::Repositories => "repositories",
            Table::Snapshots => "snapshots",
            Table::Scans => "scans",
            Table::Findings => "findings",
            Table::Artifacts => "artifacts",
            Table::Events => "events",
            Table::Usage => "usage_records",
        }
    }
}

/// `AND <project reach>` (see [`Principal::project_reach`]), or nothing.
pub(crate) fn and_project_reach(
    who: &Principal,
    table: Table,
    project: &str,
    values: &mut Vec<Value>,
) -> String {
    who.project_reach(table, project, values)
        .map(|p| format!(" AND {p}"))
        .unwrap_or_default()
}

/// `AND <reach>` for a statement that already has a `WHERE`, or nothing.
pub(crate) fn and_reach(
    who: &Principal,
    table: Table,
    alias: &str,
    values: &mut Vec<Value>,
) -> String {
    who.reach(table, alias, values)
        .map(|p| format!(" AND {p}"))
        .unwrap_or_default()
}
