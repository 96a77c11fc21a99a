//! [`ChaosError`]: why a scenario could not run (not a failed figure: those are in the
//! report).

use std::time::Duration;

/// Why a scenario could not be set up or run to the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// A test fixture (database, cluster, proxy) could not be set up.
    #[error("test fixture")]
    Testkit(#[from] queuepool_testkit::TestkitError),
    /// A direct database operation of the suite failed.
    #[error("database")]
    Db(#[from] queuepool_postgres::PgError),
    /// The pool under test could not be built.
    #[error("pool")]
    Pool(#[from] queuepool::PoolError),
    /// The pool configuration was rejected.
    #[error("pool configuration")]
    Config(#[from] queuepool::ConfigError),
    /// The `queuepool` binary could not be built, found or started.
    #[error("service binary: {0}")]
    Service(String),
    /// An HTTP request of the suite itself (not of the load) failed.
    #[error("HTTP")]
    Http(#[from] reqwest::Error),
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {:.1} s: {what}", after.as_secs_f64())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
    },
    /// The service answered something the suite cannot interpret.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl ChaosError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChaosError {
        let what = what.into();
        move |source| ChaosError::Io { what, source }
    }
}

/// The error and its `source()` chain joined by `: `.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}
