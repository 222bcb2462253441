//! SARIF ingest: `complete_from_sarif` of a generated log beside COPY of the same rows (the
//! ingest row's ceiling), in the same run; a log of `big` results with the process's peak
//! RSS; and the first page of each part of a comparison between a branch scan and `main`.

use std::io::Write;
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use vega_entity::{Severity, TriggerKind};
use vega_repository::{Delta, NewFinding, NewScan, Store};

use crate::{Result, Row, baseline_target, bench_project, copy, peak_rss, settle, summary};

pub(crate) struct Sizes {
    pub results: usize,
    pub big: usize,
    pub runs: usize,
    pub iterations: usize,
}

pub(crate) async fn run(
    store: &Store,
    db: &DatabaseConnection,
    sizes: &Sizes,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let project = bench_project(store, "sarif").await?;
    big_log(store, db, project, sizes.big, rows).await?;
    let findings = crate::synthetic_findings(sizes.results);
    let log = write_log(&findings)?;
    let (mut ingested, mut copied) = (Vec::new(), Vec::new());
    let mut main = None;
    for run in 0..sizes.runs {
        let repo =
            crate::git_repository(store, project, &format!("sarif-{run}"), Some("main")).await?;
        let claim = claim(store, repo.id, "main").await?;
        settle(db).await?;
        let started = Instant::now();
        let scan = store
            .reports()
            .complete_from_sarif(&claim.lease, tokio::fs::File::open(log.path()).await?)
            .await?;
        ingested.push(started.elapsed());
        if scan.findings_total as usize != sizes.results {
            return Err(format!("ingested {} of {}", scan.findings_total, sizes.results).into());
        }
        main.get_or_insert(repo.id);

        let (copy_repo, copy_scan) =
            baseline_target(store, project, &format!("sarif-copy-{run}")).await?;
        settle(db).await?;
        let started = Instant::now();
        copy::copy_findings(db, project, copy_repo.id, copy_scan.id, &findings).await?;
        copied.push(started.elapsed());
    }
    let copy = summary(
        "findings+runs: COPY BINARY (SARIF's ceiling)",
        sizes.results,
        &copied,
        None,
    );
    let sarif = summary(
        "complete_from_sarif: stream, store, ingest",
        sizes.results,
        &ingested,
        Some(&copy),
    );
    println!(
        "complete_from_sarif of {} results: {:.2}x the rows/s of COPY of the same rows",
        sizes.results,
        sarif.rows_per_s / copy.rows_per_s.max(f64::MIN_POSITIVE)
    );
    rows.push(sarif);
    rows.push(copy);

    // The pull-request view: a branch that keeps half of main's findings and adds as many.
    if let Some(main_repo) = main {
        let half = sizes.results / 2;
        let mut branch: Vec<NewFinding> = findings[..half].to_vec();
        branch.extend(
            crate::synthetic_findings(sizes.results)
                .into_iter()
                .skip(half)
                .map(|mut f| {
                    f.location_key.push_str("-branch");
                    f
                }),
        );
        let branch_log = write_log(&branch)?;
        let claim = claim(store, main_repo, "feature/bench").await?;
        let scan = store
            .reports()
            .complete_from_sarif(
                &claim.lease,
                tokio::fs::File::open(branch_log.path()).await?,
            )
            .await?;
        for (label, delta) in [
            ("introduced", Delta::Introduced),
            ("absent", Delta::Absent),
            ("unchanged", Delta::Unchanged),
        ] {
            let mut times = Vec::with_capacity(sizes.iterations);
            for _ in 0..sizes.iterations {
                let started = Instant::now();
                let page = store.findings().compare(scan.id, delta, None, 50).await?;
                times.push(started.elapsed());
                if page.items.len() != 50.min(half) {
                    return Err(
                        format!("{label}: {} rows on the first page", page.items.len()).into(),
                    );
                }
            }
            rows.push(summary(
                &format!("compare first page ({label}), {0} vs {0}", sizes.results),
                50,
                &times,
                None,
            ));
        }
    }

    Ok(())
}

/// A log of `big_n` results, generated lazily, ingested with the peak RSS taken. It runs
/// before the scenario builds its 100,000-finding vectors, so with `--only sarif` the peak is
/// the ingest's over a bare process; after other scenarios the printed "before" says how much
/// their retained memory adds.
async fn big_log(
    store: &Store,
    db: &DatabaseConnection,
    project: uuid::Uuid,
    big_n: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let big = write_log_of(big_n, crate::synthetic_findings_at)?;
    let size = std::fs::metadata(big.path())?.len();
    let repo = crate::git_repository(store, project, "sarif-big", Some("main")).await?;
    let claim = claim(store, repo.id, "main").await?;
    settle(db).await?;
    peak_rss::reset();
    let before = peak_rss::current_kib();
    let started = Instant::now();
    let scan = store
        .reports()
        .complete_from_sarif(&claim.lease, tokio::fs::File::open(big.path()).await?)
        .await?;
    let took = started.elapsed();
    if let (Some(before), Some(peak)) = (before, peak_rss::peak_kib()) {
        println!(
            "peak RSS while completing from a SARIF log of {} results ({} MiB): {} MiB ({} MiB before)",
            scan.findings_total,
            size / (1 << 20),
            peak / 1024,
            before / 1024
        );
    }
    rows.push(summary(
        "complete_from_sarif: the large log",
        big_n,
        &[took],
        None,
    ));
    Ok(())
}

async fn claim(
    store: &Store,
    repository_id: uuid::Uuid,
    ref_name: &str,
) -> Result<vega_repository::Claim> {
    let scan = store
        .scans()
        .enqueue(NewScan::full(
            repository_id,
            TriggerKind::Api,
            Some(ref_name.into()),
        ))
        .await?;
    Ok(store
        .scans()
        .claim(scan.id, "bench", Duration::from_secs(3600))
        .await?)
}

fn write_log(findings: &[NewFinding]) -> Result<tempfile::NamedTempFile> {
    write_log_of(findings.len(), |i| findings[i].clone())
}

/// A SARIF log of `n` results, one run per scanner in turn, written as it is generated.
fn write_log_of(
    n: usize,
    finding: impl Fn(usize) -> NewFinding,
) -> Result<tempfile::NamedTempFile> {
    let file = tempfile::NamedTempFile::new()?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file.reopen()?);
    write!(
        out,
        "{{\"version\":\"2.1.0\",\"runs\":[{{\"tool\":{{\"driver\":{{\"name\":\"bench\"}}}},\"results\":["
    )?;
    for i in 0..n {
        let f = finding(i);
        let level = match f.severity {
            Severity::Critical | Severity::High => "error",
            Severity::Medium => "warning",
            _ => "note",
        };
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({
                "ruleId": f.rule_id,
                "level": level,
                "message": { "text": f.title },
                "locations": [{ "physicalLocation": {
                    "artifactLocation": { "uri": f.file_path },
                    "region": { "startLine": f.start_line, "endLine": f.end_line },
                }}],
                "partialFingerprints": { "primaryLocationLineHash": f.location_key },
                "properties": { "tags": ["security", "external/cwe/cwe-079"] },
            }),
        )?;
    }
    out.write_all(b"]}]}")?;
    out.flush()?;
    Ok(file)
}
