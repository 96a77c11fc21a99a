//! Opening a connection: host list (libpq's multi-host rules: `connect_timeout` per
//! host and per address, every address of a host, `target_session_attrs`), sockets,
//! TLS, startup, and the cancel requests of [`PgConnection::timeout`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslNegotiation};
use tokio_postgres::{CancelToken, NoTls, SimpleQueryMessage};
use tracing::debug;

use crate::config::{SslMode, TargetSessionAttrs};
use crate::connection::{Canceller, PgConnection};
use crate::error::{PgError, chain_text};
use crate::hosts::ServerRole;
use crate::manager::{LOG_TARGET, PgManager};
use crate::socket::{self, RawStream};
use crate::tls;
use crate::wire::{Sniff, WireState};

/// One host of the connection string.
struct Candidate<'a> {
    host: Option<&'a Host>,
    hostaddr: Option<&'a IpAddr>,
    port: u16,
    label: String,
}

/// How one host ended.
enum Outcome {
    /// Connected, and the server is what `target_session_attrs` asks for.
    Matched(PgConnection),
    /// Connected, but the server is not what was asked for (why).
    Mismatch(PgConnection, String),
    /// No connection: every address failed or timed out, or the server refused.
    Failed(PgError),
}

impl PgManager {
    /// The bound on each host's attempt: the connection string's `connect_timeout`
    /// (libpq: per host and per address), else an equal share of
    /// [`pool_connect_timeout`](PgManager::pool_connect_timeout), else none.
    pub(crate) fn per_host_timeout(&self) -> Option<Duration> {
        if let Some(limit) = self.pg.get_connect_timeout() {
            return Some(*limit);
        }
        let hosts = self.pg.get_hosts().len().max(self.pg.get_hostaddrs().len());
        let hosts = u32::try_from(hosts.max(1)).unwrap_or(u32::MAX);
        self.connect_budget.map(|total| total / hosts)
    }

