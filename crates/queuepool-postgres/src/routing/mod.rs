//! [`ReadWrite`]: a write pool on the primary and one read pool per standby, with
//! read-your-writes routing.
//!
//! # The rule
//! A write's token is the primary's WAL insert position read after its commit
//! ([`ReadWrite::token`]); it includes the commit record. A read carrying a token goes
//! to a standby only when that standby has replayed at least that far, so it sees the
//! write; a read without one may go to any standby within the lag bound. Otherwise
//! the read goes to the primary.
//!
//! What the router knows of each standby comes from a probe every
//! [`refresh_interval`](RoutingConfig::refresh_interval) on a connection of its own
//! (`pg_is_in_recovery()`, `pg_last_wal_replay_lsn()`), and from rechecks: when every
//! standby's cached position is below a read's token, one of them is asked again on the
//! connection the read would use (one round trip) before the read falls back to the
//! primary.
//!
//! A standby gets no reads while
//! - its last probe failed, or a read on it failed to connect or lost its connection
//!   (until a probe answers again);
//! - it is not in recovery (a promoted or misconfigured read host is not a standby of
//!   this primary's history, as far as the router can tell);
//! - its lag exceeds [`max_lag`](RoutingConfig::max_lag) (default 1 s): the age of the
//!   oldest primary flush position, sampled at the same interval, that it has not
//!   replayed. The router's own clock measures it; no clock is shared with the servers.
//!
//! # Failures
//! A standby that cannot be connected to is skipped within the same checkout, the next
//! candidate (another standby, then the primary) serves the read. A read whose query
//! loses its connection is the caller's to retry ([`ReadWrite::read_avoiding`], as
//! `queuepool_axum::DbRead` does): reads are idempotent, writes are never retried.

mod hosts;
mod lag;
mod lsn;
mod monitor;
mod router;

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queuepool::{Pool, PoolConfig, PoolError, PooledConn};
use tokio::sync::Notify;

use crate::connection::PgConnection;
use crate::error::PgError;
use crate::manager::PgManager;
use crate::wire::TxStatus;

pub use lsn::Lsn;
pub use router::{RoutingStats, StandbyStats};

use lag::{History, HostState};
use router::{Shared, Standby};

/// How [`ReadWrite`] routes reads. Build it with [`RoutingConfig::default`] and the
/// `with_*` methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RoutingConfig {
    /// A standby whose replay lag exceeds this gets no reads until it catches up.
    /// Default 1 s.
    pub max_lag: Duration,
    /// How often each standby's replay position and the primary's flush position are
    /// read. Default 100 ms.
    pub refresh_interval: Duration,
    /// Bound on one probe or recheck (connecting included). Default 1 s.
    pub probe_timeout: Duration,
    /// Whether a read whose token no standby is known to have replayed asks one standby
    /// again (one round trip) before falling back to the primary. Default on.
    pub recheck: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_lag: Duration::from_secs(1),
            refresh_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_secs(1),
            recheck: true,
        }
    }
}

impl RoutingConfig {
    /// Sets [`max_lag`](Self::max_lag).
    pub fn with_max_lag(mut self, limit: Duration) -> Self {
        self.max_lag = limit;
        self
    }

    /// Sets [`refresh_interval`](Self::refresh_interval) (at least 1 ms).
    pub fn with_refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Sets [`probe_timeout`](Self::probe_timeout).
    pub fn with_probe_timeout(mut self, limit: Duration) -> Self {
        self.probe_timeout = limit;
        self
    }

    /// Sets [`recheck`](Self::recheck).
    pub fn with_recheck(mut self, on: bool) -> Self {
        self.recheck = on;
        self
    }
}

/// Which server a read went to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// `None` for the primary, else the index of the standby.
    standby: Option<usize>,
    label: Arc<str>,
}

impl Route {
    /// `primary`, or the standby's `host:port`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the read went to the primary.
    pub fn is_primary(&self) -> bool {
        self.standby.is_none()
    }

