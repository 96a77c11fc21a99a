//! In-flight tracking of a borrower's requests, so that a returned connection whose
//! every request finished goes back to the pool without a round trip.
//!
//! Every request future of tokio-postgres (0.7.18) resolves only once the server's
//! `ReadyForQuery` for it has been read (`query`, `execute`, `simple_query`,
//! `batch_execute`, `prepare`; row and copy streams end on it), and the [`Sniff`]
//! wrapper records that message's status byte as the driver reads it, before the
//! future sees it. So when every request of a borrower *completed successfully*, the
//! status the wire shows is the session's real status and nothing of the borrower is
//! left in the driver's queue. What breaks that, and what [`Track`] records:
//! - a request future or stream dropped before it finished (*abandoned*): the request
//!   may still be queued or running, and it will run. Counted as an open operation
//!   that never closed; the reset sends a cancel request and waits for the queue to
//!   drain (one empty query, bounded), or the connection is discarded.
//! - a request that ended in an error: tokio-postgres returns at the `ErrorResponse`,
//!   and the `ReadyForQuery` that follows may not have been read yet. One empty query
//!   settles it (no cancel: the request is over on the server).
//! - the raw [`Client`](tokio_postgres::Client) taken through `Deref` (*untracked*):
//!   anything may have been sent, the reset settles with one empty query as before.
//!
//! Requests tokio-postgres sends by itself and no borrower awaits (closing a dropped
//! `Statement` or `Portal`: `Close` + `Sync`) never change the transaction status, so
//! they are not counted. A `Transaction` dropped without `commit`/`rollback` queues a
//! `ROLLBACK` the same way: [`PgTransaction`] counts as an open operation until one of
//! them completes, so that case is abandoned and settled too.
//!
//! [`Sniff`]: crate::wire

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Buf;
use futures_util::{Sink, Stream};
use tokio_postgres::{CopyInSink, CopyOutStream, Error, RowStream, SimpleQueryStream};

/// What the borrowers of one connection did since its last reset.
#[derive(Debug, Default)]
pub(crate) struct Track {
    /// Operations begun and not completed; a dropped future leaves its count here.
    open: AtomicU32,
    /// An operation ended with an error: its `ReadyForQuery` may not be read yet.
    unsettled: AtomicBool,
    /// The raw client was handed out: anything may have been sent.
    untracked: AtomicBool,
    /// Anything at all was sent (for `ResetMode::DiscardAll`).
    used: AtomicBool,
}

/// What a returned connection needs before it can be lent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Every request completed: the wire status is exact, nothing is queued.
    Nothing,
    /// The status may lag one `ReadyForQuery` (an error, or untracked use): one empty
    /// query settles it.
    Settle,
    /// A request was abandoned: it may be queued or running. Cancel, then settle.
    Abandoned,
}

impl Track {
    pub(crate) fn begin(&self) {
        // Relaxed is enough: the connection changes hands (and threads) only through
        // the pool's lock or a task spawn, both of which order these stores.
        self.open.fetch_add(1, Ordering::Relaxed);
        self.used.store(true, Ordering::Relaxed);
    }

    pub(crate) fn end(&self, failed: bool) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if failed {
            self.unsettled.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn mark_untracked(&self) {
        self.untracked.store(true, Ordering::Relaxed);
        self.used.store(true, Ordering::Relaxed);
    }

    pub(crate) fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn pending(&self) -> Pending {
        if self.open.load(Ordering::Relaxed) != 0 {
            Pending::Abandoned
        } else if self.unsettled.load(Ordering::Relaxed) || self.untracked.load(Ordering::Relaxed) {
            Pending::Settle
        } else {
            Pending::Nothing
        }
    }

    /// After a reset: everything before it has completed.
    pub(crate) fn clear(&self) {
        self.open.store(0, Ordering::Relaxed);
        self.unsettled.store(false, Ordering::Relaxed);
        self.untracked.store(false, Ordering::Relaxed);
        self.used.store(false, Ordering::Relaxed);
    }

    /// Runs one request, counted from its first poll (when tokio-postgres sends it) to
    /// its completion. Dropped in between, it stays counted: abandoned.
    pub(crate) async fn run<T>(
        &self,
        request: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.begin();
        let result = request.await;
        self.end(result.is_err());
        result
    }

    /// Like [`Track::run`] for a request that yields a stream: the operation stays
    /// open until the stream ends (see [`Tracked`]).
    pub(crate) async fn run_stream<S>(
        &self,
        request: impl Future<Output = Result<S, Error>>,
    ) -> Result<Tracked<'_, S>, Error> {
        self.begin();
        match request.await {
            Ok(stream) => Ok(Tracked {
                inner: Box::pin(stream),
                track: self,
                done: false,
            }),
            Err(e) => {
                self.end(true);
                Err(e)
            }
        }
    }
}

