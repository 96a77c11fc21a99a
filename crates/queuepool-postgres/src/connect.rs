//! Opening a connection: host list, sockets, TLS, startup, `target_session_attrs`,
//! and the cancel requests of [`PgConnection::timeout`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslNegotiation, TargetSessionAttrs};
use tokio_postgres::{CancelToken, NoTls, SimpleQueryMessage};
use tracing::debug;

use crate::config::SslMode;
use crate::connection::{Canceller, PgConnection};
use crate::error::{PgError, chain_text};
use crate::manager::{LOG_TARGET, PgManager};
use crate::socket::{self, RawStream};
use crate::tls;
use crate::wire::{Sniff, WireState};

impl PgManager {
    pub(crate) async fn connect_hosts(
        &self,
        per_host: Option<Duration>,
    ) -> Result<PgConnection, PgError> {
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
