//! The bench's error type.

/// Everything that stops a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad command line; the message is one line saying what is wrong.
    #[error("{0}")]
    Args(String),
    /// `--help` inside a subcommand: print the usage and exit successfully.
    #[error("help requested")]
    Help,
    /// A pool failed to build or to lend a connection (never expected with a no-op
    /// manager; the run is meaningless after it).
    #[error("{pool}: {message}")]
    Pool {
        /// Which pool failed.
        pool: &'static str,
        /// What failed, with the pool's own error text.
        message: String,
    },
    /// The tokio runtime could not be built.
    #[error("cannot build the tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// The JSON report could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The target file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The JSON report could not be serialized.
    #[error("cannot serialize the report")]
    Json(#[source] serde_json::Error),
}