/// A tokio-postgres stream (rows, simple-query messages, `COPY` data in or out) whose
/// operation on the connection stays open until it ends. Dropped before its end, the
/// connection is treated as abandoned when it returns to the pool (cancel, then settle).
///
/// It borrows the connection, so it cannot outlive the checkout.
pub struct Tracked<'a, S> {
    inner: Pin<Box<S>>,
    track: &'a Track,
    done: bool,
}

/// Rows of [`PgConnection::query_raw`](crate::PgConnection::query_raw) and
/// [`query_typed_raw`](crate::PgConnection::query_typed_raw).
pub type PgRowStream<'a> = Tracked<'a, RowStream>;
/// Messages of [`PgConnection::simple_query_raw`](crate::PgConnection::simple_query_raw).
pub type PgSimpleQueryStream<'a> = Tracked<'a, SimpleQueryStream>;
/// Data of [`PgConnection::copy_out`](crate::PgConnection::copy_out).
pub type PgCopyOutStream<'a> = Tracked<'a, CopyOutStream>;
/// The sink of [`PgConnection::copy_in`](crate::PgConnection::copy_in): send buffers
/// (it is a [`Sink`]), then [`finish`](Tracked::finish).
pub type PgCopyInSink<'a, U> = Tracked<'a, CopyInSink<U>>;

impl<S> Tracked<'_, S> {
    fn close(&mut self, failed: bool) {
        if !self.done {
            self.done = true;
            self.track.end(failed);
        }
    }
}

impl Tracked<'_, RowStream> {
    /// The number of rows affected, once the stream ended; see
    /// [`RowStream::rows_affected`].
    pub fn rows_affected(&self) -> Option<u64> {
        self.inner.rows_affected()
    }
}

impl<S, T> Stream for Tracked<'_, S>
where
    S: Stream<Item = Result<T, Error>>,
{
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let item = ready!(this.inner.as_mut().poll_next(cx));
        match &item {
            None => this.close(false),
            // An error ends the request (tokio-postgres yields nothing after it).
            Some(Err(_)) => this.close(true),
            Some(Ok(_)) => {}
        }
        Poll::Ready(item)
    }
}

impl<U> Tracked<'_, CopyInSink<U>>
where
    U: Buf + 'static + Send,
{
    /// Ends the `COPY` and returns the number of rows copied; see
    /// [`CopyInSink::finish`]. Dropping the sink before this completes aborts the
    /// copy (tokio-postgres sends `CopyFail`) and the connection is settled on return.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped before completion, the copy may or may not have been
    /// committed; the connection is then treated as abandoned (cancel, settle).
    pub async fn finish(mut self) -> Result<u64, Error> {
        let result = self.inner.as_mut().finish().await;
        self.close(result.is_err());
        result
    }
}

impl<U> Sink<U> for Tracked<'_, CopyInSink<U>>
where
    U: Buf + 'static + Send,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().inner.as_mut().poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: U) -> Result<(), Error> {
        self.get_mut().inner.as_mut().start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().inner.as_mut().poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        let result = ready!(this.inner.as_mut().poll_close(cx));
        this.close(result.is_err());
        Poll::Ready(result)
    }
}

/// A transaction on a pooled connection: tokio-postgres's
/// [`Transaction`](tokio_postgres::Transaction) (every method through `Deref`), counted
/// as one open operation from `BEGIN` until [`commit`](Self::commit) or
/// [`rollback`](Self::rollback) completes.
///
/// Requests inside it run in order before the `COMMIT`/`ROLLBACK`, so once that
/// completes they all have. Dropped without either (or with either's future dropped),
/// tokio-postgres queues a `ROLLBACK` nobody awaits: the connection is then treated as
/// abandoned on return (cancel, settle, roll back if needed), never lent inside the
/// transaction.
pub struct PgTransaction<'a> {
    tx: tokio_postgres::Transaction<'a>,
    track: &'a Track,
}

impl<'a> PgTransaction<'a> {
    /// `track` counts one open operation for it (its `BEGIN`'s), closed by
    /// `commit`/`rollback`.
    pub(crate) fn new(tx: tokio_postgres::Transaction<'a>, track: &'a Track) -> Self {
        PgTransaction { tx, track }
    }

    /// Commits; see [`Transaction::commit`](tokio_postgres::Transaction::commit).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped before completion, whether the transaction committed
    /// is unknown; the connection is treated as abandoned on return.
    pub async fn commit(self) -> Result<(), Error> {
        let PgTransaction { tx, track } = self;
        let result = tx.commit().await;
        track.end(result.is_err());
        result
    }

    /// Rolls back; see [`Transaction::rollback`](tokio_postgres::Transaction::rollback).
    ///
    /// # Cancel safety
    /// Cancel safe in effect: dropped before completion, the connection is treated as
    /// abandoned on return and rolled back then.
    pub async fn rollback(self) -> Result<(), Error> {
        let PgTransaction { tx, track } = self;
        let result = tx.rollback().await;
        track.end(result.is_err());
        result
    }
}

impl<'a> Deref for PgTransaction<'a> {
    type Target = tokio_postgres::Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for PgTransaction<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl std::fmt::Debug for PgTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction").finish_non_exhaustive()
    }
}
