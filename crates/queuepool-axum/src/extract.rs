//! [`Db`]: one pooled connection per request.

use std::ops::{Deref, DerefMut};

use axum::extract::{FromRef, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use queuepool::{Manager, Pool, PooledConn};

use crate::DbError;

/// An axum extractor that lends one pooled connection for the duration of a request.
///
/// It derefs to the connection (`M::Connection`). The connection returns to the pool
/// when the `Db` is dropped: at the end of the handler, on panic (unwinding drops it),
/// and when the client disconnects (hyper drops the handler's future). A connection
/// dropped in the middle of a query is discarded by the pool, never lent half-used.
///
/// With `leak_threshold` set, the pool's leak warning names the request's method and
/// matched route (`by GET /users/{id}`), since the checkout site is this extractor for
/// every handler.
///
/// The checkout waits at most `pool_timeout`; if it fails, the request is rejected with
/// the [`DbError`] (`503`, plus `Retry-After` on a pool timeout).
///
/// Its own operations are associated functions ([`Db::error`], [`Db::invalidate`],
/// [`Db::into_inner`]) so they never shadow the connection's methods.
///
/// # Cancel safety
/// Extraction is cancel safe: dropping the request while it waits for a connection
/// leaves the pool as it was.
#[must_use = "dropping a Db returns its connection to the pool at once"]
pub struct Db<M: Manager> {
    conn: PooledConn<M>,
}

impl<M: Manager> Db<M> {
    /// Checks a connection out of `pool`, as the extractor does.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future while it waits leaves the pool as it was.
    pub async fn checkout(pool: &Pool<M>) -> Result<Self, DbError> {
        let conn = pool.get().await?;
        Ok(Db { conn })
    }

    /// The pool guard, for its associated functions (`PooledConn::detach`...).
    pub fn into_inner(this: Self) -> PooledConn<M> {
        this.conn
    }

    /// Marks the connection unusable: the pool closes it instead of lending it again.
    /// For a query abandoned part-way (a timeout around it fired), whose reply may
    /// still arrive on the connection's stream.
    pub fn invalidate(this: &mut Self) {
        PooledConn::invalidate(&mut this.conn);
    }

    /// Turns a driver error raised on this connection into a [`DbError`], telling the
    /// pool first: a disconnect error discards this connection and makes the pool
    /// check every idle connection opened before now (the server probably restarted).
    ///
    /// ```ignore
    /// let row = db.query_one(sql, &[]).await.map_err(|e| Db::error(&mut db, e))?;
    /// ```
    pub fn error(this: &mut Self, error: M::Error) -> DbError {
        let disconnect = PooledConn::report_error(&mut this.conn, &error);
        DbError::driver(error, disconnect)
    }
}

impl<M: Manager> Deref for Db<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.conn
    }
}

impl<M: Manager> DerefMut for Db<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.conn
    }
}

impl<M: Manager> std::fmt::Debug for Db<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl<M, S> FromRequestParts<S> for Db<M>
where
    M: Manager,
    Pool<M>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = DbError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, DbError> {
        let pool = Pool::<M>::from_ref(state);
        let mut conn = pool.get().await?;
        // The checkout site is this file for every handler: name the route instead, so
        // a leak warning says which handler holds the connection. Only formatted when
        // leak detection is on (the pool ignores a holder otherwise).
        if pool.config().leak_threshold.is_some() {
            PooledConn::set_holder(&mut conn, holder(parts));
        }
        Ok(Db { conn })
    }
}

/// `"<METHOD> <route>"`: the route pattern axum matched (`/users/{id}`), or the request
/// path when the extractor runs outside a router's route (a fallback, a nested service).
fn holder(parts: &Parts) -> String {
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path(), MatchedPath::as_str);
    format!("{} {route}", parts.method)
}
