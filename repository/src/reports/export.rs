//! Exporting findings as a SARIF 2.1.0 log ([`Reports::export_scan`], [`Reports::export_open`]): one run per tool with its rules, then its results a
//! page at a time, so a log of any size is written in bounded memory.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tracing::instrument;
use uuid::Uuid;
use vega_entity::{FindingStatus, Severity, findings, scans};

use crate::context::cx::Cx;
use crate::context::principal::{Table, and_reach};
use crate::db::page::limit_clause;
use crate::db::sql::{hex, statement};
use crate::error::{Error, Result};
use crate::findings::runs::SEEN_BY_SCAN_1;
use crate::reports::import::Reports;

/// Results per page read.
const PAGE: u64 = 1000;

/// The schema GitHub code scanning and the spec name.
const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// What a URI reference may not carry unescaped in a path.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Which findings a log holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// What one scan saw, at the locations it saw them.
    Scan(Uuid),
    /// A repository's open findings on its default branch.
    OpenOnDefault(Uuid),
}

impl Source {
    /// FROM, WHERE (with `$1`), the key pages follow, and the location columns.
    fn parts(self) -> (&'static str, &'static str, &'static str, &'static str, Uuid) {
        match self {
            Source::Scan(id) => (
                "sighting_runs o JOIN findings f ON f.id = o.finding_id",
                SEEN_BY_SCAN_1,
                "o.finding_id",
                "o.file_path AS at_path, o.start_line AS at_start, o.end_line AS at_end",
                id,
            ),
            Source::OpenOnDefault(id) => (
                "findings f",
                "f.repository_id = $1 AND f.status = 'open' AND f.on_default_branch",
                "f.id",
                "f.file_path AS at_path, f.start_line AS at_start, f.end_line AS at_end",
                id,
            ),
        }
    }
}

#[derive(FromQueryResult)]
struct RuleRow {
    scanner: String,
    rule_id: String,
    severity: i16,
    title: String,
    cwe: Option<i32>,
}

pub(crate) async fn export(
    cx: Cx<'_>,
    source: Source,
    out: impl AsyncWrite + Unpin + Send,
) -> Result<u64> {
    let (from, filter, key, location, id) = source.parts();
    let mut values: Vec<Value> = vec![id.into()];
    let reach = and_reach(cx.who, Table::Findings, "f", &mut values);
    let rules = RuleRow::find_by_statement(statement(
        cx.db(),
        &format!(
            "SELECT f.scanner, f.rule_id, MAX(f.severity) AS severity, MIN(f.title) AS title, \
                    MAX(f.cwe) AS cwe \
               FROM {from} WHERE {filter}{reach} \
              GROUP BY f.scanner, f.rule_id ORDER BY f.scanner, f.rule_id"
        ),
        values,
    ))
    .all(cx.db())
    .await?;
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    out.write_all(
        format!("{{\"$schema\":\"{SCHEMA}\",\"version\":\"2.1.0\",\"runs\":[").as_bytes(),
    )
    .await
    .map_err(write_error)?;
    let mut written = 0;
    let mut tools = rules.chunk_by(|a, b| a.scanner == b.scanner).peekable();
    while let Some(tool_rules) = tools.next() {
        let scanner = &tool_rules[0].scanner;
        let descriptors: Vec<_> = tool_rules.iter().map(rule).collect();
        let run = json!({
            "tool": { "driver": {
                "name": scanner,
                "rules": descriptors,
            }},
            "columnKind": "utf16CodeUnits",
        });
        // The run's object without its closing brace, then its results.
        let head = run.to_string();
        out.write_all(&head.as_bytes()[..head.len() - 1])
            .await
            .map_err(write_error)?;
        out.write_all(b",\"results\":[")
            .await
            .map_err(write_error)?;
        let index = |rule_id: &str| tool_rules.iter().position(|r| r.rule_id == rule_id);
        let mut after: Option<Uuid> = None;
        let mut first = true;
        loop {
            let mut values: Vec<Value> = vec![id.into(), scanner.clone().into()];
            let cursor = match after {
                Some(after) => {
                    values.push(after.into());
                    format!(" AND {key} > $3")
                }
                None => String::new(),
            };
            let reach = and_reach(cx.who, Table::Findings, "f", &mut values);
            let rows = cx
                .db()
                .query_all_raw(statement(
                    cx.db(),
                    &format!(
                        "SELECT f.*, {location} FROM {from} \
                          WHERE {filter} AND f.scanner = $2{cursor}{reach} ORDER BY {key} {}",
                        limit_clause(PAGE)
                    ),
                    values,
                ))
                .await?;
            for row in &rows {
                let finding = findings::Model::from_query_result(row, "")?;
                let at = (
                    row.try_get::<Option<String>>("", "at_path")?,
                    row.try_get::<Option<i32>>("", "at_start")?,
                    row.try_get::<Option<i32>>("", "at_end")?,
                );
                if !first {
                    out.write_all(b",").await.map_err(write_error)?;
                }
                first = false;
                let result = result(&finding, index(&finding.rule_id), at);
                out.write_all(result.to_string().as_bytes())
                    .await
                    .map_err(write_error)?;
                written += 1;
                after = Some(finding.id);
            }
            if (rows.len() as u64) < PAGE {
                break;
            }
        }
        out.write_all(if tools.peek().is_some() {
            b"]},"
        } else {
            b"]}"
        })
        .await
        .map_err(write_error)?;
    }
    out.write_all(b"]}").await.map_err(write_error)?;
    out.flush().await.map_err(write_error)?;
    Ok(written)
}

