//! What the tools need from each database: a manager tagged so its connections can be
//! found, a query to run, and a second connection that looks at the server from
//! outside the pool ([`Observer`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use queuepool::Manager;
use queuepool::url::Backend;
use queuepool_mysql::MySqlManager;
use queuepool_postgres::PgManager;
use queuepool_sqlite::SqliteManager;

use crate::error::ToolsError;

/// The database behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `postgres://`, `postgresql://` or libpq `key=value`.
    Postgres,
    /// `mysql://` or `mariadb://`.
    MySql,
    /// `sqlite:`.
    Sqlite,
}

impl Kind {
    /// The backend a URL selects ([`queuepool::url::check_url`]: the service reads
    /// `DATABASE_URL` the same way); the error never quotes the URL.
    pub fn from_url(url: &str) -> Result<Kind, ToolsError> {
        queuepool::url::check_url(url)
            .map(Kind::from)
            .map_err(|e| ToolsError::arg("--database-url", e.to_string()))
    }

    /// What is counted, as a report row says it.
    pub fn counted(self) -> &'static str {
        match self {
            Kind::Postgres => "connections in pg_stat_activity",
            Kind::MySql => "connections in the process list",
            Kind::Sqlite => "open handles",
        }
    }

    /// What the server's own view of the pool is called in reports.
    pub fn server_view(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_stat_activity",
            Kind::MySql => "information_schema.processlist",
            Kind::Sqlite => "open handles",
        }
    }
}

impl From<Backend> for Kind {
    fn from(backend: Backend) -> Kind {
        match backend {
            Backend::Postgres => Kind::Postgres,
            Backend::MySql => Kind::MySql,
            Backend::Sqlite => Kind::Sqlite,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Postgres => Backend::Postgres.name(),
            Kind::MySql => Backend::MySql.name(),
            Kind::Sqlite => Backend::Sqlite.name(),
        })
    }
}

/// How PostgreSQL queries are sent (pgbench's `-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One `Query` message, parsed every time (`pgbench -M simple`).
    Simple,
    /// Unnamed Parse/Bind/Execute in one round trip (`-M extended`); works behind
    /// PgBouncer in transaction mode.
    Extended,
    /// Named statement prepared once per connection, then Bind/Execute (`-M prepared`).
    Prepared,
}

impl Protocol {
    /// Parses `simple`, `extended` or `prepared`.
    pub fn parse(raw: &str) -> Result<Protocol, ToolsError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "simple" => Ok(Protocol::Simple),
            "extended" => Ok(Protocol::Extended),
            "prepared" => Ok(Protocol::Prepared),
            _ => Err(ToolsError::arg(
                "--protocol",
                format!("invalid value {raw:?}: expected simple, extended or prepared"),
            )),
        }
    }

    /// The name, as pgbench's `-M` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

/// The statement a workload runs, and how.
#[derive(Debug, Clone)]
pub struct Query {
    /// The SQL.
    pub sql: Arc<str>,
    /// The protocol (PostgreSQL only; MySQL uses the text protocol, SQLite a cached
    /// prepared statement).
    pub protocol: Protocol,
}

/// A [`Manager`] the tools know how to drive.
pub trait Target: Manager + Sized {
    /// Which database.
    const KIND: Kind;

    /// A manager for `url` whose connections carry `tag` where the server shows it
    /// (PostgreSQL's `application_name`).
    fn open(url: &str, tag: &str) -> Result<Self, ToolsError>;

    /// Runs `query` and reads every row.
    fn run<'a>(
        conn: &'a mut Self::Connection,
        query: &'a Query,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'a;

    /// The server's id of a connection (PostgreSQL backend pid, MySQL connection id);
    /// `None` for SQLite.
    fn server_id(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<Option<i64>, Self::Error>> + Send + '_;

    /// The server ids of this manager's connections as the client knows them (MySQL),
    /// to look them up in the process list.
    fn known_ids(&self) -> Vec<u32> {
        Vec::new()
    }
}

impl Target for PgManager {
    const KIND: Kind = Kind::Postgres;

    fn open(url: &str, tag: &str) -> Result<Self, ToolsError> {
        Ok(PgManager::from_url(url)
            .map_err(|e| ToolsError::DatabaseUrl(Box::new(e)))?
            .with_application_name(tag)
            .statement_cache_capacity(16))
    }

    async fn run(
        conn: &mut queuepool_postgres::PgConnection,
        query: &Query,
    ) -> Result<(), queuepool_postgres::PgError> {
        match query.protocol {
            Protocol::Simple => {
                conn.simple_query(&query.sql).await?;
            }
            Protocol::Extended => {
                conn.query_typed(&query.sql, &[]).await?;
            }
            Protocol::Prepared => {
                let statement = conn.prepare_cached(&query.sql).await?;
                conn.query(&statement, &[]).await?;
            }
        }
        Ok(())
    }

    async fn server_id(
        conn: &mut queuepool_postgres::PgConnection,
    ) -> Result<Option<i64>, queuepool_postgres::PgError> {
        let row = conn.query_typed_one("SELECT pg_backend_pid()", &[]).await?;
        Ok(Some(i64::from(row.get::<_, i32>(0))))
    }
}

impl Target for MySqlManager {
    const KIND: Kind = Kind::MySql;

    fn open(url: &str, tag: &str) -> Result<Self, ToolsError> {
        Ok(MySqlManager::from_url(url)
            .map_err(|e| ToolsError::DatabaseUrl(Box::new(e)))?
            .with_program_name(tag))
    }

