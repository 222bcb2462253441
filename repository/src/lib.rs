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
//!
//! The modules are rooms by concern (`db`, `context`, `objects`, `activity`, `accounts`,
//! `findings`, `sources`, `queue`, `reports`), in that import order: ARCHITECTURE.md maps
//! them, and a test holds every `use crate::` to the order. This file only re-exports the
//! public API, grouped by room.

mod accounts;
mod activity;
mod context;
mod db;
mod error;
mod findings;
mod leader_leases;
mod metrics;
mod objects;
mod queue;
mod reports;
mod session;
mod sources;
mod store;

// The store, its sessions, and errors.
pub use error::{Error, Result, Transient};
pub use session::{Session, Transaction, Work};
pub use store::{ServerTimeouts, Store};
pub use vega_blobstore::BlobError;
pub use vega_config::PoolOptions;

// db: pages of every list, and the read replica.
pub use db::page::{MAX_PAGE_SIZE, Page};
pub use db::replica::{ReaderStatus, ReplicaKind, ReplicaState, WritePosition};

// context: who acts, and the audit trail's catalog.
pub use context::principal::{Principal, PrincipalKind};
pub use context::trail::Action;

// objects.
pub use objects::artifacts::{Artifacts, PresignedUpload, ScanObject};
pub use objects::maintenance::{GcOptions, GcReport, IntegrityReport, PurgeFailure, PurgeReport};

// activity.
pub use activity::events::{EventCursor, EventFeed, Events, NewEvent};
pub use activity::retention::{
    ArchivedBatch, EventArchives, MAX_ARCHIVE_EVENTS, Retired, Retirement,
};
pub use activity::usage::{MeterTotal, NewUsage, Recorded, Usage};

// accounts.
pub use accounts::api_keys::{ApiKeys, IssuedKey, LAST_USED_THROTTLE, NewApiKey, SCOPES};
pub use accounts::token::ApiToken;
pub use accounts::users::{NewUser, Users};
pub use accounts::workers::{IssuedCredential, WorkerBeat, WorkerCredential, Workers};

// findings.
pub use findings::fingerprint::{FINGERPRINT_VERSION, fingerprint};
pub use findings::ingest::NewFinding;
pub use findings::reads::{
    Delta, FindingCursor, Findings, ScanFinding, SeverityCounts, Sighting, Sightings,
};
pub use findings::sla::{Overdue, SlaPolicy};
pub use findings::triage::{Dismissal, TriageState};

// sources.
pub use sources::projects::{LatestScan, NewProject, ProjectSummary, Projects};
pub use sources::repositories::{NewRepository, Repositories};
pub use sources::snapshots::{NewSnapshot, Snapshots};

// queue.
pub use queue::lease::{Claim, Heartbeat, Lease, Rescued};
pub use queue::scans::{CancelOutcome, NewScan, RETRY_ATTEMPTS, Scans};
pub use queue::view::{FailedScan, QueueDepth, QueueSummary, WorkerLoad};

// reports.
pub use reports::import::Reports;
pub use reports::progress::ImportProgress;
pub use reports::warnings::ImportWarning;

// Leader leases of singleton jobs.
pub use leader_leases::LeaderLeases;
