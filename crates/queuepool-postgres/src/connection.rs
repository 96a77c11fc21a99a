//! [`PgConnection`]: a tokio-postgres [`Client`] with what the pool needs to know.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};

use crate::error::PgError;
use crate::wire::{TxStatus, WireState};

/// Sends a cancel request for the query running on one backend (best effort).
pub(crate) type Canceller = Arc<dyn Fn(tokio_postgres::CancelToken) + Send + Sync>;

/// One PostgreSQL connection, as lent by the pool.
///
/// Derefs to [`tokio_postgres::Client`], so every driver method is there. What it adds:
/// the server-reported [`TxStatus`] (read from the wire, see
/// [`transaction_status`](Self::transaction_status)), a [`timeout`](Self::timeout)
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
    touched: AtomicBool,
    broken: AtomicBool,
    driver: Option<JoinHandle<()>>,
    cache: StatementCache,
    canceller: Canceller,
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
            touched: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            driver: Some(driver),
            cache: StatementCache::new(cache_capacity),
            canceller,
        }
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
                (self.canceller)(self.client.cancel_token());
                Err(PgError::Timeout(limit))
            }
        }
    }

    /// Prepares `sql` once per connection and reuses the statement afterwards.
    ///
    /// For direct connections only: the cache holds named server-side statements that
    /// PgBouncer in transaction mode does not keep. With the cache disabled (the
    /// default, see [`PgManager::statement_cache_capacity`](crate::PgManager::statement_cache_capacity))
    /// this prepares a new statement on every call. A reset with `DISCARD ALL` empties it.
    ///
    /// # Cancel safety
    /// Cancel safe: a statement is cached only once prepared.
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, PgError> {
        self.touched.store(true, Ordering::Relaxed);
        if let Some(stmt) = self.cache.get(sql) {
            return Ok(stmt);
        }
        let stmt = self.client.prepare(sql).await?;
        self.cache.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// How many statements the cache holds.
    pub fn cached_statements(&self) -> usize {
        self.cache.map.len()
    }

    /// The client, without marking the connection as used: for looking at it from
    /// code that does not run queries for the borrower (tests, tools).
    pub fn client_ref(&self) -> &Client {
        &self.client
    }

    pub(crate) fn client_untracked(&self) -> &Client {
        &self.client
    }

    pub(crate) fn was_used(&self) -> bool {
        self.touched.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_clean(&self) {
        self.touched.store(false, Ordering::Relaxed);
    }

    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    pub(crate) fn clear_cache(&mut self) {
        self.cache.clear();
    }

    pub(crate) fn into_parts(mut self) -> (Client, Option<JoinHandle<()>>) {
        self.cache.clear();
        let driver = self.driver.take();
        (self.client, driver)
    }
}

impl Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Any use may open a transaction: the next return must check.
        self.touched.store(true, Ordering::Relaxed);
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        self.touched.store(true, Ordering::Relaxed);
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

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}
