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

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use queuepool::{Pool, PoolConfig, PoolError, PooledConn};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::connection::PgConnection;
use crate::error::PgError;
use crate::manager::{LOG_TARGET, PgManager};
use crate::wire::TxStatus;

pub use lsn::Lsn;

use lag::{History, HostState, Out, Verdict, judge};

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

/// One standby as the router sees it (see [`ReadWrite::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyStats {
    /// `host:port`.
    pub label: String,
    /// Reads served (rechecks that succeeded included).
    pub reads: u64,
    /// Rechecks: reads whose token was past the cached position, asked again here.
    pub rechecks: u64,
    /// Of those, how many found the standby caught up and read there.
    pub recheck_hits: u64,
    /// Answered its last probe.
    pub up: bool,
    /// In recovery at its last probe.
    pub standby: bool,
    /// `pg_last_wal_replay_lsn()` as last seen.
    pub replay_lsn: Option<Lsn>,
    /// Replay lag as the router measures it now (`None` when down or unknown).
    pub lag: Option<Duration>,
    /// Whether a read without a token could go there now.
    pub eligible: bool,
}

/// Where reads went (see [`ReadWrite::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutingStats {
    /// Reads served by the primary.
    pub primary_reads: u64,
    /// Of those, reads carrying a token that no standby had replayed.
    pub primary_reads_for_freshness: u64,
    /// Reads that moved on after a standby could not be connected to or lost its
    /// connection.
    pub failovers: u64,
    /// Each standby, in the order given.
    pub standbys: Vec<StandbyStats>,
}

struct Standby {
    route: Route,
    pool: Pool<PgManager>,
    state: Mutex<HostState>,
    reads: AtomicU64,
    rechecks: AtomicU64,
    recheck_hits: AtomicU64,
}

pub(crate) struct Shared {
    primary: Pool<PgManager>,
    primary_route: Route,
    standbys: Vec<Standby>,
    config: RoutingConfig,
    history: Mutex<History>,
    next: AtomicUsize,
    primary_reads: AtomicU64,
    fresh_fallbacks: AtomicU64,
    failovers: AtomicU64,
    closed: AtomicBool,
    /// Wakes the probe tasks to end (at `close`, or when the last clone is dropped).
    stop: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.notify_waiters();
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
        if after.is_some() {
            shared.fresh_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let conn = shared.primary.get().await?;
        shared.primary_reads.fetch_add(1, Ordering::Relaxed);
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
        let shared = &*self.shared;
        let now = Instant::now();
        let history = lock(&shared.history);
        let standbys = shared
            .standbys
            .iter()
            .map(|s| {
                let state = lock(&s.state).clone();
                let verdict = judge(&state, &history, None, shared.config.max_lag, now);
                let lag = state
                    .replay
                    .filter(|_| state.up && state.standby)
                    .map(|replay| history.lag(replay, now));
                StandbyStats {
                    label: s.route.label.to_string(),
                    reads: s.reads.load(Ordering::Relaxed),
                    rechecks: s.rechecks.load(Ordering::Relaxed),
                    recheck_hits: s.recheck_hits.load(Ordering::Relaxed),
                    up: state.up,
                    standby: state.standby,
                    replay_lsn: state.replay,
                    lag,
                    eligible: verdict == Verdict::Fresh,
                }
            })
            .collect();
        RoutingStats {
            primary_reads: shared.primary_reads.load(Ordering::Relaxed),
            primary_reads_for_freshness: shared.fresh_fallbacks.load(Ordering::Relaxed),
            failovers: shared.failovers.load(Ordering::Relaxed),
            standbys,
        }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The state is plain data updated in one statement: a panic cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Standbys that qualify for a read after `after`, least busy first (ties in
    /// turn), and the one to recheck if none does: the furthest along among those
    /// within the lag bound.
    fn candidates(&self, after: Option<Lsn>, avoid: Option<usize>) -> (Vec<usize>, Option<usize>) {
        let now = Instant::now();
        let n = self.standbys.len();
        if n == 0 {
            return (Vec::new(), None);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let history = lock(&self.history);
        let mut fresh = Vec::new();
        let mut behind: Option<(usize, Lsn)> = None;
        for (i, s) in self.standbys.iter().enumerate() {
            if avoid == Some(i) {
                continue;
            }
            let state = lock(&s.state);
            match judge(&state, &history, after, self.config.max_lag, now) {
                Verdict::Fresh => {
                    let status = s.pool.status();
                    let busy = status.checked_out + status.waiting;
                    fresh.push((busy, (i + n - start) % n, i));
                }
                Verdict::Behind(replay) => {
                    if behind.is_none_or(|(_, best)| replay > best) {
                        behind = Some((i, replay));
                    }
                }
                Verdict::Out(_) => {}
            }
        }
        fresh.sort_unstable();
        (
            fresh.into_iter().map(|(_, _, i)| i).collect(),
            behind.map(|(i, _)| i),
        )
    }

    fn lend_standby(&self, i: usize, conn: PooledConn<PgManager>) -> ReadConn {
        let s = &self.standbys[i];
        s.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("queuepool_reads_total", "target" => s.route.label.to_string())
            .increment(1);
        ReadConn {
            conn,
            route: s.route.clone(),
        }
    }

    /// Asks standby `i` for its replay position on the connection the read would use;
    /// the read stays there if it has replayed `after`.
    async fn recheck(&self, i: usize, after: Lsn) -> Option<ReadConn> {
        let s = &self.standbys[i];
        s.rechecks.fetch_add(1, Ordering::Relaxed);
        let mut conn = match s.pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                if e.is_connect() {
                    self.checkout_failed(i, &e);
                }
                return None;
            }
        };
        let probe = monitor::replay_position(&conn, self.config.probe_timeout).await;
        match probe {
            Ok((standby, replay)) => {
                lock(&s.state).seen(standby, replay);
                if standby && replay.is_some_and(|r| r >= after) {
                    s.recheck_hits.fetch_add(1, Ordering::Relaxed);
                    return Some(self.lend_standby(i, conn));
                }
                None
            }
            Err(e) => {
                if PooledConn::report_error(&mut conn, &e) {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    self.mark_down(i, &e.to_string());
                }
                None
            }
        }
    }

    fn checkout_failed(&self, i: usize, error: &PoolError) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
        self.mark_down(i, &error_chain(error));
    }

