//! Reading a SARIF 2.1.0 log as a stream: one result deserialized at a time by a seeded serde
//! visitor over the document, so memory is one result (and the runs' rules), never the log.
//!
//! A log is read twice from the spooled file. The first pass ([`runs`]) checks the version and
//! collects each run's tool, rules and `originalUriBaseIds` while skipping results (the JSON
//! is still checked), since a run's rules may come after its results. The second pass
//! ([`results`]) maps each result with its run's context. Either names what is wrong by its
//! JSON pointer (`/runs/0/results/17/locations/0`).
//!
//! Only the fields Vega maps are deserialized; anything else (relatedLocations, codeFlows,
//! properties of its own) is skipped, as the spec lets a consumer do.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use vega_entity::{DismissReason, FindingCategory, Severity};

use crate::ingest::Suppression;
use crate::{Error, NewFinding};

/// The only version read.
pub(crate) const VERSION: &str = "2.1.0";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tool {
    driver: Component,
    #[serde(default)]
    extensions: Vec<Component>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Component {
    name: String,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    id: Option<String>,
    short_description: Option<Message>,
    default_configuration: Option<Configuration>,
    properties: Option<Properties>,
}

#[derive(Debug, Default, Deserialize)]
struct Message {
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Configuration {
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Properties {
    #[serde(default)]
    tags: Vec<String>,
    /// A CVSS score, as a string (GitHub's convention) or a number.
    #[serde(rename = "security-severity")]
    security_severity: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactLocation {
    uri: Option<String>,
    uri_base_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    rule_id: Option<String>,
    rule_index: Option<i64>,
    rule: Option<RuleReference>,
    message: Option<Message>,
    level: Option<String>,
    #[serde(default)]
    locations: Vec<Location>,
    #[serde(default)]
    partial_fingerprints: BTreeMap<String, String>,
    #[serde(default)]
    fingerprints: BTreeMap<String, String>,
    #[serde(default)]
    suppressions: Vec<SarifSuppression>,
    properties: Option<Properties>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleReference {
    id: Option<String>,
    index: Option<i64>,
    tool_component: Option<ComponentReference>,
}

#[derive(Debug, Deserialize)]
struct ComponentReference {
    index: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    physical_location: Option<PhysicalLocation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    artifact_location: Option<ArtifactLocation>,
    region: Option<Region>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Region {
    start_line: Option<i64>,
    end_line: Option<i64>,
    snippet: Option<Message>,
}

#[derive(Debug, Deserialize)]
struct SarifSuppression {
    kind: Option<String>,
    status: Option<String>,
    justification: Option<String>,
}

/// What the first pass keeps of a run: enough to map its results.
#[derive(Debug, Default)]
pub(crate) struct Run {
    tool: Tool,
    /// Rule ids of the driver, for results that name a rule by id only.
    by_id: HashMap<String, usize>,
    bases: HashMap<String, ArtifactLocation>,
}

/// A result mapped to a finding, with its place in the log.
pub(crate) struct Mapped {
    pub finding: NewFinding,
    pub suppression: Option<Suppression>,
    /// `/runs/{run}/results/{index}`, for naming a field that fails validation.
    pub pointer: String,
}

/// What a pass does with the parts of a run.
enum Pass<'a> {
    Runs(Vec<Run>),
    Results {
        runs: &'a [Run],
        sink: &'a mut dyn FnMut(Mapped) -> crate::Result<()>,
    },
}

struct State<'a> {
    pass: Pass<'a>,
    version: Option<String>,
    saw_runs: bool,
    /// The deepest place reached, for naming a JSON syntax error.
    at: String,
    /// The error a seed raised (serde's own error type cannot carry ours).
    failure: Option<Error>,
}

impl State<'_> {
    fn fail<E: de::Error>(&mut self, error: Error) -> E {
        let message = error.to_string();
        self.failure = Some(error);
        E::custom(message)
    }
}

/// Pass one: checks the version and the JSON and returns each run's context.
pub(crate) fn runs(reader: impl Read) -> crate::Result<Vec<Run>> {
    let mut state = State {
        pass: Pass::Runs(Vec::new()),
        version: None,
        saw_runs: false,
        at: String::new(),
        failure: None,
    };
    read(reader, &mut state)?;
    match state.version.as_deref() {
        Some(VERSION) => {}
        Some(other) => {
            return Err(Error::invalid(
                "/version",
                format!("must be \"{VERSION}\" (got \"{other}\")"),
            ));
        }
        None => return Err(Error::invalid("/version", "is required")),
    }
    if !state.saw_runs {
        return Err(Error::invalid("/runs", "is required"));
    }
    match state.pass {
        Pass::Runs(runs) => Ok(runs),
        Pass::Results { .. } => Ok(Vec::new()),
    }
}

/// Pass two: maps every result of the log, in order, into `sink`.
pub(crate) fn results(
    reader: impl Read,
    runs: &[Run],
    sink: &mut dyn FnMut(Mapped) -> crate::Result<()>,
) -> crate::Result<()> {
    let mut state = State {
        pass: Pass::Results { runs, sink },
        version: None,
        saw_runs: false,
        at: String::new(),
        failure: None,
    };
    read(reader, &mut state)
}

fn read(reader: impl Read, state: &mut State<'_>) -> crate::Result<()> {
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 * 1024, reader));
    let outcome = LogSeed(state).deserialize(&mut de).and_then(|()| de.end());
    match outcome {
        Ok(()) => Ok(()),
        Err(err) => Err(state.failure.take().unwrap_or_else(|| {
            let at = if state.at.is_empty() { "/" } else { &state.at };
            if err.is_io() {
                Error::invalid(at, format!("could not be read: {err}"))
            } else {
                Error::invalid(at, format!("is not a SARIF log: {err}"))
            }
        })),
    }
}

/// Deserializes a `T` at `at`, naming a bad field by its pointer below `at`.
struct Tracked<'s, 'a, T> {
    state: &'s mut State<'a>,
    at: String,
    _t: std::marker::PhantomData<T>,
}

impl<'s, 'a, T> Tracked<'s, 'a, T> {
    fn new(state: &'s mut State<'a>, at: String) -> Self {
        Self {
            state,
            at,
            _t: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Tracked<'_, '_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let mut pointer = self.at.clone();
            for segment in err.path().iter() {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
                    Segment::Map { key } => {
                        pointer.push('/');
                        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    }
                    Segment::Enum { variant } => pointer.push_str(&format!("/{variant}")),
                    Segment::Unknown => {}
                }
            }
            let message = err.inner().to_string();
            // Keep serde's "at line L column C" out of the field's message: the pointer says where.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned();
            self.state.fail(Error::invalid(&pointer, message))
        })
    }
}

