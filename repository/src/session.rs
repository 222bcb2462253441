//! Sessions and transactions: the repositories, scoped to a [`Principal`] and, inside a
//! [`Transaction`], sharing one database transaction.

use std::future::Future;
use std::pin::Pin;

use vega_blobstore::BlobStore;

use crate::accounts::api_keys::ApiKeys;
use crate::accounts::users::Users;
use crate::accounts::workers::Workers;
use crate::activity::events::Events;
use crate::activity::retention::EventArchives;
use crate::activity::usage::Usage;
use crate::context::cx::Cx;
use crate::context::principal::Principal;
use crate::db::connection::Tx;
use crate::db::replica::{Track, WritePosition};
use crate::db::route::{Conn, Pools};
use crate::error::Result;
use crate::findings::reads::Findings;
use crate::leader_leases::LeaderLeases;
use crate::objects::artifacts::Artifacts;
use crate::queue::scans::Scans;
use crate::sources::projects::Projects;
use crate::sources::repositories::Repositories;
use crate::sources::snapshots::Snapshots;

/// The work of [`Session::transaction`]: a boxed, `Send` future borrowing the transaction.
pub type Work<'t, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 't>>;

/// The accessors of the repositories whose work is rows, for a type with a `cx()`.
macro_rules! row_repositories {
    ($lt:lifetime) => {
        /// Users.
        pub fn users(&self) -> Users<$lt> {
            Users { cx: self.cx() }
        }

        /// Projects and the project list.
        pub fn projects(&self) -> Projects<$lt> {
            Projects { cx: self.cx() }
        }

        /// Source repositories tracked by projects.
        pub fn repositories(&self) -> Repositories<$lt> {
            Repositories { cx: self.cx() }
        }

        /// Source snapshots.
        pub fn snapshots(&self) -> Snapshots<$lt> {
            Snapshots { cx: self.cx() }
        }

        /// Leader leases of singleton jobs.
        pub fn leader_leases(&self) -> LeaderLeases<$lt> {
            LeaderLeases { cx: self.cx() }
        }

        /// Scans and the scan queue.
        pub fn scans(&self) -> Scans<$lt> {
            Scans { cx: self.cx() }
        }

        /// Findings.
        pub fn findings(&self) -> Findings<$lt> {
            Findings { cx: self.cx() }
        }

        /// The event log.
        pub fn events(&self) -> Events<$lt> {
            Events { cx: self.cx() }
        }

        /// API keys and the principals they authenticate.
        pub fn api_keys(&self) -> ApiKeys<$lt> {
            ApiKeys { cx: self.cx() }
        }

        /// Usage records.
        pub fn usage(&self) -> Usage<$lt> {
            Usage { cx: self.cx() }
        }

        /// Workers: their credentials and heartbeats.
        pub fn workers(&self) -> Workers<$lt> {
            Workers { cx: self.cx() }
        }
    };
}

/// The repositories as one principal sees them ([`crate::Store::session`]). Reads return
/// only rows in the principal's reach; a row outside it is [`crate::Error::NotFound`], and
/// writes check the same reach, in the same statement.
///
/// ```no_run
/// # async fn demo(store: vega_repository::Store, token: &str) -> vega_repository::Result<()> {
/// let Some(principal) = store.api_keys().authenticate(token).await? else { return Ok(()) };
/// let session = store.session(&principal);
/// let tx = session.begin().await?;
/// let project = tx.projects().create(vega_repository::NewProject {
///     owner_id: principal.user_id().expect("a user's key"),
///     name: "Web".into(),
///     slug: "web".into(),
///     description: None,
/// }).await?;
/// tx.commit().await?; // `project.created` commits with the row, or neither does
/// # let _ = project; Ok(()) }
/// ```
///
/// With a read replica configured (`VEGA_DATABASE_READER_URL`), the methods marked *Replica
/// read* may be served by it, and a session reads its own writes: after it writes, those
/// reads go to the writer until the replica has replayed the write. To carry that across
/// requests, hand [`Session::write_position`] to the client and the next request's session
/// [`Session::read_after`] it.
#[derive(Debug, Clone)]
pub struct Session<'s> {
    db: &'s Pools,
    blobs: &'s BlobStore,
    who: &'s Principal,
    track: Track,
}

impl<'s> Session<'s> {
    pub(crate) fn new(
        db: &'s Pools,
        blobs: &'s BlobStore,
        who: &'s Principal,
        track: Track,
    ) -> Self {
        Self {
            db,
            blobs,
            who,
            track,
        }
    }

