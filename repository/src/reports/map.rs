//! A SARIF result as a finding.
//!
//! The mapping, per result: tool = its run's `tool.driver.name`; rule by `ruleId`,
//! `ruleIndex` or `rule` (`toolComponent` for extensions, as CodeQL writes); title =
//! `message.text`, else the rule's `shortDescription`; severity from `security-severity` on
//! the result or rule (GitHub code scanning's CVSS bands: ≥ 9.0 critical, ≥ 7.0 high, ≥ 4.0
//! medium, > 0 low), else `level` (error high, warning medium, note low, none info; the rule's
//! `defaultConfiguration`, else warning); the first location's `artifactLocation.uri` resolved
//! against `originalUriBaseIds`, with its region's lines when it has one; CWE and CVE/GHSA from
//! the rule's tags and id; category from tags (`secret`, `misconfiguration`, `vulnerability`)
//! and the tool; identity from `partialFingerprints`, else `fingerprints`, else the snippet,
//! else message and line; a result suppressed as the spec defines it is ingested dismissed.

use std::collections::{BTreeMap, HashMap};

use vega_entity::{DismissReason, FindingCategory, Severity};

use crate::error::Error;
use crate::findings::ingest::{NewFinding, Suppression};
use crate::reports::wire::{ArtifactLocation, Rule, Run, SarifResult, SarifSuppression, Tool};

/// A result mapped to a finding, with its place in the log.
pub(crate) struct Mapped {
    pub finding: NewFinding,
    pub suppression: Option<Suppression>,
    /// `/runs/{run}/results/{index}`, for naming a field that fails validation.
    pub pointer: String,
}

/// A result as a finding (see `sarif/mod.rs` for the mapping).
pub(crate) fn map(
    run: &Run,
    run_index: usize,
    index: usize,
    at: &str,
    r: SarifResult,
) -> crate::error::Result<Mapped> {
    let component = match r
        .rule
        .as_ref()
        .and_then(|x| x.tool_component.as_ref())
        .and_then(|c| c.index)
    {
        Some(k) => usize::try_from(k)
            .ok()
            .and_then(|k| run.tool.extensions.get(k))
            .ok_or_else(|| {
                Error::invalid(
                    &format!("{at}/rule/toolComponent/index"),
                    format!(
                        "names no extension of the run's tool (it has {})",
                        run.tool.extensions.len()
                    ),
                )
            })?,
        None => &run.tool.driver,
    };
    let rule_index = r.rule_index.or(r.rule.as_ref().and_then(|x| x.index));
    let rule = match rule_index {
        Some(k) if k >= 0 => Some(
            usize::try_from(k)
                .ok()
                .and_then(|k| component.rules.get(k))
                .ok_or_else(|| {
                    Error::invalid(
                        &format!("{at}/ruleIndex"),
                        format!(
                            "names no rule of {} (it has {})",
                            component.name,
                            component.rules.len()
                        ),
                    )
                })?,
        ),
        _ => None,
    };
    let rule_id = r
        .rule_id
        .clone()
        .or_else(|| r.rule.as_ref().and_then(|x| x.id.clone()))
        .or_else(|| rule.and_then(|x| x.id.clone()))
        .ok_or_else(|| {
            Error::invalid(
                &format!("{at}/ruleId"),
                "is required (the result names no rule)",
            )
        })?;
    let rule = rule.or_else(|| {
        run.by_id
            .get(&rule_id)
            .and_then(|&k| run.tool.driver.rules.get(k))
    });
    let message = r.message.as_ref().and_then(|m| m.text.clone());
    let title = message
        .clone()
        .or_else(|| rule.and_then(|x| x.short_description.as_ref()?.text.clone()))
        .unwrap_or_else(|| rule_id.clone());
    let severity = severity(&r, rule, at)?;

    let physical = r
        .locations
        .first()
        .and_then(|l| l.physical_location.as_ref());
    let file_path = physical
        .and_then(|p| p.artifact_location.as_ref())
        .and_then(|a| resolve(a, &run.bases, 0));
    let region = physical.and_then(|p| p.region.as_ref());
    let start_line = match region.and_then(|x| x.start_line) {
        Some(n) if n >= 1 => Some(i32::try_from(n).unwrap_or(i32::MAX)),
        Some(_) => {
            return Err(Error::invalid(
                &format!("{at}/locations/0/physicalLocation/region/startLine"),
                "must be at least 1",
            ));
        }
        None => None,
    };
    let end_line = start_line.map(|start| {
        region
            .and_then(|x| x.end_line)
            .and_then(|n| i32::try_from(n).ok())
            .filter(|&end| end >= start)
            .unwrap_or(start)
    });

    let mut tags: Vec<&str> = Vec::new();
    for props in [
        rule.and_then(|x| x.properties.as_ref()),
        r.properties.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        tags.extend(props.tags.iter().map(String::as_str));
    }
    let cwe = tags.iter().find_map(|t| cwe_of(t));
    let cve = std::iter::once(rule_id.as_str())
        .chain(tags.iter().copied())
        .find_map(advisory_of);
    let location_key = if !r.partial_fingerprints.is_empty() {
        fingerprint_key("partial", &r.partial_fingerprints)
    } else if !r.fingerprints.is_empty() {
        fingerprint_key("full", &r.fingerprints)
    } else if let Some(snippet) = region.and_then(|x| x.snippet.as_ref()?.text.as_deref()) {
        format!("snippet\0{}", snippet.trim())
    } else {
        // No stable identity from the tool: the message and line tell matches apart.
        format!(
            "message\0{}\0{}",
            message.as_deref().unwrap_or_default(),
            start_line.unwrap_or_default()
        )
    };
    let suppression = suppression(&r.suppressions);
    Ok(Mapped {
        finding: NewFinding {
            scanner: component_name(&run.tool),
            category: category(&run.tool.driver.name, &tags, cve.is_some()),
            rule_id,
            title: one_line(&title, 512),
            severity,
            file_path,
            start_line,
            end_line,
            location_key,
            cwe,
            cve,
            package_name: None,
            package_version: None,
            details: Some(serde_json::json!({ "sarif": { "run": run_index, "result": index } })),
        },
        suppression,
        pointer: at.to_owned(),
    })
}

