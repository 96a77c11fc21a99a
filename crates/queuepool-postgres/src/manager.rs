//! [`PgManager`]: opens, checks, resets and closes PostgreSQL connections for the pool.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use queuepool::{Health, Manager};
use rand::seq::SliceRandom;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslNegotiation, TargetSessionAttrs};
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage};
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::config::{self, DEFAULT_APPLICATION_NAME, SslMode};
use crate::connection::{Canceller, PgConnection};
use crate::error::{PgError, chain_text};
use crate::socket::{self, RawStream, SocketOptions};
use crate::tls;
use crate::wire::{Sniff, TxStatus, WireState};

const LOG_TARGET: &str = "queuepool::postgres";

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
    pg: tokio_postgres::Config,
    ssl_mode: SslMode,
    tls: Option<TlsConnector>,
    socket: SocketOptions,
    reset_mode: ResetMode,
    ping_timeout: Duration,
    statement_cache: usize,
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

    async fn connect_hosts(&self, per_host: Option<Duration>) -> Result<PgConnection, PgError> {
        let hosts = self.pg.get_hosts();
        let hostaddrs = self.pg.get_hostaddrs();
        let ports = self.pg.get_ports();
        let count = hosts.len().max(hostaddrs.len());
        if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
            return Err(PgError::Config(
                "host and hostaddr list different numbers of hosts".into(),
            ));
        }
        if ports.len() > 1 && ports.len() != count {
            return Err(PgError::Config(
                "port lists a different number of ports than host".into(),
            ));
        }
        let mut order: Vec<usize> = (0..count).collect();
        if self.pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
            order.shuffle(&mut rand::rng());
        }
        let mut tried = Vec::new();
        let mut last_err = None;
        for i in order {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let host = hosts.get(i);
            let hostaddr = hostaddrs.get(i);
            let label = match (host, hostaddr) {
                (Some(Host::Tcp(h)), _) => format!("{h}:{port}"),
                (Some(Host::Unix(p)), _) => format!("{}/.s.PGSQL.{port}", p.display()),
                (None, Some(ip)) => format!("{ip}:{port}"),
                (None, None) => continue,
            };
            tried.push(label.clone());
            let attempt = self.connect_host(host, hostaddr, port, &label);
            let result = match per_host {
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(PgError::Connect {
                        target: label.clone(),
                        reason: format!("timed out after {limit:?} (connect_timeout)"),
                    }),
                },
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    debug!(target: LOG_TARGET, host = %label, error = %e, "connection attempt failed");
                    last_err = Some(e);
                }
            }
        }
        Err(match last_err {
            // Server errors (wrong password, unknown database) are clearest as sent.
            Some(PgError::Connect { reason, .. }) => PgError::Connect {
                target: tried.join(", "),
                reason,
            },
            Some(e) => e,
            None => PgError::Config("no host to connect to".into()),
        })
    }

    async fn connect_host(
        &self,
        host: Option<&Host>,
        hostaddr: Option<&std::net::IpAddr>,
        port: u16,
        label: &str,
    ) -> Result<PgConnection, PgError> {
        let io_err = |e: std::io::Error| PgError::Connect {
            target: label.to_owned(),
            reason: chain_text(&e),
        };
        let (addrs, tls_name): (Vec<Target>, String) = match (host, hostaddr) {
            (_, Some(ip)) => {
                let name = match host {
                    Some(Host::Tcp(h)) => h.clone(),
                    _ => ip.to_string(),
                };
                (vec![Target::Tcp(SocketAddr::new(*ip, port))], name)
            }
            (Some(Host::Tcp(h)), None) => {
                let mut addrs: Vec<Target> = tokio::net::lookup_host((h.as_str(), port))
                    .await
                    .map_err(io_err)?
                    .map(Target::Tcp)
                    .collect();
                if self.pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
                    addrs.shuffle(&mut rand::rng());
                }
                (addrs, h.clone())
            }
            (Some(Host::Unix(dir)), None) => (vec![Target::Unix(dir.clone(), port)], String::new()),
            (None, None) => return Err(PgError::Config("no host to connect to".into())),
        };
        let mut last_err = PgError::Connect {
            target: label.to_owned(),
            reason: "host name resolved to no address".into(),
        };
        for target in addrs {
            let raw = match &target {
                Target::Tcp(addr) => socket::connect_tcp(*addr, &self.socket).await,
                Target::Unix(dir, port) => socket::connect_unix(dir, *port, &self.socket).await,
            };
            let raw = match raw {
                Ok(raw) => raw,
                Err(e) => {
                    last_err = io_err(e);
                    continue;
                }
            };
            let conn = self.startup(raw, &target, &tls_name, label).await?;
            self.check_session_attrs(&conn, label).await?;
            return Ok(conn);
        }
        Err(last_err)
    }

    async fn startup(
        &self,
        raw: RawStream,
        target: &Target,
        tls_name: &str,
        label: &str,
    ) -> Result<PgConnection, PgError> {
        let wire = Arc::new(WireState::default());
        let mut cfg = self.pg.clone();
        let ssl = match target {
            Target::Unix(..) => SslMode::Disable,
            Target::Tcp(_) => self.ssl_mode,
        };
        let direct = cfg.get_ssl_negotiation() == SslNegotiation::Direct;
        let stream = Sniff::new(raw, wire.clone(), tls::sniff_mode_for_raw(ssl, direct));
        let map = |e: tokio_postgres::Error| PgError::connect(label, &e);
        let (client, driver) = match (&self.tls, ssl) {
            (Some(make), mode) if mode != SslMode::Disable => {
                let connector = tls::connector(make, tls_name, wire.clone())?;
                let (client, connection) = cfg.connect_raw(stream, connector).await.map_err(map)?;
                (client, spawn_driver(connection))
            }
            _ => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) = cfg.connect_raw(stream, NoTls).await.map_err(map)?;
                (client, spawn_driver(connection))
            }
        };
        let canceller = self.canceller(target.clone(), tls_name.to_owned());
        debug!(target: LOG_TARGET, host = %label, "connected");
        Ok(PgConnection::new(
            client,
            wire,
            driver,
            self.statement_cache,
            canceller,
        ))
    }

    async fn check_session_attrs(&self, conn: &PgConnection, label: &str) -> Result<(), PgError> {
        let wanted = self.pg.get_target_session_attrs();
        if wanted == TargetSessionAttrs::Any {
            return Ok(());
        }
        let messages = conn
            .client_untracked()
            .simple_query("SHOW transaction_read_only")
            .await
            .map_err(|e| PgError::connect(label, &e))?;
        let read_only = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "on"),
            _ => None,
        });
        let ok = matches!(
            (wanted, read_only),
            (TargetSessionAttrs::ReadWrite, Some(false))
                | (TargetSessionAttrs::ReadOnly, Some(true))
        );
        if ok {
            Ok(())
        } else {
            Err(PgError::Connect {
                target: label.to_owned(),
                reason: format!(
                    "server does not match target_session_attrs={}",
                    match wanted {
                        TargetSessionAttrs::ReadWrite => "read-write",
                        _ => "read-only",
                    }
                ),
            })
        }
    }

    fn canceller(&self, target: Target, tls_name: String) -> Canceller {
        let socket = self.socket.clone();
        let tls = self.tls.clone();
        let ssl = self.ssl_mode;
        let limit = self.ping_timeout;
        Arc::new(move |token: CancelToken| {
            let socket = socket.clone();
            let tls = tls.clone();
            let target = target.clone();
            let tls_name = tls_name.clone();
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return;
            };
            handle.spawn(async move {
                let sent = tokio::time::timeout(limit, async move {
                    let raw = match &target {
                        Target::Tcp(addr) => socket::connect_tcp(*addr, &socket).await,
                        Target::Unix(dir, port) => socket::connect_unix(dir, *port, &socket).await,
                    }
                    .map_err(|e| e.to_string())?;
                    let wire = Arc::new(WireState::default());
                    match (tls, ssl, &target) {
                        (Some(make), mode, Target::Tcp(_)) if mode != SslMode::Disable => {
                            let stream = Sniff::new(raw, wire.clone(), crate::wire::Mode::Off);
                            let connector = tls::connector(&make, &tls_name, wire)
                                .map_err(|e| e.to_string())?;
                            token
                                .cancel_query_raw(stream, connector)
                                .await
                                .map_err(|e| e.to_string())
                        }
                        _ => {
                            let stream = Sniff::new(raw, wire, crate::wire::Mode::Off);
                            token
                                .cancel_query_raw(stream, NoTls)
                                .await
                                .map_err(|e| e.to_string())
                        }
                    }
                })
                .await;
                match sent {
                    Ok(Ok(())) => debug!(target: LOG_TARGET, "cancel request sent"),
                    Ok(Err(e)) => debug!(target: LOG_TARGET, error = %e, "cancel request failed"),
                    Err(_) => debug!(target: LOG_TARGET, "cancel request timed out"),
                }
            });
        })
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

#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf, u16),
}

fn spawn_driver<S, T>(connection: tokio_postgres::Connection<S, T>) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(target: LOG_TARGET, error = %e, "connection driver ended with an error");
        }
    })
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
