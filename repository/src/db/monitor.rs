//! The failure monitor: a task per store that asks the server, on a connection of its own,
//! whether it is still the live writer, and declares a failover ([`Health::fail_over`]) when
//! it is not. The AWS JDBC wrapper's enhanced failure monitoring is the model.
//!
//! Why a monitor: after a writer failover the old host is fenced and simply stops answering;
//! a proxy or load balancer in the path may still acknowledge packets, so neither TCP
//! keepalives nor a read on the socket ends a call. Left alone, every call in flight (and
//! every call that takes a pooled connection before anything fails) waits out its whole
//! statement deadline. The monitor sees it once, for everyone:
//!
//! - **silence**: a probe on its established connection unanswered within `probe_timeout`
//!   (a connection that breaks instead, as in a restart, only condemns the pool's old
//!   connections: the calls on them fail by themselves);
//! - **another server**: the endpoint, reconnected to every [`RECONNECT_EVERY`] probes (so a
//!   DNS switch is seen even while the old host still answers), now leads to a server with
//!   another address, port or start time;
//! - **a read-only server**: the writer's endpoint leads to a server in recovery.
//!
//! A connection that cannot be opened is not a verdict (a restart, or a full server, leaves
//! established connections working); the calls on them have their own deadlines.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, Connection, Row};
use vega_config::PoolOptions;

use crate::db::connection::Health;

/// The monitor reconnects after this many probes on one connection.
const RECONNECT_EVERY: u32 = 10;

const PROBE: &str = "SELECT concat_ws(' ', inet_server_addr(), inet_server_port(), \
                     pg_postmaster_start_time()) AS server, pg_is_in_recovery()::text AS recovering";

/// Starts the monitor of a Postgres pool; it ends when the pool's [`Health`] is dropped.
pub(crate) fn spawn(conn: &DatabaseConnection, health: &Arc<Health>, pool: &PoolOptions) {
    let options = conn.get_postgres_connection_pool().connect_options();
    let monitor = Monitor {
        options,
        health: Arc::downgrade(health),
        interval: pool.probe_interval,
        timeout: pool.probe_timeout,
    };
    tokio::spawn(monitor.run());
}

struct Monitor {
    options: Arc<PgConnectOptions>,
    health: Weak<Health>,
    interval: Duration,
    timeout: Duration,
}

/// What one probe found.
enum Seen {
    /// The server answered: who it is and whether it is in recovery.
    Server { id: String, read_only: bool },
    /// No connection could be opened: no verdict.
    Unreachable,
    /// The established connection did not answer in time.
    Silent,
    /// The established connection broke (a restart or a terminated backend): the calls on
    /// the old connections learn it from their own errors, so nothing is abandoned.
    Broken,
}

impl Monitor {
    async fn run(self) {
        let mut conn: Option<(PgConnection, u32)> = None;
        let mut known: Option<String> = None;
        loop {
            tokio::time::sleep(self.interval).await;
            let Some(health) = self.health.upgrade() else {
                return;
            };
            match self.probe(&mut conn).await {
                Seen::Server { id, read_only } => {
                    if read_only {
                        health.fail_over("the writer's endpoint leads to a read-only server");
                        known = None;
                        conn = None;
                    } else {
                        if known.as_ref().is_some_and(|k| *k != id) {
                            health.fail_over("the endpoint now leads to another server");
                        }
                        known = Some(id);
                    }
                }
                Seen::Silent => {
                    health.fail_over("the server did not answer the failure monitor's probe");
                    // Everything is condemned; the next server seen is the one to keep.
                    known = None;
                }
                Seen::Broken => {
                    health.condemn();
                    known = None;
                }
                Seen::Unreachable => {}
            }
        }
    }

    async fn probe(&self, slot: &mut Option<(PgConnection, u32)>) -> Seen {
        if slot
            .as_ref()
            .is_some_and(|(_, used)| *used >= RECONNECT_EVERY)
            && let Some((conn, _)) = slot.take()
        {
            // Bounded: a server that does not answer the goodbye is not waited for.
            let _ = tokio::time::timeout(self.timeout, conn.close()).await;
        }
        if slot.is_none() {
            match tokio::time::timeout(self.timeout, PgConnection::connect_with(&*self.options))
                .await
            {
                Ok(Ok(conn)) => *slot = Some((conn, 0)),
                Ok(Err(_)) | Err(_) => return Seen::Unreachable,
            }
        }
        let Some((conn, used)) = slot.as_mut() else {
            return Seen::Unreachable;
        };
        *used += 1;
        let answer = tokio::time::timeout(self.timeout, sqlx::raw_sql(PROBE).fetch_one(conn)).await;
        let row = match answer {
            Ok(Ok(row)) => row,
            Ok(Err(_)) => {
                *slot = None;
                return Seen::Broken;
            }
            Err(_) => {
                *slot = None;
                return Seen::Silent;
            }
        };
        let id = row.try_get::<String, _>("server").unwrap_or_default();
        let recovering = row.try_get::<String, _>("recovering").unwrap_or_default();
        Seen::Server {
            id,
            read_only: recovering == "true",
        }
    }
}
