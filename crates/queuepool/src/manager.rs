//! The [`Manager`] trait: everything the pool needs to know about a database.

use std::future::Future;

/// What a connection looks like when it comes back to the pool.
///
/// Returned by [`Manager::health`], a cheap synchronous check run on every return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// The connection can be reused.
    Ok,
    /// The connection must not be reused (for example it was dropped in the middle of
    /// an operation); it is closed, the rest of the pool is left alone.
    Broken,
    /// The connection lost its server (socket closed). It is closed and every idle
    /// connection opened before now is treated as suspect: the server probably restarted.
    Disconnected,
}

/// Opens, checks, resets and closes connections of one kind of database.
///
/// The pool is generic over this trait and knows nothing else about the database.
/// Every method that talks to the server is async and may be cancelled at any await
/// point (the pool then discards the connection); the synchronous methods must be cheap,
/// they run on the checkout and return paths.
pub trait Manager: Send + Sync + 'static {
    /// The connection type handed out by the pool.
    type Connection: Send + 'static;
    /// The error type of the database driver.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection. The pool bounds it by `connect_timeout`.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// A cheap round trip (`SELECT 1` or the protocol's ping) used by `pre_ping`.
    fn is_valid(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Brings a returned connection back to a clean state (rolls back an open
    /// transaction) before another borrower sees it.
    fn reset(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether [`Manager::reset`] must run for this connection. A manager that can tell
    /// cheaply that no transaction is open returns `false` and saves a round trip.
    fn needs_reset(&self, _conn: &Self::Connection) -> bool {
        true
    }

    /// A cheap synchronous check run when a connection is returned.
    fn health(&self, _conn: &mut Self::Connection) -> Health {
        Health::Ok
    }

    /// Whether this error means the connection (and probably the server) is gone:
    /// closed socket, server shutdown. Such an error triggers pool-wide invalidation.
    fn is_disconnect(&self, error: &Self::Error) -> bool;

    /// Closes a connection politely (sends the protocol's terminate message).
    fn close(&self, conn: Self::Connection) -> impl Future<Output = ()> + Send {
        async move { drop(conn) }
    }
}
