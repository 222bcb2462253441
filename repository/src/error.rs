use sea_orm::{DbErr, RuntimeErr, sqlx};
use uuid::Uuid;
use vega_blobstore::BlobError;

/// Everything a repository method can fail with. Variants say what went wrong in the storage's
/// terms (a handler maps them to its protocol: the example API's `ApiError`), and
/// [`Error::is_retryable`] says whether repeating the call may help.
///
/// Whose fault, by variant:
///
/// - the caller's: [`NotFound`](Error::NotFound), [`Conflict`](Error::Conflict),
///   [`Invalid`](Error::Invalid), [`Forbidden`](Error::Forbidden),
///   [`LeaseLost`](Error::LeaseLost), [`Aborted`](Error::Aborted);
/// - the deployment's: [`SchemaOutdated`](Error::SchemaOutdated) (run the migrations);
/// - a passing condition of the database: [`Unavailable`](Error::Unavailable), retryable;
/// - the database's: [`Database`](Error::Database), an error it returned that none of the
///   above explains;
/// - the blob store's: [`Blob`](Error::Blob);
/// - this library's: [`Internal`](Error::Internal).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The row does not exist .
    #[error("{entity} {key} not found")]
    NotFound {
        /// What was looked for (`"project"`, `"scan"`, ...).
        entity: &'static str,
        /// The key it was looked up by.
        key: String,
    },
    /// The write collides with existing data: a unique key, a foreign key that still has
    /// dependents, or a state change that no longer applies.
    #[error("conflict on {constraint}: {message}")]
    Conflict {
        /// The constraint or rule that refused the write.
        constraint: String,
        /// What it means.
        message: String,
    },
    /// An input field is invalid. Checked before anything is written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, as named in the input struct (or the database constraint that caught it).
        field: String,
        /// Why.
        reason: String,
    },
    /// The worker's lease on the scan is gone: it expired and was rescued, or the scan
    /// was finished or claimed again. The worker must stop and discard its results.
    #[error("lease on scan {scan_id} lost: another worker or the rescuer owns it now")]
    LeaseLost {
        /// The scan.
        scan_id: Uuid,
    },
    /// The database schema is not the one this build expects.
    #[error("{}", schema_mismatch(pending, unknown))]
    SchemaOutdated {
        /// Migrations this build has that the database has not applied.
        pending: Vec<String>,
        /// Migrations the database has applied that this build does not know.
        unknown: Vec<String>,
    },
    /// The database could not do the work now, for a reason that passes: the server is
    /// unreachable or restarting, the connection died, a lock or statement timed out, the
    /// transaction lost a deadlock or serialization check, SQLite was busy. Nothing was
    /// committed; repeating the call may succeed ([`Error::is_retryable`]).
    #[error("database unavailable ({cause}): {message}")]
    Unavailable {
        /// Why, for metrics and for callers that treat causes apart.
        cause: Transient,
        /// The driver's or server's message.
        message: String,
    },
    /// The principal's kind may not do this at all (only workers claim scans, only the system
    /// creates users, ...). Never about a row: a row out of reach is [`Error::NotFound`].
    #[error("{principal} may not {action}")]
    Forbidden {
        /// What was attempted (`"claim scans"`).
        action: &'static str,
        /// The kind of principal that tried (`"a user"`, `"a project key"`, ...).
        principal: &'static str,
    },
    /// A transaction was committed after one of its steps failed: it was rolled back instead,
    /// so no half of it is kept.
    #[error("the transaction was rolled back: one of its steps had failed")]
    Aborted,
    /// Any other database error.
    #[error("database error: {0}")]
    Database(DbErr),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A fault of this library, not of the input, the database or the blob store: a worker
    /// thread of the call ended without its answer. Nothing was committed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The sentence for [`Error::SchemaOutdated`]: what is wrong and the command that fixes it.
fn schema_mismatch(pending: &[String], unknown: &[String]) -> String {
    let count = |n: usize| {
        if n == 1 {
            "1 migration".to_owned()
        } else {
            format!("{n} migrations")
        }
    };
    if unknown.is_empty() {
        format!(
            "the database is {} behind this build: run `vega-migrate up` (pending: {})",
            count(pending.len()),
            pending.join(", ")
        )
    } else {
        format!(
            "the database has {} this build does not know ({}): it was migrated by a newer \
             build; deploy that build, or one that knows them",
            count(unknown.len()),
            unknown.join(", ")
        )
    }
}

