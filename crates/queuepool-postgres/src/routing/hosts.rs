//! One manager per host of a multi-host connection string, for one pool per standby.

use tokio_postgres::Config;
use tokio_postgres::config::{Host, TargetSessionAttrs};

use crate::manager::PgManager;
use crate::socket::SocketOptions;

impl PgManager {
    /// One manager per host of this connection string (`host=a,b,c`, or
    /// `postgres://u@a:5433,b:5434/db`), in order, each with every other setting of
    /// this one and `target_session_attrs=any` (which server is a standby is for the
    /// caller to check; [`ReadWrite`](crate::ReadWrite) probes it). A single-host string
    /// gives one manager.
    pub fn split_hosts(&self) -> Vec<PgManager> {
        let pg = &self.pg;
        let hosts = pg.get_hosts();
        let addrs = pg.get_hostaddrs();
        let ports = pg.get_ports();
        let count = hosts.len().max(addrs.len()).max(1);
        (0..count)
            .map(|i| {
                let mut one = base_config(pg);
                if let Some(host) = hosts.get(i) {
                    match host {
                        Host::Tcp(name) => one.host(name),
                        Host::Unix(dir) => one.host_path(dir),
                    };
                }
                if let Some(addr) = addrs.get(i) {
                    one.hostaddr(*addr);
                }
                // libpq: one port for every host, or one per host.
                match (ports.len(), ports.get(i)) {
                    (1, _) => {
                        one.port(ports[0]);
                    }
                    (_, Some(port)) => {
                        one.port(*port);
                    }
                    _ => {}
                }
                let mut manager = self.clone();
                manager.socket = SocketOptions::from_config(&one);
                manager.pg = one;
                manager
            })
            .collect()
    }

    /// `host:port` of the first host (a Unix socket directory shows as its path), as
    /// routing logs and statistics name a server.
    pub fn host_label(&self) -> String {
        let pg = &self.pg;
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        match (pg.get_hosts().first(), pg.get_hostaddrs().first()) {
            (_, Some(addr)) => format!("{addr}:{port}"),
            (Some(Host::Tcp(name)), None) => format!("{name}:{port}"),
            (Some(Host::Unix(dir)), None) => format!("{}:{port}", dir.display()),
            (None, None) => format!("localhost:{port}"),
        }
    }
}

/// Every setting of `pg` but the hosts, addresses, ports and `target_session_attrs`.
fn base_config(pg: &Config) -> Config {
    let mut one = Config::new();
    if let Some(user) = pg.get_user() {
        one.user(user);
    }
    if let Some(password) = pg.get_password() {
        one.password(password);
    }
    if let Some(dbname) = pg.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = pg.get_options() {
        one.options(options);
    }
    if let Some(name) = pg.get_application_name() {
        one.application_name(name);
    }
    if let Some(limit) = pg.get_connect_timeout() {
        one.connect_timeout(*limit);
    }
    if let Some(limit) = pg.get_tcp_user_timeout() {
        one.tcp_user_timeout(*limit);
    }
    one.ssl_mode(pg.get_ssl_mode())
        .ssl_negotiation(pg.get_ssl_negotiation())
        .keepalives(pg.get_keepalives())
        .keepalives_idle(pg.get_keepalives_idle())
        .channel_binding(pg.get_channel_binding())
        .target_session_attrs(TargetSessionAttrs::Any);
    if let Some(interval) = pg.get_keepalives_interval() {
        one.keepalives_interval(interval);
    }
    if let Some(retries) = pg.get_keepalives_retries() {
        one.keepalives_retries(retries);
    }
    one
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn multi_host_url_splits_into_one_manager_per_host_with_every_other_setting() {
        let m = PgManager::from_url(
            "postgres://app:s3cret@db1:5433,db2:5434/shop?connect_timeout=3&application_name=web\
             &target_session_attrs=read-only&sslmode=disable&keepalives_idle=7",
        )
        .unwrap();
        let parts = m.split_hosts();
        assert_eq!(parts.len(), 2);
        let labels: Vec<_> = parts.iter().map(PgManager::host_label).collect();
        assert_eq!(labels, ["db1:5433", "db2:5434"]);
        for part in &parts {
            let pg = part.pg_config();
            assert_eq!(pg.get_hosts().len(), 1);
            assert_eq!(pg.get_user(), Some("app"));
            assert_eq!(pg.get_password(), Some(&b"s3cret"[..]));
            assert_eq!(pg.get_dbname(), Some("shop"));
            assert_eq!(pg.get_application_name(), Some("web"));
            assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
            assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(7));
            assert_eq!(pg.get_target_session_attrs(), TargetSessionAttrs::Any);
            assert_eq!(part.ssl_mode(), crate::SslMode::Disable);
        }
    }

    #[test]
    fn one_port_applies_to_every_host_and_key_value_strings_split_too() {
        let m =
            PgManager::from_url("host=a,b,c port=6000 user=u hostaddr=10.0.0.1,10.0.0.2,10.0.0.3")
                .unwrap();
        let labels: Vec<_> = m.split_hosts().iter().map(PgManager::host_label).collect();
        assert_eq!(labels, ["10.0.0.1:6000", "10.0.0.2:6000", "10.0.0.3:6000"]);
        let single = PgManager::from_url("postgres://u@db/x").unwrap();
        let labels: Vec<_> = single
            .split_hosts()
            .iter()
            .map(PgManager::host_label)
            .collect();
        assert_eq!(labels, ["db:5432"]);
    }
}
