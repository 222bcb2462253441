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

use sha2::{Digest, Sha256};

use vega_entity::{DismissReason, FindingCategory, Severity};

use crate::error::Error;
use crate::findings::ingest::{NewFinding, Suppression};
use crate::reports::warnings::Deviation;
use crate::reports::wire::{ArtifactLocation, Rule, Run, SarifResult, SarifSuppression, Tool};

/// A result mapped to a finding, with its place in the log.
pub(crate) struct Mapped {
    pub finding: NewFinding,
    pub suppression: Option<Suppression>,
    /// `/runs/{run}/results/{index}`, for naming a field that fails validation.
    pub pointer: String,
    /// The deviations the result was taken with, each with the pointer of its field.
    pub deviations: Vec<(Deviation, String)>,
}

/// A result as a finding (the mapping is this module's documentation). Strict about what
/// leaves a result unusable, liberal about the rest: see [`Deviation`].
pub(crate) fn map(
    run: &Run,
    run_index: usize,
    index: usize,
    at: &str,
    mut r: SarifResult,
) -> crate::error::Result<Mapped> {
    let mut deviations = Vec::new();
    // Where the rule sits (extension, index), for naming a deviation found on it: formatted
    // only then, as most results have none.
    let (component, extension) = match r
        .rule
        .as_ref()
        .and_then(|x| x.tool_component.as_ref())
        .and_then(|c| c.index)
    {
        Some(k) => match usize::try_from(k)
            .ok()
            .and_then(|k| run.tool.extensions.get(k))
        {
            Some(component) => (component, usize::try_from(k).ok()),
            None => {
                let field = format!("{at}/rule/toolComponent/index");
                deviations.push((Deviation::ToolComponentUnknown, field));
                (&run.tool.driver, None)
            }
        },
        None => (&run.tool.driver, None),
    };
    let rule_index = r.rule_index.or(r.rule.as_ref().and_then(|x| x.index));
    // The rule, with its pointer (a deviation found on it is named there).
    let rule = match rule_index {
        Some(k) if k >= 0 => {
            let rule = usize::try_from(k).ok().and_then(|k| component.rules.get(k));
            if rule.is_none() {
                deviations.push((Deviation::RuleIndexUnknown, format!("{at}/ruleIndex")));
            }
            let at = RuleAt {
                run: run_index,
                extension,
                index: k,
            };
            rule.map(|rule| (rule, at))
        }
        _ => None,
    };
    let message = r
        .message
        .as_ref()
        .and_then(|m| m.text.clone())
        .filter(|text| !text.trim().is_empty());
    let named = r
        .rule_id
        .clone()
        .or_else(|| r.rule.as_ref().and_then(|x| x.id.clone()))
        .or_else(|| rule.as_ref().and_then(|(x, _)| x.id.clone()))
        .filter(|id| !id.trim().is_empty());
    let rule_id = match (named, message.as_deref()) {
        (Some(id), _) => id,
        (None, Some(text)) => {
            deviations.push((Deviation::NoRuleId, format!("{at}/ruleId")));
            derived_rule_id(&run.tool.driver.name, text)
        }
        (None, None) => {
            return Err(Error::invalid(
                &format!("{at}/ruleId"),
                "is required when the result has no message text: the result names neither \
                 its rule nor what it found",
            ));
        }
    };
    let rule = rule.or_else(|| {
        let k = *run.by_id.get(&rule_id)?;
        let at = RuleAt {
            run: run_index,
            extension: None,
            index: i64::try_from(k).ok()?,
        };
        Some((run.tool.driver.rules.get(k)?, at))
    });
    let rule_at = rule.as_ref().map(|(_, at)| *at);
    let rule = rule.map(|(rule, _)| rule);
    let title = message
        .clone()
        .or_else(|| rule.and_then(|x| x.short_description.as_ref()?.text.clone()))
        .unwrap_or_else(|| rule_id.clone());
    let severity = severity(&r, (rule, rule_at), at, &mut deviations);

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
            let field = format!("{at}/locations/0/physicalLocation/region/startLine");
            deviations.push((Deviation::StartLineInvalid, field));
            None
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
        let values = strings(
            std::mem::take(&mut r.partial_fingerprints),
            at,
            "partialFingerprints",
            &mut deviations,
        );
        fingerprint_key("partial", &values)
    } else if !r.fingerprints.is_empty() {
        let fingerprints = std::mem::take(&mut r.fingerprints);
        let values = strings(fingerprints, at, "fingerprints", &mut deviations);
        fingerprint_key("full", &values)
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
        deviations,
    })
}

