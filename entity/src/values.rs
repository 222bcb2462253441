//! The closed sets of values that text columns hold, one Rust enum per CHECK constraint, and
//! the severity ordinal. Hand-written; regeneration never touches this file.
//!
//! Each enum's strings must match the `one_of(...)` list of its column in `migration/`; the
//! repository tests write every value of every enum, so a mismatch fails there.

use std::fmt;
use std::str::FromStr;

/// A string that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}; expected one of: {expected}")]
pub struct UnknownValue {
    /// Which enum.
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
    /// The accepted values, comma-separated.
    pub expected: String,
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownValue {
                        kind: stringify!($name),
                        value: s.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}

text_enum! {
    /// `users.status`.
    UserStatus {
        /// May sign in and act.
        Active = "active",
        /// Blocked by an administrator.
        Suspended = "suspended",
        /// Deleted by request; kept for billing and audit.
        Deleted = "deleted",
    }
}

text_enum! {
    /// `repositories.provider`.
    Provider {
        /// GitHub.
        Github = "github",
        /// GitLab.
        Gitlab = "gitlab",
        /// Bitbucket.
        Bitbucket = "bitbucket",
        /// Any git remote.
        Git = "git",
        /// Source uploaded as an archive.
        Upload = "upload",
    }
}

text_enum! {
    /// `snapshots.status`.
    SnapshotStatus {
        /// Created; its archive is not stored yet.
        Pending = "pending",
        /// Its archive is stored and verified.
        Ready = "ready",
        /// Fetching the source failed.
        Failed = "failed",
        /// Past its retention; the archive may be gone.
        Expired = "expired",
        /// Deleted by request.
        Deleted = "deleted",
    }
}

text_enum! {
    /// `scans.kind`: which scanners run. Only `full` scans may mark findings fixed.
    ScanKind {
        /// Every scanner.
        Full = "full",
        /// Static analysis only.
        Sast = "sast",
        /// Secret detection only.
        Secrets = "secrets",
        /// Dependency (software composition) analysis only.
        Sca = "sca",
        /// Infrastructure-as-code checks only.
        Iac = "iac",
    }
}

text_enum! {
    /// `scans.trigger_kind`: what asked for the scan.
    TriggerKind {
        /// A person, in the UI.
        Manual = "manual",
        /// An API client.
        Api = "api",
        /// A schedule.
        Schedule = "schedule",
        /// A provider webhook (push, pull request).
        Webhook = "webhook",
    }
}

text_enum! {
    /// `scans.status`, the queue state.
    ScanStatus {
        /// Waiting for a worker.
        Queued = "queued",
        /// Claimed by a worker that holds a lease.
        Running = "running",
        /// Finished with results.
        Succeeded = "succeeded",
        /// Finished without results (error, or out of attempts).
        Failed = "failed",
        /// Canceled before it finished.
        Canceled = "canceled",
    }
}

text_enum! {
    /// `findings.category`.
    FindingCategory {
        /// Static analysis.
        Sast = "sast",
        /// A leaked secret.
        Secret = "secret",
        /// A vulnerable dependency.
        Dependency = "dependency",
        /// Infrastructure as code.
        Iac = "iac",
        /// Configuration.
        Config = "config",
    }
}

text_enum! {
    /// `findings.status`.
    FindingStatus {
        /// Present in the latest scan of the default branch that could see it (or, never seen
        /// there, on the branch that saw it). A confirmed finding is open with `confirmed_at`.
        Open = "open",
        /// Absent from a full scan of the default branch.
        Fixed = "fixed",
        /// Dismissed by a person; stays dismissed when seen again.
        Dismissed = "dismissed",
    }
}

text_enum! {
    /// `findings.dismissed_reason`.
    DismissReason {
        /// Not a real issue.
        FalsePositive = "false_positive",
        /// Real, and accepted.
        AcceptedRisk = "accepted_risk",
        /// Does not apply to this code.
        NotApplicable = "not_applicable",
        /// Only in test code.
        UsedInTests = "used_in_tests",
        /// Real, and will not be fixed.
        WontFix = "wont_fix",
    }
}

text_enum! {
    /// `sighting_runs.change`: how a scan's sighting relates to the finding's history.
    OccurrenceChange {
        /// First seen in this scan.
        New = "new",
        /// Seen before and still open (or dismissed).
        Existing = "existing",
        /// Had been fixed and is back.
        Reopened = "reopened",
    }
}

text_enum! {
    /// `artifacts.state`: the row/object protocol's two steps.
    ArtifactState {
        /// The row exists; the object is being uploaded (or the upload died).
        Pending = "pending",
        /// The object is stored and its size and SHA-256 recorded.
        Committed = "committed",
    }
}

text_enum! {
    /// `artifacts.kind`.
    ArtifactKind {
        /// A snapshot's source archive.
        SourceArchive = "source_archive",
        /// A scan's report.
        ScanReport = "scan_report",
        /// A scan's JSON event log.
        EventLog = "event_log",
        /// A scan's debug bundle.
        DebugBundle = "debug_bundle",
    }
}

text_enum! {
    /// `events.actor_type`.
    ActorType {
        /// A signed-in user.
        User = "user",
        /// An API key.
        ApiKey = "api_key",
        /// A scan worker.
        Worker = "worker",
        /// Vega itself (rescuer, retention).
        System = "system",
    }
}

text_enum! {
    /// `api_keys.revoked_reason`.
    RevokeReason {
        /// Revoked by its owner.
        User = "user",
        /// Replaced by a rotated key.
        Rotated = "rotated",
        /// Reported leaked.
        Leaked = "leaked",
        /// Revoked by an administrator.
        Admin = "admin",
        /// Revoked after expiry.
        Expired = "expired",
    }
}

text_enum! {
    /// `usage_records.meter`.
    Meter {
        /// Scans run.
        Scans = "scans",
        /// Worker seconds spent scanning.
        ScanSeconds = "scan_seconds",
        /// Lines of code scanned.
        LocScanned = "loc_scanned",
        /// Stored bytes × hours.
        StorageByteHours = "storage_byte_hours",
    }
}

/// A finding's severity, stored as a `smallint` ordinal so that `ORDER BY severity DESC` means
/// worst first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The scanner did not say.
    Unknown = 0,
    /// Informational.
    Info = 1,
    /// Low.
    Low = 2,
    /// Medium.
    Medium = 3,
    /// High.
    High = 4,
    /// Critical.
    Critical = 5,
}

impl Severity {
    /// Every severity, least severe first.
    pub const ALL: [Severity; 6] = [
        Severity::Unknown,
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The stored ordinal.
    pub fn as_i16(self) -> i16 {
        self as i16
    }

    /// The name, as serialized (`critical`, `high`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The severity of a stored ordinal; `None` outside 0..=5.
    pub fn from_i16(value: i16) -> Option<Self> {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_round_trip_and_unknown_ones_are_named() {
        for status in ScanStatus::ALL {
            assert_eq!(status.as_str().parse::<ScanStatus>(), Ok(*status));
        }
        let err = "exploded".parse::<ScanStatus>().unwrap_err();
        assert!(err.to_string().contains("queued, running"), "{err}");
        assert_eq!(
            serde_json::to_string(&DismissReason::FalsePositive).unwrap(),
            "\"false_positive\""
        );
    }

    #[test]
    fn severity_ordinals() {
        for s in Severity::ALL {
            assert_eq!(Severity::from_i16(s.as_i16()), Some(s));
        }
        assert_eq!(Severity::from_i16(6), None);
        assert_eq!(Severity::from_i16(-1), None);
        assert!(Severity::Critical > Severity::High);
    }
}
