//! Deleting a project, scan or snapshot with its objects: in the delete's own transaction the
//! keys of the objects its cascade unregisters go to the `object_deletions` outbox, and
//! `purge` (`maintenance.rs`) deletes the objects, then the outbox rows, so it is safe to run
//! twice or concurrently.

use sea_orm::ConnectionTrait;
use uuid::Uuid;

use crate::context::cx::Cx;
use crate::context::principal::{Table, and_reach};
use crate::context::trail::{self, Action, Audit};
use crate::db::sql::{now, statement};
use crate::error::{Error, Result};

/// Queues one object for purge (an upload whose owner was deleted under it).
pub(crate) async fn enqueue_deletion(db: &impl ConnectionTrait, key: &str) -> Result<()> {
    db.execute_raw(statement(
        db,
        "INSERT INTO object_deletions (object_key, requested_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [key.into(), now().into()],
    ))
    .await?;
    Ok(())
}

/// What [`delete`] deletes: a project, scan or snapshot.
pub(crate) struct Deletion {
    pub table: &'static str,
    pub reach: Table,
    /// The `artifacts` column that points at the row.
    pub artifact_column: &'static str,
    /// The row's project: `id` for a project, `project_id` otherwise.
    pub project_column: &'static str,
    pub action: Action,
    pub subject: &'static str,
}

/// A project (and everything under it).
pub(crate) const PROJECT: Deletion = Deletion {
    table: "projects",
    reach: Table::Projects,
    artifact_column: "project_id",
    project_column: "id",
    action: Action::ProjectDeleted,
    subject: "project",
};

/// A scan and its objects (what it saw stays in its stream's runs, which its neighbours share).
pub(crate) const SCAN: Deletion = Deletion {
    table: "scans",
    reach: Table::Scans,
    artifact_column: "scan_id",
    project_column: "project_id",
    action: Action::ScanDeleted,
    subject: "scan",
};

/// A snapshot and its source archive.
pub(crate) const SNAPSHOT: Deletion = Deletion {
    table: "snapshots",
    reach: Table::Snapshots,
    artifact_column: "snapshot_id",
    project_column: "project_id",
    action: Action::SnapshotDeleted,
    subject: "snapshot",
};

/// Deletes a project, scan or snapshot row in the reach of `cx`'s principal, in one unit of
/// work: first queueing the keys of the objects its cascade is about to unregister, then the
/// row and its event. [`Error::NotFound`] when no such row is in reach.
pub(crate) async fn delete(cx: Cx<'_>, what: &Deletion, id: Uuid) -> Result<()> {
    let Deletion {
        table,
        artifact_column,
        project_column,
        ..
    } = what;
    let mut values = vec![id.into()];
    let reach = and_reach(cx.who, what.reach, "x", &mut values);
    let reachable = format!("SELECT x.id FROM {table} x WHERE x.id = $1{reach}");
    let unit = cx.db().unit().await?;
    let mut queued = values.clone();
    queued.push(now().into());
    let at = queued.len();
    unit.execute_raw(statement(
        &unit,
        &format!(
            "INSERT INTO object_deletions (object_key, requested_at) \
             SELECT object_key, ${at} FROM artifacts \
              WHERE {artifact_column} = $1 AND {artifact_column} IN ({reachable}) \
             ON CONFLICT DO NOTHING"
        ),
        queued,
    ))
    .await?;
    let deleted = unit
        .query_one_raw(statement(
            &unit,
            &format!(
                "DELETE FROM {table} WHERE id IN ({reachable}) RETURNING {project_column} AS project_id"
            ),
            values,
        ))
        .await?;
    let Some(deleted) = deleted else {
        unit.commit().await?;
        return Err(Error::not_found(what.subject, id));
    };
    let project_id: Uuid = deleted.try_get("", "project_id")?;
    trail::record(
        &unit,
        cx.who,
        vec![Audit::new(what.action, (what.subject, id)).project(project_id)],
    )
    .await?;
    unit.commit().await?;
    Ok(())
}
