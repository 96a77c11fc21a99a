//! [`SqliteConnection`]: a rusqlite connection that runs its work on tokio's blocking pool.

use std::fmt;

use crate::SqliteError;

/// A pooled SQLite connection.
///
/// SQLite is a blocking library, so the connection is never used on the async runtime's
/// threads: [`interact`](Self::interact) moves the `rusqlite::Connection` into a closure
/// that runs on tokio's blocking pool (`spawn_blocking`) and moves it back when the
/// closure returns.
///
/// While a closure runs, this value does not hold the connection. If the `interact`
/// future is dropped before the closure finishes, the connection never comes back: the
/// closure still runs to its end on the blocking thread and then closes the connection,
/// and this value reports itself lost ([`is_lost`](Self::is_lost)); the pool sees that
/// through [`Manager::health`](queuepool::Manager::health) and discards it.
pub struct SqliteConnection {
    conn: Option<rusqlite::Connection>,
    /// `!is_autocommit()` as seen at the end of the last operation, so that
    /// [`Manager::needs_reset`](queuepool::Manager::needs_reset) can answer without
    /// touching the connection.
    in_transaction: bool,
}

impl SqliteConnection {
    pub(crate) fn new(conn: rusqlite::Connection) -> Self {
        Self {
            conn: Some(conn),
            in_transaction: false,
        }
    }

    /// Runs `f` with the connection on tokio's blocking pool and returns its result.
    ///
    /// # Errors
    /// The error `f` returned, as [`SqliteError::Sqlite`];
    /// [`SqliteError::ConnectionLost`] if an earlier operation was cancelled or panicked;
    /// [`SqliteError::Panicked`] if `f` panics (the connection is then lost);
    /// [`SqliteError::Cancelled`] if the runtime shuts down.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future lets `f` run to completion on the blocking
    /// pool, but the connection is then closed instead of returned, and this
    /// `SqliteConnection` is lost (the pool replaces it). Any transaction `f` left open
    /// is rolled back by SQLite when the connection closes.
    pub async fn interact<F, R>(&mut self, f: F) -> Result<R, SqliteError>
    where
        F: FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let mut conn = self.conn.take().ok_or(SqliteError::ConnectionLost)?;
        let joined = tokio::task::spawn_blocking(move || {
            let result = f(&mut conn);
            (conn, result)
        })
        .await;
        match joined {
            Ok((conn, result)) => {
                self.in_transaction = !conn.is_autocommit();
                self.conn = Some(conn);
                Ok(result?)
            }
            Err(join_error) if join_error.is_panic() => {
                let payload = join_error.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(SqliteError::Panicked { message })
            }
            Err(_) => Err(SqliteError::Cancelled),
        }
    }

    /// Whether a transaction was open at the end of the last operation.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Whether the connection is gone (an operation on it was cancelled or panicked).
    pub fn is_lost(&self) -> bool {
        self.conn.is_none()
    }

    pub(crate) fn take(&mut self) -> Option<rusqlite::Connection> {
        self.conn.take()
    }
}

impl fmt::Debug for SqliteConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteConnection")
            .field("lost", &self.is_lost())
            .field("in_transaction", &self.in_transaction)
            .finish()
    }
}
