//! [`MySqlManager`]: opens, checks, resets and closes MySQL / MariaDB connections.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row, SslOpts};
use queuepool::{Health, Manager};

use crate::{MySqlConnection, MySqlError};

/// The default value of [`MySqlManager::program_name`].
pub const DEFAULT_PROGRAM_NAME: &str = "queuepool";

/// How a connection is cleaned when it returns to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetMode {
    /// `ROLLBACK`, like SQLAlchemy's `reset_on_return="rollback"` (the default). Session
    /// state (user variables, temporary tables, `SET SESSION`) survives, and so do the
    /// connection's prepared statements.
    #[default]
    Rollback,
    /// `COM_RESET_CONNECTION`: rolls back and also drops temporary tables, user and
    /// session variables, locks taken with `GET_LOCK` and server-side prepared statements
    /// (mysql_async then re-prepares on next use). Every borrower gets a session as
    /// fresh as a new connection, at the cost of re-preparing statements.
    ResetConnection,
}

/// SSL/TLS requirement, MySQL client's `--ssl-mode` (URL parameter `ssl-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS (mysql_async's default when the URL says nothing).
    Disabled,
    /// TLS, without checking the server's certificate (MySQL's `REQUIRED`).
    Required,
    /// TLS, the certificate must chain to a trusted root; the host name is not checked.
    VerifyCa,
    /// TLS, the certificate must chain to a trusted root and name the host.
    VerifyIdentity,
}

/// Opens MySQL and MariaDB connections for a [`queuepool::Pool`].
///
/// Each connection is a single `mysql_async::Conn` opened with `Conn::new`; mysql_async's
/// own pool is not used (queuepool is the pool).
///
/// - [`is_valid`](Manager::is_valid) is `COM_PING`.
/// - [`reset`](Manager::reset) is `ROLLBACK` by default, or `COM_RESET_CONNECTION`
///   ([`ResetMode`]). With `ROLLBACK`, the same round trip also selects a fresh value
///   and checks it comes back: a query whose future was dropped after it was sent
///   leaves its reply in the socket, and without that check the next borrower would
///   read it as the answer to its own query. A connection that fails the check is
///   discarded ([`MySqlError::OutOfSync`]). SQLAlchemy only rolls back; this is one
///   round trip per return either way.
/// - [`is_disconnect`](Manager::is_disconnect): I/O errors, a closed connection, and the
///   server errors 1053 (server shutdown), 1927 (connection killed), 2006 (server has
///   gone away), 2013 (lost connection), 3169 (session killed), 4031 (disconnected for
///   inactivity).
/// - [`health`](Manager::health) is `Broken` once a ping or reset failed on the
///   connection. It cannot see a query of the borrower's that was cancelled in flight
///   (mysql_async keeps that flag private); the checked reset above catches those.
/// - [`close`](Manager::close) sends `COM_QUIT`.
///
/// # Finding the connections on the server
/// MySQL's way to tag a connection is the `program_name` connect attribute, visible in
/// `performance_schema.session_connect_attrs`. mysql_async 0.36 does not send connect
/// attributes (its handshake passes none), so [`program_name`](Self::program_name) is
/// kept for logs only, and connections are found another way:
/// [`connection_ids`](Self::connection_ids) lists the server ids of this manager's open
/// connections, to match `information_schema.processlist.ID`; without access to the
/// manager, filter the processlist by `USER` and `DB` (a database, or user, of its own
/// makes a pool's connections easy to count).
pub struct MySqlManager {
    opts: Opts,
    ssl_mode: SslMode,
    program_name: String,
    reset_mode: ResetMode,
    open_ids: Arc<Mutex<HashSet<u32>>>,
}

