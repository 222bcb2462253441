//! Status literals in the repositories' SQL are values of their enums (`vega_entity`).
//!
//! The SQL keeps them as literals rather than bound parameters on purpose: a partial index
//! (`WHERE status = 'queued'`, `WHERE status = 'open'`) serves a cached generic plan only
//! when the statement's own predicate implies the index's, which a parameter cannot. This
//! test is what ties each literal to its enum, so a renamed or misspelt state fails here
//! instead of silently matching nothing.

use std::path::Path;

use vega_entity::{ArtifactState, FindingStatus, OccurrenceChange, ScanStatus, SnapshotStatus};

#[test]
fn every_status_literal_in_sql_is_a_value_of_its_enum() {
    let known: Vec<&str> = ScanStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(FindingStatus::ALL.iter().map(|s| s.as_str()))
        .chain(SnapshotStatus::ALL.iter().map(|s| s.as_str()))
        .chain(ArtifactState::ALL.iter().map(|s| s.as_str()))
        .chain(OccurrenceChange::ALL.iter().map(|s| s.as_str()))
        .collect();
    let files = vega_tests::rust_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut checked = 0;
    let mut unknown = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for column in ["status", "state", "change"] {
            for op in [" = '", " <> '"] {
                let needle = format!("{column}{op}");
                for (at, _) in text.match_indices(&needle) {
                    let rest = &text[at + needle.len()..];
                    let literal = &rest[..rest.find('\'').unwrap()];
                    checked += 1;
                    if !known.contains(&literal) {
                        unknown.push(format!("{}: {column} '{literal}'", file.display()));
                    }
                }
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} literals: is the scan looking in the right place?"
    );
    assert!(unknown.is_empty(), "literals no enum knows: {unknown:#?}");
}
