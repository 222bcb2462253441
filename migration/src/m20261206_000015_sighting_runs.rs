//! Sightings as runs (ARCHITECTURE.md, "Sightings"): what each scan saw is no longer a row per
//! finding per scan (`finding_occurrences`) but, per stream of scans (a repository's scans of
//! one ref, kind and branch role, numbered in completion order), the ranges of that stream's
//! scans in which a finding was seen with the same severity and location. A rescan that sees
//! what the previous scan of its stream saw writes no sighting row, and the finding rows lose
//! the columns every scan rewrote (`last_seen_scan_id`, `last_seen_at`, `times_seen`): they
//! are derived from the runs.
//!
//! Existing occurrences become runs here, in one pass of window functions over them; the
//! scans that saw them are numbered by completion time within their stream. The new tables
//! carry the tenant key (`project_id`) first in their primary keys, as a sharded engine
//! needs (ARCHITECTURE.md, "Past one writer").

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::ddl::{
    add_columns, check, create, desc, drop, drop_columns, drop_columns_and_constraints, fk, index,
    one_of, severity, unique,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

const STREAMS: &str = "scan_streams";
const RUNS: &str = "sighting_runs";

/// Each succeeded scan's stream and its number there, in completion order.
const NUMBERING: &str = "\
SELECT s.id, st.id AS stream_id, \
       row_number() OVER (PARTITION BY st.id ORDER BY s.finished_at, s.id) AS seq \
  FROM scans s JOIN scan_streams st \
    ON st.repository_id = s.repository_id AND st.ref_name = COALESCE(s.ref_name, '') \
   AND st.kind = s.kind AND st.default_branch = s.tracks_default_branch \
 WHERE s.status = 'succeeded'";

/// Ranges of a stream's scans per finding, from its occurrences: consecutive stream numbers
/// with the same severity and location are one island (number minus rank within the
/// attributes), and the island that reaches the stream's latest scan stays open.
fn runs_from_occurrences() -> String {
    format!(
        "\
INSERT INTO sighting_runs (project_id, stream_id, finding_id, first_seq, last_seq, change, \
                           severity, file_path, start_line, end_line) \
SELECT i.project_id, i.stream_id, i.finding_id, MIN(i.seq), \
       CASE WHEN MAX(i.seq) = MAX(st.last_seq) THEN NULL ELSE MAX(i.seq) END, \
       MIN(i.first_change), i.severity, i.file_path, i.start_line, i.end_line \
  FROM (SELECT g.*, first_value(g.change) OVER ( \
                 PARTITION BY g.stream_id, g.finding_id, g.severity, g.file_path, \
                              g.start_line, g.end_line, g.island ORDER BY g.seq) AS first_change \
          FROM (SELECT o.project_id, n.stream_id, o.finding_id, n.seq, o.change, \
                       o.severity, o.file_path, o.start_line, o.end_line, \
                       n.seq - row_number() OVER ( \
                         PARTITION BY n.stream_id, o.finding_id, o.severity, o.file_path, \
                                      o.start_line, o.end_line ORDER BY n.seq) AS island \
                  FROM finding_occurrences o JOIN ({NUMBERING}) AS n ON n.id = o.scan_id) AS g) \
         AS i \
  JOIN scan_streams st ON st.project_id = i.project_id AND st.id = i.stream_id \
 GROUP BY i.project_id, i.stream_id, i.finding_id, i.severity, i.file_path, i.start_line, \
          i.end_line, i.island"
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The history is rewritten first, reading the old tables only; the existing tables
        // are altered at the end, so their exclusive locks are held for the shortest time
        // the one transaction allows (README, Migrations).
        create(manager, vec![streams(), runs()], Vec::new()).await?;
        let db = manager.get_connection();
        let new_id = match manager.get_database_backend() {
            DbBackend::Postgres => "gen_random_uuid()",
            _ => "randomblob(16)",
        };
        for sql in [
            format!(
                "INSERT INTO scan_streams (project_id, id, repository_id, ref_name, kind, \
                                           default_branch, last_seq) \
                 SELECT project_id, {new_id}, repository_id, COALESCE(ref_name, ''), kind, \
                        tracks_default_branch, COUNT(*) \
                   FROM scans WHERE status = 'succeeded' \
                  GROUP BY project_id, repository_id, COALESCE(ref_name, ''), kind, \
                           tracks_default_branch"
            ),
            runs_from_occurrences(),
        ] {
            db.execute_unprepared(&sql).await?;
        }
        add_columns(
            manager,
            "scans",
            vec![
                ColumnDef::new("stream_id").uuid().null().take(),
                ColumnDef::new("stream_seq").big_integer().null().take(),
            ],
        )
        .await?;
        db.execute_unprepared(&format!(
            "UPDATE scans SET stream_id = n.stream_id, stream_seq = n.seq \
               FROM ({NUMBERING}) AS n WHERE scans.id = n.id"
        ))
        .await?;
        manager
            .create_index(
                unique("scans", "stream")
                    .col("stream_id")
                    .col("stream_seq")
                    .if_not_exists()
                    .take(),
            )
            .await?;
        drop(manager, &["finding_occurrences"]).await?;
        manager
            .drop_index(
                Index::drop()
                    .name("findings_last_seen_scan_idx")
                    .table("findings")
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        drop_columns_and_constraints(
            manager,
            "findings",
            &["last_seen_scan_id", "last_seen_at", "times_seen"],
            &[
                "FOREIGN KEY (\"last_seen_scan_id\")",
                "CONSTRAINT \"findings_times_seen_check\"",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The dropped columns come back filled from the runs, without the foreign key and
        // check they had (SQLite adds neither to an existing table).
        add_columns(
            manager,
            "findings",
            vec![
                ColumnDef::new("last_seen_scan_id").uuid().null().take(),
                ColumnDef::new("last_seen_at")
                    .timestamp_with_time_zone()
                    .not_null()
                    .default("1970-01-01T00:00:00Z")
                    .take(),
                ColumnDef::new("times_seen")
                    .integer()
                    .not_null()
                    .default(1)
                    .take(),
            ],
        )
        .await?;
        create(
            manager,
            vec![occurrences()],
            vec![
                index("finding_occurrences", "finding")
                    .col("finding_id")
                    .col(desc("scan_id"))
                    .take(),
            ],
        )
        .await?;
        let db = manager.get_connection();
        for sql in [
            "INSERT INTO finding_occurrences (scan_id, finding_id, project_id, severity, change, \
                                              file_path, start_line, end_line) \
             SELECT s.id, r.finding_id, r.project_id, r.severity, \
                    CASE WHEN r.first_seq = s.stream_seq THEN r.change ELSE 'existing' END, \
                    r.file_path, r.start_line, r.end_line \
               FROM sighting_runs r JOIN scans s ON s.stream_id = r.stream_id \
                AND s.stream_seq >= r.first_seq \
                AND (r.last_seq IS NULL OR s.stream_seq <= r.last_seq) \
                AND s.project_id = r.project_id",
            "UPDATE findings SET \
                times_seen = MAX(1, (SELECT COUNT(*) FROM finding_occurrences o \
                                      WHERE o.finding_id = findings.id)), \
                last_seen_at = first_seen_at",
        ] {
            let sql = if manager.get_database_backend() == DbBackend::Postgres {
                sql.replace("MAX(1,", "GREATEST(1,")
            } else {
                sql.to_owned()
            };
            db.execute_unprepared(&sql).await?;
        }
        drop(manager, &[RUNS, STREAMS]).await?;
        manager
            .drop_index(
                Index::drop()
                    .name("scans_stream_key")
                    .table("scans")
                    .to_owned(),
            )
            .await?;
        drop_columns(manager, "scans", &["stream_id", "stream_seq"]).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// A repository's scans of one ref, kind and branch role: the order in which its runs are
/// numbered. `last_seq` is the number of its latest completed scan.
fn streams() -> TableCreateStatement {
    const T: &str = STREAMS;
    Table::create()
        .table(T)
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(ColumnDef::new("id").uuid().not_null())
        .col(ColumnDef::new("repository_id").uuid().not_null())
        // '' for a scan without a ref.
        .col(ColumnDef::new("ref_name").text().not_null())
        .col(ColumnDef::new("kind").text().not_null())
        .col(ColumnDef::new("default_branch").boolean().not_null())
        .col(ColumnDef::new("last_seq").big_integer().not_null())
        // SHA-256 of what the latest scan saw, when it came whole (`Scans::complete`): a
        // scan with the same digest changes nothing in the stream.
        .col(ColumnDef::new("last_digest").binary().null())
        .primary_key(Index::create().col("project_id").col("id"))
        .foreign_key(&mut fk(
            T,
            "repository_id",
            "repositories",
            ForeignKeyAction::Cascade,
        ))
        // The stream's identity; also the index behind the repository_id foreign key.
        .index(
            unique(T, "identity")
                .col("repository_id")
                .col("ref_name")
                .col("kind")
                .col("default_branch")
                .col("project_id"),
        )
        .check(check(T, "last_seq", "last_seq >= 1"))
        .take()
}

/// One finding seen by every scan of a stream numbered `first_seq` through `last_seq` (open,
/// `NULL`, while the stream's latest scan sees it) with one severity and location. `change`
/// is what the first of those scans made of it; the later ones saw it `existing`.
fn runs() -> TableCreateStatement {
    const T: &str = RUNS;
    Table::create()
        .table(T)
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(ColumnDef::new("stream_id").uuid().not_null())
        .col(ColumnDef::new("finding_id").uuid().not_null())
        .col(ColumnDef::new("first_seq").big_integer().not_null())
        .col(ColumnDef::new("last_seq").big_integer().null())
        .col(ColumnDef::new("change").text().not_null())
        .col(severity("severity"))
        .col(ColumnDef::new("file_path").text().null())
        .col(ColumnDef::new("start_line").integer().null())
        .col(ColumnDef::new("end_line").integer().null())
        // The one index: behind the stream's foreign key, "what scan N saw" in finding order,
        // the ingest's probe of a finding's open run (a finding has few runs per stream) and,
        // through its repository's few streams, a finding's sightings. No index on
        // finding_id or on the open runs costs every run written.
        .primary_key(
            Index::create()
                .col("project_id")
                .col("stream_id")
                .col("finding_id")
                .col("first_seq"),
        )
        .foreign_key(
            &mut ForeignKey::create()
                .name("sighting_runs_stream_fkey")
                .from(T, ("project_id", "stream_id"))
                .to(STREAMS, ("project_id", "id"))
                .on_delete(ForeignKeyAction::Cascade)
                .on_update(ForeignKeyAction::NoAction)
                .take(),
        )
        .check(check(
            T,
            "seq",
            "first_seq >= 1 AND (last_seq IS NULL OR last_seq >= first_seq)",
        ))
        .check(one_of(T, "change", &["new", "existing", "reopened"]))
        .check(check(T, "severity", "severity BETWEEN 0 AND 5"))
        .check(check(
            T,
            "lines",
            "start_line >= 1 AND end_line >= start_line",
        ))
        .take()
}

/// `finding_occurrences` as `m20261123_000003_findings` created it, for `down`: one row per
/// scan per finding.
fn occurrences() -> TableCreateStatement {
    const T: &str = "finding_occurrences";
    Table::create()
        .table(T)
        .col(ColumnDef::new("scan_id").uuid().not_null())
        .col(ColumnDef::new("finding_id").uuid().not_null())
        .col(ColumnDef::new("project_id").uuid().not_null())
        .col(severity("severity"))
        .col(ColumnDef::new("change").text().not_null())
        .col(ColumnDef::new("file_path").text().null())
        .col(ColumnDef::new("start_line").integer().null())
        .col(ColumnDef::new("end_line").integer().null())
        .primary_key(Index::create().col("scan_id").col("finding_id"))
        .foreign_key(&mut fk(T, "scan_id", "scans", ForeignKeyAction::Cascade))
        .foreign_key(&mut fk(
            T,
            "finding_id",
            "findings",
            ForeignKeyAction::Cascade,
        ))
        .check(check(T, "severity", "severity BETWEEN 0 AND 5"))
        .check(one_of(T, "change", &["new", "existing", "reopened"]))
        .check(check(
            T,
            "lines",
            "start_line >= 1 AND end_line >= start_line",
        ))
        .take()
}
