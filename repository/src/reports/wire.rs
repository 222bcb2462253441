//! The SARIF 2.1.0 wire model: only the fields Vega maps, as serde reads them. Anything
//! else (relatedLocations, codeFlows, properties of its own) is skipped, as the spec lets a
//! consumer do.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Tool {
    pub(crate) driver: Component,
    #[serde(default)]
    pub(crate) extensions: Vec<Component>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Component {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) rules: Vec<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Rule {
    pub(crate) id: Option<String>,
    pub(crate) short_description: Option<Message>,
    pub(crate) default_configuration: Option<Configuration>,
    pub(crate) properties: Option<Properties>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Message {
    pub(crate) text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Configuration {
    pub(crate) level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Properties {
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    /// A CVSS score, as a string (GitHub's convention) or a number.
    #[serde(rename = "security-severity")]
    pub(crate) security_severity: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ArtifactLocation {
    pub(crate) uri: Option<String>,
    pub(crate) uri_base_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SarifResult {
    pub(crate) rule_id: Option<String>,
    pub(crate) rule_index: Option<i64>,
    pub(crate) rule: Option<RuleReference>,
    pub(crate) message: Option<Message>,
    pub(crate) level: Option<String>,
    #[serde(default)]
    pub(crate) locations: Vec<Location>,
    /// Strings by the spec; some tools nest objects (`Deviation::FingerprintNotString`).
    #[serde(default)]
    pub(crate) partial_fingerprints: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub(crate) fingerprints: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub(crate) suppressions: Vec<SarifSuppression>,
    pub(crate) properties: Option<Properties>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleReference {
    pub(crate) id: Option<String>,
    pub(crate) index: Option<i64>,
    pub(crate) tool_component: Option<ComponentReference>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ComponentReference {
    pub(crate) index: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Location {
    pub(crate) physical_location: Option<PhysicalLocation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PhysicalLocation {
    pub(crate) artifact_location: Option<ArtifactLocation>,
    pub(crate) region: Option<Region>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Region {
    pub(crate) start_line: Option<i64>,
    pub(crate) end_line: Option<i64>,
    pub(crate) snippet: Option<Message>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SarifSuppression {
    pub(crate) kind: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) justification: Option<String>,
}

/// What the first pass keeps of a run: enough to map its results.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) tool: Tool,
    /// Rule ids of the driver, for results that name a rule by id only.
    pub(crate) by_id: HashMap<String, usize>,
    pub(crate) bases: HashMap<String, ArtifactLocation>,
}
