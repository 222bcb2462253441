//! Object keys: validated once, built in one place.
//!
//! Every object of a project lives under `projects/{project_id}/`, so a project's objects share
//! one prefix (for listing, lifecycle rules and IAM scoping). Keys are never reused: each names
//! a fresh UUIDv7 (a snapshot, a scan, an artifact). A deployment-wide prefix
//! (`VEGA_S3_PREFIX`) is applied by the S3 backend and is not part of the key.

use std::fmt;

use uuid::Uuid;

use crate::BlobError;

/// A validated object key: relative, `/`-separated, no empty, `.` or `..` segments, no
/// backslash, NUL or control characters, at most 1,024 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `key`.
    pub fn parse(key: impl Into<String>) -> Result<Self, BlobError> {
        let key = key.into();
        let invalid = |reason: &str| BlobError::InvalidKey {
            key: key.escape_debug().to_string(),
            reason: reason.to_owned(),
        };
        if key.is_empty() || key.len() > 1024 {
            return Err(invalid("must be 1 to 1024 bytes"));
        }
        if key.starts_with('/') {
            return Err(invalid("must be relative"));
        }
        if key.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(invalid(
                "must not contain backslashes or control characters",
            ));
        }
        if key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(invalid("must not have empty, `.` or `..` segments"));
        }
        Ok(Self(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A snapshot's source archive.
    pub fn snapshot_archive(project_id: Uuid, snapshot_id: Uuid) -> Self {
        Self(format!(
            "projects/{project_id}/snapshots/{snapshot_id}/source.tar.gz"
        ))
    }

    /// A scan's report.
    pub fn scan_report(project_id: Uuid, scan_id: Uuid) -> Self {
        Self(format!("projects/{project_id}/scans/{scan_id}/report.json"))
    }

    /// A scan's JSON event log.
    pub fn scan_event_log(project_id: Uuid, scan_id: Uuid) -> Self {
        Self(format!(
            "projects/{project_id}/scans/{scan_id}/events.jsonl"
        ))
    }

    /// One of a scan's debug bundles.
    pub fn debug_bundle(project_id: Uuid, scan_id: Uuid, artifact_id: Uuid) -> Self {
        Self(format!(
            "projects/{project_id}/scans/{scan_id}/debug/{artifact_id}.tar.gz"
        ))
    }

    /// A batch of archived events: one project's (or, for events of no project, `global`)
    /// events of one UTC day. Archives live outside `projects/`, because the audit log
    /// outlives the projects it mentions.
    pub fn event_archive(
        project_id: Option<Uuid>,
        (year, month, day): (i32, u32, u32),
        archive_id: Uuid,
    ) -> Self {
        let owner = project_id.map_or_else(|| "global".to_owned(), |p| p.to_string());
        Self(format!(
            "{}{owner}/{year:04}-{month:02}-{day:02}/{archive_id}.jsonl.gz",
            Self::EVENTS_PREFIX
        ))
    }

    /// The prefix of every event archive.
    pub const EVENTS_PREFIX: &str = "events/";

    /// The prefix all of a project's objects share.
    pub fn project_prefix(project_id: Uuid) -> String {
        format!("projects/{project_id}/")
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "../x",
            "a//b",
            "a/./b",
            "a\\b",
            "a\0b",
            "trailing/",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::parse("x".repeat(1025)).is_err());
        assert!(ObjectKey::parse("projects/p/scans/s/report.json").is_ok());
    }

    #[test]
    fn built_keys_are_valid_and_share_the_project_prefix() {
        let (p, s) = (Uuid::now_v7(), Uuid::now_v7());
        for key in [
            ObjectKey::snapshot_archive(p, s),
            ObjectKey::scan_report(p, s),
            ObjectKey::scan_event_log(p, s),
            ObjectKey::debug_bundle(p, s, Uuid::now_v7()),
        ] {
            assert_eq!(ObjectKey::parse(key.as_str()).unwrap(), key);
            assert!(key.as_str().starts_with(&ObjectKey::project_prefix(p)));
        }
        for project in [Some(p), None] {
            let key = ObjectKey::event_archive(project, (2026, 3, 7), s);
            assert_eq!(ObjectKey::parse(key.as_str()).unwrap(), key);
            assert!(key.as_str().starts_with(ObjectKey::EVENTS_PREFIX));
            assert!(key.as_str().contains("/2026-03-07/"));
        }
    }
}
