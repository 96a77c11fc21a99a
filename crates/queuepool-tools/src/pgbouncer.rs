//! PgBouncer as the tools see it: is a URL a PgBouncer, and what its admin console
//! (`SHOW VERSION`, `SHOW POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW DATABASES`)
//! says. The console speaks only the simple query protocol; every command here uses it.
//!
//! Detection without a flag: a connection through the URL asks the server for
//! `inet_server_port()`. Straight at PostgreSQL that is the URL's port; through
//! PgBouncer (or any proxy) it is the server's port behind it. Only then is the admin
//! console tried at the URL's address (database `pgbouncer`, same user and password);
//! `SHOW VERSION` answering `PgBouncer ...` settles it. A direct connection therefore
//! costs one query and leaves no failed login in the server's log.

use queuepool_postgres::tokio_postgres::SimpleQueryMessage;
use queuepool_postgres::{PgConnection, PgManager};
use serde::Serialize;

use crate::error::ToolsError;

/// A connection to PgBouncer's admin console.
pub struct Admin {
    conn: PgConnection,
    /// The console's URL, password redacted.
    pub url: String,
}

/// One row of `SHOW POOLS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolRow {
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Clients linked to a server connection or idle, ready.
    pub cl_active: u32,
    /// Clients waiting for a server connection.
    pub cl_waiting: u32,
    /// Server connections linked to a client.
    pub sv_active: u32,
    /// Server connections idle, ready for a client.
    pub sv_idle: u32,
    /// Server connections idle past `server_check_delay` (checked before reuse).
    pub sv_used: u32,
    /// Server connections running the reset or check query.
    pub sv_tested: u32,
    /// Server connections logging in.
    pub sv_login: u32,
    /// `session`, `transaction` or `statement`.
    pub pool_mode: String,
}

impl PoolRow {
    /// Every server connection of the pool, in whatever state.
    pub fn servers(&self) -> u32 {
        self.sv_active + self.sv_idle + self.sv_used + self.sv_tested + self.sv_login
    }
}

/// One row of `SHOW CLIENTS` or `SHOW SERVERS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SocketRow {
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// `active`, `idle`, `waiting`, `used`...
    pub state: String,
    /// The `application_name` the client gave (for a server: the last one set on it).
    pub application_name: String,
    /// For a server connection, the backend's pid on PostgreSQL.
    pub remote_pid: i32,
}

/// One row of `SHOW DATABASES`: where a database of PgBouncer leads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DatabaseRow {
    /// The name clients connect to.
    pub name: String,
    /// The server's host (empty: a Unix socket, or the console itself).
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The database on the server.
    pub database: String,
    /// Server connections per user (`default_pool_size` unless set for it).
    pub pool_size: u32,
    /// Extra server connections after `reserve_pool_timeout`.
    pub reserve_pool: u32,
    /// `pool_mode` set for the database (empty: the global one).
    pub pool_mode: String,
}

type Rows = Vec<std::collections::HashMap<String, String>>;

impl Admin {
    /// Connects to the admin console at `url` (a `postgres://` URL whose database is
    /// `pgbouncer`) and checks that it is one (`SHOW VERSION`).
    pub async fn connect(url: &str) -> Result<Admin, ToolsError> {
        let manager = PgManager::from_url(url)
            .map_err(|e| ToolsError::arg("--pgbouncer-admin", e.to_string()))?;
        let conn = manager.connect_one().await.map_err(|e| {
            ToolsError::db(
                format!(
                    "cannot connect to PgBouncer's admin console {} (the user must be in \
                     admin_users or stats_users)",
                    crate::args::redact_url(url)
                ),
                e,
            )
        })?;
        let admin = Admin {
            conn,
            url: crate::args::redact_url(url),
        };
        let version = admin.version().await?;
        if !version.starts_with("PgBouncer") {
            return Err(ToolsError::arg(
                "--pgbouncer-admin",
                format!("SHOW VERSION answered {version:?}: not a PgBouncer admin console"),
            ));
        }
        Ok(admin)
    }

