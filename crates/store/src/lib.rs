//! The store: every piece of Nimbus state that must survive a restart.
//!
//! One SQLite database in WAL mode holds functions, namespaces, invocation records (with their
//! logs), the async queue (accepted events, attempts, dead letters). Code packages live as files beside it (see `nimbus-control`); the
//! database only holds their content hash.
//!
//! ```text
//!   api / control ──► Store (async methods) ──spawn_blocking──► Mutex<Connection> ──► nimbus.db
//!   record_invocation ──channel──► writer thread: a batch per transaction ──┘
//! ```
//!
//! Every method runs its SQL on tokio's blocking pool so that no request task waits on disk
//! while holding a runtime thread, except the records of synchronous invocations (one per
//! call): those are queued for a writer thread, which commits whatever has arrived together in
//! one transaction. Their callers do not wait for it; reads of invocation records do, so every
//! read sees the records queued before it. Times are stored as Unix milliseconds.
//!
//! # Limitations
//! - One connection behind a mutex serialises all statements. That is plenty for a laptop
//!   node; a connection pool (or the PostgreSQL backend from `DESIGN.md`) is the way past it.
//! - There is no store trait yet: SQLite is the only backend.
//! - A synchronous invocation's record waits in memory for its batch's commit, which follows
//!   within about 2 ms (the writer's gathering window) and a transaction's time: if the
//!   process dies in that window, the record is lost (the invocation itself had already
//!   answered its caller).
//! - Function rows are cached in memory once read, which is coherent only while this process
//!   is the database's one writer (as it is: one server per data directory). Several nodes
//!   sharing a database would need the cache invalidated across them.

mod functions;
mod invocations;
mod namespaces;
mod queue;
mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use functions::{FunctionOrder, FunctionQuery, FunctionRecord, InsertFunction};
pub use invocations::{
    InvocationOrder, InvocationQuery, InvocationRecord, InvocationStatus, InvokeType, RetCodeFilter,
};
pub use namespaces::{DeleteNamespace, NamespaceRecord};
pub use queue::{AsyncEvent, AttemptFate, AttemptRecord, DeadLetter, QueuedEvent};

/// Errors of the store. Each variant names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or prepared.
    #[error("cannot open database {path}")]
    Open {
        /// The database file.
        path: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database statement failed")]
    Sql(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// The thread that writes invocation records could not be started.
    #[error("cannot start the store's writer thread")]
    Writer(#[source] std::io::Error),
    /// The blocking task running the statement panicked or was cancelled.
    #[error("database task did not finish")]
    Task,
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The group-commit writer of synchronous invocation records (see `invocations.rs`).
    records: invocations::RecordQueue,
    /// Functions read so far (see `functions.rs`): every invocation looks its function up.
    functions: Arc<functions::FunctionCache>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the file cannot be opened, is not a database, or the schema
    /// cannot be applied.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        schema::prepare(&conn).map_err(open_error)?;
        let conn = Arc::new(Mutex::new(conn));
        let records =
            invocations::start_record_writer(Arc::clone(&conn)).map_err(StoreError::Writer)?;
        Ok(Store {
            conn,
            records,
            functions: Arc::default(),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-applied statement behind
            // (SQLite rolls back unfinished transactions), so a poisoned lock is still usable.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|_| StoreError::Task)?
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
