/// A setting that cannot be used. Every message names the variable at fault and how to fix it;
/// none of them repeats a URL, because URLs carry passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds bytes that are not UTF-8.
    #[error("{var} is not valid UTF-8; set it to plain text")]
    NotUnicode {
        /// The variable.
        var: &'static str,
    },

    /// `VEGA_PERSISTENCE_BACKEND` names no known backend.
    #[error("VEGA_PERSISTENCE_BACKEND={value:?} is not a backend; use `postgres` or `sqlite`")]
    UnknownBackend {
        /// What the variable held.
        value: String,
    },

    /// The postgres backend was chosen but no URL was given.
    #[error(
        "VEGA_PERSISTENCE_BACKEND=postgres needs a database URL: set VEGA_DATABASE_URL \
         (or DATABASE_URL) to postgres://user:password@host:5432/database"
    )]
    MissingDatabaseUrl,

    /// Both a full URL and separate database variables are set; which one wins would be a guess.
    #[error(
        "{url_var} and {part_var} are both set: configure the database with a full URL or with \
         VEGA_DATABASE_HOST/_PORT/_NAME/_USER/_PASSWORD, not both"
    )]
    TwoDatabaseSources {
        /// The URL variable that is set.
        url_var: &'static str,
        /// The first separate variable that is set.
        part_var: &'static str,
    },

    /// Separate database variables are set but the backend is not postgres.
    #[error(
        "{part_var} is set but the persistence backend is sqlite ({backend_source}); \
         set VEGA_PERSISTENCE_BACKEND=postgres"
    )]
    PartsNeedPostgres {
        /// The first separate variable that is set.
        part_var: &'static str,
        /// Where the backend choice came from.
        backend_source: crate::Source,
    },

    /// A read replica is configured for the embedded SQLite backend, which has its own readers.
    #[error(
        "{var} is set but the persistence backend is sqlite: a read replica needs Postgres \
         (SQLite serves reads from its own read-only connections); unset {var}"
    )]
    ReaderNeedsPostgres {
        /// The reader variable that is set.
        var: &'static str,
    },

    /// A separate database variable that the URL needs is unset.
    #[error("{set} is set, so {var} is needed too")]
    MissingDatabasePart {
        /// The missing variable.
        var: &'static str,
        /// The variable that selected this way of configuring.
        set: &'static str,
    },

    /// A separate database variable holds a value that cannot go into a URL.
    #[error("{var} is not usable: {reason}")]
    InvalidDatabasePart {
        /// The variable.
        var: &'static str,
        /// What is wrong (never the password itself).
        reason: String,
    },

    /// The URL does not parse.
    #[error("{var} is not a valid database URL ({reason}); expected {expected}")]
    InvalidUrl {
        /// The variable the URL came from.
        var: &'static str,
        /// What the parser objected to (never the URL itself).
        reason: String,
        /// The shape the backend expects.
        expected: &'static str,
    },

    /// The URL's scheme belongs to the other backend: the seed's "postgres but connecting to
    /// something else" trap, caught before any connection is made.
    #[error(
        "{var} is a {scheme}: URL but the persistence backend is {backend} ({backend_source}); \
         set VEGA_PERSISTENCE_BACKEND to match the URL, or point {var} at a {backend} database"
    )]
    SchemeMismatch {
        /// The variable the URL came from.
        var: &'static str,
        /// The URL's scheme.
        scheme: String,
        /// The configured backend.
        backend: &'static str,
        /// Where the backend choice came from.
        backend_source: crate::Source,
    },

    /// `VEGA_BLOB_BACKEND` names no known backend.
    #[error("VEGA_BLOB_BACKEND={value:?} is not a blob backend; use `fs` or `s3`")]
    UnknownBlobBackend {
        /// What the variable held.
        value: String,
    },

    /// The s3 blob backend was chosen without a bucket.
    #[error("VEGA_BLOB_BACKEND=s3 needs VEGA_S3_BUCKET, the bucket that holds Vega's objects")]
    MissingBucket,

    /// `VEGA_S3_PREFIX` would produce keys S3 tools mishandle.
    #[error(
        "VEGA_S3_PREFIX={value:?} is not a usable key prefix: use segments of letters, digits, \
         `-`, `_` and `.` separated by single `/`, with no leading or trailing `/`"
    )]
    InvalidPrefix {
        /// What the variable held.
        value: String,
    },

    /// A tuning setting (`VEGA_DB_*` pool sizes and timeouts, `VEGA_S3_*` timeouts) that
    /// cannot be used.
    #[error("{var}={value:?} {reason}")]
    InvalidSetting {
        /// The variable.
        var: &'static str,
        /// What it held.
        value: String,
        /// What a valid value looks like.
        reason: String,
    },
}
