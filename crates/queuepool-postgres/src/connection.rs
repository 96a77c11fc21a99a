//! [`PgConnection`]: a tokio-postgres [`Client`] with what the pool needs to know.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Buf;
use tokio::task::JoinHandle;
use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{CancelToken, Client, Error, Row, SimpleQueryMessage, Statement, ToStatement};

use crate::error::PgError;
use crate::tracked::{
    Pending, PgCopyInSink, PgCopyOutStream, PgRowStream, PgSimpleQueryStream, PgTransaction, Track,
};
use crate::wire::{TxStatus, WireState};

/// Sends a cancel request for the query running on one backend (best effort, bounded
/// by the manager's `ping_timeout`), in a task whose handle it returns (`None` without
/// a runtime).
pub(crate) type Canceller =
    Arc<dyn Fn(tokio_postgres::CancelToken) -> Option<JoinHandle<()>> + Send + Sync>;

/// One PostgreSQL connection, as lent by the pool.
///
/// It has the query methods of [`tokio_postgres::Client`], with the same signatures,
/// each *tracked*: counted from the moment it is sent until the server's
/// `ReadyForQuery` for it was read. When every request of a borrower completed, the
/// connection goes back to the pool with **no round trip** (the transaction status is
/// read from the wire; an open transaction gets a `ROLLBACK`). A request future or
/// stream dropped before its end leaves the connection *abandoned*: on return a
/// cancel request is sent and the connection is settled (one empty query, bounded)
/// or discarded. A request that failed costs one empty query on return (its
/// `ReadyForQuery` may still be on its way). See [`PgTransaction`] for transactions.
///
/// It also derefs to the [`Client`] for everything else (`build_transaction`,
/// `query_scalar`, ...): that escape hatch marks the connection *untracked*, and its
/// return costs one empty-query round trip (plus a `ROLLBACK` if a transaction is
/// open), as before this tracking existed.
///
/// What else it adds: the server-reported [`TxStatus`]
/// ([`transaction_status`](Self::transaction_status)), a [`timeout`](Self::timeout)
/// helper that bounds a query and discards the connection when it does not answer
/// (blackholed network, stuck server), and an opt-in statement cache for direct
/// connections ([`prepare_cached`](Self::prepare_cached)).
///
/// # PgBouncer
/// `Client::query(&str, ..)` and friends prepare a *named* statement (`s0`, `s1`, ...)
/// in one round trip and execute it in the next; behind PgBouncer in transaction mode
/// the two can land on different server connections (`prepared statement "s3" does
/// not exist`). Use [`Client::query_typed`] (one unnamed Parse/Bind/Execute, one round
/// trip) or `simple_query` there; the pool's own pings and resets use the simple
/// protocol only.
pub struct PgConnection {
    client: Client,
    wire: Arc<WireState>,
    track: Track,
    broken: AtomicBool,
    driver: Option<JoinHandle<()>>,
    cache: StatementCache,
    canceller: Canceller,
    /// The host it was opened to (multi-host failover; see `hosts.rs`).
    origin: Option<crate::hosts::Origin>,
    close_limit: Duration,
}

/// How long a dropped or closed connection may take to leave the server, unless the
/// manager sets it ([`PgConnection::set_close_limit`]).
const DEFAULT_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Awaits the driver task for at most `limit`, then aborts it. Dropped early (the
/// pool cut the close at its deadline), the driver is aborted too.
async fn wait_or_abort(driver: JoinHandle<()>, limit: Duration) {
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut guard = AbortOnDrop(driver);
    let _ = tokio::time::timeout(limit, &mut guard.0).await;
}

impl Drop for PgConnection {
    /// A connection dropped without [`Manager::close`](queuepool::Manager::close) (a
    /// reset cut at its deadline, a connection used outside a pool) still leaves the
    /// server: a cancel request if a request may still run, then the driver is given
    /// the close limit to send `Terminate`, and aborted after it. In the background:
    /// nothing here can wait.
    fn drop(&mut self) {
        let Some(driver) = self.driver.take() else {
            return; // closed through `close`, which waits itself
        };
        let token = self.may_be_running().then(|| self.client.cancel_token());
        let canceller = self.canceller.clone();
        let limit = self.close_limit;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the driver task cannot run either
        };
        runtime.spawn(async move {
            if let Some(token) = token
                && let Some(cancel) = canceller(token)
            {
                let _ = cancel.await;
            }
            wait_or_abort(driver, limit).await;
        });
    }
}

