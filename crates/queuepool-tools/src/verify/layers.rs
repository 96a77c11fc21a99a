//! `verify` through PgBouncer: the tutorial's second method with two layers. The
//! pool's connections are PgBouncer's clients (`SHOW CLIENTS`, matched by the pool's
//! `application_name`); PgBouncer's server connections (`SHOW POOLS`, `SHOW SERVERS`)
//! are looked up by pid in `pg_stat_activity` on the server itself, through a
//! connection that does not pass through PgBouncer.

use queuepool_postgres::{PgConnection, PgManager};
use serde::Serialize;

use super::Row;
use crate::error::ToolsError;
use crate::pgbouncer::{Admin, PoolRow, with_server};
use crate::table::Table;

/// What PgBouncer and the server showed at each step.
#[derive(Debug, Clone, Serialize)]
pub struct BouncerView {
    /// `SHOW VERSION`.
    pub version: String,
    /// The admin console's URL, password redacted.
    pub admin: String,
    /// The server's URL the observer used, password redacted.
    pub server: String,
    /// The pool mode of the pool's database/user.
    pub pool_mode: String,
    /// Server connections PgBouncer may open for it (`pool_size` of `SHOW DATABASES`).
    pub pool_size: u32,
    /// Extra server connections (`reserve_pool`).
    pub reserve_pool: u32,
    /// One line per step.
    pub snapshots: Vec<Snapshot>,
}

/// Both layers at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The step.
    pub step: &'static str,
    /// Connections the pool holds (its own count).
    pub pool_connections: usize,
    /// `SHOW CLIENTS` rows with the pool's `application_name`.
    pub clients: usize,
    /// `SHOW POOLS` of the database/user.
    pub pool: PoolRow,
    /// `SHOW SERVERS` rows of the database/user.
    pub servers: usize,
    /// `pg_stat_activity` rows on the server with those servers' pids.
    pub backends: usize,
}

/// The two views, open for the length of a check.
pub(super) struct Layers {
    admin: Admin,
    server: PgConnection,
    tag: String,
    database: String,
    user: String,
    pub(super) view: BouncerView,
}

impl Layers {
    /// Opens the server-side observer: `server_url` if given, else the client URL
    /// pointed at the host, port and database `SHOW DATABASES` gives for it.
    pub(super) async fn open(
        admin: Admin,
        url: &str,
        server_url: Option<&str>,
        tag: &str,
    ) -> Result<Layers, ToolsError> {
        let manager = PgManager::from_url(url).map_err(|e| ToolsError::DatabaseUrl(Box::new(e)))?;
        let user = manager
            .pg_config()
            .get_user()
            .unwrap_or("postgres")
            .to_owned();
        let database = manager
            .pg_config()
            .get_dbname()
            .unwrap_or(user.as_str())
            .to_owned();
        let databases = admin.databases().await?;
        let entry = databases.iter().find(|d| d.name == database).cloned();
        let pool_mode = match entry.as_ref().map(|d| d.pool_mode.clone()) {
            Some(mode) if !mode.is_empty() => mode,
            _ => admin.config("pool_mode").await?.unwrap_or_default(),
        };
        let server_url = match (server_url, &entry) {
            (Some(u), _) => u.to_owned(),
            (None, Some(d)) if !d.host.is_empty() && d.port > 0 => {
                with_server(url, &d.host, d.port, &d.database)?
            }
            _ => {
                return Err(ToolsError::arg(
                    "--server-url",
                    format!(
                        "PgBouncer's SHOW DATABASES gives no TCP host for {database:?}: \
                         give the server's own URL"
                    ),
                ));
            }
        };
        let server = PgManager::from_url(&server_url)
            .map_err(|e| ToolsError::arg("--server-url", e.to_string()))?
            .with_application_name(&format!("{tag}_observer"))
            .connect_one()
            .await
            .map_err(|e| {
                ToolsError::db(
                    format!(
                        "cannot connect to the server behind PgBouncer ({}); give its URL \
                         with --server-url",
                        crate::args::redact_url(&server_url)
                    ),
                    e,
                )
            })?;
        let view = BouncerView {
            version: admin.version().await?,
            admin: admin.url.clone(),
            server: crate::args::redact_url(&server_url),
            pool_mode,
            pool_size: entry.as_ref().map_or(0, |d| d.pool_size),
            reserve_pool: entry.as_ref().map_or(0, |d| d.reserve_pool),
            snapshots: Vec::new(),
        };
        Ok(Layers {
            admin,
            server,
            tag: tag.to_owned(),
            database,
            user,
            view,
        })
    }

