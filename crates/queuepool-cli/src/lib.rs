//! The `queuepool` binary's code, as a library so that integration tests can build the
//! service in-process.
//!
//! * [`config`]: flags > environment > TOML file > preset > defaults.
//! * [`serve`]: the axum app ([`serve::router`]) and its lifecycle ([`serve::run`]):
//!   open the pool, create the table, serve, shut down gracefully, close the pool.
//! * [`store`]: the items model and the SQL of each backend behind one trait.
//! * [`telemetry`]: the log subscriber and the Prometheus recorder (binary only).

pub mod cli;
pub mod config;
pub mod error;
pub mod serve;
pub mod store;
pub mod telemetry;

pub use error::CliError;