    fn cx(&self) -> Cx<'s> {
        Cx::new(Conn::Pool(self.db, self.track.clone()), self.who)
    }

    /// This session, whose replica reads see at least `position` (a [`Session::write_position`]
    /// an earlier request handed out): read-your-writes across requests.
    pub fn read_after(self, position: WritePosition) -> Self {
        self.track.read_after(position);
        self
    }

    /// The place in the writer's log that this session's later reads must see: its own last
    /// write, or the position it was told to [`Session::read_after`]. `None` without a
    /// Postgres read replica (or before anything was written), when there is nothing to carry.
    /// After a write it asks the writer once for its position.
    #[tracing::instrument(name = "session.write_position", skip_all)]
    pub async fn write_position(&self) -> Result<Option<WritePosition>> {
        let Some(reader) = self.db.reader() else {
            return Ok(None);
        };
        let floor = self.track.floor(&self.db.writer, reader.kind()).await?;
        Ok((floor > 0).then(|| WritePosition::from_raw(floor)))
    }

    /// Who acts.
    pub fn principal(&self) -> &'s Principal {
        self.who
    }

    row_repositories!('s);

    /// Stored objects: source archives, reports, event logs, debug bundles. Not offered inside
    /// a [`Transaction`]: an upload cannot roll back, so the artifact protocol orders its own
    /// rows and objects.
    pub fn artifacts(&self) -> Artifacts<'s> {
        Artifacts {
            cx: self.cx(),
            blobs: self.blobs,
        }
    }

    /// SARIF reports: a scan completed from one, findings exported as one. Not offered
    /// inside a [`Transaction`]: a report is stored in the blob store.
    pub fn reports(&self) -> crate::reports::import::Reports<'s> {
        crate::reports::import::Reports {
            cx: self.cx(),
            blobs: self.blobs,
            progress: None,
        }
    }

    /// Event retention and export (the system only): archives in the blob store, so not
    /// offered inside a [`Transaction`] either.
    pub fn event_archives(&self) -> EventArchives<'s> {
        EventArchives {
            cx: self.cx(),
            blobs: self.blobs,
        }
    }

    /// Opens a transaction: the row repositories, scoped like this session, whose work commits
    /// together at [`Transaction::commit`] or not at all (dropped, it rolls back).
    #[tracing::instrument(name = "transaction.begin", skip_all)]
    pub async fn begin(&self) -> Result<Transaction<'s>> {
        Ok(Transaction {
            tx: self.db.writer.begin().await?,
            who: self.who,
            track: self.track.clone(),
        })
    }

    /// Runs `work` in a transaction: committed when it returns `Ok`, rolled back when it
    /// returns an error or panics. The work is boxed (as in sqlx's `Connection::transaction`)
    /// so that the future stays `Send` for axum and `tokio::spawn`:
    ///
    /// ```no_run
    /// # async fn demo(session: vega_repository::Session<'_>, new: vega_repository::NewProject)
    /// # -> vega_repository::Result<()> {
    /// let project = session
    ///     .transaction(|tx| Box::pin(async move { tx.projects().create(new).await }))
    ///     .await?;
    /// # let _ = project; Ok(()) }
    /// ```
    pub async fn transaction<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'t> FnOnce(&'t Transaction<'s>) -> Work<'t, T>,
    {
        let tx = self.begin().await?;
        let value = work(&tx).await;
        settle(tx, value).await
    }
}

/// A transaction of a [`Session`]: the repositories whose work is rows, sharing one database
/// transaction. A step that fails aborts it: [`Transaction::commit`] then rolls back and fails
/// with [`crate::Error::Aborted`], on both engines. For a step that may fail without losing
/// the rest, use a [`Transaction::savepoint`].
#[derive(Debug)]
pub struct Transaction<'s> {
    tx: Tx,
    who: &'s Principal,
    /// The session's: a commit is a write it must read back.
    track: Track,
}

impl<'s> Transaction<'s> {
    fn cx(&self) -> Cx<'_> {
        Cx::new(Conn::Tx(&self.tx), self.who)
    }

    /// Who acts.
    pub fn principal(&self) -> &'s Principal {
        self.who
    }

    row_repositories!('_);

    /// A nested transaction (a `SAVEPOINT`): committing it keeps its work in this one; dropping
    /// it, or its failure, rolls back to the savepoint only.
    #[tracing::instrument(name = "transaction.savepoint", skip_all)]
    pub async fn savepoint(&self) -> Result<Transaction<'s>> {
        Ok(Transaction {
            tx: self.tx.savepoint().await?,
            who: self.who,
            track: self.track.clone(),
        })
    }

    /// Runs `work` in a savepoint: kept when it returns `Ok`, rolled back to the savepoint
    /// (and only to it) when it fails.
    pub async fn transaction<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'t> FnOnce(&'t Transaction<'s>) -> Work<'t, T>,
    {
        let nested = self.savepoint().await?;
        let value = work(&nested).await;
        settle(nested, value).await
    }

    /// Commits (a savepoint: releases it into its parent).
    #[tracing::instrument(name = "transaction.commit", skip_all)]
    pub async fn commit(self) -> Result<()> {
        let result = self.tx.commit().await;
        self.track.wrote();
        result
    }

    /// Rolls back now rather than on drop.
    #[tracing::instrument(name = "transaction.rollback", skip_all)]
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await
    }
}

async fn settle<T>(tx: Transaction<'_>, value: Result<T>) -> Result<T> {
    match value {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(err) => {
            // The work's error is the one to report; a failed rollback ends the connection,
            // which rolls back too.
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(%rollback, "rollback after a failed transaction failed");
            }
            Err(err)
        }
    }
}
