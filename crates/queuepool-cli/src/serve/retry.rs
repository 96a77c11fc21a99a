//! Idempotent reads retried on another connection after a disconnect.
//!
//! A query that was on the wire when its backend died (killed, restarted, failed over),
//! or that was lent in the instant before the driver saw the socket close, fails with
//! a disconnect error even with pre-ping on: no check before a query can close that
//! window. For a read the answer is to run it again on another connection; for a write
//! it is not (the write may have committed before the connection died), so only the
//! queries implementing [`Read`] (`SELECT 1`, a page of items, one item) can be
//! retried, and the write handlers never go through [`read`].
//!
//! One retry is not always enough: an event that ends several backends reaches them
//! one at a time (`pg_terminate_backend` over a list of pids, a server's fast
//! shutdown signalling each backend, which acts on it when it is next scheduled). For
//! a few milliseconds after the first query failed, another connection of the pool
//! can still answer the pool's ping and then die under the retry. So a read is run
//! again while it fails with a disconnect, within what is left of `query_timeout`, at
//! most [`max_retries`] times: each failed retry discards one of the connections that
//! were open when the event began, so the last one runs on a connection opened after.

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

/// The most retries of one read on `pool`: its most connections open at once
/// ([`PoolConfig::max_connections`](queuepool::PoolConfig::max_connections)), all of
/// which one event can have doomed (see the module's doc).
pub(crate) fn max_retries<M: Store>(pool: &Pool<M>) -> usize {
    pool.config().max_connections()
}

/// The cause a disconnect error carries.
type Lost = Box<dyn std::error::Error + Send + Sync>;

/// The retry loop's bookkeeping, shared by [`read`] and the routed reads: which
/// outcomes end the loop, and what is left of the time and the retries.
pub(crate) struct Retries {
    started: Instant,
    limit: Duration,
    max: usize,
    done: usize,
}

impl Retries {
    /// Starts counting at the first query, which may take all of `limit`; at most `max`
    /// retries.
    pub(crate) fn new(limit: Duration, max: usize) -> Self {
        Retries {
            started: Instant::now(),
            limit,
            max,
            done: 0,
        }
    }

    /// Given the last query's outcome: `Err` with the outcome to return (not a
    /// disconnect, or no time or retry left), or `Ok` with the disconnect's cause and
    /// the time the retry may take (the retry is counted).
    pub(crate) fn next<T>(
        &mut self,
        outcome: Result<T, AppError>,
    ) -> Result<(Lost, Duration), Result<T, AppError>> {
        let lost = match outcome {
            Err(AppError::Db(DbError::Disconnected(cause))) => cause,
            other => return Err(other),
        };
        let left = self.limit.saturating_sub(self.started.elapsed());
        if left.is_zero() || self.done >= self.max {
            return Err(Err(AppError::Db(DbError::Disconnected(lost))));
        }
        self.done += 1;
        Ok((lost, left))
    }

    /// Retries so far.
    pub(crate) fn done(&self) -> usize {
        self.done
    }
}

/// Runs `query` on `db`; while it fails with a disconnect error, runs it again on a
/// connection checked out of `pool`, at most [`max_retries`] times.
///
/// The failed connection was already discarded, and the pool invalidated, by
/// [`Db::error`] (through `finish`), so each retry gets a connection opened after the
/// failure or one that passes the pool's checks. Bounds: a retry's query gets what is
/// left of `limit` (`query_timeout`) since the first one began, so the queries of a
/// request together stay within `query_timeout` (no time left: the disconnect is the
/// answer); each checkout waits at most `pool_timeout`, and the whole request stays
/// under the request timeout of the router's backstop. Any other outcome, including a
/// query timeout (the server may still be running the query), is returned as it is.
pub(crate) async fn read<M: Store, R: Read<M>>(
    pool: &Pool<M>,
    mut db: Db<M>,
    query: R,
    limit: Duration,
) -> Result<R::Output, AppError> {
    let mut retries = Retries::new(limit, max_retries(pool));
    let mut outcome = finish(
        bounded(limit, query.run(&mut db, limit)).await,
        &mut db,
        limit,
    );
    // Back to the pool (here: closed) before a retry checks one out: with a pool of
    // one, holding it would make the retry wait for itself.
    drop(db);
    loop {
        let (lost, left) = match retries.next(outcome) {
            Ok(retry) => retry,
            Err(outcome) => return outcome,
        };
        tracing::info!(
            "a read query lost its database connection ({lost}); retrying it on another \
             connection (retry {})",
            retries.done()
        );
        let mut db = Db::checkout(pool).await?;
        outcome = finish(
            bounded(left, query.run(&mut db, left)).await,
            &mut db,
            limit,
        );
    }
}
