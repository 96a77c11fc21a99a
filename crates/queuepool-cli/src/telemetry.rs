//! The binary's logging and metrics: the subscriber and the recorder are installed
//! here, never in the libraries.
//!
//! Logging never takes the service down: a log line that cannot be written (stderr
//! closed, a pipe whose reader left: `queuepool serve 2>&1 | head -1`) is dropped
//! silently. tracing-subscriber's default is to report such a failure with
//! `eprintln!`, which panics when stderr itself is the broken stream.

use std::io::IsTerminal;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::error::CliError;

/// The tracing target of the pool's log lines.
pub const POOL_LOG_TARGET: &str = "queuepool::pool";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, `span`):
    /// for log collectors.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The log filter: `RUST_LOG` if set, else `info`; with `echo_pool`, the pool's
/// debug lines on top (SQLAlchemy's `echo_pool="debug"`).
pub fn filter(rust_log: Option<&str>, echo_pool: bool) -> EnvFilter {
    let base = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let directives = if echo_pool {
        format!("{base},{POOL_LOG_TARGET}=debug")
    } else {
        base.to_owned()
    };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the log subscriber (to stderr) in `format`.
pub fn init_tracing(echo_pool: bool, format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log.as_deref(), echo_pool))
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The buckets of every histogram of `/metrics`, in seconds: from 100 µs (a checkout
/// from an idle pool) to 60 s (the longest `pool_timeout` of the presets).
pub const HISTOGRAM_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide Prometheus recorder and starts its upkeep task (which
/// must run inside the tokio runtime).
///
/// Every histogram is exported as a Prometheus histogram ([`HISTOGRAM_BUCKETS`]), not
/// a summary: bucket counts add up across instances, quantiles do not.
pub fn install_prometheus() -> Result<PrometheusHandle, CliError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(HISTOGRAM_BUCKETS)
        .map_err(|e| CliError::Metrics(Box::new(e)))?
        .install_recorder()
        .map_err(|e| CliError::Metrics(Box::new(e)))?;
    queuepool_axum::describe_metrics();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_pool_adds_the_pool_target_at_debug() {
        let with = filter(None, true).to_string();
        assert!(with.contains("queuepool::pool=debug"), "{with}");
        let without = filter(None, false).to_string();
        assert!(!without.contains("queuepool::pool"), "{without}");
        let custom = filter(Some("warn"), true).to_string();
        assert!(
            custom.contains("warn") && custom.contains("queuepool::pool=debug"),
            "{custom}"
        );
    }
}