/// A rule descriptor with GitHub's `security-severity` for its worst finding.
fn rule(r: &RuleRow) -> serde_json::Value {
    let mut tags = vec!["security".to_owned()];
    if let Some(cwe) = r.cwe {
        tags.push(format!("external/cwe/cwe-{cwe:03}"));
    }
    json!({
        "id": r.rule_id,
        "shortDescription": { "text": r.title },
        "defaultConfiguration": { "level": level(r.severity) },
        "properties": { "security-severity": score(r.severity), "tags": tags },
    })
}

fn result(
    f: &findings::Model,
    rule_index: Option<usize>,
    (path, start, end): (Option<String>, Option<i32>, Option<i32>),
) -> serde_json::Value {
    let mut result = json!({
        "ruleId": f.rule_id,
        "level": level(f.severity),
        "message": { "text": f.title },
        "partialFingerprints": { "vegaFingerprint/v1": hex(&f.fingerprint) },
        "properties": {
            "vega": { "findingId": f.id, "category": f.category, "status": f.status },
            "security-severity": score(f.severity),
        },
    });
    if let Some(i) = rule_index {
        result["ruleIndex"] = i.into();
    }
    if let Some(path) = path {
        let mut physical = json!({
            "artifactLocation": { "uri": utf8_percent_encode(&path, PATH).to_string() },
        });
        if let Some(start) = start {
            physical["region"] = json!({ "startLine": start, "endLine": end.unwrap_or(start) });
        }
        result["locations"] = json!([{ "physicalLocation": physical }]);
    }
    if f.status == FindingStatus::Dismissed.as_str() {
        let reason = f.dismissed_reason.as_deref().unwrap_or("dismissed");
        let justification = match &f.dismissed_comment {
            Some(comment) => format!("{reason}: {comment}"),
            None => reason.to_owned(),
        };
        result["suppressions"] = json!([{
            "kind": "external",
            "status": "accepted",
            "justification": justification,
        }]);
    }
    result
}

fn severity(ordinal: i16) -> Severity {
    Severity::from_i16(ordinal).unwrap_or(Severity::Unknown)
}

fn level(ordinal: i16) -> &'static str {
    match severity(ordinal) {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info | Severity::Unknown => "note",
    }
}

/// A CVSS score inside GitHub's band for the severity (read back to the same severity).
fn score(ordinal: i16) -> &'static str {
    match severity(ordinal) {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "2.0",
        Severity::Info | Severity::Unknown => "0.0",
    }
}

/// A failed write of the log: the output's error, as the blob store reports I/O.
fn write_error(err: std::io::Error) -> Error {
    Error::Blob(vega_blobstore::BlobError::Io(err))
}

impl Reports<'_> {
    /// Writes what one scan saw as a SARIF 2.1.0 log (dismissed findings with a
    /// `suppressions` entry); returns the results written.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "reports.export_scan", skip(self, out))]
    pub async fn export_scan(
        &self,
        scan_id: Uuid,
        out: impl AsyncWrite + Unpin + Send,
    ) -> Result<u64> {
        let cx = self.cx.replica();
        let scan = cx
            .select_one::<scans::Entity>(Table::Scans, "x.id = $1", vec![scan_id.into()])
            .await?
            .ok_or_else(|| Error::not_found("scan", scan_id))?;
        export(cx, Source::Scan(scan.id), out).await
    }

    /// Writes a repository's open findings on its default branch as a SARIF 2.1.0 log;
    /// returns the results written.
    ///
    /// *Replica read*: a read replica may serve it (see [`crate::Session`]).
    #[instrument(name = "reports.export_open", skip(self, out))]
    pub async fn export_open(
        &self,
        repository_id: Uuid,
        out: impl AsyncWrite + Unpin + Send,
    ) -> Result<u64> {
        let cx = self.cx.replica();
        cx.select_one::<vega_entity::repositories::Entity>(
            Table::Repositories,
            "x.id = $1",
            vec![repository_id.into()],
        )
        .await?
        .ok_or_else(|| Error::not_found("repository", repository_id))?;
        export(cx, Source::OpenOnDefault(repository_id), out).await
    }
}