    fn mark_down(&self, i: usize, why: &str) {
        let s = &self.standbys[i];
        let was_up = {
            let mut state = lock(&s.state);
            let was = state.up;
            state.down();
            was
        };
        if was_up {
            warn!(target: LOG_TARGET, standby = %s.route, "standby gets no reads until it answers again: {why}");
        }
    }

    /// Records a probe's answer for standby `i`, logging when it starts or stops
    /// getting reads.
    pub(crate) fn probed(&self, i: usize, answer: Result<(bool, Option<Lsn>), PgError>) {
        let s = &self.standbys[i];
        let now = Instant::now();
        let (standby, replay) = match answer {
            Ok(answer) => answer,
            Err(e) => return self.mark_down(i, &e.to_string()),
        };
        let before = self.verdict_now(i, now);
        let was_standby = lock(&s.state).standby;
        lock(&s.state).seen(standby, replay);
        let after = self.verdict_now(i, now);
        match (before, after) {
            (Verdict::Out(Out::Lagging(_)), Verdict::Out(Out::Lagging(_))) => {}
            (_, Verdict::Out(Out::Lagging(lag))) => {
                warn!(target: LOG_TARGET, standby = %s.route, lag_ms = lag.as_millis() as u64,
                    max_lag_ms = self.config.max_lag.as_millis() as u64,
                    "standby lags behind the primary; it gets no reads until it catches up");
            }
            (_, Verdict::Out(Out::NotStandby))
                if !standby && (was_standby || before == Verdict::Out(Out::Down)) =>
            {
                warn!(target: LOG_TARGET, standby = %s.route,
                    "read host is not in recovery (pg_is_in_recovery() = false): not a standby, it gets no reads");
            }
            (Verdict::Out(_), Verdict::Fresh) => {
                info!(target: LOG_TARGET, standby = %s.route, "standby gets reads");
            }
            _ => debug!(target: LOG_TARGET, standby = %s.route, verdict = ?after, "standby probed"),
        }
    }

    fn verdict_now(&self, i: usize, now: Instant) -> Verdict {
        let history = lock(&self.history);
        let state = lock(&self.standbys[i].state);
        judge(&state, &history, None, self.config.max_lag, now)
    }

    pub(crate) fn primary_flushed(&self, lsn: Lsn) {
        lock(&self.history).record(Instant::now(), lsn);
    }
}

/// The error and its sources, for a log line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    crate::error::chain_text(error)
}
