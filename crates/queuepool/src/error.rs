//! Errors of the pool: [`PoolError`] for checkouts, [`ConfigError`] for configuration.

use std::time::Duration;

use crate::config::Overflow;

/// A boxed driver error, the source of [`PoolError::Connect`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a checkout (or building the pool) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Every connection was in use for `pool_timeout`.
    #[error(
        "QueuePool limit of size {pool_size} overflow {max_overflow} reached, connection timed out, \
         timeout {:.2} ({waiting} other checkouts waiting, {checked_out} connections checked out); \
         raise pool_size or max_overflow if the database can take more connections, \
         raise pool_timeout if requests may wait longer, or hold connections for less time",
        timeout.as_secs_f64()
    )]
    Timeout {
        /// The configured `pool_size`.
        pool_size: u32,
        /// The configured `max_overflow`.
        max_overflow: Overflow,
        /// The configured `pool_timeout`.
        timeout: Duration,
        /// Checkouts still waiting when this one gave up.
        waiting: usize,
        /// Connections checked out when this one gave up.
        checked_out: usize,
    },
    /// The checkout waited for a free connection-attempt slot (`max_connecting`) until
    /// `pool_timeout`: the database is slow to accept connections.
    #[error(
        "timed out after {:.2} s waiting to open a connection: {connecting} attempts already in \
         flight (max_connecting); the database is slow to accept connections",
        timeout.as_secs_f64()
    )]
    ConnectQueueTimeout {
        /// The configured `pool_timeout`.
        timeout: Duration,
        /// Connection attempts in flight.
        connecting: usize,
    },
    /// The database refused or failed the connection attempt.
    #[error("could not connect to the database")]
    Connect(#[source] BoxError),
    /// One connection attempt took longer than `connect_timeout`.
    #[error(
        "connection attempt timed out after {:.2} s (connect_timeout); the database is unreachable or overloaded",
        .0.as_secs_f64()
    )]
    ConnectTimeout(Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
    /// The configuration given to [`Pool::new`](crate::Pool::new) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The manager panicked while opening a connection. The pool contained the panic:
    /// no slot was lost and the pool goes on.
    #[error("the database manager panicked in {method}: {message}")]
    ManagerPanic {
        /// The [`Manager`](crate::Manager) method that panicked.
        method: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl PoolError {
    /// Whether the pool limit was reached for `pool_timeout`.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            PoolError::Timeout { .. } | PoolError::ConnectQueueTimeout { .. }
        )
    }

    /// Whether the database could not be reached.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            PoolError::Connect(_) | PoolError::ConnectTimeout(_) | PoolError::ManagerPanic { .. }
        )
    }

    /// Whether the pool was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, PoolError::Closed)
    }
}

/// An invalid configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value outside its allowed range.
    #[error("invalid {field}: {value} (allowed: {allowed})")]
    Invalid {
        /// The option's name.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is accepted.
        allowed: &'static str,
    },
    /// A preset name that does not exist.
    #[error("unknown pool preset {0:?} (allowed: dev, prod-low, high-load)")]
    UnknownPreset(String),
}
