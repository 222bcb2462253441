//! SARIF 2.1.0 in and out: the shapes CodeQL, Semgrep, Gitleaks, Trivy and Grype write (from
//! their documentation and sample outputs), the spec's edge cases, malformed logs (named by
//! JSON pointer, nothing written) and an export checked against the SARIF 2.1.0 schema.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sha2::Digest;
use vega_blobstore::{ObjectKey, S3Options};
use vega_entity::{DismissReason, FindingCategory, Severity, TriggerKind, findings, scans};
use vega_repository::{Dismissal, Error, NewScan, Store};
use vega_tests::s3::S3Server;
use vega_tests::{TestDb, on_both_backends};

use crate::common;

const LEASE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/sarif/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn claim(store: &Store, repository_id: uuid::Uuid, ref_name: &str) -> vega_repository::Claim {
    store
        .scans()
        .enqueue(NewScan::full(
            repository_id,
            TriggerKind::Api,
            Some(ref_name.into()),
        ))
        .await
        .unwrap();
    store
        .scans()
        .claim_next("w", 1, LEASE)
        .await
        .unwrap()
        .remove(0)
}

async fn import(
    store: &Store,
    repository_id: uuid::Uuid,
    log: &[u8],
) -> vega_repository::Result<scans::Model> {
    let claim = claim(store, repository_id, "main").await;
    store.reports().complete_from_sarif(&claim.lease, log).await
}

async fn seen(store: &Store, scan_id: uuid::Uuid) -> Vec<findings::Model> {
    store
        .findings()
        .of_scan(scan_id, None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|f| f.finding)
        .collect()
}

fn by_rule<'a>(all: &'a [findings::Model], rule: &str) -> &'a findings::Model {
    all.iter()
        .find(|f| f.rule_id == rule)
        .unwrap_or_else(|| panic!("no {rule} in {all:#?}"))
}

fn log(results: Value) -> Vec<u8> {
    json!({
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": { "name": "edge", "rules": [{ "id": "r0" }, { "id": "r1", "shortDescription": { "text": "rule one" } }] } },
            "results": results,
        }],
    })
    .to_string()
    .into_bytes()
}

fn result(path: &str) -> Value {
    json!({
        "ruleId": "r0",
        "message": { "text": format!("in {path}") },
        "locations": [{ "physicalLocation": { "artifactLocation": { "uri": path }, "region": { "startLine": 3 } } }],
    })
}