    /// Tries the hosts as libpq does (in order, or shuffled with
    /// `load_balance_hosts=random`; each address of each host; each attempt bounded by
    /// `per_host`; servers that do not match `target_session_attrs` skipped), with one
    /// change: hosts found down recently go last and hosts recently known not to match
    /// go after the others (see `hosts.rs`).
    pub(crate) async fn connect_hosts(
        &self,
        per_host: Option<Duration>,
    ) -> Result<PgConnection, PgError> {
        let mut candidates = self.candidates()?;
        if self.pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
            candidates.shuffle(&mut rand::rng());
        }
        // A stable sort: the configured (or shuffled) order within each rank.
        candidates.sort_by_cached_key(|c| self.hosts.rank(&c.label, self.target));
        let single = candidates.len() == 1;
        let labels: Vec<String> = candidates.iter().map(|c| c.label.clone()).collect();
        let mut failures = Vec::new();
        let mut last_err = None;
        // prefer-standby: the first other server found, used when no host is a standby
        // (libpq reconnects in a second pass; keeping it saves the reconnect and does
        // not wait again on hosts that were silent).
        let mut fallback = None;
        for c in &candidates {
            match self.connect_host(c, per_host).await {
                Outcome::Matched(conn) => return Ok(conn),
                Outcome::Mismatch(conn, why) => {
                    debug!(target: LOG_TARGET, host = %c.label, why = %why, "server skipped (target_session_attrs)");
                    failures.push(format!("{}: {why}", c.label));
                    if self.target == TargetSessionAttrs::PreferStandby && fallback.is_none() {
                        fallback = Some(conn);
                    }
                }
                Outcome::Failed(e) => {
                    debug!(target: LOG_TARGET, host = %c.label, error = %e, "connection attempt failed");
                    if stops_the_list(&e) {
                        return Err(e);
                    }
                    failures.push(format!("{}: {}", c.label, reason_of(&e)));
                    last_err = Some(e);
                }
            }
        }
        if let Some(conn) = fallback {
            debug!(target: LOG_TARGET, host = ?conn.host(), "no standby found; using another server (prefer-standby)");
            return Ok(conn);
        }
        match last_err {
            // One host: its own error, as it came (a server error keeps its SQLSTATE).
            Some(e) if single => Err(e),
            _ if failures.is_empty() => Err(PgError::Config("no host to connect to".into())),
            _ => Err(PgError::Connect {
                target: labels.join(", "),
                reason: failures.join("; "),
            }),
        }
    }

    /// The hosts of the connection string, in its order.
    fn candidates(&self) -> Result<Vec<Candidate<'_>>, PgError> {
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
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let host = hosts.get(i);
            let hostaddr = hostaddrs.get(i);
            let label = match (host, hostaddr) {
                (Some(Host::Tcp(h)), _) => format!("{h}:{port}"),
                (Some(Host::Unix(p)), _) => format!("{}/.s.PGSQL.{port}", p.display()),
                (None, Some(ip)) => format!("{ip}:{port}"),
                (None, None) => continue,
            };
            out.push(Candidate {
                host,
                hostaddr,
                port,
                label,
            });
        }
        Ok(out)
    }

    /// Every address of one host, each attempt (socket, TLS, startup, role check)
    /// bounded by `per_host`.
    async fn connect_host(&self, c: &Candidate<'_>, per_host: Option<Duration>) -> Outcome {
        let label = c.label.as_str();
        let io_err = |e: std::io::Error| PgError::Connect {
            target: label.to_owned(),
            reason: chain_text(&e),
        };
        let (addrs, tls_name): (Vec<Target>, String) =
            match (c.host, c.hostaddr) {
                (_, Some(ip)) => {
                    let name = match c.host {
                        Some(Host::Tcp(h)) => h.clone(),
                        _ => ip.to_string(),
                    };
                    (vec![Target::Tcp(SocketAddr::new(*ip, c.port))], name)
                }
                (Some(Host::Tcp(h)), None) => {
                    let lookup = tokio::net::lookup_host((h.as_str(), c.port));
                    let resolved = match per_host {
                    Some(limit) => tokio::time::timeout(limit, lookup)
                        .await
                        .unwrap_or_else(|_| Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("name resolution timed out after {limit:?} (connect_timeout)"),
                        ))),
                    None => lookup.await,
                };
                    let mut addrs: Vec<Target> = match resolved {
                        Ok(addrs) => addrs.map(Target::Tcp).collect(),
                        Err(e) => return Outcome::Failed(io_err(e)),
                    };
                    if self.pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
                        addrs.shuffle(&mut rand::rng());
                    }
                    (addrs, h.clone())
                }
                (Some(Host::Unix(dir)), None) => {
                    (vec![Target::Unix(dir.clone(), c.port)], String::new())
                }
                (None, None) => {
                    return Outcome::Failed(PgError::Config("no host to connect to".into()));
                }
            };
        self.connect_addrs(label, addrs, &tls_name, per_host).await
    }

    /// Each address in turn, each attempt bounded by `per_host`, until a server
    /// answers; marks the host down when none did.
    async fn connect_addrs(
        &self,
        label: &str,
        addrs: Vec<Target>,
        tls_name: &str,
        per_host: Option<Duration>,
    ) -> Outcome {
        let cell = self.hosts.cell(label);
        let mut last_err = PgError::Connect {
            target: label.to_owned(),
            reason: "host name resolved to no address".into(),
        };
        let mut unreachable = false;
        for target in addrs {
            let attempt = self.attempt(&target, tls_name, label);
            let result = match per_host {
                Some(limit) => tokio::time::timeout(limit, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(PgError::Connect {
                            target: label.to_owned(),
                            reason: format!("timed out after {limit:?} (connect_timeout)"),
                        })
                    }),
                None => attempt.await,
            };
            match result {
                Ok((mut conn, role)) => {
                    cell.mark_up(role);
                    conn.set_origin(cell.origin());
                    return match role.matches(self.target) {
                        Some(true) => Outcome::Matched(conn),
                        _ => {
                            let why = format!(
                                "server is {} (target_session_attrs={})",
                                describe(role),
                                self.target
                            );
                            Outcome::Mismatch(conn, why)
                        }
                    };
                }
                Err(e) => {
                    if stops_the_list(&e) {
                        return Outcome::Failed(e);
                    }
                    unreachable |= matches!(e, PgError::Connect { .. });
                    last_err = e;
                }
            }
        }
        if unreachable {
            cell.mark_down();
        }
        Outcome::Failed(last_err)
    }

    /// One address: socket, startup, and what `target_session_attrs` needs to know.
    async fn attempt(
        &self,
        target: &Target,
        tls_name: &str,
        label: &str,
    ) -> Result<(PgConnection, ServerRole), PgError> {
        let raw = match target {
            Target::Tcp(addr) => socket::connect_tcp(*addr, &self.socket).await,
            Target::Unix(dir, port) => socket::connect_unix(dir, *port, &self.socket).await,
        }
        .map_err(|e| PgError::Connect {
            target: label.to_owned(),
            reason: chain_text(&e),
        })?;
        let (conn, mut role) = self.startup(raw, target, tls_name, label).await?;
        self.ask_role(&conn, &mut role, label).await?;
        Ok((conn, role))
    }

    async fn startup(
        &self,
        raw: RawStream,
        target: &Target,
        tls_name: &str,
        label: &str,
    ) -> Result<(PgConnection, ServerRole), PgError> {
        let wire = Arc::new(WireState::default());
        let mut cfg = self.pg.clone();
        let ssl = match target {
            Target::Unix(..) => SslMode::Disable,
            Target::Tcp(_) => self.ssl_mode,
        };
        let direct = cfg.get_ssl_negotiation() == SslNegotiation::Direct;
        let stream = Sniff::new(raw, wire.clone(), tls::sniff_mode_for_raw(ssl, direct));
        let map = |e: tokio_postgres::Error| PgError::connect(label, &e);
        let (client, role, driver) = match (&self.tls, ssl) {
            (Some(make), mode) if mode != SslMode::Disable => {
                let connector = tls::connector(make, tls_name, wire.clone())?;
                let (client, connection) = cfg.connect_raw(stream, connector).await.map_err(map)?;
                (client, reported_role(&connection), spawn_driver(connection))
            }
            _ => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) = cfg.connect_raw(stream, NoTls).await.map_err(map)?;
                (client, reported_role(&connection), spawn_driver(connection))
            }
        };
        let canceller = self.canceller(target.clone(), tls_name.to_owned());
        debug!(target: LOG_TARGET, host = %label, "connected");
        let conn = PgConnection::new(client, wire, driver, self.statement_cache, canceller);
        Ok((conn, role))
    }

    /// Asks the server what the startup parameters did not tell and
    /// `target_session_attrs` needs (servers before PostgreSQL 14), as libpq does.
    async fn ask_role(
        &self,
        conn: &PgConnection,
        role: &mut ServerRole,
        label: &str,
    ) -> Result<(), PgError> {
        let sql = match self.target {
            TargetSessionAttrs::Any => return Ok(()),
            TargetSessionAttrs::ReadWrite | TargetSessionAttrs::ReadOnly => {
                if role.read_only.is_some() {
                    return Ok(());
                }
                "SHOW transaction_read_only"
            }
            TargetSessionAttrs::Primary
            | TargetSessionAttrs::Standby
            | TargetSessionAttrs::PreferStandby => {
                if role.hot_standby.is_some() {
                    return Ok(());
                }
                "SELECT pg_catalog.pg_is_in_recovery()"
            }
        };
        let messages = conn
            .client_untracked()
            .simple_query(sql)
            .await
            .map_err(|e| PgError::connect(label, &e))?;
        let value = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "on" || v == "t"),
            _ => None,
        });
        if sql.starts_with("SHOW") {
            role.read_only = value;
        } else {
            role.hot_standby = value;
        }
        Ok(())
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
            let handle = tokio::runtime::Handle::try_current().ok()?;
            Some(handle.spawn(async move {
                let sent = tokio::time::timeout(limit, async move {
                    let raw = match &target {
                        Target::Tcp(addr) => socket::connect_tcp(*addr, &socket).await,
                        Target::Unix(dir, port) => socket::connect_unix(dir, *port, &socket).await,
                    }
                    .map_err(|e| e.to_string())?;
                    let wire = Arc::new(WireState::default());
                    match (tls, ssl, &target) {
                        (Some(make), mode, Target::Tcp(_)) if mode != SslMode::Disable => {
                            let stream = Sniff::for_cancel(raw, wire.clone());
                            let connector = tls::connector(&make, &tls_name, wire)
                                .map_err(|e| e.to_string())?;
                            token
                                .cancel_query_raw(stream, connector)
                                .await
                                .map_err(|e| e.to_string())
                        }
                        _ => {
                            let stream = Sniff::for_cancel(raw, wire);
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
            }))
        })
    }
}

