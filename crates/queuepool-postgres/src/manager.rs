//! [`PgManager`]: opens, checks, resets and closes PostgreSQL connections for the pool.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use queuepool::{Health, Manager};
use tokio_postgres::error::SqlState;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::config::{self, DEFAULT_APPLICATION_NAME, SslMode, TargetSessionAttrs};
use crate::connection::PgConnection;
use crate::error::PgError;
use crate::hosts::{DEFAULT_HOST_RECHECK, HostTracker};
use crate::socket::SocketOptions;
use crate::tls;
use crate::tracked::Pending;
use crate::wire::TxStatus;

/// What `DISCARD ALL` does, except `DEALLOCATE ALL` (PostgreSQL 15 documentation of
/// `DISCARD`). Sent as one simple query: an implicit transaction, which all of these
/// accept (`DISCARD ALL` itself does not).
const DISCARD_ALL_BUT_STATEMENTS: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
     UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES";

pub(crate) const LOG_TARGET: &str = "queuepool::postgres";

/// What [`Manager::reset`] does when a connection comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetMode {
    /// Roll back an open or failed transaction; nothing else (the default, as SQLAlchemy).
    /// Session settings (`SET`), temp tables and prepared statements survive.
    #[default]
    Rollback,
    /// Roll back, then what `DISCARD ALL` does except deallocating prepared statements
    /// (`CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *;`
    /// advisory locks released, `DISCARD PLANS, TEMP, SEQUENCES`): a fresh session
    /// for every borrower, at the cost of a round trip per return. Prepared
    /// statements are kept, because tokio-postgres caches its own (for custom type
    /// lookups) and would not know they were gone.
    DiscardAll,
}

/// A [`Manager`] for PostgreSQL over tokio-postgres, with rustls for TLS.
///
/// Built from a libpq connection string; see the crate documentation for the options.
/// Cloning is cheap enough (the TLS configuration is shared).
#[derive(Clone)]
pub struct PgManager {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) ssl_mode: SslMode,
    pub(crate) tls: Option<TlsConnector>,
    pub(crate) socket: SocketOptions,
    reset_mode: ResetMode,
    pub(crate) ping_timeout: Duration,
    pub(crate) statement_cache: usize,
    pub(crate) target: TargetSessionAttrs,
    pub(crate) hosts: std::sync::Arc<HostTracker>,
    pub(crate) connect_budget: Option<Duration>,
}

impl PgManager {
    /// Parses a `postgres://` / `postgresql://` URL or a libpq key-value string.
    ///
    /// Understood beyond tokio-postgres: `sslmode=verify-ca|verify-full` and
    /// `sslrootcert=<file>|system`. The TLS roots are loaded here, so a missing
    /// certificate file fails now rather than at the first connection. No connection is
    /// opened.
    pub fn from_url(url: &str) -> Result<PgManager, PgError> {
        let parsed = config::parse(url)?;
        let tls = tls::client_config(&parsed)?;
        Ok(PgManager {
            socket: SocketOptions::from_config(&parsed.pg),
            pg: parsed.pg,
            ssl_mode: parsed.ssl_mode,
            tls,
            reset_mode: ResetMode::default(),
            ping_timeout: Duration::from_secs(5),
            statement_cache: 0,
            target: parsed.target,
            hosts: std::sync::Arc::new(HostTracker::new(DEFAULT_HOST_RECHECK)),
            connect_budget: None,
        })
    }

    /// The `application_name` every connection sets (`queuepool` unless the connection
    /// string names one); find the pool's connections with
    /// `SELECT * FROM pg_stat_activity WHERE application_name = $1`.
    pub fn application_name(&self) -> &str {
        self.pg
            .get_application_name()
            .unwrap_or(DEFAULT_APPLICATION_NAME)
    }

    /// Sets the `application_name`.
    pub fn with_application_name(mut self, name: &str) -> Self {
        self.pg.application_name(name);
        self
    }

    /// Sets the database name.
    pub fn with_dbname(mut self, dbname: &str) -> Self {
        self.pg.dbname(dbname);
        self
    }

    /// The database name, if set (the server defaults it to the user name).
    pub fn dbname(&self) -> Option<&str> {
        self.pg.get_dbname()
    }