impl PgConnection {
    pub(crate) fn new(
        client: Client,
        wire: Arc<WireState>,
        driver: JoinHandle<()>,
        cache_capacity: usize,
        canceller: Canceller,
    ) -> Self {
        PgConnection {
            client,
            wire,
            track: Track::default(),
            broken: AtomicBool::new(false),
            driver: Some(driver),
            cache: StatementCache::new(cache_capacity),
            canceller,
            origin: None,
            close_limit: DEFAULT_CLOSE_LIMIT,
        }
    }

    /// The host this connection went to, as `host:port` (or the Unix socket path): with
    /// a multi-host connection string, which server `target_session_attrs` settled on.
    pub fn host(&self) -> Option<&str> {
        self.origin.as_ref().map(|o| o.label())
    }

    pub(crate) fn set_origin(&mut self, origin: crate::hosts::Origin) {
        self.origin = Some(origin);
    }

    pub(crate) fn origin(&self) -> Option<&crate::hosts::Origin> {
        self.origin.as_ref()
    }

    /// The transaction status reported by the server after the last completed query.
    ///
    /// It is exact for completed queries; a query still queued in the driver (its future
    /// dropped before it ran) is not reflected until it completes.
    pub fn transaction_status(&self) -> TxStatus {
        self.wire.status()
    }

    /// Whether this connection was marked unusable (a bounded query timed out).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Runs `query` for at most `limit`. On timeout a cancel request is sent to the
    /// server (best effort), the connection is marked broken (the pool discards it on
    /// return) and [`PgError::Timeout`] is returned.
    ///
    /// This is the bound for a connection whose server stopped answering without
    /// closing the socket (a blackholed network path, a frozen host): TCP keepalives and
    /// `tcp_user_timeout` take minutes there, or never fire when the path still acks.
    ///
    /// ```no_run
    /// # async fn f(conn: &queuepool_postgres::PgConnection) -> Result<(), queuepool_postgres::PgError> {
    /// use std::time::Duration;
    /// let rows = conn.timeout(Duration::from_secs(2), conn.query_typed("SELECT 1", &[])).await?;
    /// # let _ = rows; Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Dropping the returned future drops `query` (see tokio-postgres: the request
    /// still runs on the server; its result is discarded).
    pub async fn timeout<T, F>(&self, limit: Duration, query: F) -> Result<T, PgError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match tokio::time::timeout(limit, query).await {
            Ok(result) => result.map_err(PgError::from),
            Err(_) => {
                self.mark_broken();
                if let Some(origin) = &self.origin {
                    // Maybe a silent host: new connections try the others first.
                    origin.mark_host_suspect();
                }
                drop((self.canceller)(self.client.cancel_token()));
                Err(PgError::Timeout(limit))
            }
        }
    }

    /// Prepares `sql` once per connection and reuses the statement afterwards.
    ///
    /// For direct connections only: the cache holds named server-side statements that
    /// PgBouncer in transaction mode does not keep. With the cache disabled (the
    /// default, see [`PgManager::statement_cache_capacity`](crate::PgManager::statement_cache_capacity))
    /// this prepares a new statement on every call. [`ResetMode::DiscardAll`](crate::ResetMode::DiscardAll) keeps it (it does not
    /// deallocate statements).
    ///
    /// # Cancel safety
    /// Cancel safe: a statement is cached only once prepared.
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, PgError> {
        if let Some(stmt) = self.cache.get(sql) {
            return Ok(stmt);
        }
        let stmt = self.track.run(self.client.prepare(sql)).await?;
        self.cache.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// How many statements the cache holds.
    pub fn cached_statements(&self) -> usize {
        self.cache.map.len()
    }

    /// The raw client: the escape hatch, like `Deref`. The connection is marked
    /// untracked (its return costs one empty-query round trip).
    pub fn client_ref(&self) -> &Client {
        self.track.mark_untracked();
        &self.client
    }

    /// The pool's own requests (ping, reset), which must not count as the borrower's.
    pub(crate) fn client_untracked(&self) -> &Client {
        &self.client
    }

    pub(crate) fn pending(&self) -> Pending {
        self.track.pending()
    }

    pub(crate) fn was_used(&self) -> bool {
        self.track.used()
    }

    pub(crate) fn mark_clean(&self) {
        self.track.clear();
    }

    /// Sends a cancel request for whatever runs on this connection's backend and
    /// waits until the server took it (or the attempt failed or timed out).
    pub(crate) async fn cancel(&self) {
        if let Some(task) = (self.canceller)(self.client.cancel_token()) {
            let _ = task.await;
        }
    }

    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Sets how long a closing connection may take to leave the server before its
    /// driver is aborted (the manager's `connect_timeout`, else its `ping_timeout`).
    pub(crate) fn set_close_limit(&mut self, limit: Duration) {
        self.close_limit = limit;
    }

    /// Whether a request may still run on the server: something was abandoned, or a
    /// bounded query timed out.
    fn may_be_running(&self) -> bool {
        !self.client.is_closed() && (self.pending() == Pending::Abandoned || self.is_broken())
    }

    /// Closes the connection and waits until it is gone: a cancel request first if a
    /// request may still run (awaited, so the backend is already stopping), then the
    /// client is dropped, the driver sends `Terminate` once its queue drained and
    /// closes the socket. Bounded by the close limit, after which the driver is
    /// aborted (the socket closed from this side). Dropping this future aborts the
    /// driver too.
    pub(crate) async fn close(mut self) {
        if self.may_be_running() {
            self.cancel().await;
        }
        let limit = self.close_limit;
        let driver = self.driver.take();
        drop(self);
        if let Some(driver) = driver {
            wait_or_abort(driver, limit).await;
        }
    }
}