fn component_name(tool: &Tool) -> String {
    one_line(&tool.driver.name, 64)
}

/// GitHub code scanning's bands for `security-severity` (a CVSS score), else the level.
fn severity(r: &SarifResult, rule: Option<&Rule>, at: &str) -> crate::error::Result<Severity> {
    let score = [
        r.properties.as_ref(),
        rule.and_then(|x| x.properties.as_ref()),
    ]
    .into_iter()
    .flatten()
    .find_map(|p| p.security_severity.as_ref());
    if let Some(score) = score {
        let value = match score {
            serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
            serde_json::Value::Number(n) => n.as_f64(),
            _ => None,
        }
        .filter(|v| (0.0..=10.0).contains(v))
        .ok_or_else(|| {
            Error::invalid(
                &format!("{at}/properties/security-severity"),
                "must be a CVSS score from 0.0 to 10.0",
            )
        })?;
        return Ok(match value {
            v if v >= 9.0 => Severity::Critical,
            v if v >= 7.0 => Severity::High,
            v if v >= 4.0 => Severity::Medium,
            v if v > 0.0 => Severity::Low,
            _ => Severity::Info,
        });
    }
    let level = r
        .level
        .as_deref()
        .or_else(|| rule.and_then(|x| x.default_configuration.as_ref()?.level.as_deref()))
        .unwrap_or("warning");
    match level {
        "error" => Ok(Severity::High),
        "warning" => Ok(Severity::Medium),
        "note" => Ok(Severity::Low),
        "none" => Ok(Severity::Info),
        other => Err(Error::invalid(
            &format!("{at}/level"),
            format!("must be none, note, warning or error (got \"{other}\")"),
        )),
    }
}

/// `artifactLocation.uri` resolved against the run's `originalUriBaseIds`: a relative base is
/// prefixed (and may have a base of its own); an absolute one (`file:///src/`) is the root the
/// path is relative to. Percent-escapes are decoded (non-ASCII paths arrive escaped).
fn resolve(
    location: &ArtifactLocation,
    bases: &HashMap<String, ArtifactLocation>,
    depth: usize,
) -> Option<String> {
    let uri = location.uri.as_deref()?;
    let decoded = percent_encoding::percent_decode_str(uri)
        .decode_utf8_lossy()
        .into_owned();
    let path = match decoded.split_once("://") {
        Some((_, rest)) => rest
            .trim_start_matches(|c| c != '/')
            .trim_start_matches('/')
            .to_owned(),
        None => decoded,
    };
    let base = location
        .uri_base_id
        .as_ref()
        .filter(|_| depth < 8)
        .and_then(|id| bases.get(id));
    let prefix = base.and_then(|b| {
        let uri = b.uri.as_deref()?;
        if uri.contains("://") || uri.starts_with('/') {
            None
        } else {
            resolve(b, bases, depth + 1)
        }
    });
    let joined = match prefix {
        Some(prefix) if !prefix.is_empty() => format!("{}/{}", prefix.trim_end_matches('/'), path),
        _ => path,
    };
    Some(joined).filter(|p| !p.is_empty())
}

/// CWE from a tag: Semgrep's `CWE-89: …`, CodeQL's `external/cwe/cwe-079`.
fn cwe_of(tag: &str) -> Option<i32> {
    let lower = tag.to_ascii_lowercase();
    let start = lower.find("cwe-").or_else(|| lower.find("cwe/"))? + 4;
    let digits: String = lower[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|&n| n > 0)
}

