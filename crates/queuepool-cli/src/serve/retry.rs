//! Idempotent reads retried once on a fresh connection after a disconnect.
//!
//! A query that was on the wire when its backend died (killed, restarted, failed over),
//! or that was lent in the instant before the driver saw the socket close, fails with
//! a disconnect error even with pre-ping on: no check before a query can close that
//! window. For a read the answer is to run it again on another connection; for a write
//! it is not (the write may have committed before the connection died), so only the
//! queries implementing [`Read`] (`SELECT 1`, a page of items, one item) can be
//! retried, and the write handlers never go through [`read`].

use std::future::Future;
use std::time::{Duration, Instant};

use queuepool::Pool;
use queuepool_axum::{Db, DbError};

use super::error::AppError;
use super::handlers::{bounded, finish};
use crate::store::{Item, Page, Store};

/// A query that only reads, so that running it twice is the same as running it once.
pub(crate) trait Read<M: Store>: Copy + Send {
    /// What the query returns.
    type Output: Send;

    /// Runs the query on `conn`, bounded by `limit` where the backend can bound it.
    fn run(
        self,
        conn: &mut M::Connection,
        limit: Duration,
    ) -> impl Future<Output = Result<Self::Output, M::Error>> + Send;
}

/// `SELECT 1` ([`Store::ping`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ping;

/// One page of items ([`Store::list`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct List(pub Page);

/// One item ([`Store::find`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Find(pub i64);

impl<M: Store> Read<M> for Ping {
    type Output = ();

    fn run(
        self,
        conn: &mut M::Connection,
        limit: Duration,
    ) -> impl Future<Output = Result<(), M::Error>> + Send {
        M::ping(conn, limit)
    }
}

impl<M: Store> Read<M> for List {
    type Output = Vec<Item>;

    fn run(
        self,
        conn: &mut M::Connection,
        limit: Duration,
    ) -> impl Future<Output = Result<Vec<Item>, M::Error>> + Send {
        M::list(conn, self.0, limit)
    }
}

impl<M: Store> Read<M> for Find {
    type Output = Option<Item>;

    fn run(
        self,
        conn: &mut M::Connection,
        limit: Duration,
    ) -> impl Future<Output = Result<Option<Item>, M::Error>> + Send {
        M::find(conn, self.0, limit)
    }
}

/// Runs `query` on `db`; if it fails with a disconnect error, runs it once more on a
/// connection checked out of `pool`.
///
/// The failed connection was already discarded, and the pool invalidated, by
/// [`Db::error`] (through `finish`), so the retry gets a connection opened after the
/// failure or one that passes the pool's checks. Bounds: the retry's query gets what
/// is left of `limit` (`query_timeout`) since the first one began, so the queries of a
/// request together stay within `query_timeout` (no time left: the disconnect is the
/// answer); its checkout waits at most `pool_timeout`, and the whole request stays
/// under the request timeout of the router's backstop. Any other outcome, including a
/// query timeout (the server may still be running the query) and a second disconnect,
/// is returned as it is.
pub(crate) async fn read<M: Store, R: Read<M>>(
    pool: &Pool<M>,
    mut db: Db<M>,
    query: R,
    limit: Duration,
) -> Result<R::Output, AppError> {
    let started = Instant::now();
    let first = finish(
        bounded(limit, query.run(&mut db, limit)).await,
        &mut db,
        limit,
    );
    // Back to the pool (here: closed) before the retry checks one out: with a pool of
    // one, holding it would make the retry wait for itself.
    drop(db);
    let lost = match first {
        Err(AppError::Db(DbError::Disconnected(cause))) => cause,
        other => return other,
    };
    let left = limit.saturating_sub(started.elapsed());
    if left.is_zero() {
        return Err(AppError::Db(DbError::Disconnected(lost)));
    }
    tracing::info!(
        "a read query lost its database connection ({lost}); retrying it once on another \
         connection"
    );
    let mut db = Db::checkout(pool).await?;
    finish(
        bounded(left, query.run(&mut db, left)).await,
        &mut db,
        limit,
    )
}
