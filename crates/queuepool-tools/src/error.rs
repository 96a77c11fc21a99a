//! [`ToolsError`]: why a tool could not run.

use std::path::PathBuf;

use queuepool::PoolError;

/// A boxed error from a database driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why `verify`, `bench`, `tune` or `status` failed. A failed *check* is not an error:
/// it is a row of the report (and a non-zero exit).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolsError {
    /// A command-line value is wrong; `key` names the flag as written.
    #[error("{key}: {message}")]
    Arg {
        /// The flag, like `--pool-size`.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The backend rejected the database URL.
    #[error("invalid --database-url")]
    DatabaseUrl(#[source] BoxError),
    /// The pool could not start or lend a connection.
    #[error("{context}")]
    Pool {
        /// What was being done.
        context: String,
        /// The pool's error (its own source is the driver's).
        #[source]
        source: PoolError,
    },
    /// A query or a connection outside the pool failed.
    #[error("{context}")]
    Db {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// A file could not be written or read.
    #[error("{what} {}", path.display())]
    Io {
        /// `cannot write`, `cannot read`...
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP request to a running service failed.
    #[error("cannot read {url}")]
    Http {
        /// The URL (a service address, no secret in it).
        url: String,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// Nothing answered at the service's address.
    #[error("cannot reach {url}: {reason} (is `queuepool serve` running there?)")]
    Unreachable {
        /// The URL.
        url: String,
        /// The innermost cause, like `Connection refused (os error 111)`.
        reason: String,
    },
    /// The service answered something that is not its `/pool` report.
    #[error("unexpected answer from {url}: {reason}")]
    BadReply {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// `pgbench` failed or printed no throughput.
    #[error("pgbench failed: {0}")]
    Pgbench(String),
    /// The SVG plot could not be drawn.
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    /// The report could not be encoded.
    #[error("cannot encode the report as JSON")]
    Json(#[source] serde_json::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl ToolsError {
    /// An invalid command-line value.
    pub(crate) fn arg(key: &str, message: impl Into<String>) -> Self {
        ToolsError::Arg {
            key: key.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn db(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ToolsError::Db {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn pool(context: impl Into<String>, source: PoolError) -> Self {
        ToolsError::Pool {
            context: context.into(),
            source,
        }
    }

    /// Whether the user gave a bad value (exit status 2) rather than the run failing
    /// (exit status 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, ToolsError::Arg { .. } | ToolsError::DatabaseUrl(_))
    }
}

/// The error and its `source()` chain joined by `: `, on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text.replace('\n', " ")
}
