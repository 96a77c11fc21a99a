//! The crate's one error type.

use std::fmt;

/// Everything that can go wrong in the MySQL backend.
///
/// Each variant carries its whole cause in its message and has no
/// [`source`](std::error::Error::source) (mysql_async's own errors repeat their cause in
/// both; flattening them here keeps error chains free of doubled text). The driver's
/// error stays reachable through [`MySqlError::driver_error`].
///
/// No variant ever prints a password: URL errors name the parameter, never the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MySqlError {
    /// The URL could not be used.
    #[error("invalid MySQL URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it (never the URL itself, which may hold a password).
        reason: String,
    },
    /// Opening a connection failed.
    #[error("cannot connect to MySQL server {server}: {}", DriverDisplay(.error))]
    Connect {
        /// `host:port/database` (never the user's password).
        server: String,
        /// The driver's error.
        error: mysql_async::Error,
    },
    /// An error from the driver or the server.
    #[error("{}", DriverDisplay(.0))]
    Driver(mysql_async::Error),
    /// The reset on return did not get back the answer it asked for: the connection's
    /// stream carried a reply to an earlier, cancelled command. The connection is
    /// discarded rather than lent with another borrower's results in its socket.
    #[error(
        "MySQL connection {connection_id} is out of sync (a cancelled query left its reply \
         behind); it is discarded"
    )]
    OutOfSync {
        /// The server's id of the connection (`information_schema.processlist.ID`).
        connection_id: u32,
    },
}

impl MySqlError {
    /// The driver's error, if this is one.
    pub fn driver_error(&self) -> Option<&mysql_async::Error> {
        match self {
            Self::Driver(e) | Self::Connect { error: e, .. } => Some(e),
            _ => None,
        }
    }

    /// The server's error code (for example 1213 for a deadlock), if the server sent one.
    pub fn server_code(&self) -> Option<u16> {
        match self.driver_error() {
            Some(mysql_async::Error::Server(e)) => Some(e.code),
            _ => None,
        }
    }
}

impl From<mysql_async::Error> for MySqlError {
    fn from(error: mysql_async::Error) -> Self {
        Self::Driver(error)
    }
}

/// Displays a driver error once, without the repetitions of mysql_async's messages
/// (its `Io` error prints "Input/output error: Input/output error: ...").
struct DriverDisplay<'a>(&'a mysql_async::Error);

impl fmt::Display for DriverDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use mysql_async::{Error, IoError};
        match self.0 {
            Error::Io(IoError::Io(e)) => write!(f, "MySQL I/O error: {e}"),
            Error::Io(IoError::Tls(e)) => write!(f, "MySQL TLS error: {e}"),
            Error::Server(e) => write!(
                f,
                "MySQL server error {} ({}): {}",
                e.code, e.state, e.message
            ),
            Error::Driver(e) => write!(f, "MySQL driver error: {e}"),
            Error::Url(e) => write!(f, "invalid MySQL URL: {e}"),
            Error::Other(e) => write!(f, "MySQL error: {e}"),
        }
    }
}
