//! Leader leases (`leader_leases`): which process runs a singleton job, such as
//! `vega-admin maintain`, until when. The system only.
//!
//! Holding is one upsert on both engines: insert the row, or take it over when it is ours or
//! has expired. A leader renews well before expiry; when it dies, any standby takes over once
//! the lease runs out, so the gap is at most one lease.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use tracing::instrument;

use crate::context::cx::Cx;
use crate::db::sql::{now, statement};
use crate::db::validate;
use crate::error::{Error, Result};

/// The `leader_leases` table.
#[derive(Debug, Clone)]
pub struct LeaderLeases<'a> {
    pub(crate) cx: Cx<'a>,
}

impl LeaderLeases<'_> {
    /// Takes or renews the lease `name` for `holder` for `ttl`; true when `holder` holds it
    /// afterwards, false when another holder's lease is still running.
    #[instrument(name = "leases.hold", skip(self))]
    pub async fn hold(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.cx.who.require_system("hold leader leases")?;
        let name = validate::text("name", name, 1, 100)?;
        let holder = validate::text("holder", holder, 1, 200)?;
        let ttl = chrono::Duration::from_std(ttl)
            .ok()
            .filter(|t| *t > chrono::Duration::zero() && *t <= chrono::Duration::days(1))
            .ok_or_else(|| Error::invalid("ttl", "must be longer than zero and at most a day"))?;
        let db = self.cx.db();
        let now = now();
        let held = db
            .query_one_raw(statement(
                db,
                "INSERT INTO leader_leases (name, holder, acquired_at, expires_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET \
                    acquired_at = CASE WHEN leader_leases.holder = excluded.holder \
                                       THEN leader_leases.acquired_at ELSE excluded.acquired_at END, \
                    holder = excluded.holder, expires_at = excluded.expires_at \
                  WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= $3 \
                 RETURNING holder",
                [name.into(), holder.into(), now.into(), (now + ttl).into()],
            ))
            .await?;
        Ok(held.is_some())
    }

    /// Gives the lease up if `holder` holds it, so a standby can take over at once.
    #[instrument(name = "leases.release", skip(self))]
    pub async fn release(&self, name: &str, holder: &str) -> Result<()> {
        self.cx.who.require_system("release leader leases")?;
        let db = self.cx.db();
        db.execute_raw(statement(
            db,
            "DELETE FROM leader_leases WHERE name = $1 AND holder = $2",
            [name.into(), holder.into()],
        ))
        .await?;
        Ok(())
    }

    /// Who holds the lease now, if anyone does.
    #[instrument(name = "leases.holder", skip(self))]
    pub async fn holder(&self, name: &str) -> Result<Option<String>> {
        self.cx.who.require_system("read leader leases")?;
        let db = self.cx.db();
        let row = db
            .query_one_raw(statement(
                db,
                "SELECT holder FROM leader_leases WHERE name = $1 AND expires_at > $2",
                [name.into(), now().into()],
            ))
            .await?;
        Ok(row.map(|r| r.try_get("", "holder")).transpose()?)
    }
}
