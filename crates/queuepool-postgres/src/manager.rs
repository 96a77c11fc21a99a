//! [`PgManager`]: opens, checks, resets and closes PostgreSQL connections for the pool.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use queuepool::{Health, Manager};
use tokio_postgres::Client;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::config::{self, DEFAULT_APPLICATION_NAME, SslMode};
use crate::connection::PgConnection;
use crate::error::PgError;
use crate::socket::SocketOptions;
use crate::tls;
use crate::wire::TxStatus;

pub(crate) const LOG_TARGET: &str = "queuepool::postgres";

/// What [`Manager::reset`] does when a connection comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetMode {
    /// Roll back an open or failed transaction; nothing else (the default, as SQLAlchemy).
    /// Session settings (`SET`), temp tables and prepared statements survive.
    #[default]
    Rollback,
    /// Roll back, then `DISCARD ALL`: a fresh session for every borrower, at the cost of
    /// a round trip per return and of the statement cache.
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
        self.connect_hosts(self.pg.get_connect_timeout().copied())
            .await
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
        self.bounded(conn, client.simple_query("")).await.map(drop)
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        let client = conn.client_untracked();
        if conn.transaction_status() == TxStatus::Idle {
            // The last answer said idle, but a request whose future was dropped may
            // still be queued in the driver (a `BEGIN`, say). Requests run in order,
            // so one empty round trip settles what the status really is, without the
            // server warning an unneeded ROLLBACK would log.
            self.bounded(conn, client.simple_query("")).await?;
        }
        if conn.transaction_status() != TxStatus::Idle {
            debug!(target: LOG_TARGET, status = ?conn.transaction_status(), "rolling back");
            self.bounded(conn, client.simple_query("ROLLBACK")).await?;
        }
        if self.reset_mode == ResetMode::DiscardAll {
            self.bounded(conn, client.simple_query("DISCARD ALL"))
                .await?;
            conn.clear_cache();
        }
        // `Unknown` (status not readable on this stream) got its ROLLBACK above; only a
        // status the server reported as still open is an error.
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
        conn.was_used() || conn.transaction_status() != TxStatus::Idle
    }

    fn health(&self, conn: &mut PgConnection) -> Health {
        if conn.client_untracked().is_closed() {
            Health::Disconnected
        } else if conn.is_broken() {
            Health::Broken
        } else {
            Health::Ok
        }
    }

    fn is_disconnect(&self, error: &PgError) -> bool {
        error.is_disconnect()
    }

    async fn close(&self, conn: PgConnection) {
        let (client, driver) = conn.into_parts();
        // Dropping the client makes the driver send Terminate and close the socket.
        drop::<Client>(client);
        if let Some(mut driver) = driver
            && tokio::time::timeout(Duration::from_secs(1), &mut driver)
                .await
                .is_err()
        {
            driver.abort();
        }
    }
}