struct LogSeed<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for LogSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LogSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SARIF log (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "version" => {
                    state.version =
                        Some(map.next_value_seed(Tracked::new(state, "/version".into()))?);
                }
                "runs" => {
                    state.saw_runs = true;
                    state.at = "/runs".into();
                    map.next_value_seed(RunsSeed(state))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct RunsSeed<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for RunsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RunsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of runs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.0;
        let mut index = 0;
        loop {
            state.at = format!("/runs/{index}");
            if let Pass::Runs(runs) = &mut state.pass {
                runs.push(Run::default());
            }
            if seq.next_element_seed(RunSeed { state, index })?.is_none() {
                if let Pass::Runs(runs) = &mut state.pass {
                    runs.pop();
                }
                return Ok(());
            }
            index += 1;
        }
    }
}

struct RunSeed<'s, 'a> {
    state: &'s mut State<'a>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for RunSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RunSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a run (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (state, i) = (self.state, self.index);
        let mut saw_tool = false;
        while let Some(key) = map.next_key::<String>()? {
            let collecting = matches!(state.pass, Pass::Runs(_));
            match key.as_str() {
                "tool" if collecting => {
                    saw_tool = true;
                    let tool: Tool =
                        map.next_value_seed(Tracked::new(state, format!("/runs/{i}/tool")))?;
                    if let Pass::Runs(runs) = &mut state.pass
                        && let Some(run) = runs.last_mut()
                    {
                        run.by_id = tool
                            .driver
                            .rules
                            .iter()
                            .enumerate()
                            .filter_map(|(k, r)| Some((r.id.clone()?, k)))
                            .collect();
                        run.tool = tool;
                    }
                }
                "originalUriBaseIds" if collecting => {
                    let bases: HashMap<String, ArtifactLocation> = map.next_value_seed(
                        Tracked::new(state, format!("/runs/{i}/originalUriBaseIds")),
                    )?;
                    if let Pass::Runs(runs) = &mut state.pass
                        && let Some(run) = runs.last_mut()
                    {
                        run.bases = bases;
                    }
                }
                "results" => {
                    map.next_value_seed(ResultsSeed { state, run: i })?;
                }
                _ => {
                    if key == "tool" {
                        saw_tool = true;
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
            state.at = format!("/runs/{i}");
        }
        if !saw_tool {
            return Err(state.fail(Error::invalid(&format!("/runs/{i}/tool"), "is required")));
        }
        Ok(())
    }
}

struct ResultsSeed<'s, 'a> {
    state: &'s mut State<'a>,
    run: usize,
}

impl<'de> DeserializeSeed<'de> for ResultsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ResultsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of results, or null")
    }

    /// `"results": null`: the tool did not run; nothing to ingest.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (state, run) = (self.state, self.run);
        let mut index = 0usize;
        loop {
            let at = format!("/runs/{run}/results/{index}");
            state.at.clone_from(&at);
            if matches!(state.pass, Pass::Runs(_)) {
                // Pass one checks the JSON only (the rules may come later).
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                index += 1;
                continue;
            }
            let Some(result) =
                seq.next_element_seed(Tracked::<SarifResult>::new(state, at.clone()))?
            else {
                return Ok(());
            };
            let Pass::Results { runs, sink } = &mut state.pass else {
                return Ok(());
            };
            let mapped = runs
                .get(run)
                .ok_or_else(|| Error::invalid(&at, "belongs to no run of the first pass"))
                .and_then(|r| map(r, run, index, &at, result))
                .and_then(&mut **sink);
            if let Err(err) = mapped {
                return Err(state.fail(err));
            }
            index += 1;
        }
    }
}

/// A result as a finding (see `sarif/mod.rs` for the mapping).
fn map(
    run: &Run,
    run_index: usize,
    index: usize,
    at: &str,
    r: SarifResult,
) -> crate::Result<Mapped> {
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
fn severity(r: &SarifResult, rule: Option<&Rule>, at: &str) -> crate::Result<Severity> {
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
