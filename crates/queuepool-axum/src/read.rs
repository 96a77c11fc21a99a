//! [`DbRead`]: one pooled connection for a read, routed by a [`ReadRouter`] (a standby
//! that has the client's own writes, else the primary), and the token a write hands
//! its client.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use queuepool::{Manager, Pool, PooledConn};

use crate::DbError;

/// The header of the read-your-writes token: a response to a write carries it, and a
/// client that sends it back on its reads sees its own writes (`x-read-after:
/// 0/3000148` with PostgreSQL: the primary's WAL position after the write). No state is
/// kept on the server: any instance of the service honours any instance's token.
pub const READ_AFTER: HeaderName = HeaderName::from_static("x-read-after");

/// A boxed future, so that [`ReadRouter`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which server a read went to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadRoute {
    label: Arc<str>,
    standby: Option<usize>,
}

impl ReadRoute {
    /// The primary (or the only server), labelled `primary`.
    pub fn primary() -> ReadRoute {
        ReadRoute {
            label: "primary".into(),
            standby: None,
        }
    }

    /// Standby number `index` of a router, labelled `label` (`host:port`).
    pub fn standby(index: usize, label: impl Into<Arc<str>>) -> ReadRoute {
        ReadRoute {
            label: label.into(),
            standby: Some(index),
        }
    }

    /// `primary` or the standby's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The standby's index; `None` for the primary.
    pub fn standby_index(&self) -> Option<usize> {
        self.standby
    }
}

impl fmt::Display for ReadRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// A connection checked out for a read, and where it comes from.
pub struct RoutedConn<M: Manager> {
    /// The pool guard.
    pub conn: PooledConn<M>,
    /// Where it comes from.
    pub route: ReadRoute,
}

/// Where reads go, and the token a write hands its client. Implemented by `Pool<M>`
/// (every read on the one pool, no token) and, with the `postgres` feature, by
/// `queuepool_postgres::ReadWrite` (standbys with read-your-writes).
pub trait ReadRouter<M: Manager>: Send + Sync + 'static {
    /// Checks out a connection for a read that must see every write the token `after`
    /// stands for (`None`: any recent state), not on `avoid` (a server whose
    /// connection was just lost). A token this router cannot read is
    /// [`DbError::InvalidReadAfter`].
    fn checkout<'a>(
        &'a self,
        after: Option<&'a str>,
        avoid: Option<&'a ReadRoute>,
    ) -> BoxFuture<'a, Result<RoutedConn<M>, DbError>>;

    /// A read on `conn` failed with `error`: tells the pool and, on a disconnect,
    /// takes the server out of the rotation until it answers again. Returns whether it
    /// was a disconnect (the read may then be retried elsewhere).
    fn failed(&self, conn: &mut RoutedConn<M>, error: &M::Error) -> bool;

    /// The token for what `conn` (a connection of the write pool, outside any
    /// transaction) has committed, or `None` when reads are not routed.
    fn token<'a>(
        &'a self,
        conn: &'a mut M::Connection,
    ) -> BoxFuture<'a, Result<Option<String>, M::Error>>;
}

impl<M: Manager> ReadRouter<M> for Pool<M> {
    fn checkout<'a>(
        &'a self,
        _after: Option<&'a str>,
        _avoid: Option<&'a ReadRoute>,
    ) -> BoxFuture<'a, Result<RoutedConn<M>, DbError>> {
        // One server: every committed write is visible to every read.
        Box::pin(async move {
            Ok(RoutedConn {
                conn: self.get().await?,
                route: ReadRoute::primary(),
            })
        })
    }

    fn failed(&self, conn: &mut RoutedConn<M>, error: &M::Error) -> bool {
        PooledConn::report_error(&mut conn.conn, error)
    }

    fn token<'a>(
        &'a self,
        _conn: &'a mut M::Connection,
    ) -> BoxFuture<'a, Result<Option<String>, M::Error>> {
        Box::pin(async { Ok(None) })
    }
}

/// The read side of an app: a [`ReadRouter`] behind an `Arc`. Put it in the router's
/// state (`Reads<M>: FromRef<S>`) for [`DbRead`].
pub struct Reads<M: Manager> {
    router: Arc<dyn ReadRouter<M>>,
}

impl<M: Manager> Clone for Reads<M> {
    fn clone(&self) -> Self {
        Reads {
            router: self.router.clone(),
        }
    }
}

impl<M: Manager> fmt::Debug for Reads<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reads").finish_non_exhaustive()
    }
}

impl<M: Manager> Reads<M> {
    /// Reads routed by `router`.
    pub fn new(router: impl ReadRouter<M>) -> Reads<M> {
        Reads {
            router: Arc::new(router),
        }
    }

    /// Every read on `pool` (no standby, no token).
    pub fn single(pool: Pool<M>) -> Reads<M> {
        Reads::new(pool)
    }

    /// The router.
    pub fn router(&self) -> &dyn ReadRouter<M> {
        &*self.router
    }

    /// The token for what `conn` has committed, as a [`READ_AFTER`] header to add to
    /// the write's response; `None` when reads are not routed.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn token_header(
        &self,
        conn: &mut M::Connection,
    ) -> Result<Option<(HeaderName, HeaderValue)>, M::Error> {
        let token = self.router.token(conn).await?;
        Ok(token
            .and_then(|t| HeaderValue::from_str(&t).ok())
            .map(|v| (READ_AFTER, v)))
    }
}

