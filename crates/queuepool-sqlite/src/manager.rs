//! [`SqliteManager`]: opens, checks, resets and closes SQLite connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use queuepool::{Health, Manager};
use rusqlite::OpenFlags;
use rusqlite::ffi::ErrorCode;

use crate::{SqliteConnection, SqliteError};

/// How long a connection waits for another connection's lock before failing with
/// "database is locked", unless [`SqliteManager::with_busy_timeout`] says otherwise.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `SQLITE_READONLY_DBMOVED`: the database file was moved or deleted while open.
const SQLITE_READONLY_DBMOVED: std::ffi::c_int = 1032;

/// Opens SQLite connections for a [`queuepool::Pool`].
///
/// Every connection is configured the same way when it opens:
/// - `journal_mode = WAL` (files only): readers never block the writer and the writer
///   never blocks readers, which is what lets several pooled connections share a file.
///   The mode is stored in the file; if SQLite refuses it (some network filesystems), a
///   warning is logged and the connection keeps the file's mode.
/// - `busy_timeout` ([`DEFAULT_BUSY_TIMEOUT`], see [`with_busy_timeout`](Self::with_busy_timeout)):
///   a connection that finds the database locked by another one retries for that long
///   instead of failing at once with "database is locked".
/// - `foreign_keys = ON` (SQLite's default is off) and `synchronous = NORMAL` (safe in
///   WAL mode: a power loss can lose the last transactions but never corrupts the file).
///
/// The directory holding the file must exist: the manager creates the file, not its
/// directory, and says so clearly ([`SqliteError::MissingDirectory`]) instead of
/// SQLite's "unable to open database file".
///
/// # In-memory databases
/// `sqlite::memory:` would normally give every connection its own private, empty
/// database, which is useless in a pool. Instead each manager names one in-memory
/// database, `file:/queuepool-mem-<pid>-<n>?vfs=memdb`, that all of its connections
/// share, and keeps one extra connection to it open for as long as the manager lives,
/// so the data survives the pool closing and reopening all of its connections
/// (recycling, invalidation). Two managers never share a database.
///
/// It uses SQLite's `memdb` VFS rather than the older
/// `file:name?mode=memory&cache=shared`: in shared-cache mode SQLite locks tables, and a
/// second writer fails at once with "database table is locked" (`busy_timeout` does not
/// apply; measured: 3 of 4 concurrent writers failed on their first transaction). The
/// `memdb` database is locked like a file, so writers queue for `busy_timeout` as they
/// do on disk. It has no WAL: a writer's commit briefly blocks readers.
pub struct SqliteManager {
    target: Target,
    busy_timeout: Duration,
}

enum Target {
    File(PathBuf),
    Memory {
        uri: String,
        /// Never used: it exists so that the shared in-memory database, which SQLite
        /// frees when its last connection closes, lives as long as the manager. A
        /// `Mutex` only because `rusqlite::Connection` is `Send` but not `Sync`.
        _keeper: Mutex<rusqlite::Connection>,
    },
}

impl SqliteManager {
    /// Parses a URL: `sqlite://relative/path.db`, `sqlite:///abs/path.db`,
    /// `sqlite:relative/path.db` or `sqlite::memory:` (also `sqlite://:memory:`).
    ///
    /// The path is taken literally (no percent-decoding); query parameters are not
    /// accepted, configure the manager with its methods instead.
    ///
    /// # Errors
    /// [`SqliteError::InvalidUrl`] for anything else; [`SqliteError::Open`] if the
    /// in-memory database cannot be created.
    pub fn from_url(url: &str) -> Result<Self, SqliteError> {
        let invalid = |reason| SqliteError::InvalidUrl {
            url: crate::error::redact_url(url),
            reason,
        };
        let rest = url
            .strip_prefix("sqlite:")
            .ok_or_else(|| invalid("the scheme must be `sqlite:`"))?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest == ":memory:" {
            return Self::memory();
        }
        if rest.is_empty() {
            return Err(invalid(
                "no database path (use sqlite://file.db, sqlite:///abs/file.db or sqlite::memory:)",
            ));
        }
        if rest.contains('?') {
            return Err(invalid(
                "query parameters are not supported; configure the SqliteManager instead",
            ));
        }
        Ok(Self::file(rest))
    }

