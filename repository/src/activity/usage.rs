use chrono::{DateTime, FixedOffset};
use sea_orm::{ConnectionTrait, FromQueryResult, QueryResult, Value};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{Meter, usage_records};

use crate::context::cx::Cx;
use crate::context::principal::{Table, and_reach};
use crate::db::connection::retry_conflicts;
use crate::db::sql::{array, is_postgres, now, statement};
use crate::db::validate;
use crate::error::{Error, Result};

/// Input for [`Usage::record`].
#[derive(Debug, Clone)]
pub struct NewUsage {
    /// The billing account (a user).
    pub account_id: Uuid,
    /// What is metered.
    pub meter: Meter,
    /// How much, in the meter's base unit (never negative: corrections are new records).
    pub quantity: i64,
    /// When it happened (may be in the past).
    pub occurred_at: DateTime<FixedOffset>,
    /// Identifies this increment: recording the same key twice records it once. Build it from
    /// what makes the increment unique, e.g. `scan:{scan_id}:seconds`.
    pub idempotency_key: String,
    /// The project concerned.
    pub project_id: Option<Uuid>,
    /// The scan concerned.
    pub scan_id: Option<Uuid>,
    /// Dimensions (scanner, plan, ...).
    pub properties: serde_json::Value,
}

/// What [`Usage::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new record, with its id.
    Inserted(i64),
    /// The key was already recorded with the same meter and quantity; nothing was written.
    Duplicate,
}

/// A meter's total over a period.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult, serde::Serialize)]
pub struct MeterTotal {
    /// The meter (as stored).
    pub meter: String,
    /// The sum of its quantities.
    pub total: i64,
}

/// The `usage_records` table: append-only metered increments.
#[derive(Debug, Clone)]
pub struct Usage<'a> {
    pub(crate) cx: Cx<'a>,
}

impl Usage<'_> {
    /// Records an increment once per `(account_id, idempotency_key)`. Replaying the same key
    /// returns [`Recorded::Duplicate`]; reusing a key for a different meter or quantity is
    /// [`Error::Conflict`], because one of the two callers is wrong.
    #[instrument(name = "usage.record", skip_all, fields(account_id = %input.account_id, meter = %input.meter))]
    pub async fn record(&self, input: NewUsage) -> Result<Recorded> {
        let input = validated(input, "")?;
        self.cx.who.require_worker("record usage")?;
        let inserted = self
            .cx
            .db()
            .query_one_raw(statement(
                self.cx.db(),
                "INSERT INTO usage_records (account_id, project_id, scan_id, meter, quantity, \
                                            occurred_at, received_at, idempotency_key, properties) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING id",
                [
                    input.account_id.into(),
                    input.project_id.into(),
                    input.scan_id.into(),
                    input.meter.as_str().into(),
                    input.quantity.into(),
                    input.occurred_at.into(),
                    now().into(),
                    input.idempotency_key.clone().into(),
                    input.properties.clone().into(),
                ],
            ))
            .await?;
        match inserted {
            Some(row) => Ok(Recorded::Inserted(row.try_get("", "id")?)),
            None => duplicate_or_conflict(self.cx.db(), &input).await,
        }
    }

    /// Records many increments in one transaction (1,000 per statement), each with the
    /// semantics of [`Usage::record`]: the result at position *i* says what happened to input
    /// *i*. A key reused with a different meter or quantity (in the batch or against what is
    /// stored) is [`Error::Conflict`] and records nothing.
    #[instrument(name = "usage.record_many", skip_all, fields(records = inputs.len()))]
    pub async fn record_many(&self, inputs: Vec<NewUsage>) -> Result<Vec<Recorded>> {
        let mut rows = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            rows.push(validated(input, &format!("records[{i}]."))?);
        }
        self.cx.who.require_worker("record usage")?;
        if !self.cx.db().owns_transactions() {
            return self.record_many_once(&rows).await;
        }
        // Two batches that share keys in different orders can deadlock on each other's
        // uncommitted inserts; a rerun decides every row again, so it is safe to repeat.
        retry_conflicts("usage.record_many", || self.record_many_once(&rows)).await
    }

    async fn record_many_once(&self, rows: &[NewUsage]) -> Result<Vec<Recorded>> {
        let received = now();
        let txn = self.cx.db().unit().await?;
        let mut results = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(1000) {
            let inserted = insert_chunk(&txn, received, chunk).await?;
            let mut ids = std::collections::HashMap::with_capacity(inserted.len());
            for row in &inserted {
                let key: (Uuid, String) = (
                    row.try_get("", "account_id")?,
                    row.try_get("", "idempotency_key")?,
                );
                ids.insert(key, row.try_get::<i64>("", "id")?);
            }
            for r in chunk {
                match ids.remove(&(r.account_id, r.idempotency_key.clone())) {
                    Some(id) => results.push(Recorded::Inserted(id)),
                    // A replay (or a key repeated in the batch): compare with what is stored.
                    None => results.push(duplicate_or_conflict(&txn, r).await?),
                }
            }
        }
        txn.commit().await?;
        Ok(results)
    }

    /// Each meter's total for an account over `[from, to)` of occurrence time (served by the
    /// `(account_id, meter, occurred_at, quantity)` index alone).
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "usage.totals", skip(self))]
    pub async fn totals(
        &self,
        account_id: Uuid,
        from: DateTime<FixedOffset>,
        to: DateTime<FixedOffset>,
    ) -> Result<Vec<MeterTotal>> {
        let cx = self.cx.replica();
        let from = validate::timestamp("from", from)?;
        let to = validate::timestamp("to", to)?;
        if to <= from {
            return Err(Error::invalid("to", "must be after from"));
        }
        let mut values = vec![account_id.into(), from.into(), to.into()];
        let reach = and_reach(cx.who, Table::Usage, "u", &mut values);
        // CAST: Postgres sums bigint into numeric.
        let mut totals = MeterTotal::find_by_statement(statement(
            cx.db(),
            &format!(
                "SELECT u.meter, CAST(SUM(u.quantity) AS BIGINT) AS total FROM usage_records u \
                  WHERE u.account_id = $1 AND u.occurred_at >= $2 AND u.occurred_at < $3{reach} \
                  GROUP BY u.meter"
            ),
            values,
        ))
        .all(cx.db())
        .await?;
        // Sorted here, by bytes: `ORDER BY` follows the database's collation, and under
        // en_US (RDS's default) `scan_seconds` sorts after `scans`, under C and SQLite before.
        totals.sort_by(|a, b| a.meter.cmp(&b.meter));
        Ok(totals)
    }
}