    async fn run(
        conn: &mut queuepool_mysql::MySqlConnection,
        query: &Query,
    ) -> Result<(), queuepool_mysql::MySqlError> {
        let sql: &str = &query.sql;
        let _rows: Vec<mysql_async::Row> = conn
            .query(sql)
            .await
            .map_err(queuepool_mysql::MySqlError::from)?;
        Ok(())
    }

    async fn server_id(
        conn: &mut queuepool_mysql::MySqlConnection,
    ) -> Result<Option<i64>, queuepool_mysql::MySqlError> {
        Ok(Some(i64::from(conn.id())))
    }

    fn known_ids(&self) -> Vec<u32> {
        self.connection_ids()
    }
}

impl Target for SqliteManager {
    const KIND: Kind = Kind::Sqlite;

    fn open(url: &str, _tag: &str) -> Result<Self, ToolsError> {
        SqliteManager::from_url(url).map_err(|e| ToolsError::DatabaseUrl(Box::new(e)))
    }

    async fn run(
        conn: &mut queuepool_sqlite::SqliteConnection,
        query: &Query,
    ) -> Result<(), queuepool_sqlite::SqliteError> {
        let sql = query.sql.clone();
        conn.interact(move |c| {
            let mut statement = c.prepare_cached(&sql)?;
            let mut rows = statement.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        })
        .await
    }

    async fn server_id(
        _conn: &mut queuepool_sqlite::SqliteConnection,
    ) -> Result<Option<i64>, queuepool_sqlite::SqliteError> {
        Ok(None)
    }
}

/// A connection outside the pool that counts the pool's connections on the server.
pub enum Observer {
    /// Counts `pg_stat_activity` rows with the pool's `application_name`.
    Postgres {
        /// The observer's own connection (tagged `<tag>_observer`).
        conn: Box<queuepool_postgres::PgConnection>,
        /// The pool's `application_name`.
        tag: String,
    },
    /// Counts `information_schema.processlist` rows with the pool's connection ids.
    MySql(Box<mysql_async::Conn>),
    /// No server: the pool's open handles are counted instead.
    Sqlite,
}

impl Observer {
    /// Connects to the server of `url`.
    pub async fn connect(kind: Kind, url: &str, tag: &str) -> Result<Observer, ToolsError> {
        match kind {
            Kind::Postgres => {
                let manager = PgManager::open(url, &format!("{tag}_observer"))?;
                let conn = manager
                    .connect_one()
                    .await
                    .map_err(|e| ToolsError::db("cannot connect to the database", e))?;
                Ok(Observer::Postgres {
                    conn: Box::new(conn),
                    tag: tag.to_owned(),
                })
            }
            Kind::MySql => {
                let manager = MySqlManager::open(url, tag)?;
                let conn = mysql_async::Conn::new(manager.opts().clone())
                    .await
                    .map_err(|e| ToolsError::db("cannot connect to the database", e))?;
                Ok(Observer::MySql(Box::new(conn)))
            }
            Kind::Sqlite => Ok(Observer::Sqlite),
        }
    }

    /// The pool's connections the server sees; `None` for SQLite.
    pub async fn count(&mut self, known_ids: &[u32]) -> Result<Option<usize>, ToolsError> {
        match self {
            Observer::Postgres { conn, tag } => {
                let row = conn
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[&tag.as_str()],
                    )
                    .await
                    .map_err(|e| ToolsError::db("cannot read pg_stat_activity", e))?;
                Ok(Some(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
            }
            Observer::MySql(conn) => {
                if known_ids.is_empty() {
                    return Ok(Some(0));
                }
                let list = known_ids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let n: Option<i64> = conn
                    .query_first(format!(
                        "SELECT COUNT(*) FROM information_schema.processlist WHERE ID IN ({list})"
                    ))
                    .await
                    .map_err(|e| ToolsError::db("cannot read information_schema.processlist", e))?;
                Ok(Some(usize::try_from(n.unwrap_or(0)).unwrap_or(0)))
            }
            Observer::Sqlite => Ok(None),
        }
    }

    /// The server's connection limit and the connections it keeps for superusers;
    /// `None` for SQLite.
    pub async fn max_connections(&mut self) -> Result<Option<(u32, u32)>, ToolsError> {
        match self {
            Observer::Postgres { conn, .. } => {
                let max = pg_setting(conn, "max_connections").await?.unwrap_or(100);
                let reserved = pg_setting(conn, "superuser_reserved_connections")
                    .await?
                    .unwrap_or(3);
                Ok(Some((max, reserved)))
            }
            Observer::MySql(conn) => {
                let max: Option<u32> = conn
                    .query_first("SELECT @@max_connections")
                    .await
                    .map_err(|e| ToolsError::db("cannot read @@max_connections", e))?;
                // MySQL keeps one more connection for a user with CONNECTION_ADMIN.
                Ok(Some((max.unwrap_or(151), 1)))
            }
            Observer::Sqlite => Ok(None),
        }
    }

    /// Closes the observer's connection.
    pub async fn close(self) {
        if let Observer::MySql(conn) = self {
            let _ = conn.disconnect().await;
        }
    }
}

async fn pg_setting(
    conn: &queuepool_postgres::PgConnection,
    setting: &str,
) -> Result<Option<u32>, ToolsError> {
    use queuepool_postgres::tokio_postgres::SimpleQueryMessage;
    let rows = conn
        .simple_query(&format!("SHOW {setting}"))
        .await
        .map_err(|e| ToolsError::db(format!("cannot read {setting}"), e))?;
    Ok(rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.trim().parse().ok()),
        _ => None,
    }))
}
