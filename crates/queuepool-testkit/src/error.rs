//! [`TestkitError`].

/// Why a test fixture could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An external program (initdb, pg_ctl, pgbouncer) failed; its output is included.
    #[error("{program} failed: {output}")]
    Command {
        /// The program.
        program: String,
        /// Its exit status and output.
        output: String,
    },
    /// A required program is not installed.
    #[error("{0} not found; {1}")]
    Missing(String, String),
    /// A database operation failed.
    #[error("database: {0}")]
    Db(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Cert(String),
    /// Something did not become ready in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl TestkitError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
        let what = what.into();
        move |source| TestkitError::Io { what, source }
    }
}

impl From<queuepool_postgres::PgError> for TestkitError {
    fn from(e: queuepool_postgres::PgError) -> Self {
        TestkitError::Db(e.to_string())
    }
}

impl From<tokio_postgres::Error> for TestkitError {
    fn from(e: tokio_postgres::Error) -> Self {
        TestkitError::Db(queuepool_postgres::PgError::from(e).to_string())
    }
}