/// Inserts a chunk of validated records, skipping keys already recorded; returns the rows it
/// inserted (`id`, `account_id`, `idempotency_key`).
async fn insert_chunk(
    txn: &impl ConnectionTrait,
    received: DateTime<FixedOffset>,
    chunk: &[NewUsage],
) -> Result<Vec<QueryResult>> {
    const COLUMNS: &str = "account_id, project_id, scan_id, meter, quantity, occurred_at, \
                           received_at, idempotency_key, properties";
    const ON_CONFLICT: &str = "ON CONFLICT (account_id, idempotency_key) DO NOTHING \
                               RETURNING id, account_id, idempotency_key";
    if is_postgres(txn) {
        // One array per column, so the statement is planned once per shape rather than parsed
        // with 8,000 parameters; arrays carry no NULLs, so absent ids travel as the nil UUID,
        // which validation refuses as an input.
        let optional = |id: Option<Uuid>| id.unwrap_or_default();
        let values: Vec<Value> = vec![
            received.into(),
            array(chunk, |r| r.account_id),
            array(chunk, |r| optional(r.project_id)),
            array(chunk, |r| optional(r.scan_id)),
            array(chunk, |r| r.meter.as_str().to_owned()),
            array(chunk, |r| r.quantity),
            array(chunk, |r| r.occurred_at),
            array(chunk, |r| r.idempotency_key.clone()),
            array(chunk, |r| r.properties.clone()),
            Uuid::nil().into(),
        ];
        let sql = format!(
            "INSERT INTO usage_records ({COLUMNS}) \
             SELECT u.account_id, NULLIF(u.project_id, $10), NULLIF(u.scan_id, $10), u.meter, \
                    u.quantity, u.occurred_at, $1, u.idempotency_key, u.properties \
               FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::int8[], \
                           $7::timestamptz[], $8::text[], $9::jsonb[]) \
                    AS u(account_id, project_id, scan_id, meter, quantity, occurred_at, \
                         idempotency_key, properties) \
             {ON_CONFLICT}"
        );
        return Ok(txn.query_all_raw(statement(txn, &sql, values)).await?);
    }
    let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 8 + 1);
    values.push(received.into());
    let mut tuples = Vec::with_capacity(chunk.len());
    for (i, r) in chunk.iter().enumerate() {
        let b = 1 + i * 8;
        tuples.push(format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, $1, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8
        ));
        values.extend([
            r.account_id.into(),
            r.project_id.into(),
            r.scan_id.into(),
            r.meter.as_str().into(),
            r.quantity.into(),
            r.occurred_at.into(),
            r.idempotency_key.clone().into(),
            r.properties.clone().into(),
        ]);
    }
    let sql = format!(
        "INSERT INTO usage_records ({COLUMNS}) VALUES {} {ON_CONFLICT}",
        tuples.join(", ")
    );
    Ok(txn.query_all_raw(statement(txn, &sql, values)).await?)
}

fn validated(mut input: NewUsage, prefix: &str) -> Result<NewUsage> {
    if input.quantity < 0 {
        return Err(Error::invalid(
            &format!("{prefix}quantity"),
            "must not be negative; record a correction instead",
        ));
    }
    for (field, id) in [("project_id", input.project_id), ("scan_id", input.scan_id)] {
        if id.is_some_and(|id| id.is_nil()) {
            return Err(Error::invalid(
                &format!("{prefix}{field}"),
                "must not be the nil UUID; leave it out instead",
            ));
        }
    }
    validate::json(&format!("{prefix}properties"), &input.properties)?;
    input.occurred_at = validate::timestamp(&format!("{prefix}occurred_at"), input.occurred_at)?;
    input.idempotency_key = validate::text(
        &format!("{prefix}idempotency_key"),
        &input.idempotency_key,
        1,
        100,
    )?;
    Ok(input)
}

/// An increment whose key was already recorded: a replay when meter and quantity match, a
/// caller error otherwise.
async fn duplicate_or_conflict(db: &impl ConnectionTrait, input: &NewUsage) -> Result<Recorded> {
    let existing = usage_records::Model::find_by_statement(statement(
        db,
        "SELECT * FROM usage_records WHERE account_id = $1 AND idempotency_key = $2",
        [
            input.account_id.into(),
            input.idempotency_key.clone().into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| Error::not_found("usage record", &input.idempotency_key))?;
    if existing.meter == input.meter.as_str() && existing.quantity == input.quantity {
        Ok(Recorded::Duplicate)
    } else {
        Err(Error::Conflict {
            constraint: "usage_records_idempotency_key".into(),
            message: format!(
                "key {:?} already recorded {} {} (not {} {})",
                input.idempotency_key,
                existing.quantity,
                existing.meter,
                input.quantity,
                input.meter
            ),
        })
    }
}
