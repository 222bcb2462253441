//! Finding identity.
//!
//! A finding is the same finding across scans when its fingerprint is the same. The fingerprint
//! is SHA-256 over a versioned recipe of what identifies the issue and **not** where it sits:
//!
//! ```text
//! "v1" 0x00 category 0x00 scanner 0x00 rule_id 0x00 normalized_path 0x00 location_key
//! ```
//!
//! - `normalized_path`: forward slashes, no leading `./`, no repeated `/`.
//! - `location_key`: what tells two matches of one rule in one file apart without line numbers:
//!   the tool's stable match id (Semgrep's `match_based_id`), a hash of the matched snippet, for
//!   secrets the secret's own hash (never the secret), for dependencies
//!   `package@version advisory`.
//!
//! Line numbers are left out so that code moving up or down a file keeps its findings. The
//! version prefix means a future recipe can be back-filled as `v2` without colliding with `v1`.

use sha2::{Digest, Sha256};
use vega_entity::FindingCategory;

/// The recipe version hashed into every fingerprint.
pub const FINGERPRINT_VERSION: &str = "v1";

/// The fingerprint of a finding (see the module docs for the recipe).
pub fn fingerprint(
    category: FindingCategory,
    scanner: &str,
    rule_id: &str,
    path: Option<&str>,
    location_key: &str,
) -> [u8; 32] {
    let path = path.map(normalize_path).unwrap_or_default();
    let mut hasher = Sha256::new();
    for part in [
        FINGERPRINT_VERSION,
        category.as_str(),
        scanner,
        rule_id,
        &path,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.update(location_key.as_bytes());
    hasher.finalize().into()
}

fn normalize_path(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut normalized = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if !normalized.is_empty() {
            normalized.push('/');
        }
        normalized.push_str(segment);
    }
    normalized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_spelling_does_not_change_identity() {
        let a = fingerprint(
            FindingCategory::Sast,
            "semgrep",
            "r1",
            Some("./src//app.py"),
            "k",
        );
        let b = fingerprint(
            FindingCategory::Sast,
            "semgrep",
            "r1",
            Some("src\\app.py"),
            "k",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn every_part_counts_and_parts_do_not_run_together() {
        let base = fingerprint(FindingCategory::Sast, "semgrep", "r1", Some("a.py"), "k");
        assert_ne!(
            base,
            fingerprint(FindingCategory::Secret, "semgrep", "r1", Some("a.py"), "k")
        );
        assert_ne!(
            base,
            fingerprint(FindingCategory::Sast, "gitleaks", "r1", Some("a.py"), "k")
        );
        assert_ne!(
            base,
            fingerprint(FindingCategory::Sast, "semgrep", "r2", Some("a.py"), "k")
        );
        assert_ne!(
            base,
            fingerprint(FindingCategory::Sast, "semgrep", "r1", Some("b.py"), "k")
        );
        assert_ne!(
            base,
            fingerprint(FindingCategory::Sast, "semgrep", "r1", Some("a.py"), "j")
        );
        // "r1" + "a.py" must not equal "r1a" + ".py".
        assert_ne!(
            base,
            fingerprint(FindingCategory::Sast, "semgrep", "r1a", Some(".py"), "k")
        );
    }
}