#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf, u16),
}

/// What the server reported at startup (PostgreSQL 14+ sends `in_hot_standby` and
/// `default_transaction_read_only` with every connection).
fn reported_role<S, T>(connection: &tokio_postgres::Connection<S, T>) -> ServerRole
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let flag = |name: &str| connection.parameter(name).map(|v| v == "on");
    let hot_standby = flag("in_hot_standby");
    let read_only = match (flag("default_transaction_read_only"), hot_standby) {
        (Some(default_ro), Some(standby)) => Some(default_ro || standby),
        _ => None,
    };
    ServerRole {
        hot_standby,
        read_only,
    }
}

/// How a skipped server is described in errors and logs.
fn describe(role: ServerRole) -> &'static str {
    match (role.hot_standby, role.read_only) {
        (Some(true), _) => "a standby",
        (Some(false), Some(true)) => "a primary with read-only sessions",
        (Some(false), _) | (None, Some(false)) => "a primary",
        (None, Some(true)) => "read-only",
        (None, None) => "of unknown role",
    }
}

/// Errors after which libpq does not try the remaining hosts: the connection was made
/// but authentication failed (the next host would be asked the same). Also a database
/// that does not exist, and settings that cannot work anywhere. Other server errors
/// (57P03 starting up or shutting down, 53300 too many connections) and network
/// errors move on to the next address and host.
fn stops_the_list(e: &PgError) -> bool {
    match e {
        PgError::Config(_) | PgError::TlsConfig(_) => true,
        PgError::Server { code, .. } => e.is_auth() || code.code() == "3D000",
        _ => false,
    }
}

