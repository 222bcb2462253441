//! Usage records: batched recording (1,000 per call) beside the same multi-row statement in raw
//! sqlx, batch for batch, and a billing-period sum beside hand-written SQL, call for call.

use std::time::{Duration, Instant};

use chrono::{Duration as Days, Utc};
use sea_orm::sqlx::{self, QueryBuilder};
use uuid::Uuid;
use vega_entity::Meter;
use vega_repository::{NewUsage, NewUser, Store};

use crate::reads::measure_pair;
use crate::{Result, Row, summary};

pub(crate) async fn run(
    store: &Store,
    url: &str,
    records: usize,
    iterations: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .test_before_acquire(false)
        .connect(url)
        .await?;
    let repo_account = store
        .users()
        .create(NewUser {
            email: "usage-repo@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let raw_account = store
        .users()
        .create(NewUser {
            email: "usage-raw@example.com".into(),
            display_name: None,
            is_admin: false,
        })
        .await?;
    let start = Utc::now().fixed_offset() - Days::days(30);
    let meters = [Meter::Scans, Meter::ScanSeconds, Meter::LocScanned];
    let record = |account: Uuid, i: usize| NewUsage {
        account_id: account,
        meter: meters[i % 3],
        quantity: (i % 100) as i64,
        occurred_at: start + Days::seconds(i as i64 % (30 * 86_400)),
        idempotency_key: format!("scan:{i}:{}", meters[i % 3]),
        project_id: None,
        scan_id: None,
        properties: serde_json::json!({}),
    };

    // Batch by batch, repository then raw, so both write into a table of the same size and
    // share whatever the disk does meanwhile.
    let (mut repo_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    for batch in (0..records).collect::<Vec<_>>().chunks(1000) {
        let started = Instant::now();
        store
            .usage()
            .record_many(batch.iter().map(|&i| record(repo_account.id, i)).collect())
            .await?;
        repo_time += started.elapsed();

        let started = Instant::now();
        let mut tx = raw.begin().await?;
        let now = Utc::now().fixed_offset();
        let mut q = QueryBuilder::new(
            "INSERT INTO usage_records (account_id, project_id, scan_id, meter, quantity, occurred_at, \
                                        received_at, idempotency_key, properties) ",
        );
        q.push_values(batch, |mut b, &i| {
            let r = record(raw_account.id, i);
            b.push_bind(r.account_id)
                .push_bind(r.project_id)
                .push_bind(r.scan_id)
                .push_bind(r.meter.as_str())
                .push_bind(r.quantity)
                .push_bind(r.occurred_at)
                .push_bind(now)
                .push_bind(r.idempotency_key)
                .push_bind(r.properties);
        });
        q.push(" ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING id, account_id, idempotency_key");
        q.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        raw_time += started.elapsed();
    }
    let base = summary(
        "usage: raw multi-row INSERT, 1,000 per statement",
        records,
        &[raw_time],
        None,
    );
    rows.push(summary(
        "usage: record_many, 1,000 per call",
        records,
        &[repo_time],
        Some(&base),
    ));
    rows.push(base);

    let (from, to) = (start + Days::days(7), start + Days::days(21));
    let (raw_sum, repo_sum) = measure_pair(
        iterations,
        || async {
            sqlx::query(
                "SELECT meter, CAST(SUM(quantity) AS BIGINT) AS total FROM usage_records \
                  WHERE account_id = $1 AND occurred_at >= $2 AND occurred_at < $3 GROUP BY meter ORDER BY meter",
            )
            .bind(repo_account.id)
            .bind(from)
            .bind(to)
            .fetch_all(&raw)
            .await?;
            Ok(())
        },
        || async {
            store.usage().totals(repo_account.id, from, to).await?;
            Ok(())
        },
    )
    .await?;
    let base = summary("usage: period sum, raw SQL", 1, &raw_sum, None);
    rows.push(summary(
        "usage: period sum, repository totals",
        1,
        &repo_sum,
        Some(&base),
    ));
    rows.push(base);
    Ok(())
}
