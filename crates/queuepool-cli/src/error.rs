//! [`CliError`]: why the binary could not start or run.

use std::net::SocketAddr;
use std::path::PathBuf;

use queuepool::PoolError;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why `queuepool` failed. HTTP errors are [`crate::serve::error::AppError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A setting has a bad value; `key` names it as the user wrote it.
    #[error("{key}: {message}")]
    Config {
        /// `--pool-size`, `POOL_SIZE` or `pool_size in file.toml`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The `--config` file could not be read.
    #[error("cannot read config file {}", path.display())]
    ConfigFileRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML or has an unknown key or a wrong type.
    #[error("invalid config file {}", path.display())]
    ConfigFileParse {
        /// The file.
        path: PathBuf,
        /// The parser's error, which names the key and line.
        #[source]
        source: toml::de::Error,
    },
    /// The backend rejected `DATABASE_URL`.
    #[error("invalid DATABASE_URL")]
    DatabaseUrl(#[source] BoxError),
    /// The pool could not be started (the database is unreachable, usually).
    #[error("could not start the connection pool")]
    Pool(#[source] PoolError),
    /// The items table could not be created.
    #[error("could not create the items table")]
    Migrate(#[source] BoxError),
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error")]
    Serve(#[source] std::io::Error),
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the Prometheus metrics recorder")]
    Metrics(#[source] BoxError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
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