    async fn show(&self, what: &str) -> Result<Rows, ToolsError> {
        let messages = self
            .conn
            .simple_query(&format!("SHOW {what}"))
            .await
            .map_err(|e| ToolsError::db(format!("PgBouncer: SHOW {what}"), e))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            (
                                c.name().to_owned(),
                                row.get(i).unwrap_or_default().to_owned(),
                            )
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// `SHOW VERSION`: `PgBouncer 1.18.0`.
    pub async fn version(&self) -> Result<String, ToolsError> {
        let rows = self.show("VERSION").await?;
        Ok(rows
            .first()
            .and_then(|r| r.values().next().cloned())
            .unwrap_or_default())
    }

    /// `SHOW POOLS`, without the console's own pool.
    pub async fn pools(&self) -> Result<Vec<PoolRow>, ToolsError> {
        Ok(self
            .show("POOLS")
            .await?
            .iter()
            .filter(|r| text(r, "database") != "pgbouncer")
            .map(|r| PoolRow {
                database: text(r, "database"),
                user: text(r, "user"),
                cl_active: num(r, "cl_active"),
                cl_waiting: num(r, "cl_waiting"),
                sv_active: num(r, "sv_active"),
                sv_idle: num(r, "sv_idle"),
                sv_used: num(r, "sv_used"),
                sv_tested: num(r, "sv_tested"),
                sv_login: num(r, "sv_login"),
                pool_mode: text(r, "pool_mode"),
            })
            .collect())
    }

    /// `SHOW CLIENTS`, without the console's own clients.
    pub async fn clients(&self) -> Result<Vec<SocketRow>, ToolsError> {
        self.sockets("CLIENTS").await
    }

    /// `SHOW SERVERS`.
    pub async fn servers(&self) -> Result<Vec<SocketRow>, ToolsError> {
        self.sockets("SERVERS").await
    }

    async fn sockets(&self, what: &str) -> Result<Vec<SocketRow>, ToolsError> {
        Ok(self
            .show(what)
            .await?
            .iter()
            .filter(|r| text(r, "database") != "pgbouncer")
            .map(|r| SocketRow {
                database: text(r, "database"),
                user: text(r, "user"),
                state: text(r, "state"),
                application_name: text(r, "application_name"),
                remote_pid: text(r, "remote_pid").parse().unwrap_or(0),
            })
            .collect())
    }

    /// `SHOW DATABASES`.
    pub async fn databases(&self) -> Result<Vec<DatabaseRow>, ToolsError> {
        Ok(self
            .show("DATABASES")
            .await?
            .iter()
            .map(|r| DatabaseRow {
                name: text(r, "name"),
                host: text(r, "host"),
                port: text(r, "port").parse().unwrap_or(0),
                database: text(r, "database"),
                pool_size: num(r, "pool_size"),
                reserve_pool: num(r, "reserve_pool"),
                pool_mode: text(r, "pool_mode"),
            })
            .collect())
    }

    /// One setting of `SHOW CONFIG` (`pool_mode`, `default_pool_size`...).
    pub async fn config(&self, key: &str) -> Result<Option<String>, ToolsError> {
        Ok(self
            .show("CONFIG")
            .await?
            .iter()
            .find(|r| text(r, "key") == key)
            .map(|r| text(r, "value")))
    }
}

fn text(row: &std::collections::HashMap<String, String>, col: &str) -> String {
    row.get(col).cloned().unwrap_or_default()
}

fn num(row: &std::collections::HashMap<String, String>, col: &str) -> u32 {
    row.get(col).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `url` with its database replaced by `dbname` (URL or libpq key-value form), the
/// rest (host, port, user, password, options) kept.
pub fn with_dbname(url: &str, dbname: &str) -> Result<String, ToolsError> {
    if url.contains("://") {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| ToolsError::arg("--database-url", format!("not a URL: {e}")))?;
        parsed.set_path(&format!("/{dbname}"));
        return Ok(parsed.to_string());
    }
    let mut parts: Vec<String> = url
        .split_whitespace()
        .filter(|kv| !kv.to_ascii_lowercase().starts_with("dbname="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("dbname={dbname}"));
    Ok(parts.join(" "))
}

/// `url` pointing at `host:port` and `dbname` instead: the server behind PgBouncer,
/// with the same user, password and options.
pub fn with_server(url: &str, host: &str, port: u16, dbname: &str) -> Result<String, ToolsError> {
    if url.contains("://") {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| ToolsError::arg("--database-url", format!("not a URL: {e}")))?;
        parsed
            .set_host(Some(host))
            .map_err(|e| ToolsError::arg("--server-url", format!("host {host:?}: {e}")))?;
        parsed
            .set_port(Some(port))
            .map_err(|()| ToolsError::arg("--server-url", "cannot set the port"))?;
        parsed.set_path(&format!("/{dbname}"));
        return Ok(parsed.to_string());
    }
    let mut parts: Vec<String> = url
        .split_whitespace()
        .filter(|kv| {
            let k = kv
                .split('=')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            !matches!(k.as_str(), "host" | "hostaddr" | "port" | "dbname")
        })
        .map(str::to_owned)
        .collect();
    parts.push(format!("host={host} port={port} dbname={dbname}"));
    Ok(parts.join(" "))
}

/// The PgBouncer behind `url`, if it leads to one (see the module documentation);
/// `admin` is an explicit admin console URL (`--pgbouncer-admin`), tried as is.
pub async fn detect(url: &str, admin: Option<&str>) -> Result<Option<Admin>, ToolsError> {
    if let Some(admin) = admin {
        return Admin::connect(admin).await.map(Some);
    }
    let manager = PgManager::from_url(url).map_err(|e| ToolsError::DatabaseUrl(Box::new(e)))?;
    let url_port = manager
        .pg_config()
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432);
    let conn = manager
        .connect_one()
        .await
        .map_err(|e| ToolsError::db("cannot connect to the database", e))?;
    let messages = conn
        .simple_query("SELECT inet_server_port()")
        .await
        .map_err(|e| ToolsError::db("cannot read inet_server_port()", e))?;
    drop(conn);
    let server_port: Option<u16> = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    });
    if server_port.is_none_or(|p| p == url_port) {
        return Ok(None);
    }
    let admin_url = with_dbname(url, "pgbouncer")?;
    // Something sits between: a PgBouncer whose console lets this user in, or
    // another proxy (then the console is not there, and the check is the plain one).
    match Admin::connect(&admin_url).await {
        Ok(admin) => Ok(Some(admin)),
        Err(e) => {
            tracing::info!(
                error = %crate::error::chain(&e),
                "the server's port differs from the URL's, but no PgBouncer admin console answers there"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_server_urls_keep_credentials_and_options() {
        assert_eq!(
            with_dbname("postgres://app:pw@h:6432/shop?sslmode=disable", "pgbouncer").unwrap(),
            "postgres://app:pw@h:6432/pgbouncer?sslmode=disable"
        );
        assert_eq!(
            with_dbname("host=h port=6432 dbname=shop user=app", "pgbouncer").unwrap(),
            "host=h port=6432 user=app dbname=pgbouncer"
        );
        assert_eq!(
            with_server(
                "postgres://app:pw@h:6432/shop?sslmode=disable",
                "10.0.0.5",
                5432,
                "main"
            )
            .unwrap(),
            "postgres://app:pw@10.0.0.5:5432/main?sslmode=disable"
        );
        assert_eq!(
            with_server("host=h port=6432 dbname=shop user=app", "db", 5433, "shop").unwrap(),
            "user=app host=db port=5433 dbname=shop"
        );
    }
}
