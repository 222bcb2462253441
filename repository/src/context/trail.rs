//! The audit trail: every state-changing method appends its event in the same transaction as
//! the change, so the log holds exactly the work that committed. The catalog is [`Action`].

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use crate::context::principal::Principal;
use crate::db::sql::{now, statement};
use crate::error::Result;

macro_rules! catalog {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// The event catalog: what a state-changing method records, as `events.action`.
        /// Each event names its actor (the session's principal), its subject, and carries a
        /// small JSON of what changed, never a secret.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $($(#[$doc])* $variant,)*
        }

        impl Action {
            /// Every action, in catalog order.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            /// The stored name, `subject.verb`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }
        }
    };
}

catalog! {
    /// `users.create`.
    UserCreated = "user.created",
    /// `users.set_status`: `{"status"}`.
    UserStatusChanged = "user.status_changed",
    /// `projects.create`: `{"slug"}`.
    ProjectCreated = "project.created",
    /// `projects.archive`.
    ProjectArchived = "project.archived",
    /// `projects.delete`.
    ProjectDeleted = "project.deleted",
    /// `projects.set_sla`: the project's own SLA days per severity (`null`: the default).
    ProjectSlaChanged = "project.sla_changed",
    /// `repositories.add`: `{"provider", "full_name"}`.
    RepositoryAdded = "repository.added",
    /// `snapshots.create`: `{"repository_id", "commit_sha"}`.
    SnapshotCreated = "snapshot.created",
    /// `snapshots.delete`.
    SnapshotDeleted = "snapshot.deleted",
    /// `scans.enqueue`: `{"repository_id", "kind", "ref_name"}`.
    ScanEnqueued = "scan.enqueued",
    /// `scans.claim_next`, one per scan: `{"worker_id", "attempt"}`.
    ScanClaimed = "scan.claimed",
    /// `scans.complete`: `{"findings_total", "findings_new", "findings_fixed"}`.
    ScanCompleted = "scan.completed",
    /// `scans.fail`: `{"error_code"}`.
    ScanFailed = "scan.failed",
    /// `scans.cancel` of a queued scan, or `scans.acknowledge_cancel`.
    ScanCanceled = "scan.canceled",
    /// `scans.cancel` of a running scan: its worker is asked to stop.
    ScanCancelRequested = "scan.cancel_requested",
    /// `scans.rescue_expired`, one per scan: `{"status", "attempt"}`.
    ScanRescued = "scan.rescued",
    /// `scans.delete`.
    ScanDeleted = "scan.deleted",
    /// `scans.retry`: `{"attempt", "max_attempts"}`.
    ScanRetried = "scan.retried",
    /// `findings.dismiss`: `{"from", "reason", "comment", "until"}`.
    FindingDismissed = "finding.dismissed",
    /// `findings.reopen`: `{"from"}`.
    FindingReopened = "finding.reopened",
    /// `findings.confirm`: `{"from"}`.
    FindingConfirmed = "finding.confirmed",
    /// `findings.override_severity`: `{"from", "to", "reason"}`.
    FindingSeverityOverridden = "finding.severity_overridden",
    /// `findings.clear_severity_override`: `{"from", "to"}` (back to the tool's).
    FindingSeverityRestored = "finding.severity_restored",
    /// `findings.expire_dismissals`, by the system: the dismissal's expiry passed and the
    /// finding reopened. `{"reason", "until"}`.
    FindingDismissalExpired = "finding.dismissal_expired",
    /// `api_keys.issue` and the new key of `api_keys.rotate`: `{"name", "scopes", "project_id"}`.
    ApiKeyIssued = "api_key.issued",
    /// `api_keys.revoke` and the old key of `api_keys.rotate`: `{"reason"}`.
    ApiKeyRevoked = "api_key.revoked",
    /// `workers.issue_credential`: `{"name"}`.
    WorkerCredentialIssued = "worker_credential.issued",
    /// `workers.revoke_credential`.
    WorkerCredentialRevoked = "worker_credential.revoked",
    /// `artifacts.store_*`, when the object's row commits: `{"kind", "size_bytes"}`.
    ArtifactStored = "artifact.stored",
}

/// One event to append: what happened to which subject.
pub(crate) struct Audit {
    pub action: Action,
    pub project_id: Option<Uuid>,
    pub subject: (&'static str, Uuid),
    pub data: serde_json::Value,
}

impl Audit {
    pub(crate) fn new(action: Action, subject: (&'static str, Uuid)) -> Self {
        Self {
            action,
            project_id: None,
            subject,
            data: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    pub(crate) fn project(mut self, project_id: Uuid) -> Self {
        self.project_id = Some(project_id);
        self
    }

    pub(crate) fn project_opt(mut self, project_id: Option<Uuid>) -> Self {
        self.project_id = project_id;
        self
    }

    pub(crate) fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

/// The columns of `events` a statement fills when it logs the rows it changes itself, with an
/// `INSERT INTO events (EVENT_COLUMNS) SELECT created_at, project_id, <bind_actor>, subject
/// type, subject id, data FROM <its RETURNING>`: Postgres' one-round-trip form of [`record`].
pub(crate) const EVENT_COLUMNS: &str = "created_at, project_id, actor_type, actor_user_id, \
     actor_api_key_id, actor_label, action, subject_type, subject_id, data";

/// Binds `who`'s actor columns and `action` into `values` and returns their placeholders, for
/// the middle of an [`EVENT_COLUMNS`] row.
pub(crate) fn bind_actor(who: &Principal, action: Action, values: &mut Vec<Value>) -> String {
    let actor = bind_actor_columns(who, values);
    values.push(action.as_str().into());
    format!("{actor}, ${}", values.len())
}

/// Binds `who`'s four actor columns (type, user, key, label) into `values` and returns their
/// placeholders.
pub(crate) fn bind_actor_columns(who: &Principal, values: &mut Vec<Value>) -> String {
    let (actor_type, actor_user_id, actor_api_key_id, actor_label) = who.actor();
    let first = values.len() + 1;
    values.extend([
        actor_type.as_str().into(),
        actor_user_id.into(),
        actor_api_key_id.into(),
        actor_label.to_owned().into(),
    ]);
    crate::db::sql::placeholders(first, 4)
}

/// Columns of an appended event, in the order of [`record`]'s rows.
const PER_EVENT: usize = 5;

/// Appends `events` with `who` as their actor, in one multi-row statement on `db` (the
/// method's own transaction). Nothing for an empty list.
pub(crate) async fn record(
    db: &impl ConnectionTrait,
    who: &Principal,
    events: Vec<Audit>,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (actor_type, actor_user_id, actor_api_key_id, actor_label) = who.actor();
    let mut values: Vec<Value> = vec![
        now().into(),
        actor_type.as_str().into(),
        actor_user_id.into(),
        actor_api_key_id.into(),
        actor_label.to_owned().into(),
    ];
    let shared = values.len();
    let mut rows = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let p = |k: usize| format!("${}", shared + i * PER_EVENT + k);
        rows.push(format!(
            "($1, {}, $2, $3, $4, $5, {}, {}, {}, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5)
        ));
        values.extend([
            event.project_id.into(),
            event.action.as_str().into(),
            event.subject.0.into(),
            event.subject.1.into(),
            event.data.into(),
        ]);
    }
    db.execute_raw(statement(
        db,
        &format!(
            "INSERT INTO events (created_at, project_id, actor_type, actor_user_id, \
                                 actor_api_key_id, actor_label, action, subject_type, \
                                 subject_id, data) VALUES {}",
            rows.join(", ")
        ),
        values,
    ))
    .await?;
    Ok(())
}