/// Repository results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the same call may succeed if repeated later: the database or the blob store
    /// failed for a passing reason. A caller may retry (with backoff); a handler answers 503.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::Blob(err) => err.is_retryable(),
            _ => false,
        }
    }

    /// A short, stable name for the kind of failure (`not_found`, `conflict`, `timeout`,
    /// `connection_lost`, `blob`, ...): a metrics label, and what a handler logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } => "conflict",
            Error::Invalid { .. } => "invalid",
            Error::LeaseLost { .. } => "lease_lost",
            Error::SchemaOutdated { .. } => "schema_outdated",
            Error::Unavailable { cause, .. } => cause.kind(),
            Error::Forbidden { .. } => "forbidden",
            Error::Aborted => "aborted",
            Error::Database(_) => "database",
            Error::Blob(BlobError::Timeout { .. }) => "blob_timeout",
            Error::Blob(_) => "blob",
            Error::Internal(_) => "internal",
        }
    }

    pub(crate) fn unavailable(cause: Transient, message: impl ToString) -> Self {
        Error::Unavailable {
            cause,
            message: message.to_string(),
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// This error with its field named under `at` (`findings[3]` makes `title`
    /// `findings[3].title`); any other error as it is.
    pub(crate) fn within(self, at: &str) -> Self {
        match self {
            Error::Invalid { field, reason } => Error::Invalid {
                field: format!("{at}.{field}"),
                reason,
            },
            other => other,
        }
    }

    pub(crate) fn not_found(entity: &'static str, key: impl ToString) -> Self {
        Error::NotFound {
            entity,
            key: key.to_string(),
        }
    }
}

impl From<DbErr> for Error {
    /// Constraint violations become [`Error::Conflict`] or [`Error::Invalid`] naming the
    /// constraint; every passing failure becomes [`Error::Unavailable`] with its cause.
    fn from(err: DbErr) -> Self {
        let runtime = match &err {
            DbErr::ConnectionAcquire(e) => return Error::unavailable(Transient::Unreachable, e),
            DbErr::Conn(_) => return Error::unavailable(Transient::Unreachable, &err),
            DbErr::Exec(e) | DbErr::Query(e) => e,
            _ => return Error::Database(err),
        };
        let RuntimeErr::SqlxError(sqlx_err) = runtime else {
            return Error::Database(err);
        };
        let transient = |cause| Error::unavailable(cause, sqlx_err);
        match sqlx_err.as_ref() {
            sqlx::Error::Database(db) if statement_lost(db.as_ref()) => {
                Error::Database(DbErr::Custom(format!(
                    "{}: {}",
                    db.message(),
                    vega_config::UNDECLARED_TRANSACTION_POOLER
                )))
            }
            sqlx::Error::Database(db) => match Transient::of_code(
                db.code().as_deref(),
                db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some(),
            ) {
                Some(cause) => transient(cause),
                None => classify(db.as_ref()).unwrap_or(Error::Database(err)),
            },
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                transient(Transient::Timeout)
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                transient(Transient::Unreachable)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => transient(Transient::ConnectionLost),
            _ => Error::Database(err),
        }
    }
}

/// Why a database call failed for a passing reason ([`Error::Unavailable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transient {
    /// No connection could be had within the acquire timeout: the server is down, starting,
    /// refusing connections, or the pool is exhausted.
    Unreachable,
    /// The connection died mid-call, or the server ended the session (restart, failover,
    /// `pg_terminate_backend`, an idle-in-transaction timeout).
    ConnectionLost,
    /// The server is a read-only standby: after a failover, a connection still on the old
    /// writer (SQLSTATE 25006).
    ReadOnly,
    /// A lock or statement waited past its bound (`lock_timeout`, `statement_timeout`, or the
    /// client's own deadline when the server did not answer).
    Timeout,
    /// The transaction lost a deadlock (40P01).
    Deadlock,
    /// The transaction lost a serialization check (40001).
    Serialization,
    /// Another writer held what the transaction needs past its bound: SQLite's database file
    /// (the busy timeout), or a repository's ingest lock on Postgres (`lock_timeout`).
    Busy,
}