    /// The user name.
    pub fn user(&self) -> Option<&str> {
        self.pg.get_user()
    }

    /// The effective `sslmode`.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// What a returned connection goes through; see [`ResetMode`].
    pub fn reset_mode(mut self, mode: ResetMode) -> Self {
        self.reset_mode = mode;
        self
    }

    /// Bound on the pool's own round trips (pre-ping, reset). Default 5 s. A connection
    /// that does not answer in time is reported invalid and discarded.
    pub fn ping_timeout(mut self, limit: Duration) -> Self {
        self.ping_timeout = limit;
        self
    }

    /// Enables [`PgConnection::prepare_cached`] with up to `capacity` named statements
    /// per connection. Default 0 (off). For direct connections: PgBouncer in
    /// transaction mode does not keep named statements between transactions.
    pub fn statement_cache_capacity(mut self, capacity: usize) -> Self {
        self.statement_cache = capacity;
        self
    }

    /// Server-side `statement_timeout` for every connection, sent at startup as
    /// `options=-c statement_timeout=<ms>`. PgBouncer does not pass `options` on (it
    /// refuses it, or drops it with `ignore_startup_parameters = options`): behind
    /// PgBouncer set it on the role or database (`ALTER ROLE app SET statement_timeout
    /// = '5s'`) instead.
    pub fn statement_timeout(mut self, limit: Duration) -> Self {
        let ms = limit.as_millis().max(1);
        let options = match self.pg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c statement_timeout={ms}"),
            _ => format!("-c statement_timeout={ms}"),
        };
        self.pg.options(options);
        self
    }

    /// Linux `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the
    /// kernel drops the connection (a dead peer behind a live network path). Also
    /// settable as `tcp_user_timeout=<s>` in the connection string.
    pub fn tcp_user_timeout(mut self, limit: Duration) -> Self {
        self.pg.tcp_user_timeout(limit);
        self.socket = SocketOptions::from_config(&self.pg);
        self
    }

    /// The `target_session_attrs` of the connection string (see [`TargetSessionAttrs`]).
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target
    }

    /// Sets `target_session_attrs` (a read pool beside a write pool on the same hosts).
    pub fn with_target_session_attrs(mut self, target: TargetSessionAttrs) -> Self {
        self.target = target;
        self
    }

    /// The time the pool gives one connect (its `connect_timeout`). When the
    /// connection string sets no `connect_timeout` of its own, each of the `n` hosts
    /// then gets `total / n`, so that a silent first host cannot use up the pool's wait
    /// before the next host is tried. A `connect_timeout` in the string applies to each
    /// host (and each address of a host) as in libpq; keep `n ×` it within the pool's.
    pub fn pool_connect_timeout(mut self, total: Duration) -> Self {
        self.connect_budget = Some(total);
        self
    }

    /// How long what was learned about a host (found silent or unreachable; primary or
    /// standby) orders the host list: known matches first, hosts found down last.
    /// Default 10 s (pgjdbc's `hostRecheckSeconds`); `Duration::ZERO` keeps libpq's
    /// fixed order. Clones of a manager share what they learn.
    pub fn host_recheck(mut self, window: Duration) -> Self {
        self.hosts = std::sync::Arc::new(HostTracker::new(window));
        self
    }

    /// The tokio-postgres configuration (its `Debug` redacts the password).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// Opens one connection outside any pool (tests, tools).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped attempt closes its socket.
    pub async fn connect_one(&self) -> Result<PgConnection, PgError> {
        // libpq's connect_timeout bounds each host's whole attempt, TLS and
        // authentication included; the pool's connect_timeout bounds the total.
        let mut conn = self.connect_hosts(self.per_host_timeout()).await?;
        conn.set_close_limit(
            self.pg
                .get_connect_timeout()
                .copied()
                .unwrap_or(self.ping_timeout),
        );
        Ok(conn)
    }

    /// One empty query: once it completes, every request queued before it has, and
    /// the wire status is exact. A cancel request that arrives late may hit it
    /// (SQLSTATE 57014): it is then run once more.
    async fn settle(&self, conn: &PgConnection) -> Result<(), PgError> {
        let client = conn.client_untracked();
        match self.bounded(conn, client.simple_query("")).await {
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                self.bounded(conn, client.simple_query("")).await.map(drop)
            }
            other => other.map(drop),
        }
    }

    async fn bounded<T>(
        &self,
        conn: &PgConnection,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, PgError> {
        match tokio::time::timeout(self.ping_timeout, fut).await {
            Ok(r) => r.map_err(PgError::from),
            Err(_) => {
                conn.mark_broken();
                Err(PgError::Timeout(self.ping_timeout))
            }
        }
    }
}

