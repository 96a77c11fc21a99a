//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the SQLite backend.
///
/// Each variant carries its whole cause in its message, with SQLite's extended result
/// code, and has no [`source`](std::error::Error::source) (rusqlite's own errors repeat
/// their cause in both); [`SqliteError::sqlite_error`] gives rusqlite's error back.
/// SQLite URLs carry no credentials, so nothing here can print a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The URL is not one of `sqlite://relative/path.db`, `sqlite:///abs/path.db` or
    /// `sqlite::memory:`.
    #[error("invalid SQLite URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The directory that should hold the database file does not exist. SQLite would
    /// only say "unable to open database file"; the pool does not create directories.
    #[error(
        "cannot open SQLite database `{}`: directory `{}` does not exist (create it first)",
        path.display(),
        dir.display()
    )]
    MissingDirectory {
        /// The database file.
        path: PathBuf,
        /// Its parent directory, which is missing.
        dir: PathBuf,
    },
    /// Opening or configuring a new connection failed.
    #[error("cannot open SQLite database `{target}`: {}", SqliteDisplay(.cause))]
    Open {
        /// The file path, or the in-memory database's URI.
        target: String,
        /// What SQLite said.
        cause: rusqlite::Error,
    },
    /// An error returned by SQLite while running an operation.
    #[error("{}", SqliteDisplay(.0))]
    Sqlite(rusqlite::Error),
    /// The connection is gone: an earlier [`interact`](crate::SqliteConnection::interact)
    /// on it was cancelled (its future dropped) or panicked while SQLite held it. The pool
    /// discards such a connection when it comes back.
    #[error(
        "the SQLite connection is no longer available: an earlier operation on it was \
         cancelled or panicked"
    )]
    ConnectionLost,
    /// The closure given to [`interact`](crate::SqliteConnection::interact) panicked; the
    /// connection it held is closed.
    #[error("SQLite operation panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// Tokio cancelled the blocking task (the runtime is shutting down).
    #[error("the blocking task running the SQLite operation was cancelled (runtime shutdown)")]
    Cancelled,
}

impl SqliteError {
    /// rusqlite's error, if this is one (for its [`rusqlite::ErrorCode`]).
    pub fn sqlite_error(&self) -> Option<&rusqlite::Error> {
        match self {
            Self::Sqlite(e) | Self::Open { cause: e, .. } => Some(e),
            _ => None,
        }
    }

    /// SQLite's primary result code, if SQLite returned one (`DatabaseBusy`, ...).
    pub fn code(&self) -> Option<rusqlite::ErrorCode> {
        self.sqlite_error()
            .and_then(rusqlite::Error::sqlite_error_code)
    }
}

impl From<rusqlite::Error> for SqliteError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

/// rusqlite's message, followed by the extended result code when SQLite gave one.
struct SqliteDisplay<'a>(&'a rusqlite::Error);

impl std::fmt::Display for SqliteDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            rusqlite::Error::SqliteFailure(e, Some(message)) => {
                write!(f, "{message} (SQLite code {})", e.extended_code)
            }
            other => write!(f, "{other}"),
        }
    }
}