impl MySqlManager {
    /// Parses a `mysql://` or `mariadb://` URL:
    /// `mysql://user:password@host:port/database?param=value`.
    ///
    /// Connections go where the URL says: mysql_async's `prefer_socket` (after a TCP
    /// connection to a loopback address, ask the server for its Unix socket and reconnect
    /// through it) is off unless the URL sets `prefer_socket=true`. It would double the
    /// cost of each connect and silently bypass a proxy listening on localhost.
    ///
    /// Besides mysql_async's own parameters (`prefer_socket`, `stmt_cache_size`,
    /// `tcp_nodelay`, `require_ssl`, ...), it accepts:
    /// - `ssl-mode` (or `ssl_mode`): `DISABLED`, `REQUIRED`, `VERIFY_CA`,
    ///   `VERIFY_IDENTITY` as in MySQL's client. `PREFERRED` (try TLS, fall back to
    ///   plain) is refused: mysql_async cannot fall back, and silently dropping TLS is
    ///   worse than an error.
    /// - `ssl-ca` (or `ssl_ca`): a PEM file of trusted roots, used with the `VERIFY_*`
    ///   modes.
    /// - `program_name`: see [`program_name`](Self::program_name).
    /// - `reset`: `rollback` (default) or `connection`, see [`ResetMode`].
    ///
    /// # Errors
    /// [`MySqlError::InvalidUrl`]; its message never contains the URL.
    pub fn from_url(url: &str) -> Result<Self, MySqlError> {
        let invalid = |reason: String| MySqlError::InvalidUrl { reason };
        let mut parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        match parsed.scheme() {
            "mysql" => {}
            "mariadb" => parsed
                .set_scheme("mysql")
                .map_err(|()| invalid("cannot use the mariadb:// scheme".to_owned()))?,
            other => {
                return Err(invalid(format!(
                    "unsupported scheme `{other}` (expected mysql:// or mariadb://)"
                )));
            }
        }

        let mut ssl_mode = None;
        let mut ssl_ca = None;
        let mut program_name = DEFAULT_PROGRAM_NAME.to_owned();
        let mut reset_mode = ResetMode::default();
        let mut driver_params = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "ssl-mode" | "ssl_mode" => ssl_mode = Some(parse_ssl_mode(&value)?),
                "ssl-ca" | "ssl_ca" => ssl_ca = Some(PathBuf::from(value.as_ref())),
                "program_name" => program_name = value.into_owned(),
                "reset" => {
                    reset_mode = match value.as_ref() {
                        "rollback" => ResetMode::Rollback,
                        "connection" => ResetMode::ResetConnection,
                        _ => {
                            return Err(invalid(
                                "invalid value for `reset` (expected rollback or connection)"
                                    .to_owned(),
                            ));
                        }
                    }
                }
                _ => driver_params.push((key.into_owned(), value.into_owned())),
            }
        }
        if driver_params.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(driver_params);
        }
        let prefer_socket_given = parsed.query_pairs().any(|(k, _)| k == "prefer_socket");
        let mut opts = Opts::from_url(parsed.as_str()).map_err(driver_url_error)?;
        if !prefer_socket_given {
            opts = OptsBuilder::from_opts(opts).prefer_socket(false).into();
        }
        let mut manager = Self::new(opts);
        if let Some(mode) = ssl_mode {
            manager = manager.with_ssl_mode(mode, ssl_ca);
        } else if ssl_ca.is_some() {
            return Err(invalid(
                "`ssl-ca` needs `ssl-mode=VERIFY_CA` or `VERIFY_IDENTITY`".to_owned(),
            ));
        }
        Ok(manager
            .with_program_name(program_name)
            .with_reset_mode(reset_mode))
    }

    /// A manager for connections with the given driver options (their pool options are
    /// ignored).
    pub fn new(opts: impl Into<Opts>) -> Self {
        let opts = opts.into();
        let ssl_mode = match opts.ssl_opts() {
            None => SslMode::Disabled,
            Some(ssl) if ssl.accept_invalid_certs() => SslMode::Required,
            Some(ssl) if ssl.skip_domain_validation() => SslMode::VerifyCa,
            Some(_) => SslMode::VerifyIdentity,
        };
        Self {
            opts,
            ssl_mode,
            program_name: DEFAULT_PROGRAM_NAME.to_owned(),
            reset_mode: ResetMode::default(),
            open_ids: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Sets the TLS requirement, with an optional PEM file of trusted roots.
    #[must_use]
    pub fn with_ssl_mode(mut self, mode: SslMode, ca_file: Option<PathBuf>) -> Self {
        let ssl = match mode {
            SslMode::Disabled => None,
            _ => {
                let mut ssl = SslOpts::default();
                if let Some(ca) = ca_file {
                    ssl = ssl.with_root_certs(vec![ca.into()]);
                }
                Some(match mode {
                    SslMode::Required => ssl
                        .with_danger_accept_invalid_certs(true)
                        .with_danger_skip_domain_validation(true),
                    SslMode::VerifyCa => ssl.with_danger_skip_domain_validation(true),
                    _ => ssl,
                })
            }
        };
        self.opts = OptsBuilder::from_opts(self.opts).ssl_opts(ssl).into();
        self.ssl_mode = mode;
        self
    }

    /// Sets the name under which this manager's connections are logged (default
    /// `queuepool`). See the type's documentation for why it is not sent to the server.
    #[must_use]
    pub fn with_program_name(mut self, program_name: impl Into<String>) -> Self {
        self.program_name = program_name.into();
        self
    }

    /// Sets how returned connections are cleaned.
    #[must_use]
    pub fn with_reset_mode(mut self, reset_mode: ResetMode) -> Self {
        self.reset_mode = reset_mode;
        self
    }

    /// The application tag of this manager's connections (default `queuepool`).
    pub fn program_name(&self) -> &str {
        &self.program_name
    }

    /// How returned connections are cleaned.
    pub fn reset_mode(&self) -> ResetMode {
        self.reset_mode
    }

    /// The TLS requirement.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The driver options (their `Debug` output includes the password: do not log it).
    pub fn opts(&self) -> &Opts {
        &self.opts
    }

    /// The server ids (`information_schema.processlist.ID`) of the connections this
    /// manager opened that are still open, sorted.
    pub fn connection_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = match self.open_ids.lock() {
            Ok(ids) => ids.iter().copied().collect(),
            Err(poisoned) => poisoned.get_ref().iter().copied().collect(),
        };
        ids.sort_unstable();
        ids
    }

    /// `host:port/database`, for messages.
    fn server(&self) -> String {
        format!(
            "{}:{}/{}",
            self.opts.ip_or_hostname(),
            self.opts.tcp_port(),
            self.opts.db_name().unwrap_or("")
        )
    }

    /// `ROLLBACK; SELECT '<fresh value>'` in one round trip, checking the replies are
    /// exactly what was asked for.
    async fn rollback_checked(&self, conn: &mut MySqlConnection) -> Result<(), MySqlError> {
        conn.resets += 1;
        let token = format!("queuepool-reset-{}-{}", conn.id(), conn.resets);
        let connection_id = conn.id();
        let out_of_sync = || MySqlError::OutOfSync { connection_id };
        let sql = format!("ROLLBACK; SELECT '{token}'");
        let mut result = conn.query_iter(sql).await?;
        let rollback_rows: Vec<Row> = result.collect().await?;
        if !rollback_rows.is_empty() {
            return Err(out_of_sync());
        }
        let check: Vec<Row> = result.collect().await?;
        let echoed = match check.as_slice() {
            [row] => row.get_opt::<String, usize>(0).and_then(Result::ok),
            _ => None,
        };
        if echoed.as_deref() != Some(token.as_str()) || !result.is_empty() {
            return Err(out_of_sync());
        }
        Ok(())
    }
}