async fn count(store: &Store, sql: &str) -> i64 {
    let db = store.connection();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

on_both_backends! {
    async fn tool_shapes_ingest_with_their_mapping(db: &TestDb) {
        let store = common::store(db).await;

        let repo = common::repository(&store).await;
        let scan = import(&store, repo.id, &fixture("codeql.sarif")).await.unwrap();
        let all = seen(&store, scan.id).await;
        assert_eq!(all.len(), 2);
        let sqli = by_rule(&all, "js/sql-injection");
        assert_eq!((sqli.scanner.as_str(), sqli.severity, sqli.cwe), ("CodeQL", Severity::High.as_i16(), Some(89)));
        assert_eq!((sqli.file_path.as_deref(), sqli.start_line, sqli.end_line), (Some("src/db.js"), Some(14), Some(14)));
        assert_eq!(sqli.title, "This query string depends on a [user-provided value](1).");
        let unused = by_rule(&all, "js/unused-local-variable");
        assert_eq!((unused.severity, unused.cwe), (Severity::Low.as_i16(), None), "the extension rule's level, by rule.index");
        // The report is the scan's committed artifact, byte for byte.
        let report = store.artifacts().list_for_scan(scan.id).await.unwrap();
        assert_eq!((report.len(), report[0].kind.as_str(), report[0].state.as_str()), (1, "scan_report", "committed"));
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut store.artifacts().open(report[0].id).await.unwrap(), &mut bytes).await.unwrap();
        assert_eq!(bytes, fixture("codeql.sarif"));

        let repo = common::repository(&store).await;
        let scan = import(&store, repo.id, &fixture("semgrep.sarif")).await.unwrap();
        let all = seen(&store, scan.id).await;
        assert_eq!((scan.findings_total, scan.count_medium, scan.count_dismissed), (2, 1, 1));
        let open = all.iter().find(|f| f.status == "open").unwrap();
        assert_eq!((open.scanner.as_str(), open.cwe, open.file_path.as_deref()), ("Semgrep OSS", Some(95), Some("app/views.py")));
        let suppressed = all.iter().find(|f| f.status == "dismissed").unwrap();
        assert_eq!((suppressed.dismissed_reason.as_deref(), suppressed.dismissed_comment.as_deref()),
                   (Some(DismissReason::AcceptedRisk.as_str()), Some("suppressed (inSource)")));

        let repo = common::repository(&store).await;
        let scan = import(&store, repo.id, &fixture("gitleaks.sarif")).await.unwrap();
        let all = seen(&store, scan.id).await;
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|f| f.category == FindingCategory::Secret.as_str() && f.severity == Severity::Medium.as_i16()));
        assert_eq!(by_rule(&all, "aws-access-token").file_path.as_deref(), Some("deploy/.env"));

        let repo = common::repository(&store).await;
        let scan = import(&store, repo.id, &fixture("trivy.sarif")).await.unwrap();
        let all = seen(&store, scan.id).await;
        let log4j = by_rule(&all, "CVE-2021-44228");
        assert_eq!((log4j.category.as_str(), log4j.severity, log4j.cve.as_deref()), ("dependency", Severity::Critical.as_i16(), Some("CVE-2021-44228")));
        assert_eq!(log4j.file_path.as_deref(), Some("pom.xml"), "ROOTPATH is file:///, the root");
        assert_eq!(log4j.title.lines().count(), 1, "a message of several lines is one title line");
        let s3 = by_rule(&all, "AVD-AWS-0086");
        assert_eq!((s3.category.as_str(), s3.severity, s3.end_line), ("iac", Severity::High.as_i16(), Some(18)));

        let repo = common::repository(&store).await;
        let scan = import(&store, repo.id, &fixture("grype.sarif")).await.unwrap();
        let all = seen(&store, scan.id).await;
        let text = by_rule(&all, "CVE-2022-42889-commons-text");
        assert_eq!((text.category.as_str(), text.severity, text.cve.as_deref()), ("dependency", Severity::Critical.as_i16(), Some("CVE-2022-42889")));
        let requests = by_rule(&all, "GHSA-8qq5-rm4j-mr97-requests");
        assert_eq!((requests.severity, requests.cve.as_deref()), (Severity::Medium.as_i16(), Some("GHSA-8qq5-rm4j-mr97")));
    }

    async fn the_specs_edge_cases_ingest(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        // No runs, empty results, null results: a scan with nothing.
        for empty in [json!({ "version": "2.1.0", "runs": [] }).to_string().into_bytes(), log(json!([])), log(json!(null))] {
            let scan = import(&store, repo.id, &empty).await.unwrap();
            assert_eq!((scan.status.as_str(), scan.findings_total), ("succeeded", 0));
        }
        let long = "x".repeat(10_000);
        let many = json!({
            "version": "2.1.0",
            "runs": [
                {
                    "tool": { "driver": { "name": "alpha", "rules": [{ "id": "r0", "shortDescription": { "text": "rule zero" } }, { "id": "r1" }] } },
                    "originalUriBaseIds": {
                        "REPO": { "uri": "file:///work/repo/" },
                        "WEB": { "uri": "web/", "uriBaseId": "REPO" }
                    },
                    "results": [
                        // By ruleIndex only, title from the rule.
                        { "ruleIndex": 0, "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "index.js", "uriBaseId": "WEB" }, "region": { "startLine": 2, "endLine": 4 } } }] },
                        // No region; related locations ignored; a very long message.
                        { "ruleId": "r1", "message": { "text": long }, "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "caf%C3%A9/men%C3%BC.py" } } }],
                          "relatedLocations": [{ "id": 1, "physicalLocation": { "artifactLocation": { "uri": "other.py" } } }] },
                        // No location at all; suppressed but under review: still open.
                        { "ruleId": "r1", "message": { "text": "repository-wide" }, "suppressions": [{ "kind": "external", "status": "underReview" }] },
                        // Suppressed with a justification naming a false positive; raw UTF-8 path.
                        { "ruleId": "r0", "message": { "text": "sanitized" }, "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "日本/データ.py" }, "region": { "startLine": 1 } } }],
                          "suppressions": [{ "kind": "external", "status": "accepted", "justification": "False positive: sanitized upstream" }] }
                    ]
                },
                { "tool": { "driver": { "name": "beta" } }, "results": [{ "ruleId": "r0", "message": { "text": "in index.js" } }] }
            ]
        });
        let scan = import(&store, repo.id, many.to_string().as_bytes()).await.unwrap();
        let all = seen(&store, scan.id).await;
        assert_eq!(all.len(), 5);
        let first = all.iter().find(|f| f.file_path.as_deref() == Some("web/index.js")).unwrap();
        assert_eq!((first.rule_id.as_str(), first.title.as_str(), first.start_line, first.end_line), ("r0", "rule zero", Some(2), Some(4)));
        let cafe = all.iter().find(|f| f.file_path.as_deref() == Some("café/menü.py")).unwrap();
        assert_eq!((cafe.start_line, cafe.title.chars().count()), (None, 512));
        let wide = all.iter().find(|f| f.title == "repository-wide").unwrap();
        assert_eq!((wide.file_path.as_deref(), wide.status.as_str()), (None, "open"));
        let japanese = all.iter().find(|f| f.file_path.as_deref() == Some("日本/データ.py")).unwrap();
        assert_eq!((japanese.status.as_str(), japanese.dismissed_reason.as_deref()), ("dismissed", Some("false_positive")));
        // Several runs each keep their tool.
        let tools: std::collections::BTreeSet<_> = all.iter().map(|f| f.scanner.as_str()).collect();
        assert_eq!(tools.into_iter().collect::<Vec<_>>(), ["alpha", "beta"]);
    }

    async fn a_malformed_log_is_named_by_its_pointer_and_writes_nothing(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let claim = claim(&store, repo.id, "main").await;
        let ok = String::from_utf8(log(json!([result("a.py"), result("b.py")]))).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "/"),
            (json!({ "version": "2.0.0", "runs": [] }).to_string().into_bytes(), "/version"),
            (json!({ "runs": [] }).to_string().into_bytes(), "/version"),
            (json!({ "version": "2.1.0" }).to_string().into_bytes(), "/runs"),
            (json!({ "version": "2.1.0", "runs": [{ "results": [] }] }).to_string().into_bytes(), "/runs/0/tool"),
            (log(json!([result("a.py"), { "ruleId": "r0", "message": { "text": "m" }, "locations": "src/a.py" }])), "/runs/0/results/1/locations"),
            (log(json!([result("a.py"), result("b.py"), { "ruleId": "r0", "locations": [{ "physicalLocation": { "region": { "startLine": "x" } } }] }])),
             "/runs/0/results/2/locations/0/physicalLocation/region/startLine"),
            // Neither a rule nor a message: nothing identifies the result.
            (log(json!([{ "level": "error", "locations": [] }])), "/runs/0/results/0/ruleId"),
            (ok.as_bytes()[..ok.find("b.py").unwrap()].to_vec(), "/runs/0/results/1"),
        ];
        for (bad, pointer) in cases {
            let err = store.reports().complete_from_sarif(&claim.lease, &bad[..]).await.unwrap_err();
            assert!(matches!(&err, Error::Invalid { field, .. } if field == pointer), "{pointer}: {err}");
            assert_eq!(store.scans().get(claim.scan.id).await.unwrap().status, "running");
            assert_eq!(count(&store, &format!("SELECT COUNT(*) FROM findings WHERE repository_id = '{}'", repo.id)).await, 0);
            assert_eq!(count(&store, "SELECT COUNT(*) FROM artifacts").await, 0, "{pointer}: no artifact row");
            let key = ObjectKey::scan_report(claim.scan.project_id, claim.scan.id);
            assert!(store.blobs().head(&key).await.unwrap().is_none(), "{pointer}: no object");
        }
        // The lease is intact: the right log completes it.
        let scan = store.reports().complete_from_sarif(&claim.lease, ok.as_bytes()).await.unwrap();
        assert_eq!(scan.findings_total, 2);
    }

    async fn deviations_real_tools_ship_are_taken_with_a_fallback_and_named(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let located = |line: i64| json!([{ "physicalLocation": { "artifactLocation": { "uri": "a.py" }, "region": { "startLine": line } } }]);
        let deviant = json!({
            "version": "2.1.0",
            "runs": [{
                "tool": { "driver": { "name": "odd", "rules": [{ "id": "r0", "properties": { "security-severity": "severe" } }, { "id": "r6", "properties": { "security-severity": "CRITICAL" } }] } },
                "results": [
                    { "message": { "text": "AWS key in config" }, "locations": located(3) },
                    { "ruleId": "r0", "level": "error", "message": { "text": "m" }, "locations": located(4) },
                    { "ruleId": "r1", "level": "fatal", "message": { "text": "m" }, "locations": located(5) },
                    { "ruleIndex": 5, "ruleId": "r2", "message": { "text": "m" }, "locations": located(6) },
                    { "ruleId": "r3", "rule": { "toolComponent": { "index": 3 } }, "message": { "text": "m" }, "locations": located(7) },
                    { "ruleId": "r4", "message": { "text": "m" }, "locations": located(0) },
                    { "ruleId": "r5", "message": { "text": "m" }, "fingerprints": { "nested": { "a": 1 }, "plain": "x" } },
                    { "ruleId": "r5", "message": { "text": "m" }, "fingerprints": { "nested": { "a": 1 }, "plain": "x" } },
                    { "ruleId": "r6", "message": { "text": "m" }, "locations": located(8) },
                ],
            }],
        })
        .to_string();
        let progress = std::sync::Arc::new(vega_repository::ImportProgress::default());
        assert_eq!((progress.total(), progress.done()), (None, 0));
        let claimed = claim(&store, repo.id, "main").await;
        let scan = store.reports().with_progress(&progress).complete_from_sarif(&claimed.lease, deviant.as_bytes()).await.unwrap();
        assert_eq!((progress.total(), progress.done()), (Some(9), 9), "every result of the log, read");
        assert_eq!(scan.findings_total, 8, "the duplicate is one finding with the first");
        let warnings: Vec<(String, String, u64)> = store.reports().import_warnings(scan.id).await.unwrap()
            .into_iter().map(|w| (w.kind, w.pointer, w.count)).collect();
        let at = |i: usize, field: &str| format!("/runs/0/results/{i}{field}");
        assert_eq!(warnings, vec![
            ("no_rule_id".into(), at(0, "/ruleId"), 1),
            ("rule_index_unknown".into(), at(3, "/ruleIndex"), 1),
            ("tool_component_unknown".into(), at(4, "/rule/toolComponent/index"), 1),
            ("fingerprint_not_a_string".into(), at(6, "/fingerprints/nested"), 2),
            ("security_severity_not_a_score".into(), "/runs/0/tool/driver/rules/0/properties/security-severity".into(), 2),
            ("level_unknown".into(), at(2, "/level"), 1),
            ("start_line_invalid".into(), at(5, "/locations/0/physicalLocation/region/startLine"), 1),
            ("duplicate_result".into(), at(7, ""), 1),
        ]);
        let all = seen(&store, scan.id).await;
        let unnamed = all.iter().find(|f| f.title == "AWS key in config").unwrap();
        assert!(unnamed.rule_id.starts_with("sarif-unnamed-"), "{}", unnamed.rule_id);
        assert_eq!(by_rule(&all, "r0").severity, Severity::High.as_i16(), "the level, as security-severity is no score");
        assert_eq!(by_rule(&all, "r6").severity, Severity::Critical.as_i16(), "a severity's name is that severity");
        assert_eq!(by_rule(&all, "r1").severity, Severity::Medium.as_i16(), "an unknown level is warning");
        assert_eq!(by_rule(&all, "r4").start_line, None);

        // The fallbacks are stable: the same log again is the same findings, none new.
        let again = import(&store, repo.id, deviant.as_bytes()).await.unwrap();
        assert_eq!((again.findings_total, again.findings_new), (8, 0));
        let mut ids: Vec<_> = all.iter().map(|f| f.id).collect();
        let mut again_ids: Vec<_> = seen(&store, again.id).await.iter().map(|f| f.id).collect();
        ids.sort();
        again_ids.sort();
        assert_eq!(ids, again_ids);
        // A scan completed without a log has none.
        let plain = claim(&store, repo.id, "main").await;
        store.scans().complete(&plain.lease, vec![]).await.unwrap();
        assert!(store.reports().import_warnings(plain.scan.id).await.unwrap().is_empty());
    }

    async fn every_log_of_the_real_tools_corpus_imports(db: &TestDb) {
        let store = common::store(db).await;
        let dir = format!("{}/tests/sarif/real", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sarif")).collect();
        files.sort();
        assert!(files.len() >= 20, "the corpus: {files:?}");
        let mut tools = std::collections::BTreeSet::new();
        let mut unexpected = Vec::new();
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            let parsed: Value = serde_json::from_slice(&bytes).unwrap();
            let results: Vec<&Value> = parsed["runs"].as_array().unwrap().iter()
                .flat_map(|run| run["results"].as_array().into_iter().flatten()).collect();
            let suppressed = results.iter().filter(|r| r["suppressions"].as_array().is_some_and(|s| !s.is_empty())).count();
            tools.extend(parsed["runs"].as_array().unwrap().iter().map(|run| run["tool"]["driver"]["name"].to_string()));
            let repo = common::repository(&store).await;
            let scan = import(&store, repo.id, &bytes).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            let warnings = store.reports().import_warnings(scan.id).await.unwrap();
            let kinds: Vec<&str> = warnings.iter().map(|w| w.kind.as_str()).collect();
            if kinds != expected_warnings(&name) {
                unexpected.push(format!("{name}: {warnings:?}"));
            }
            let duplicates = warnings.iter().find(|w| w.kind == "duplicate_result").map_or(0, |w| w.count);
            assert_eq!(scan.findings_total as u64 + duplicates, results.len() as u64, "{name}: every result is a finding, or repeats one");
            if suppressed > 0 {
                assert!(scan.count_dismissed > 0 && scan.count_dismissed as usize <= suppressed, "{name}: suppressed results are dismissed");
            } else {
                assert_eq!(scan.count_dismissed, 0, "{name}");
            }
            // The same log again: the same findings, none new.
            let again = import(&store, repo.id, &bytes).await.unwrap();
            assert_eq!((again.findings_total, again.findings_new), (scan.findings_total, 0), "{name}");
        }
        assert!(unexpected.is_empty(), "warnings other than expected_warnings: {unexpected:#?}");
        assert!(tools.len() >= 15, "tools in the corpus: {tools:?}");
    }

    async fn exports_are_valid_sarif_that_imports_back(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let mut merged: Value = serde_json::from_slice(&fixture("codeql.sarif")).unwrap();
        let trivy: Value = serde_json::from_slice(&fixture("trivy.sarif")).unwrap();
        merged["runs"].as_array_mut().unwrap().push(trivy["runs"][0].clone());
        let scan = import(&store, repo.id, merged.to_string().as_bytes()).await.unwrap();
        let sqli = by_rule(&seen(&store, scan.id).await, "js/sql-injection").clone();
        store.findings().dismiss(sqli.id, Dismissal { comment: Some("parameterized upstream".into()), ..Dismissal::because(DismissReason::FalsePositive) }).await.unwrap();

        let schema: Value = serde_json::from_slice(&fixture("sarif-schema-2.1.0.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut out = Vec::new();
        assert_eq!(store.reports().export_scan(scan.id, &mut out).await.unwrap(), 4);
        let exported: Value = serde_json::from_slice(&out).unwrap();
        let errors: Vec<String> = validator.iter_errors(&exported).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let runs = exported["runs"].as_array().unwrap();
        assert_eq!(runs.iter().map(|r| r["tool"]["driver"]["name"].as_str().unwrap()).collect::<Vec<_>>(), ["CodeQL", "Trivy"]);
        let sqli_out = runs[0]["results"].as_array().unwrap().iter().find(|r| r["ruleId"] == "js/sql-injection").unwrap();
        assert_eq!(sqli_out["suppressions"][0]["justification"], "false_positive: parameterized upstream");
        assert_eq!(sqli_out["locations"][0]["physicalLocation"]["region"]["startLine"], 14);

        // Imported into another repository, the same findings with the same severities.
        let other = common::repository(&store).await;
        let again = import(&store, other.id, &out).await.unwrap();
        let key = |all: Vec<findings::Model>| {
            let mut k: Vec<_> = all.into_iter().map(|f| (f.scanner, f.rule_id, f.severity, f.file_path, f.start_line, f.status)).collect();
            k.sort();
            k
        };
        assert_eq!(key(seen(&store, again.id).await), key(seen(&store, scan.id).await));

        // The default branch's open findings: the dismissed one is left out.
        let mut open = Vec::new();
        assert_eq!(store.reports().export_open(repo.id, &mut open).await.unwrap(), 3);
        let open: Value = serde_json::from_slice(&open).unwrap();
        assert!(validator.is_valid(&open));
    }

    async fn a_worker_uploads_its_report_itself_and_completes_from_it(db: &TestDb) {
        let server = S3Server::start().await;
        let store = Store::from_parts(db.conn().clone(), server.blob_store(None, S3Options::default())).await.unwrap();
        let repo = common::repository(&store).await;
        let report = fixture("codeql.sarif");
        let sha256: [u8; 32] = sha2::Sha256::digest(&report).into();
        let size = report.len() as u64;
        let minute = Duration::from_secs(60);
        let put = |url: &vega_repository::PresignedUpload, body: Vec<u8>| {
            let mut request = reqwest::Client::new().put(&url.url).body(body);
            for (name, value) in &url.headers {
                request = request.header(name, value);
            }
            request.send()
        };

        let leased = claim(&store, repo.id, "main").await;
        for expires in [Duration::ZERO, Duration::from_secs(7 * 24 * 3600 + 1)] {
            let err = store.reports().upload_url(&leased.lease, size, sha256, expires).await.unwrap_err();
            assert!(matches!(&err, Error::Invalid { field, .. } if field == "expires"), "{err:?}");
        }
        assert_eq!(count(&store, "SELECT COUNT(*) FROM artifacts").await, 0);
        // Asking again supersedes the first URL: one pending row.
        let first = store.reports().upload_url(&leased.lease, size, sha256, minute).await.unwrap();
        let upload = store.reports().upload_url(&leased.lease, size, sha256, minute).await.unwrap();
        assert_ne!(first.artifact_id, upload.artifact_id);
        assert!(!format!("{upload:?}").contains("Signature"), "Debug hides the signed query: {upload:?}");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM artifacts WHERE state = 'pending'").await, 1);
        // Completing before the upload arrived is a conflict that keeps the upload open.
        let early = store.reports().complete_from_upload(&leased.lease, upload.artifact_id).await.unwrap_err();
        assert!(matches!(early, Error::Conflict { .. }), "{early:?}");
        assert_eq!(put(&upload, report.clone()).await.unwrap().status().as_u16(), 200);
        let scan = store.reports().complete_from_upload(&leased.lease, upload.artifact_id).await.unwrap();
        assert_eq!((scan.status.as_str(), scan.findings_total), ("succeeded", 2));
        let stored = store.artifacts().get(upload.artifact_id).await.unwrap();
        assert_eq!((stored.state.as_str(), stored.size_bytes, stored.sha256.as_deref()), ("committed", Some(size as i64), Some(&sha256[..])));
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut store.artifacts().open(stored.id).await.unwrap(), &mut bytes).await.unwrap();
        assert_eq!(bytes, report);
        let again = store.reports().complete_from_upload(&leased.lease, upload.artifact_id).await.unwrap_err();
        assert!(matches!(again, Error::Conflict { .. }), "a committed report is not completed twice: {again:?}");

        // An object that is not what the upload declared is refused, and nothing stays.
        let leased = claim(&store, repo.id, "main").await;
        let upload = store.reports().upload_url(&leased.lease, size, sha256, minute).await.unwrap();
        let key = ObjectKey::scan_report(leased.scan.project_id, leased.scan.id);
        let mut other = report.clone();
        other[10] ^= 1;
        server.client().put_object().bucket(vega_tests::s3::BUCKET).key(key.as_str()).body(other.into()).send().await.unwrap();
        let err = store.reports().complete_from_upload(&leased.lease, upload.artifact_id).await.unwrap_err();
        assert!(matches!(&err, Error::Invalid { field, .. } if field == "report"), "{err:?}");
        assert_eq!(store.scans().get(leased.scan.id).await.unwrap().status, "running");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM artifacts WHERE state = 'pending'").await, 0);
        assert!(store.blobs().head(&key).await.unwrap().is_none(), "the refused object is removed");

        // A malformed log that matches its declaration: named by pointer, nothing written.
        let bad = br#"{"version":"2.1.0","runs":[{"results":[]}]}"#.to_vec();
        let upload = store.reports().upload_url(&leased.lease, bad.len() as u64, sha2::Sha256::digest(&bad).into(), minute).await.unwrap();
        assert_eq!(put(&upload, bad).await.unwrap().status().as_u16(), 200);
        let err = store.reports().complete_from_upload(&leased.lease, upload.artifact_id).await.unwrap_err();
        assert!(matches!(&err, Error::Invalid { field, .. } if field == "/runs/0/tool"), "{err:?}");
        assert!(store.blobs().head(&key).await.unwrap().is_none());
        assert_eq!(count(&store, "SELECT COUNT(*) FROM artifacts WHERE state = 'pending'").await, 0);

        // The filesystem store has no presigned URLs: a typed refusal, nothing written.
        let fs = common::store(db).await;
        let err = fs.reports().upload_url(&leased.lease, size, sha256, minute).await.unwrap_err();
        assert!(matches!(err, Error::Blob(vega_repository::BlobError::Unsupported(..))), "{err:?}");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM artifacts WHERE state = 'pending'").await, 0);
    }
}