    /// The pool's connections as PgBouncer's clients.
    pub(super) async fn clients(&self) -> Result<usize, ToolsError> {
        Ok(self
            .admin
            .clients()
            .await?
            .iter()
            .filter(|c| c.application_name == self.tag)
            .count())
    }

    /// Records both layers at `step` and returns the checks between them: PgBouncer's
    /// server connections are exactly the server's backends with their pids, and no
    /// more than its pool allows.
    pub(super) async fn snapshot(
        &mut self,
        step: &'static str,
        pool_connections: usize,
    ) -> Result<Vec<Row>, ToolsError> {
        let clients = self.clients().await?;
        let pool = self
            .admin
            .pools()
            .await?
            .into_iter()
            .find(|p| p.database == self.database && p.user == self.user)
            .unwrap_or_default();
        let pids: Vec<i32> = self
            .admin
            .servers()
            .await?
            .iter()
            .filter(|s| s.database == self.database && s.user == self.user && s.remote_pid > 0)
            .map(|s| s.remote_pid)
            .collect();
        let row = self
            .server
            .query_typed_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[(
                    &pids,
                    queuepool_postgres::tokio_postgres::types::Type::INT4_ARRAY,
                )],
            )
            .await
            .map_err(|e| ToolsError::db("cannot read pg_stat_activity on the server", e))?;
        let backends = usize::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let limit = self.view.pool_size + self.view.reserve_pool;
        let rows = vec![
            Row {
                step,
                check: "PgBouncer's server connections (SHOW SERVERS) found in pg_stat_activity by pid"
                    .to_owned(),
                expected: pids.len().to_string(),
                observed: backends.to_string(),
                pass: backends == pids.len(),
            },
            Row {
                step,
                check: "server connections (SHOW POOLS sv_*) within PgBouncer's pool_size + reserve_pool"
                    .to_owned(),
                expected: format!("<= {limit}"),
                observed: pool.servers().to_string(),
                pass: pool.servers() <= limit,
            },
        ];
        self.view.snapshots.push(Snapshot {
            step,
            pool_connections,
            clients,
            servers: pids.len(),
            backends,
            pool,
        });
        Ok(rows)
    }
}

impl BouncerView {
    /// The two layers side by side, one line per step.
    pub fn render(&self) -> String {
        let mut out = format!(
            "\ntwo layers: {} ({}), pool_mode {}, pool_size {} + reserve_pool {}; server {}\n",
            self.version,
            self.admin,
            self.pool_mode,
            self.pool_size,
            self.reserve_pool,
            self.server
        );
        let mut table = Table::new(&[
            "step",
            "pool conns",
            "SHOW CLIENTS",
            "cl_active/cl_waiting",
            "sv_active/sv_idle/sv_used",
            "SHOW SERVERS",
            "pg_stat_activity",
        ]);
        for s in &self.snapshots {
            table.row(vec![
                s.step.to_owned(),
                s.pool_connections.to_string(),
                s.clients.to_string(),
                format!("{}/{}", s.pool.cl_active, s.pool.cl_waiting),
                format!("{}/{}/{}", s.pool.sv_active, s.pool.sv_idle, s.pool.sv_used),
                s.servers.to_string(),
                s.backends.to_string(),
            ]);
        }
        out.push_str(&table.render());
        out
    }
}