fn parse_ssl_mode(value: &str) -> Result<SslMode, MySqlError> {
    match value.to_ascii_uppercase().replace('-', "_").as_str() {
        "DISABLED" => Ok(SslMode::Disabled),
        "REQUIRED" => Ok(SslMode::Required),
        "VERIFY_CA" => Ok(SslMode::VerifyCa),
        "VERIFY_IDENTITY" => Ok(SslMode::VerifyIdentity),
        "PREFERRED" => Err(MySqlError::InvalidUrl {
            reason: "ssl-mode=PREFERRED is not supported (mysql_async cannot fall back to \
                     plain text); use REQUIRED or DISABLED"
                .to_owned(),
        }),
        _ => Err(MySqlError::InvalidUrl {
            reason: "invalid value for `ssl-mode` (expected DISABLED, REQUIRED, VERIFY_CA or \
                     VERIFY_IDENTITY)"
                .to_owned(),
        }),
    }
}

/// The URL parameters mysql_async understands, and ours.
const KNOWN_PARAMS: &[&str] = &[
    "ssl-mode",
    "ssl-ca",
    "program_name",
    "reset",
    "pool_min",
    "pool_max",
    "inactive_connection_ttl",
    "ttl_check_interval",
    "conn_ttl",
    "abs_conn_ttl",
    "abs_conn_ttl_jitter",
    "tcp_keepalive",
    "max_allowed_packet",
    "wait_timeout",
    "enable_cleartext_plugin",
    "reset_connection",
    "tcp_nodelay",
    "stmt_cache_size",
    "prefer_socket",
    "secure_auth",
    "client_found_rows",
    "socket",
    "compression",
    "require_ssl",
    "verify_ca",
    "verify_identity",
    "built_in_roots",
];