/// An axum extractor that lends one pooled connection for a read, routed by the
/// state's [`Reads`]: the client's [`READ_AFTER`] token (if any) picks a server that
/// has its writes. It derefs to the connection and returns it when dropped, like
/// [`Db`](crate::Db).
///
/// A read whose query loses its connection can go again elsewhere: report the error
/// with [`DbRead::error`], then [`DbRead::retry`].
///
/// # Cancel safety
/// Extraction and [`DbRead::retry`] are cancel safe: a dropped checkout leaves the
/// pools as they were.
#[must_use = "dropping a DbRead returns its connection to the pool at once"]
pub struct DbRead<M: Manager> {
    conn: RoutedConn<M>,
    reads: Reads<M>,
    after: Option<String>,
}

impl<M: Manager> DbRead<M> {
    /// Checks out a read connection for a client that sent `after`, as the extractor
    /// does.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn checkout(reads: &Reads<M>, after: Option<&str>) -> Result<Self, DbError> {
        let conn = reads.router.checkout(after, None).await?;
        Ok(DbRead {
            conn,
            reads: reads.clone(),
            after: after.map(str::to_owned),
        })
    }

    /// Where this read goes.
    pub fn route(this: &Self) -> &ReadRoute {
        &this.conn.route
    }

    /// Turns a driver error raised on this connection into a [`DbError`], telling the
    /// pool and the router first (see [`ReadRouter::failed`]).
    pub fn error(this: &mut Self, error: M::Error) -> DbError {
        let disconnect = this.reads.router.failed(&mut this.conn, &error);
        DbError::driver(error, disconnect)
    }

    /// Marks the connection unusable: the pool closes it instead of lending it again.
    pub fn invalidate(this: &mut Self) {
        PooledConn::invalidate(&mut this.conn.conn);
    }

    /// After a disconnect ([`DbRead::error`] first): returns this connection (the pool
    /// discards it) and checks out another for the same client, on another server when
    /// there is one.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn retry(this: Self) -> Result<Self, DbError> {
        let DbRead { conn, reads, after } = this;
        let avoid = conn.route.clone();
        // Back to its pool first: with a pool of one, the retry would wait for itself.
        drop(conn);
        let conn = reads
            .router
            .checkout(after.as_deref(), Some(&avoid))
            .await?;
        Ok(DbRead { conn, reads, after })
    }

    /// The pool guard.
    pub fn into_inner(this: Self) -> PooledConn<M> {
        this.conn.conn
    }
}

impl<M: Manager> Deref for DbRead<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.conn.conn
    }
}

impl<M: Manager> DerefMut for DbRead<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.conn.conn
    }
}

impl<M: Manager> fmt::Debug for DbRead<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRead")
            .field("route", &self.conn.route)
            .finish_non_exhaustive()
    }
}

impl<M, S> FromRequestParts<S> for DbRead<M>
where
    M: Manager,
    Reads<M>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = DbError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, DbError> {
        let reads = Reads::<M>::from_ref(state);
        let after = read_after(parts)?;
        DbRead::checkout(&reads, after).await
    }
}

/// The request's [`READ_AFTER`] token, for a handler that checks its read connection
/// out itself ([`DbRead::checkout`]), after validating its input. A header that is not
/// visible ASCII is rejected with [`DbError::InvalidReadAfter`]; whether the token
/// itself is valid is for the router to say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadAfter(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ReadAfter {
    type Rejection = DbError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, DbError> {
        Ok(ReadAfter(read_after(parts)?.map(str::to_owned)))
    }
}

/// The request's [`READ_AFTER`] header: absent, or visible ASCII (anything else is
/// [`DbError::InvalidReadAfter`]).
fn read_after(parts: &Parts) -> Result<Option<&str>, DbError> {
    match parts.headers.get(READ_AFTER) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| DbError::InvalidReadAfter),
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use queuepool_postgres::{Lsn, PgConnection, PgError, PgManager, ReadWrite};

    use super::{BoxFuture, ReadRoute, ReadRouter, RoutedConn};
    use crate::DbError;

    impl ReadRouter<PgManager> for ReadWrite {
        fn checkout<'a>(
            &'a self,
            after: Option<&'a str>,
            avoid: Option<&'a ReadRoute>,
        ) -> BoxFuture<'a, Result<RoutedConn<PgManager>, DbError>> {
            Box::pin(async move {
                let after = after
                    .map(str::parse::<Lsn>)
                    .transpose()
                    .map_err(|_| DbError::InvalidReadAfter)?;
                let avoid = avoid
                    .and_then(ReadRoute::standby_index)
                    .and_then(|i| self.standby_route(i));
                let conn = self.read_avoiding(after, avoid.as_ref()).await?;
                let route = match conn.route().standby_index() {
                    Some(i) => ReadRoute::standby(i, conn.route().label()),
                    None => ReadRoute::primary(),
                };
                Ok(RoutedConn {
                    conn: conn.into_inner(),
                    route,
                })
            })
        }

        fn failed(&self, conn: &mut RoutedConn<PgManager>, error: &PgError) -> bool {
            let route = conn
                .route
                .standby_index()
                .and_then(|i| self.standby_route(i));
            self.failed_on(route.as_ref(), &mut conn.conn, error)
        }

        fn token<'a>(
            &'a self,
            conn: &'a mut PgConnection,
        ) -> BoxFuture<'a, Result<Option<String>, PgError>> {
            Box::pin(async move { Ok(Some(ReadWrite::token(conn).await?.to_string())) })
        }
    }
}