/// The rule of a result that names none: stable for the same tool and message, so importing
/// the log again finds the same findings.
fn derived_rule_id(tool: &str, message: &str) -> String {
    let digest = Sha256::new()
        .chain_update(tool.as_bytes())
        .chain_update([0])
        .chain_update(message.as_bytes())
        .finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sarif-unnamed-{hex}")
}

/// Fingerprint values as strings: a value that is not one (a tool that nests them) is its
/// JSON text, which is as stable as the log.
fn strings(
    values: BTreeMap<String, serde_json::Value>,
    at: &str,
    field: &str,
    deviations: &mut Vec<(Deviation, String)>,
) -> BTreeMap<String, String> {
    values
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => {
                    let escaped = key.replace('~', "~0").replace('/', "~1");
                    let pointer = format!("{at}/{field}/{escaped}");
                    deviations.push((Deviation::FingerprintNotString, pointer));
                    other.to_string()
                }
            };
            (key, text)
        })
        .collect()
}

/// Where a rule sits in the log: the run, the extension (none for the driver) and its index.
#[derive(Debug, Clone, Copy)]
struct RuleAt {
    run: usize,
    extension: Option<usize>,
    index: i64,
}

impl RuleAt {
    fn pointer(self) -> String {
        let RuleAt {
            run,
            extension,
            index,
        } = self;
        match extension {
            Some(k) => format!("/runs/{run}/tool/extensions/{k}/rules/{index}"),
            None => format!("/runs/{run}/tool/driver/rules/{index}"),
        }
    }
}

fn component_name(tool: &Tool) -> String {
    one_line(&tool.driver.name, 64)
}

/// GitHub code scanning's bands for `security-severity` (a CVSS score), else the level.
fn severity(
    r: &SarifResult,
    (rule, rule_at): (Option<&Rule>, Option<RuleAt>),
    at: &str,
    deviations: &mut Vec<(Deviation, String)>,
) -> Severity {
    let score = [
        (r.properties.as_ref(), None),
        (rule.and_then(|x| x.properties.as_ref()), rule_at),
    ]
    .into_iter()
    .find_map(|(p, owner)| Some((p?.security_severity.as_ref()?, owner)));
    if let Some((score, owner)) = score {
        let value = match score {
            serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
            serde_json::Value::Number(n) => n.as_f64(),
            _ => None,
        }
        .filter(|v| (0.0..=10.0).contains(v));
        match value {
            Some(v) if v >= 9.0 => return Severity::Critical,
            Some(v) if v >= 7.0 => return Severity::High,
            Some(v) if v >= 4.0 => return Severity::Medium,
            Some(v) if v > 0.0 => return Severity::Low,
            Some(_) => return Severity::Info,
            None => {
                let owner = owner.map_or_else(|| at.to_owned(), RuleAt::pointer);
                deviations.push((
                    Deviation::SecuritySeverityNotAScore,
                    format!("{owner}/properties/security-severity"),
                ));
                if let Some(named) = score.as_str().and_then(severity_named) {
                    return named;
                }
            }
        }
    }
    let level = r
        .level
        .as_deref()
        .or_else(|| rule.and_then(|x| x.default_configuration.as_ref()?.level.as_deref()))
        .unwrap_or("warning");
    match level {
        "error" => Severity::High,
        "warning" => Severity::Medium,
        "note" => Severity::Low,
        "none" => Severity::Info,
        _ => {
            deviations.push((Deviation::LevelUnknown, format!("{at}/level")));
            Severity::Medium
        }
    }
}

/// A severity written as its name where a score belongs (Semgrep's `HIGH`).
fn severity_named(name: &str) -> Option<Severity> {
    match name.trim().to_ascii_lowercase().as_str() {
        "critical" => Some(Severity::Critical),
        "high" => Some(Severity::High),
        "medium" | "moderate" => Some(Severity::Medium),
        "low" => Some(Severity::Low),
        "info" | "informational" | "none" => Some(Severity::Info),
        _ => None,
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