impl fmt::Debug for PgManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgManager")
            .field("config", &self.pg) // tokio-postgres redacts the password
            .field("ssl_mode", &self.ssl_mode)
            .field("reset_mode", &self.reset_mode)
            .field("ping_timeout", &self.ping_timeout)
            .field("statement_cache", &self.statement_cache)
            .field("target_session_attrs", &self.target)
            .finish()
    }
}

impl Manager for PgManager {
    type Connection = PgConnection;
    type Error = PgError;

    async fn connect(&self) -> Result<PgConnection, PgError> {
        self.connect_one().await
    }

    async fn is_valid(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        // The empty query: one round trip, no parse, no plan, valid in any state.
        let client = conn.client_untracked();
        let result = self.bounded(conn, client.simple_query("")).await.map(drop);
        if let (Err(PgError::Timeout(_)), Some(origin)) = (&result, conn.origin()) {
            // A silent host: its other connections would hang the same way.
            origin.mark_host_down();
        }
        result
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        let client = conn.client_untracked();
        let pending = conn.pending();
        if pending == Pending::Abandoned {
            // A request of the borrower was dropped before its end: it may be queued
            // or running (a `pg_sleep`, a lock wait, a `BEGIN` not yet sent). Stop it,
            // then let the queue drain: requests run in order, so once an empty query
            // completes, everything before it has, and the wire status is exact.
            debug!(target: LOG_TARGET, "abandoned request: cancelling, then settling");
            conn.cancel().await;
            self.settle(conn).await?;
        } else if pending == Pending::Settle || conn.transaction_status() == TxStatus::Unknown {
            self.settle(conn).await?;
        }
        if conn.transaction_status() != TxStatus::Idle {
            debug!(target: LOG_TARGET, status = ?conn.transaction_status(), "rolling back");
            self.bounded(conn, client.simple_query("ROLLBACK")).await?;
        }
        if self.reset_mode == ResetMode::DiscardAll {
            // `DISCARD ALL` minus its `DEALLOCATE ALL`: tokio-postgres keeps the named
            // statements of its type lookups (`typeinfo`) per connection and does not
            // know they were deallocated, so a later custom type would fail with
            // `prepared statement "s1" does not exist`. Statements prepared by the
            // borrower survive with them (and the statement cache stays valid).
            self.bounded(conn, client.batch_execute(DISCARD_ALL_BUT_STATEMENTS))
                .await?;
        }
        if matches!(
            conn.transaction_status(),
            TxStatus::InTransaction | TxStatus::Failed
        ) {
            warn!(target: LOG_TARGET, status = ?conn.transaction_status(), "connection still in a transaction after reset");
            return Err(PgError::Client(
                "connection still in a transaction after ROLLBACK".into(),
            ));
        }
        conn.mark_clean();
        Ok(())
    }

    fn needs_reset(&self, conn: &PgConnection) -> bool {
        conn.pending() != Pending::Nothing
            || conn.transaction_status() != TxStatus::Idle
            || (self.reset_mode == ResetMode::DiscardAll && conn.was_used())
    }

    fn health(&self, conn: &mut PgConnection) -> Health {
        if conn.client_untracked().is_closed() {
            Health::Disconnected
        } else if conn.is_broken() || conn.origin().is_some_and(|o| o.host_went_down()) {
            Health::Broken
        } else {
            Health::Ok
        }
    }

    fn is_disconnect(&self, error: &PgError) -> bool {
        error.is_disconnect()
    }

    async fn close(&self, conn: PgConnection) {
        // Cancel what may still run, let the driver send Terminate, wait until it
        // closed the socket (bounded, then aborted). The pool holds the slot until
        // this returns, so a replacement opens only once the old backend is leaving.
        conn.close().await;
    }
}
