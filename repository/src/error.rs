use sea_orm::{DbErr, RuntimeErr, sqlx};
use uuid::Uuid;
use vega_blobstore::BlobError;

/// Everything a repository method can fail with. Each variant maps to one HTTP status
/// ([`Error::http_status`]) so handlers can translate errors without inspecting messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The row does not exist (404).
    #[error("{entity} {key} not found")]
    NotFound {
        /// What was looked for (`"project"`, `"scan"`, ...).
        entity: &'static str,
        /// The key it was looked up by.
        key: String,
    },
    /// The write collides with existing data (409): a unique key, a foreign key that still has
    /// dependents, or a state change that no longer applies.
    #[error("conflict on {constraint}: {message}")]
    Conflict {
        /// The constraint or rule that refused the write.
        constraint: String,
        /// What it means.
        message: String,
    },
    /// An input field is invalid (422). Checked before anything is written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, as named in the input struct (or the database constraint that caught it).
        field: String,
        /// Why.
        reason: String,
    },
    /// The worker's lease on the scan is gone (409): it expired and was rescued, or the scan
    /// was finished or claimed again. The worker must stop and discard its results.
    #[error("lease on scan {scan_id} lost: another worker or the rescuer owns it now")]
    LeaseLost {
        /// The scan.
        scan_id: Uuid,
    },
    /// The database schema is not the one this build expects (503 at start-up).
    #[error(
        "database schema does not match this build (pending: [{}], unknown: [{}]); run \
         `vega-migrate up` before starting (or deploy the build that knows the unknown versions)",
        pending.join(", "), unknown.join(", ")
    )]
    SchemaOutdated {
        /// Migrations this build has that the database has not applied.
        pending: Vec<String>,
        /// Migrations the database has applied that this build does not know.
        unknown: Vec<String>,
    },
    /// The database cannot be reached or the pool is exhausted (503); retrying may help.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other database error (500).
    #[error("database error: {0}")]
    Database(DbErr),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Repository results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status code that fits this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NotFound { .. } => 404,
            Error::Conflict { .. } | Error::LeaseLost { .. } => 409,
            Error::Invalid { .. } => 422,
            Error::SchemaOutdated { .. } | Error::Unavailable(_) => 503,
            Error::Database(_) => 500,
            Error::Blob(err) => match err {
                BlobError::NotFound { .. } => 404,
                BlobError::AlreadyExists { .. } => 409,
                BlobError::InvalidKey { .. } => 422,
                BlobError::Unsupported(..) => 501,
                BlobError::Integrity { .. } => 500,
                BlobError::Io(_) | BlobError::S3 { .. } => 503,
            },
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
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
    /// constraint; pool and connection failures become [`Error::Unavailable`].
    fn from(err: DbErr) -> Self {
        let runtime = match &err {
            DbErr::ConnectionAcquire(e) => return Error::Unavailable(e.to_string()),
            DbErr::Conn(_) => return Error::Unavailable(err.to_string()),
            DbErr::Exec(e) | DbErr::Query(e) => e,
            _ => return Error::Database(err),
        };
        let RuntimeErr::SqlxError(sqlx_err) = runtime else {
            return Error::Database(err);
        };
        match sqlx_err.as_ref() {
            sqlx::Error::Database(db) => classify(db.as_ref()).unwrap_or(Error::Database(err)),
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Error::Unavailable(sqlx_err.to_string())
            }
            _ => Error::Database(err),
        }
    }
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