/// Postgres only: SQLite has one connection, and its upload runs before the ingest.
#[tokio::test]
async fn completions_that_fill_the_pool_do_not_wait_on_each_other() {
    let db = TestDb::postgres().await;
    // Each completion holds a connection for its ingest; the report's put beside it must
    // not need a second one, or a full pool waits out its acquire bound.
    let pool = vega_config::PoolOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        ..vega_config::PoolOptions::default()
    };
    let store = Store::connect(&common::settings(db.url(), pool))
        .await
        .unwrap();
    let mut claims = Vec::new();
    for _ in 0..4 {
        let repo = common::repository(&store).await;
        claims.push(claim(&store, repo.id, "main").await);
    }
    let report = fixture("trivy.sarif");
    let reports = store.reports();
    let done = futures::future::join_all(
        claims
            .iter()
            .map(|c| reports.complete_from_sarif(&c.lease, &report[..])),
    )
    .await;
    for scan in done {
        assert_eq!(scan.unwrap().status, "succeeded");
    }
}

/// The deviations each log of the real-tools corpus is expected to be taken with (see
/// `tests/sarif/real/README.md`).
fn expected_warnings(file: &str) -> Vec<&'static str> {
    match file {
        "blackduck.sarif" => vec!["fingerprint_not_a_string"],
        "gitleaks.sarif" => vec!["no_rule_id", "duplicate_result"],
        "semgrep.sarif" => vec!["security_severity_not_a_score"],
        "shell-script-analysis.sarif" => vec!["duplicate_result"],
        _ => vec![],
    }
}
