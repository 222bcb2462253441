//! Vega's repositories: typed operations over the metadata database, one struct per table,
//! reached from a [`Store`].
//!
//! ```no_run
//! # async fn demo() -> vega_repository::Result<()> {
//! use vega_repository::Store;
//! let settings = vega_config::Settings::from_env().expect("settings");
//! let store = Store::connect(&settings).await?;
//! let claims = store.scans().claim_next("worker-1", 1, std::time::Duration::from_secs(60)).await?;
//! # Ok(()) }
//! ```
//!
//! Conventions every method follows:
//!
//! - inputs are small structs, validated before any statement runs; a bad field is
//!   [`Error::Invalid`] naming it, and nothing is written;
//! - a method is one statement or one transaction, so a failure leaves no partial state;
//! - constraint violations come back as [`Error::Conflict`] / [`Error::Invalid`] naming the
//!   constraint, never as an opaque database error;
//! - lists are keyset-paginated ([`Page`]), never by offset;
//! - every method runs in a `tracing` span named `table.method`;
//! - SQL that both engines accept is written once; where Postgres has a better tool
//!   (`FOR UPDATE SKIP LOCKED`) it is used there, with a correct SQLite form beside it.

mod api_keys;
mod artifacts;
mod audit;
mod db;
mod error;
mod event_archives;
mod events;
mod findings;
mod fingerprint;
mod ingest;
mod leases;
mod metrics;
mod monitor;
mod page;
mod pool;
mod principal;
mod projects;
mod queue_view;
mod repositories;
mod sarif;
mod scans;
mod session;
mod snapshots;
mod sql;
mod store;
mod token;
mod usage;
mod users;
mod validate;
mod workers;

pub use api_keys::{ApiKeys, IssuedKey, LAST_USED_THROTTLE, NewApiKey, SCOPES};
pub use artifacts::{
    Artifacts, AuditReport, GcOptions, GcReport, PresignedUpload, PurgeFailure, PurgeReport,
    ScanObject,
};
pub use audit::Action;
pub use error::{Error, Result, Transient};
pub use event_archives::{ArchivedBatch, EventArchives, MAX_ARCHIVE_EVENTS};
pub use events::{EventCursor, EventFeed, Events, NewEvent};
pub use findings::{
    Delta, Dismissal, FindingCursor, Findings, Overdue, ScanFinding, SeverityCounts, SlaPolicy,
    TriageState,
};
pub use fingerprint::{FINGERPRINT_VERSION, fingerprint};
pub use ingest::NewFinding;
pub use leases::Leases;
pub use page::{MAX_PAGE_SIZE, Page};
pub use principal::{Principal, PrincipalKind};
pub use projects::{LatestScan, NewProject, ProjectSummary, Projects};
pub use queue_view::{FailedScan, QueueDepth, QueueSummary, WorkerLoad};
pub use repositories::{NewRepository, Repositories};
pub use sarif::Reports;
pub use scans::{CancelOutcome, Claim, Heartbeat, Lease, NewScan, RETRY_ATTEMPTS, Rescued, Scans};
pub use session::{Session, Transaction, Work};
pub use snapshots::{NewSnapshot, Snapshots};
pub use store::{ServerTimeouts, Store};
pub use token::ApiToken;
pub use usage::{MeterTotal, NewUsage, Recorded, Usage};
pub use users::{NewUser, Users};
pub use vega_blobstore::BlobError;
pub use vega_config::PoolOptions;
pub use workers::{IssuedCredential, WorkerBeat, WorkerCredential, Workers};
