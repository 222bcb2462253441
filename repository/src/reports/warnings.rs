//! What an import took with a fallback instead of refusing the log: SARIF 2.1.0 as real tools
//! write it deviates from the spec in ways that leave every result usable (a result with no
//! rule id, a fingerprint that is an object, a `security-severity` that is not a score). Each
//! kind is recorded once per scan with the JSON pointer of its first occurrence and a count.

use std::collections::BTreeMap;

/// A deviation the import took with its documented fallback (README, "Importing SARIF").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Deviation {
    /// No `ruleId`, `rule.id` or rule at `ruleIndex`: the rule is an id derived from the tool
    /// and the message.
    NoRuleId,
    /// `ruleIndex` names no rule of its component: the index is ignored.
    RuleIndexUnknown,
    /// `rule.toolComponent.index` names no extension: the rule is looked up in the driver.
    ToolComponentUnknown,
    /// A `fingerprints` or `partialFingerprints` value that is not a string: its JSON text is
    /// the value.
    FingerprintNotString,
    /// A `security-severity` that is not a CVSS score from 0.0 to 10.0: a severity's name
    /// (`HIGH`, as Semgrep writes) is that severity, anything else leaves it to `level`.
    SecuritySeverityNotAScore,
    /// A `level` other than none, note, warning or error: it counts as `warning`, the spec's
    /// default.
    LevelUnknown,
    /// A `startLine` below 1: the result has no line.
    StartLineInvalid,
    /// A result whose identity (rule, location, fingerprint) repeats an earlier one of the
    /// log: one finding for both.
    DuplicateResult,
}

impl Deviation {
    /// The kind's stable name, as stored and shown.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Deviation::NoRuleId => "no_rule_id",
            Deviation::RuleIndexUnknown => "rule_index_unknown",
            Deviation::ToolComponentUnknown => "tool_component_unknown",
            Deviation::FingerprintNotString => "fingerprint_not_a_string",
            Deviation::SecuritySeverityNotAScore => "security_severity_not_a_score",
            Deviation::LevelUnknown => "level_unknown",
            Deviation::StartLineInvalid => "start_line_invalid",
            Deviation::DuplicateResult => "duplicate_result",
        }
    }
}

/// One kind of deviation an import took, on the scan it completed
/// ([`Reports::import_warnings`](crate::Reports::import_warnings)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportWarning {
    /// The kind (`no_rule_id`, `fingerprint_not_a_string`, `security_severity_not_a_score`,
    /// `level_unknown`, `rule_index_unknown`, `tool_component_unknown`,
    /// `start_line_invalid`, `duplicate_result`).
    pub kind: String,
    /// The JSON pointer of its first occurrence in the log.
    pub pointer: String,
    /// How many times the log has it.
    pub count: u64,
}

/// The deviations of one import, by kind.
#[derive(Debug, Default)]
pub(crate) struct Warnings(BTreeMap<Deviation, (String, u64)>);

impl Warnings {
    pub(crate) fn note(&mut self, deviation: Deviation, pointer: &str) {
        self.0
            .entry(deviation)
            .or_insert_with(|| (pointer.to_owned(), 0))
            .1 += 1;
    }

    /// The warnings, in the kinds' order.
    pub(crate) fn list(&self) -> Vec<ImportWarning> {
        self.0
            .iter()
            .map(|(deviation, (pointer, count))| ImportWarning {
                kind: deviation.kind().to_owned(),
                pointer: pointer.clone(),
                count: *count,
            })
            .collect()
    }
}
