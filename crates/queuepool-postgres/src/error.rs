//! [`PgError`]: everything that can go wrong in this crate, without ever a password.

use std::fmt;
use std::time::Duration;

use tokio_postgres::error::SqlState;

/// An error of the PostgreSQL backend.
///
/// Every variant carries its cause as text in its message (never also as `source()`),
/// and no variant ever contains the password of the connection string: connection
/// strings are parsed into a config whose `Debug` redacts it, and driver errors are
/// rendered from the server's message and the driver's kind only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The connection string or an option is invalid.
    #[error("invalid PostgreSQL connection settings: {0}")]
    Config(String),

    /// The TLS settings could not be turned into a TLS client (missing or unreadable
    /// `sslrootcert`, no usable root certificate).
    #[error("invalid PostgreSQL TLS settings: {0}")]
    TlsConfig(String),

    /// The server could not be reached or the connection could not be set up (refused,
    /// DNS, TLS handshake, certificate verification). `target` names the hosts tried.
    #[error("could not connect to PostgreSQL at {target}: {reason}")]
    Connect {
        /// `host:port` of each host tried.
        target: String,
        /// What went wrong, for the last host tried.
        reason: String,
    },

    /// The server answered with an error (`ErrorResponse`): authentication failure,
    /// SQL error, administrator shutdown, ...
    #[error("{}", ServerDisplay(self))]
    Server {
        /// The SQLSTATE code, e.g. `28P01` for a wrong password.
        code: SqlState,
        /// Severity (`ERROR`, `FATAL`, `PANIC`).
        severity: String,
        /// The server's primary message.
        message: String,
        /// The server's detail line, if any.
        detail: Option<String>,
        /// The server's hint, if any.
        hint: Option<String>,
    },

    /// The connection is closed (socket error or end of stream): the server is gone or
    /// the network dropped the connection.
    #[error("PostgreSQL connection closed: {0}")]
    Closed(String),

    /// A query bounded by [`PgConnection::timeout`](crate::PgConnection::timeout) or the
    /// manager's `ping_timeout` did not finish in time; the connection is marked broken.
    #[error("PostgreSQL query did not complete within {0:?}; the connection was discarded")]
    Timeout(Duration),

    /// Any other driver error (parameter conversion, unexpected row count, ...).
    #[error("PostgreSQL client error: {0}")]
    Client(String),

    /// A WAL position (the read-your-writes token of
    /// [`ReadWrite`](crate::ReadWrite)) is not of the form `16/B374D848`.
    #[error(
        "invalid WAL position: expected two hexadecimal numbers separated by `/`, as \
         PostgreSQL shows them (16/B374D848)"
    )]
    InvalidLsn,
}

struct ServerDisplay<'a>(&'a PgError);

impl fmt::Display for ServerDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let PgError::Server {
            code,
            severity,
            message,
            detail,
            hint,
        } = self.0
        {
            write!(f, "{severity}: {message} (SQLSTATE {})", code.code())?;
            if let Some(detail) = detail {
                write!(f, "; DETAIL: {detail}")?;
            }
            if let Some(hint) = hint {
                write!(f, "; HINT: {hint}")?;
            }
        }
        Ok(())
    }
}

impl PgError {
    /// The server's SQLSTATE, when the server sent an error.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether this error means the connection, and probably the server, is gone:
    /// a closed socket, SQLSTATE class 08 (connection exception), 57P01 (admin
    /// shutdown), 57P02 (crash shutdown) or 57P03 (cannot connect now).
    pub fn is_disconnect(&self) -> bool {
        match self {
            PgError::Closed(_) => true,
            PgError::Server { code, .. } => is_disconnect_code(code),
            _ => false,
        }
    }

    /// Whether this is an authentication failure (SQLSTATE class 28).
    pub fn is_auth(&self) -> bool {
        matches!(self, PgError::Server { code, .. } if code.code().starts_with("28"))
    }

    /// Renders a driver error from its kind and, for server errors, the server's
    /// fields. The driver's own chain is flattened into one message so that no cause is
    /// printed twice; connection strings never reach it, so no password can either.
    pub(crate) fn from_driver(err: &tokio_postgres::Error) -> PgError {
        if let Some(db) = err.as_db_error() {
            return PgError::Server {
                code: db.code().clone(),
                severity: db.severity().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
            };
        }
        let text = chain_text(err);
        if err.is_closed() || has_io_source(err) {
            PgError::Closed(text)
        } else {
            PgError::Client(text)
        }
    }

    /// Like [`PgError::from_driver`], for an error raised while connecting.
    pub(crate) fn connect(target: &str, err: &tokio_postgres::Error) -> PgError {
        match PgError::from_driver(err) {
            server @ PgError::Server { .. } => server,
            other => PgError::Connect {
                target: target.to_owned(),
                reason: match other {
                    PgError::Closed(t) | PgError::Client(t) => t,
                    o => o.to_string(),
                },
            },
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(err: tokio_postgres::Error) -> Self {
        PgError::from_driver(&err)
    }
}

/// SQLSTATE codes that mean "this connection (or the server) is gone".
pub(crate) fn is_disconnect_code(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
}

fn has_io_source(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = err.source();
    while let Some(e) = cur {
        if e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// `outer: inner: innermost`, skipping a level whose text the previous one already
/// contains (some errors print their cause themselves).
pub(crate) fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> PgError {
        PgError::Server {
            code: SqlState::from_code(code),
            severity: "FATAL".into(),
            message: "m".into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn disconnect_codes_are_class_08_and_57p01_to_57p03() {
        for code in [
            "08000", "08003", "08006", "08001", "08004", "57P01", "57P02", "57P03",
        ] {
            assert!(
                server(code).is_disconnect(),
                "{code} should be a disconnect"
            );
        }
        for code in ["57014", "28P01", "42P01", "25P02", "40001", "57P04"] {
            assert!(!server(code).is_disconnect(), "{code} is not a disconnect");
        }
        assert!(PgError::Closed("eof".into()).is_disconnect());
        assert!(!PgError::Timeout(Duration::from_secs(1)).is_disconnect());
        assert!(!PgError::Client("x".into()).is_disconnect());
    }

    #[test]
    fn server_error_shows_severity_message_and_sqlstate() {
        let e = PgError::Server {
            code: SqlState::INVALID_PASSWORD,
            severity: "FATAL".into(),
            message: "password authentication failed for user \"app\"".into(),
            detail: None,
            hint: Some("check it".into()),
        };
        assert_eq!(
            e.to_string(),
            "FATAL: password authentication failed for user \"app\" (SQLSTATE 28P01); HINT: check it"
        );
        assert!(e.is_auth());
        assert!(std::error::Error::source(&e).is_none());
    }
}