/// mysql_async's URL error, restated without the input text it quotes: an unknown
/// parameter's name or an invalid value can be a piece of a password when the URL is
/// malformed (`mysql://u?:pw@h/db` has `:pw@h/db` as a parameter name for the url
/// crate, while tokio-postgres and a reader take `pw` for the password).
fn driver_url_error(error: mysql_async::UrlError) -> MySqlError {
    use mysql_async::UrlError;
    let reason = match error {
        UrlError::UnknownParameter { param } => match suggest(&param) {
            Some(known) => format!("unknown parameter (not shown); did you mean `{known}`?"),
            None => "unknown parameter (not shown, as it may be part of a password; \
                     percent-encode `?`, `@`, `:` and `/` in the user name and password)"
                .to_owned(),
        },
        // `param` is one of the driver's own names (it matched); the value is not shown.
        UrlError::InvalidParamValue { param, .. } if KNOWN_PARAMS.contains(&param.as_str()) => {
            format!("invalid value for `{param}`")
        }
        UrlError::InvalidParamValue { .. } => "invalid parameter value".to_owned(),
        UrlError::FeatureRequired { feature, param } if KNOWN_PARAMS.contains(&param.as_str()) => {
            format!("`{param}` needs mysql_async's `{feature}` feature")
        }
        UrlError::UnsupportedScheme { .. } => {
            "unsupported scheme (expected mysql:// or mariadb://)".to_owned()
        }
        // The driver's own static text (url::ParseError, pool sizes).
        other @ (UrlError::Invalid
        | UrlError::Parse(_)
        | UrlError::InvalidPoolConstraints { .. }) => other.to_string(),
        _ => "the URL could not be parsed".to_owned(),
    };
    MySqlError::InvalidUrl { reason }
}

/// The known parameter closest to `given` (edit distance at most 2), if any.
fn suggest(given: &str) -> Option<&'static str> {
    queuepool::text::suggest(given, KNOWN_PARAMS)
}

/// Server error codes that mean the connection is gone.
const DISCONNECT_CODES: &[u16] = &[
    1053, // ER_SERVER_SHUTDOWN
    1927, // ER_CONNECTION_KILLED (MariaDB)
    2006, // CR_SERVER_GONE_ERROR
    2013, // CR_SERVER_LOST
    3169, // ER_SESSION_WAS_KILLED (MySQL)
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
];

impl Manager for MySqlManager {
    type Connection = MySqlConnection;
    type Error = MySqlError;

    /// Opens one `mysql_async::Conn`.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection half-opened when the future is dropped is dropped too.
    async fn connect(&self) -> Result<MySqlConnection, MySqlError> {
        let conn = Conn::new(self.opts.clone())
            .await
            .map_err(|error| MySqlError::Connect {
                server: self.server(),
                error,
            })?;
        tracing::debug!(
            target: "queuepool::mysql",
            connection_id = conn.id(),
            program_name = %self.program_name,
            "opened MySQL connection"
        );
        Ok(MySqlConnection::new(conn, Arc::clone(&self.open_ids)))
    }