/// A CVE or GHSA id at the start of a rule id or tag (Grype's `CVE-2021-44228-log4j-core`).
fn advisory_of(text: &str) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    if let Some(rest) = upper.strip_prefix("CVE-") {
        let mut parts = rest.splitn(3, '-');
        let year = parts.next()?;
        let number = parts.next()?;
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        let number: String = number.chars().take_while(char::is_ascii_digit).collect();
        return (year.len() == 4 && digits(year) && number.len() >= 4)
            .then(|| format!("CVE-{year}-{number}"));
    }
    if upper.starts_with("GHSA-") && text.len() >= 19 {
        return Some(text[..19].to_ascii_lowercase().replacen("ghsa", "GHSA", 1));
    }
    None
}

fn category(tool: &str, tags: &[&str], advisory: bool) -> FindingCategory {
    let has = |t: &str| tags.iter().any(|x| x.eq_ignore_ascii_case(t));
    let tool = tool.to_ascii_lowercase();
    if has("secret")
        || has("secrets")
        || ["gitleaks", "trufflehog", "detect-secrets"]
            .iter()
            .any(|t| tool.contains(t))
    {
        FindingCategory::Secret
    } else if has("misconfiguration")
        || has("iac")
        || ["checkov", "tfsec", "kics", "terrascan"]
            .iter()
            .any(|t| tool.contains(t))
    {
        FindingCategory::Iac
    } else if advisory
        || has("vulnerability")
        || ["grype", "trivy", "osv-scanner", "dependency-check"]
            .iter()
            .any(|t| tool.contains(t))
    {
        FindingCategory::Dependency
    } else {
        FindingCategory::Sast
    }
}

fn fingerprint_key(kind: &str, values: &BTreeMap<String, String>) -> String {
    let mut key = format!("sarif-{kind}");
    for (k, v) in values {
        key.push('\0');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// Suppressed as the spec defines it: at least one suppression, none under review or
/// rejected. The reason is read from the justification; the comment keeps kind and text.
fn suppression(list: &[SarifSuppression]) -> Option<Suppression> {
    if list.is_empty()
        || list
            .iter()
            .any(|s| matches!(s.status.as_deref(), Some("underReview" | "rejected")))
    {
        return None;
    }
    let first = &list[0];
    let justification = first.justification.as_deref().unwrap_or_default();
    let lower = justification.to_ascii_lowercase();
    let reason = if lower.contains("false positive") || lower.contains("false-positive") {
        DismissReason::FalsePositive
    } else if lower.contains("test") {
        DismissReason::UsedInTests
    } else if lower.contains("won't fix") || lower.contains("wont fix") || lower.contains("wontfix")
    {
        DismissReason::WontFix
    } else {
        DismissReason::AcceptedRisk
    };
    let kind = first.kind.as_deref().unwrap_or("external");
    let comment = if justification.is_empty() {
        format!("suppressed ({kind})")
    } else {
        format!("suppressed ({kind}): {justification}")
    };
    Some(Suppression {
        reason,
        comment: Some(one_line(&comment, 4000)),
    })
}

/// Text as one line of at most `max` characters: control characters become spaces.
fn one_line(text: &str, max: usize) -> String {
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    line.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_rule_ids_give_cwe_and_advisories() {
        assert_eq!(cwe_of("external/cwe/cwe-079"), Some(79));
        assert_eq!(cwe_of("CWE-89: Improper Neutralization"), Some(89));
        assert_eq!(cwe_of("security"), None);
        assert_eq!(
            advisory_of("CVE-2021-44228-log4j-core").as_deref(),
            Some("CVE-2021-44228")
        );
        assert_eq!(
            advisory_of("GHSA-jfh8-c2jp-5v3q").as_deref(),
            Some("GHSA-jfh8-c2jp-5v3q")
        );
        assert_eq!(advisory_of("python.lang.eval"), None);
    }

    #[test]
    fn uris_resolve_against_their_bases() {
        let bases: HashMap<String, ArtifactLocation> = serde_json::from_value(serde_json::json!({
            "%SRCROOT%": { "uri": "file:///home/runner/work/app/" },
            "WEB": { "uri": "web/", "uriBaseId": "%SRCROOT%" },
            "STATIC": { "uri": "static/", "uriBaseId": "WEB" }
        }))
        .unwrap();
        let at = |uri: &str, base: Option<&str>| {
            resolve(
                &ArtifactLocation {
                    uri: Some(uri.into()),
                    uri_base_id: base.map(Into::into),
                },
                &bases,
                0,
            )
        };
        assert_eq!(
            at("src/a.py", Some("%SRCROOT%")).as_deref(),
            Some("src/a.py")
        );
        assert_eq!(
            at("app.js", Some("STATIC")).as_deref(),
            Some("web/static/app.js")
        );
        assert_eq!(
            at("caf%C3%A9/men%C3%BC.py", None).as_deref(),
            Some("café/menü.py")
        );
        assert_eq!(
            at("file:///src/main.go", None).as_deref(),
            Some("src/main.go")
        );
    }
}
