use chrono::{DateTime, FixedOffset};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{Meter, usage_records};

use crate::store::{now, statement};
use crate::{Error, Result, validate};

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
#[derive(Debug, Clone, Copy)]
pub struct Usage<'a> {
    pub(crate) db: &'a DatabaseConnection,
}

impl Usage<'_> {
    /// Records an increment once per `(account_id, idempotency_key)`. Replaying the same key
    /// returns [`Recorded::Duplicate`]; reusing a key for a different meter or quantity is
    /// [`Error::Conflict`], because one of the two callers is wrong.
    #[instrument(name = "usage.record", skip_all, fields(account_id = %input.account_id, meter = %input.meter))]
    pub async fn record(&self, input: NewUsage) -> Result<Recorded> {
        if input.quantity < 0 {
            return Err(Error::invalid(
                "quantity",
                "must not be negative; record a correction instead",
            ));
        }
        let key = validate::text("idempotency_key", &input.idempotency_key, 1, 100)?;
        let inserted = self
            .db
            .query_one_raw(statement(
                self.db,
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
                    key.clone().into(),
                    input.properties.into(),
                ],
            ))
            .await?;
        if let Some(row) = inserted {
            return Ok(Recorded::Inserted(row.try_get("", "id")?));
        }
        let existing = usage_records::Entity::find()
            .from_raw_sql(statement(
                self.db,
                "SELECT * FROM usage_records WHERE account_id = $1 AND idempotency_key = $2",
                [input.account_id.into(), key.into()],
            ))
            .one(self.db)
            .await?
            .ok_or_else(|| Error::not_found("usage record", &input.idempotency_key))?;
        if existing.meter == input.meter.as_str() && existing.quantity == input.quantity {
            Ok(Recorded::Duplicate)
        } else {
            Err(Error::Conflict {
                constraint: "usage_records_idempotency_key".into(),
                message: format!(
                    "key already recorded {} {} (not {} {})",
                    existing.quantity, existing.meter, input.quantity, input.meter
                ),
            })
        }
    }

    /// Each meter's total for an account over `[from, to)` of occurrence time (served by the
    /// `(account_id, meter, occurred_at, quantity)` index alone).
    #[instrument(name = "usage.totals", skip(self))]
    pub async fn totals(
        &self,
        account_id: Uuid,
        from: DateTime<FixedOffset>,
        to: DateTime<FixedOffset>,
    ) -> Result<Vec<MeterTotal>> {
        if to <= from {
            return Err(Error::invalid("to", "must be after from"));
        }
        // CAST: Postgres sums bigint into numeric.
        Ok(MeterTotal::find_by_statement(statement(
            self.db,
            "SELECT meter, CAST(SUM(quantity) AS BIGINT) AS total FROM usage_records \
              WHERE account_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
              GROUP BY meter ORDER BY meter",
            [account_id.into(), from.into(), to.into()],
        ))
        .all(self.db)
        .await?)
    }
}