    /// `COM_PING`.
    async fn is_valid(&self, conn: &mut MySqlConnection) -> Result<(), MySqlError> {
        let result = conn.ping().await.map_err(MySqlError::from);
        if result.is_err() {
            conn.broken = true;
        }
        result
    }

    /// `ROLLBACK` (checked) or `COM_RESET_CONNECTION`, see [`ResetMode`].
    async fn reset(&self, conn: &mut MySqlConnection) -> Result<(), MySqlError> {
        let result = match self.reset_mode {
            ResetMode::Rollback => self.rollback_checked(conn).await,
            ResetMode::ResetConnection => match conn.reset().await {
                Ok(true) => Ok(()),
                // Servers before MySQL 5.7.3 / MariaDB 10.2.4 lack COM_RESET_CONNECTION.
                Ok(false) => self.rollback_checked(conn).await,
                Err(e) => Err(e.into()),
            },
        };
        if result.is_err() {
            conn.broken = true;
        }
        result
    }

    /// `Broken` once a ping or reset has failed on this connection.
    fn health(&self, conn: &mut MySqlConnection) -> Health {
        if conn.broken {
            Health::Broken
        } else {
            Health::Ok
        }
    }

    fn is_disconnect(&self, error: &MySqlError) -> bool {
        use mysql_async::{DriverError, Error};
        match error.driver_error() {
            Some(Error::Io(_)) => true,
            Some(Error::Driver(DriverError::ConnectionClosed)) => true,
            Some(Error::Server(e)) => DISCONNECT_CODES.contains(&e.code),
            _ => false,
        }
    }

    /// `COM_QUIT`, then closes the socket.
    async fn close(&self, conn: MySqlConnection) {
        let id = conn.id();
        if let Err(error) = conn.into_inner().disconnect().await {
            tracing::debug!(
                target: "queuepool::mysql",
                connection_id = id,
                error = %MySqlError::from(error),
                "error closing MySQL connection"
            );
        }
    }
}

/// Shows where the manager connects, never the password.
impl fmt::Debug for MySqlManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlManager")
            .field("host", &self.opts.ip_or_hostname())
            .field("port", &self.opts.tcp_port())
            .field("user", &self.opts.user())
            .field("db", &self.opts.db_name())
            .field("password", &self.opts.pass().map(|_| "********"))
            .field("ssl_mode", &self.ssl_mode)
            .field("program_name", &self.program_name)
            .field("reset_mode", &self.reset_mode)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_never_show_the_password() {
        for url in [
            // The fuzzer's find: the url crate reads `:Hunter2pw@/?` as a parameter name.
            "mysql://0?:Hunter2pw@/?",
            "mysql://u?:Hunter2pw@h/db",
            "mysql://u:pw@h/db?Hunter2pw=1",
            "mysql://u:pw@h/db?pool_min=Hunter2pw",
            "mysql://u:pw@h/db?ssl-mode=Hunter2pw",
            "mysql://u:pw@h/db?reset=Hunter2pw",
            "postgres://u:Hunter2pw@h/db",
            "mysql://u:Hunter2pw@h:notaport/db",
        ] {
            let err = MySqlManager::from_url(url).map(drop).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("Hunter2pw"), "{url}: {text}");
            assert!(
                matches!(err, MySqlError::InvalidUrl { .. }),
                "{url}: {err:?}"
            );
        }
    }

    #[test]
    fn url_errors_name_what_is_wrong() {
        let text = |url: &str| {
            MySqlManager::from_url(url)
                .map(drop)
                .unwrap_err()
                .to_string()
        };
        let e = text("mysql://u@h/db?stmt_cache_sise=5");
        assert!(e.contains("did you mean `stmt_cache_size`?"), "{e}");
        let e = text("mysql://u@h/db?pool_min=many");
        assert!(e.contains("invalid value for `pool_min`"), "{e}");
        let e = text("mysql://u@h/db?reset=never");
        assert!(e.contains("invalid value for `reset`"), "{e}");
        let e = text("redis://u@h/db");
        assert!(e.contains("expected mysql:// or mariadb://"), "{e}");
    }
}