impl Transient {
    /// The cause behind a SQLSTATE (Postgres) or a result code (SQLite), when it is passing.
    fn of_code(code: Option<&str>, sqlite: bool) -> Option<Self> {
        let code = code?;
        if sqlite {
            // Extended result codes; the primary code (BUSY 5, LOCKED 6) is the low byte.
            let code = code.parse::<u32>().ok()?;
            return matches!(code & 0xff, 5 | 6).then_some(Transient::Busy);
        }
        Some(match code {
            "40P01" => Transient::Deadlock,
            "40001" => Transient::Serialization,
            "25006" => Transient::ReadOnly,
            "55P03" | "57014" => Transient::Timeout,
            "53300" | "57P03" => Transient::Unreachable,
            "57P01" | "57P02" | "25P03" => Transient::ConnectionLost,
            _ if code.starts_with("08") => Transient::ConnectionLost,
            _ => return None,
        })
    }

    /// The cause as a metrics label.
    fn kind(self) -> &'static str {
        match self {
            Transient::Unreachable => "unreachable",
            Transient::ConnectionLost => "connection_lost",
            Transient::ReadOnly => "read_only",
            Transient::Timeout => "timeout",
            Transient::Deadlock => "deadlock",
            Transient::Serialization => "serialization",
            Transient::Busy => "busy",
        }
    }

    /// True when connections opened before this failure must not be handed out again: they
    /// are dead or point at a server that can no longer take writes.
    pub(crate) fn condemns_connections(self) -> bool {
        matches!(self, Transient::ConnectionLost | Transient::ReadOnly)
    }

    /// True when repeating the whole transaction at once is the cure.
    pub(crate) fn is_conflict(self) -> bool {
        matches!(
            self,
            Transient::Deadlock | Transient::Serialization | Transient::Busy
        )
    }
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transient::Unreachable => "unreachable",
            Transient::ConnectionLost => "connection lost",
            Transient::ReadOnly => "read-only server",
            Transient::Timeout => "timed out",
            Transient::Deadlock => "deadlock",
            Transient::Serialization => "serialization failure",
            Transient::Busy => "database busy",
        })
    }
}

/// A prepared statement missing on the server connection, left there by another client, or
/// another client's under this one's name (its parameters differ): a transaction-mode pooler
/// the settings do not declare. Neither the caller nor a retry can fix it.
fn statement_lost(db: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(db.code().as_deref(), Some("42P05" | "26000" | "08P01"))
        && db.message().contains("prepared statement")
}

/// Maps a constraint violation to a typed error. Postgres reports the constraint's name;
/// SQLite names CHECK constraints in the message and other constraints by their columns.
fn classify(db: &dyn sqlx::error::DatabaseError) -> Option<Error> {
    let message = db.message().to_owned();
    let name = || {
        db.constraint()
            .map(str::to_owned)
            .or_else(|| message.split_once("failed: ").map(|(_, n)| n.to_owned()))
            .unwrap_or_else(|| message.clone())
    };
    match db.kind() {
        sqlx::error::ErrorKind::UniqueViolation => Some(Error::Conflict {
            constraint: name(),
            message: "already exists".into(),
        }),
        sqlx::error::ErrorKind::ForeignKeyViolation => Some(Error::Conflict {
            constraint: name(),
            message: "refers to a row that does not exist, or is still referred to".into(),
        }),
        // An event whose month has no partition (Postgres names no constraint then): the
        // deployment's fault, not the input's.
        sqlx::error::ErrorKind::CheckViolation
            if db.constraint().is_none() && message.starts_with("no partition of relation") =>
        {
            Some(Error::Database(DbErr::Custom(format!(
                "{message}: no monthly partition holds this time; `vega-admin maintain` creates \
                 them ahead (EventArchives::ensure_partitions)"
            ))))
        }
        sqlx::error::ErrorKind::CheckViolation => Some(Error::Invalid {
            field: name(),
            reason: "rejected by the database's check constraint".into(),
        }),
        sqlx::error::ErrorKind::NotNullViolation => Some(Error::Invalid {
            field: name(),
            reason: "is required".into(),
        }),
        _ => None,
    }
}
