//! What every repository holds: where its statements go (the pool, or a caller's
//! transaction) and who acts, with the one shape of every scoped read.

use sea_orm::{EntityTrait, FromQueryResult, Value};

use crate::context::principal::{Principal, Table, and_reach};
use crate::db::route::Conn;
use crate::db::sql::statement;
use crate::error::Result;

/// What every repository holds: where its statements go and who acts.
#[derive(Debug, Clone)]
pub(crate) struct Cx<'a> {
    db: Conn<'a>,
    pub who: &'a Principal,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(db: Conn<'a>, who: &'a Principal) -> Self {
        Self { db, who }
    }

    /// This context for a *replica read*: its statements may be served by the read replica
    /// (`db/replica.rs`). Only a method whose docs carry the *Replica read* marker takes it;
    /// a test holds the two together.
    pub(crate) fn replica(&self) -> Cx<'a> {
        Cx {
            db: self.db.replica(),
            who: self.who,
        }
    }

    /// The connection, for `statement`, `.one(...)` and `execute_raw`.
    pub(crate) fn db(&self) -> &Conn<'a> {
        &self.db
    }

    /// The rows of `table` (aliased `x`) that match `filter` and are in the principal's reach,
    /// followed by `tail` (`ORDER BY ...`, a limit): the one shape of every scoped read.
    pub(crate) async fn select<E: EntityTrait>(
        &self,
        table: Table,
        filter: &str,
        mut values: Vec<Value>,
        tail: &str,
    ) -> Result<Vec<E::Model>> {
        let reach = and_reach(self.who, table, "x", &mut values);
        let sql = format!(
            "SELECT x.* FROM {} x WHERE {filter}{reach} {tail}",
            table.name()
        );
        Ok(
            E::Model::find_by_statement(statement(&self.db, &sql, values))
                .all(&self.db)
                .await?,
        )
    }

    /// The one row of [`Cx::select`], if any.
    pub(crate) async fn select_one<E: EntityTrait>(
        &self,
        table: Table,
        filter: &str,
        values: Vec<Value>,
    ) -> Result<Option<E::Model>> {
        Ok(self.select::<E>(table, filter, values, "").await?.pop())
    }
}