/// The tracked query methods: the same signatures as [`Client`]'s, each counted until
/// the server's `ReadyForQuery` for it was read (see the type's documentation).
///
/// # Cancel safety
/// Like tokio-postgres: dropping a future does not stop its request, which still runs
/// on the server. The connection then counts as abandoned, and its return sends a
/// cancel request and waits for the request to end (bounded), or discards it; it is
/// never lent with the request pending.
impl PgConnection {
    /// See [`Client::prepare`].
    pub async fn prepare(&self, query: &str) -> Result<Statement, Error> {
        self.track.run(self.client.prepare(query)).await
    }

    /// See [`Client::prepare_typed`].
    pub async fn prepare_typed(
        &self,
        query: &str,
        parameter_types: &[Type],
    ) -> Result<Statement, Error> {
        self.track
            .run(self.client.prepare_typed(query, parameter_types))
            .await
    }

    /// See [`Client::query`].
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.track.run(self.client.query(statement, params)).await
    }

    /// See [`Client::query_one`].
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.track
            .run(self.client.query_one(statement, params))
            .await
    }

    /// See [`Client::query_opt`].
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.track
            .run(self.client.query_opt(statement, params))
            .await
    }

    /// See [`Client::query_raw`]. The stream borrows the connection and keeps the
    /// request open until it ends.
    pub async fn query_raw<T, P, I>(
        &self,
        statement: &T,
        params: I,
    ) -> Result<PgRowStream<'_>, Error>
    where
        T: ?Sized + ToStatement,
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        self.track
            .run_stream(self.client.query_raw(statement, params))
            .await
    }

    /// See [`Client::query_typed`]: one round trip, unnamed statement (PgBouncer-safe).
    pub async fn query_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        self.track.run(self.client.query_typed(query, params)).await
    }

    /// See [`Client::query_typed_one`].
    pub async fn query_typed_one(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, Error> {
        self.track
            .run(self.client.query_typed_one(query, params))
            .await
    }

    /// See [`Client::query_typed_opt`].
    pub async fn query_typed_opt(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Row>, Error> {
        self.track
            .run(self.client.query_typed_opt(query, params))
            .await
    }

    /// See [`Client::query_typed_raw`]. The stream keeps the request open until it ends.
    pub async fn query_typed_raw<P, I>(
        &self,
        query: &str,
        params: I,
    ) -> Result<PgRowStream<'_>, Error>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = (P, Type)>,
    {
        self.track
            .run_stream(self.client.query_typed_raw(query, params))
            .await
    }

    /// See [`Client::execute`].
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.track.run(self.client.execute(statement, params)).await
    }

    /// See [`Client::execute_typed`].
    pub async fn execute_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, Error> {
        self.track
            .run(self.client.execute_typed(query, params))
            .await
    }

    /// See [`Client::execute_raw`].
    pub async fn execute_raw<T, P, I>(&self, statement: &T, params: I) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        self.track
            .run(self.client.execute_raw(statement, params))
            .await
    }

    /// See [`Client::copy_in`]. The copy stays open until
    /// [`finish`](crate::Tracked::finish) completes.
    pub async fn copy_in<T, U>(&self, statement: &T) -> Result<PgCopyInSink<'_, U>, Error>
    where
        T: ?Sized + ToStatement,
        U: Buf + 'static + Send,
    {
        self.track.run_stream(self.client.copy_in(statement)).await
    }

    /// See [`Client::copy_out`]. The copy stays open until the stream ends.
    pub async fn copy_out<T>(&self, statement: &T) -> Result<PgCopyOutStream<'_>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.track.run_stream(self.client.copy_out(statement)).await
    }

    /// See [`Client::simple_query`].
    pub async fn simple_query(&self, query: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.track.run(self.client.simple_query(query)).await
    }

    /// See [`Client::simple_query_raw`]. The stream keeps the request open until it ends.
    pub async fn simple_query_raw(&self, query: &str) -> Result<PgSimpleQueryStream<'_>, Error> {
        self.track
            .run_stream(self.client.simple_query_raw(query))
            .await
    }

    /// See [`Client::batch_execute`].
    pub async fn batch_execute(&self, query: &str) -> Result<(), Error> {
        self.track.run(self.client.batch_execute(query)).await
    }

    /// Starts a transaction (`BEGIN`); see [`PgTransaction`].
    pub async fn transaction(&mut self) -> Result<PgTransaction<'_>, Error> {
        let PgConnection { client, track, .. } = self;
        track.begin();
        match client.transaction().await {
            Ok(tx) => {
                // The transaction takes over the count of its `BEGIN`.
                Ok(PgTransaction::new(tx, track))
            }
            Err(e) => {
                track.end(true);
                Err(e)
            }
        }
    }

    /// See [`Client::cancel_token`] (not a request: nothing is tracked).
    pub fn cancel_token(&self) -> CancelToken {
        self.client.cancel_token()
    }

    /// See [`Client::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

impl Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        // The escape hatch: anything may be sent, the next return must settle.
        self.track.mark_untracked();
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        self.track.mark_untracked();
        &mut self.client
    }
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("closed", &self.client.is_closed())
            .field("transaction_status", &self.wire.status())
            .field("broken", &self.is_broken())
            .field("cached_statements", &self.cache.map.len())
            .finish_non_exhaustive()
    }
}

/// Named statements by SQL text, oldest evicted first.
struct StatementCache {
    capacity: usize,
    map: HashMap<String, Statement>,
    order: VecDeque<String>,
}

impl StatementCache {
    fn new(capacity: usize) -> Self {
        StatementCache {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, sql: &str) -> Option<Statement> {
        self.map.get(sql).cloned()
    }

    fn insert(&mut self, sql: &str, stmt: Statement) {
        if self.capacity == 0 {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(sql.to_owned());
        self.map.insert(sql.to_owned(), stmt);
    }
}