    /// A manager for the database file at `path` (created on first connect if missing).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            target: Target::File(path.into()),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }

    /// A manager for a new in-memory database shared by all of its connections (see
    /// the type's documentation).
    ///
    /// # Errors
    /// [`SqliteError::Open`] if SQLite cannot create it.
    pub fn memory() -> Result<Self, SqliteError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let uri = format!(
            "file:/queuepool-mem-{}-{}?vfs=memdb",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let keeper =
            rusqlite::Connection::open_with_flags(&uri, memory_flags()).map_err(|cause| {
                SqliteError::Open {
                    target: uri.clone(),
                    cause,
                }
            })?;
        Ok(Self {
            target: Target::Memory {
                uri,
                _keeper: Mutex::new(keeper),
            },
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        })
    }

    /// Sets how long a connection retries when the database is locked by another one.
    #[must_use]
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// How long a connection retries when the database is locked.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// The database file, or `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        match &self.target {
            Target::File(path) => Some(path),
            Target::Memory { .. } => None,
        }
    }

    /// The SQLite URI of the shared in-memory database, or `None` for a file.
    pub fn memory_uri(&self) -> Option<&str> {
        match &self.target {
            Target::File(_) => None,
            Target::Memory { uri, .. } => Some(uri),
        }
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::File(path) => path.display().to_string(),
            Target::Memory { uri, .. } => uri.clone(),
        }
    }
}

fn memory_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