    /// The standby's index (in the order given to [`ReadWrite::new`]); `None` for the
    /// primary.
    pub fn standby_index(&self) -> Option<usize> {
        self.standby
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// A connection lent for a read, and where it comes from. Derefs to [`PgConnection`];
/// goes back to its pool when dropped.
#[must_use = "dropping a ReadConn returns its connection at once"]
pub struct ReadConn {
    conn: PooledConn<PgManager>,
    route: Route,
}

impl ReadConn {
    /// Where this read goes.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The pool guard.
    pub fn into_inner(self) -> PooledConn<PgManager> {
        self.conn
    }

    /// The pool guard, for its associated functions (`PooledConn::report_error`).
    pub fn guard(&mut self) -> &mut PooledConn<PgManager> {
        &mut self.conn
    }
}

impl Deref for ReadConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl fmt::Debug for ReadConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadConn")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// A write pool on the primary and one read pool per standby, routing each read to a
/// standby that has replayed the reader's own writes, else to the primary. See the
/// [module documentation](self) for the rule.
///
/// ```no_run
/// use queuepool::{Pool, PoolConfig};
/// use queuepool_postgres::{Lsn, PgManager, ReadWrite, RoutingConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = PoolConfig::builder().pool_size(8).build()?;
/// let primary = Pool::new(PgManager::from_url("postgres://app@db1/shop")?, config.clone()).await?;
/// let standbys = PgManager::from_url("postgres://app@db2,db3/shop")?;
/// let rw = ReadWrite::with_standbys(primary, standbys.split_hosts(), config, RoutingConfig::default()).await?;
///
/// let conn = rw.write().await?;
/// conn.execute("INSERT INTO items (name) VALUES ('x')", &[]).await?;
/// let token: Lsn = ReadWrite::token(&conn).await?; // hand it to the client
/// drop(conn);
///
/// let conn = rw.read(Some(token)).await?; // a standby that has the insert, or the primary
/// let n: i64 = conn.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
/// println!("{n} items, read on {}", conn.route());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReadWrite {
    shared: Arc<Shared>,
}

impl fmt::Debug for ReadWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadWrite")
            .field("standbys", &self.shared.standbys.len())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl ReadWrite {
    /// Routes over `primary` and one pool per standby (their managers should name one
    /// host each: see [`PgManager::split_hosts`]). Starts one probe task per server on
    /// the current tokio runtime; they end when the last clone is dropped or at
    /// [`close`](Self::close). No standby is known until its first probe answers (a
    /// refresh interval at most): reads go to the primary until then.
    pub fn new(
        primary: Pool<PgManager>,
        standbys: Vec<Pool<PgManager>>,
        config: RoutingConfig,
    ) -> ReadWrite {
        let keep = config.max_lag * 2 + config.refresh_interval * 10;
        let standbys = standbys
            .into_iter()
            .enumerate()
            .map(|(i, pool)| Standby {
                route: Route {
                    standby: Some(i),
                    label: pool.manager().host_label().into(),
                },
                pool,
                state: Mutex::new(HostState::default()),
                reads: AtomicU64::new(0),
                rechecks: AtomicU64::new(0),
                recheck_hits: AtomicU64::new(0),
            })
            .collect();
        let shared = Arc::new(Shared {
            primary,
            primary_route: Route {
                standby: None,
                label: "primary".into(),
            },
            standbys,
            config,
            history: Mutex::new(History::new(keep)),
            next: AtomicUsize::new(0),
            primary_reads: AtomicU64::new(0),
            fresh_fallbacks: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            stop: Arc::new(Notify::new()),
        });
        monitor::spawn(&shared);
        ReadWrite { shared }
    }

    /// Builds one pool per manager with `config` (named `read <host:port>`, without
    /// prefill so that a standby that is down does not stop the start: it gets reads
    /// once its probe answers), then [`new`](Self::new).
    ///
    /// # Cancel safety
    /// Cancel safe: the pools built so far are dropped.
    pub async fn with_standbys(
        primary: Pool<PgManager>,
        standbys: Vec<PgManager>,
        config: PoolConfig,
        routing: RoutingConfig,
    ) -> Result<ReadWrite, PoolError> {
        let mut pools = Vec::with_capacity(standbys.len());
        for manager in standbys {
            let mut config = config.clone();
            config.prefill = false;
            config.name = format!("read {}", manager.host_label());
            pools.push(Pool::new(manager, config).await?);
        }
        Ok(ReadWrite::new(primary, pools, routing))
    }

    /// The write pool.
    pub fn primary(&self) -> &Pool<PgManager> {
        &self.shared.primary
    }

    /// The standbys' pools, in order.
    pub fn standby_pools(&self) -> impl Iterator<Item = &Pool<PgManager>> {
        self.shared.standbys.iter().map(|s| &s.pool)
    }

    /// The route of standby `index` (in the order given), if there is one.
    pub fn standby_route(&self, index: usize) -> Option<Route> {
        self.shared.standbys.get(index).map(|s| s.route.clone())
    }

    /// The routing settings.
    pub fn config(&self) -> &RoutingConfig {
        &self.shared.config
    }

    /// Checks out a connection of the primary, for writes.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Pool::get`].
    pub async fn write(&self) -> Result<PooledConn<PgManager>, PoolError> {
        self.shared.primary.get().await
    }

    /// The read-your-writes token of what `conn` has committed: the server's WAL insert
    /// position (`pg_current_wal_insert_lsn()`), read now. Call it after the commit,
    /// on the same connection or any connection of the same primary; a read given this
    /// token sees the write. One round trip, simple protocol (works through PgBouncer).
    ///
    /// Fails with [`PgError::Client`] inside an open transaction (the position before
    /// the commit would not include it), and with the server's error on a server in
    /// recovery.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is written.
    pub async fn token(conn: &PgConnection) -> Result<Lsn, PgError> {
        if conn.transaction_status() != TxStatus::Idle {
            return Err(PgError::Client(
                "a read-your-writes token was asked for inside an open transaction; commit \
                 first (the position before the commit does not include it)"
                    .into(),
            ));
        }
        let text = monitor::one_text(conn, "SELECT pg_current_wal_insert_lsn()::text").await?;
        text.ok_or_else(|| PgError::Client("pg_current_wal_insert_lsn() returned NULL".into()))?
            .parse()
    }

    /// Checks out a connection for a read that must see every write up to `after` (a
    /// token from [`token`](Self::token)), or any recent state when `None`: a standby
    /// when one qualifies (the least busy, in turn), else the primary. A standby that
    /// cannot be connected to is marked down and the next candidate is tried. Waits at
    /// most `pool_timeout` on a saturated pool, as [`Pool::get`].
    ///
    /// # Cancel safety
    /// Cancel safe: a connection being checked out or rechecked is returned to its pool.
    pub async fn read(&self, after: Option<Lsn>) -> Result<ReadConn, PoolError> {
        self.read_avoiding(after, None).await
    }

    /// [`read`](Self::read), but not on `avoid`: for the retry of a read whose
    /// connection to `avoid` was lost. Call [`failed`](Self::failed) first, so that the
    /// router also stops sending other reads there.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`read`](Self::read).
    pub async fn read_avoiding(
        &self,
        after: Option<Lsn>,
        avoid: Option<&Route>,
    ) -> Result<ReadConn, PoolError> {
        let shared = &*self.shared;
        let avoid = avoid.and_then(|r| r.standby);
        let (fresh, behind) = shared.candidates(after, avoid);
        for i in fresh {
            let standby = &shared.standbys[i];
            match standby.pool.get().await {
                Ok(conn) => return Ok(shared.lend_standby(i, conn)),
                Err(e) if e.is_connect() => shared.checkout_failed(i, &e),
                Err(e) => return Err(e),
            }
        }
        if let (Some(after), Some(i)) = (after, behind)
            && shared.config.recheck
            && let Some(conn) = shared.recheck(i, after).await
        {
            return Ok(conn);
        }
        let conn = shared.primary.get().await?;
        shared.primary_reads.fetch_add(1, Ordering::Relaxed);
        if after.is_some() {
            shared.fresh_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!("queuepool_reads_total", "target" => "primary").increment(1);
        Ok(ReadConn {
            conn,
            route: shared.primary_route.clone(),
        })
    }

    /// Tells the router that a read on `conn` failed with `error`: the pool is told
    /// (a disconnect discards the connection and checks the pool's idle ones), and a
    /// standby that lost its connection gets no reads until its probe answers again.
    /// Returns whether it was a disconnect (then retry with
    /// [`read_avoiding`](Self::read_avoiding)).
    pub fn failed(&self, conn: &mut ReadConn, error: &PgError) -> bool {
        let route = conn.route.clone();
        self.failed_on(Some(&route), &mut conn.conn, error)
    }

    /// [`failed`](Self::failed) for a connection taken out of its [`ReadConn`]
    /// ([`ReadConn::into_inner`]) that came from `route`.
    pub fn failed_on(
        &self,
        route: Option<&Route>,
        conn: &mut PooledConn<PgManager>,
        error: &PgError,
    ) -> bool {
        let disconnect = PooledConn::report_error(conn, error);
        if disconnect && let Some(i) = route.and_then(|r| r.standby) {
            self.shared.failovers.fetch_add(1, Ordering::Relaxed);
            self.shared.mark_down(i, &error.to_string());
        }
        disconnect
    }

    /// Where reads went, and each standby's state now.
    pub fn stats(&self) -> RoutingStats {
        self.shared.stats()
    }

    /// Stops the probes and closes every pool (the primary's too), as [`Pool::close`]
    /// with `grace` for each. Returns how many connections were still lent when
    /// `grace` ran out.
    ///
    /// # Cancel safety
    /// Cancel safe: the probes stop and the pools are closed from the first poll.
    pub async fn close(&self, grace: Duration) -> usize {
        let shared = &*self.shared;
        shared.closed.store(true, Ordering::Release);
        shared.stop.notify_waiters();
        let mut lent = 0;
        for s in &shared.standbys {
            lent += s.pool.close(grace).await;
        }
        lent + shared.primary.close(grace).await
    }
}