/// An error's text without the target (it is already named per host).
fn reason_of(e: &PgError) -> String {
    match e {
        PgError::Connect { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The shared test server (DATABASE_URL, else the local one), resolved.
    fn server() -> (PgManager, SocketAddr) {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| {
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into()
            });
        let manager = PgManager::from_url(&url).expect("DATABASE_URL parses");
        let host = match manager.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = manager.pg.get_ports().first().copied().unwrap_or(5432);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .expect("server address resolves")
            .next()
            .expect("one address");
        (manager, addr)
    }

    /// A listener that accepts and never answers (a silent host), kept open.
    async fn silent() -> (tokio::net::TcpListener, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        (listener, addr)
    }

    #[tokio::test]
    async fn every_address_of_a_host_is_tried_each_within_connect_timeout() {
        let (manager, good) = server();
        let (_keep, bad) = silent().await;
        let limit = Duration::from_millis(400);
        let tls_name = good.ip().to_string();
        let started = Instant::now();
        let outcome = manager
            .connect_addrs(
                "h:1",
                vec![Target::Tcp(bad), Target::Tcp(good)],
                &tls_name,
                Some(limit),
            )
            .await;
        let took = started.elapsed();
        let conn = match outcome {
            Outcome::Matched(conn) => conn,
            Outcome::Mismatch(_, why) => panic!("mismatch: {why}"),
            Outcome::Failed(e) => panic!("the second address was not used: {e}"),
        };
        assert!(
            took >= limit,
            "the silent address got its own bound: {took:?}"
        );
        assert!(
            took < limit * 3,
            "one bound per address, not more: {took:?}"
        );
        assert_eq!(conn.host(), Some("h:1"));
        conn.simple_query("SELECT 1").await.expect("usable");
    }

    #[tokio::test]
    async fn a_host_whose_every_address_is_silent_fails_and_goes_last() {
        let (manager, _) = server();
        let (_keep1, a) = silent().await;
        let (_keep2, b) = silent().await;
        let limit = Duration::from_millis(200);
        let started = Instant::now();
        let outcome = manager
            .connect_addrs(
                "h:2",
                vec![Target::Tcp(a), Target::Tcp(b)],
                "h",
                Some(limit),
            )
            .await;
        let took = started.elapsed();
        match outcome {
            Outcome::Failed(PgError::Connect { reason, .. }) => {
                assert!(reason.contains("connect_timeout"), "{reason}")
            }
            Outcome::Failed(e) => panic!("unexpected error {e}"),
            _ => panic!("a silent host cannot connect"),
        }
        assert!(took >= limit * 2 && took < limit * 5, "{took:?}");
        assert_eq!(manager.hosts.rank("h:2", TargetSessionAttrs::Any), 2);
    }
}