fn file_flags() -> OpenFlags {
    // No SQLITE_OPEN_URI: a relative file named `file:x` must stay a file name.
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// What a blocking `open` needs, detached from `&self` so it can move to another thread.
enum OpenTarget {
    File(PathBuf),
    Memory(String),
}

fn open(target: OpenTarget, busy_timeout: Duration) -> Result<rusqlite::Connection, SqliteError> {
    let (conn, name, is_file) = match target {
        OpenTarget::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && !dir.is_dir()
            {
                return Err(SqliteError::MissingDirectory {
                    dir: dir.to_path_buf(),
                    path,
                });
            }
            let name = path.display().to_string();
            let conn = rusqlite::Connection::open_with_flags(&path, file_flags());
            (conn, name, true)
        }
        OpenTarget::Memory(uri) => {
            let conn = rusqlite::Connection::open_with_flags(&uri, memory_flags());
            (conn, uri, false)
        }
    };
    let configure = |conn: rusqlite::Connection| -> rusqlite::Result<rusqlite::Connection> {
        // First, so that switching to WAL waits for other connections' locks.
        conn.busy_timeout(busy_timeout)?;
        if is_file {
            let mode = enable_wal(&conn, busy_timeout)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(
                    target: "queuepool::sqlite",
                    database = %name,
                    journal_mode = %mode,
                    "SQLite refused WAL journal mode; concurrent readers and writers will block each other"
                );
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(conn)
    };
    conn.and_then(configure).map_err(|cause| SqliteError::Open {
        target: name,
        cause,
    })
}

/// Switches the file to WAL (a no-op when it already is) and returns the journal mode.
///
/// Changing the journal mode needs an exclusive lock, and SQLite answers `SQLITE_BUSY`
/// at once, without calling the busy handler, when connections opened together race
/// for it (seen when a pool prefills a new file). So busy is retried here, with short
/// sleeps, for up to `busy_timeout`. This runs on a blocking thread, where sleeping is
/// fine.
fn enable_wal(conn: &rusqlite::Connection, busy_timeout: Duration) -> rusqlite::Result<String> {
    let deadline = Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let attempt = conn
            .pragma_query_value(None, "journal_mode", |row| row.get::<_, String>(0))
            .and_then(|mode| {
                if mode.eq_ignore_ascii_case("wal") {
                    Ok(mode)
                } else {
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                }
            });
        match attempt {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Manager for SqliteManager {
    type Connection = SqliteConnection;
    type Error = SqliteError;

    /// Opens and configures a connection on the blocking pool.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the connection being opened is closed when the blocking
    /// task ends.
    async fn connect(&self) -> Result<SqliteConnection, SqliteError> {
        let target = match &self.target {
            Target::File(path) => OpenTarget::File(path.clone()),
            Target::Memory { uri, .. } => OpenTarget::Memory(uri.clone()),
        };
        let busy_timeout = self.busy_timeout;
        let conn = tokio::task::spawn_blocking(move || open(target, busy_timeout))
            .await
            .map_err(|_| SqliteError::Cancelled)??;
        tracing::debug!(target: "queuepool::sqlite", database = %self.describe(), "opened SQLite connection");
        Ok(SqliteConnection::new(conn))
    }

    /// `SELECT 1`.
    async fn is_valid(&self, conn: &mut SqliteConnection) -> Result<(), SqliteError> {
        conn.interact(|c| c.query_row("SELECT 1", [], |row| row.get::<_, i64>(0)))
            .await
            .map(drop)
    }

    /// `ROLLBACK` if a transaction is open (SQLite tells without a query).
    async fn reset(&self, conn: &mut SqliteConnection) -> Result<(), SqliteError> {
        conn.interact(|c| {
            if c.is_autocommit() {
                Ok(())
            } else {
                c.execute_batch("ROLLBACK")
            }
        })
        .await
    }

    /// Whether a transaction was open when the last operation ended. Nothing else can
    /// touch the connection between operations, so the answer is exact.
    fn needs_reset(&self, conn: &SqliteConnection) -> bool {
        conn.in_transaction()
    }

    /// `Broken` if the connection was lost to a cancelled or panicked operation.
    fn health(&self, conn: &mut SqliteConnection) -> Health {
        if conn.is_lost() {
            Health::Broken
        } else {
            Health::Ok
        }
    }

    /// SQLite has no server to lose, so almost nothing is a disconnect. The exceptions
    /// are the errors that mean the database file under every pooled connection is gone
    /// or unusable, where reopening it (pool-wide invalidation) is the cure:
    /// `SQLITE_CORRUPT`, `SQLITE_NOTADB` (the file was replaced or damaged),
    /// `SQLITE_IOERR` (the file or its filesystem failed), `SQLITE_CANTOPEN` (the file
    /// or its WAL cannot be reopened) and `SQLITE_READONLY_DBMOVED` (the file was
    /// deleted or renamed while open).
    fn is_disconnect(&self, error: &SqliteError) -> bool {
        match error.sqlite_error().and_then(rusqlite::Error::sqlite_error) {
            Some(e) => {
                matches!(
                    e.code,
                    ErrorCode::DatabaseCorrupt
                        | ErrorCode::NotADatabase
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::CannotOpen
                ) || e.extended_code == SQLITE_READONLY_DBMOVED
            }
            None => false,
        }
    }

    /// Closes the connection on the blocking pool (closing the last connection of a WAL
    /// database checkpoints it, which writes to disk). Without a tokio runtime (a
    /// discarded guard dropped on a plain thread) there is no blocking pool: the
    /// connection is closed on the calling thread, which is not a runtime's worker.
    async fn close(&self, mut conn: SqliteConnection) {
        if let Some(c) = conn.take() {
            let closed = match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime
                    .spawn_blocking(move || c.close().map_err(|(_, e)| e))
                    .await
                    .unwrap_or(Ok(())),
                Err(_) => c.close().map_err(|(_, e)| e),
            };
            if let Err(error) = closed {
                tracing::debug!(target: "queuepool::sqlite", %error, "error closing SQLite connection");
            }
        }
    }
}

impl fmt::Debug for SqliteManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteManager")
            .field("database", &self.describe())
            .field("busy_timeout", &self.busy_timeout)
            .finish()
    }
}
