//! The binary's logging and metrics: the subscriber and the recorder are installed
//! here, never in the libraries.

use std::io::IsTerminal;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::error::CliError;

/// The tracing target of the pool's log lines.
pub const POOL_LOG_TARGET: &str = "queuepool::pool";

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

/// Installs the log subscriber (to stderr).
pub fn init_tracing(echo_pool: bool) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log.as_deref(), echo_pool))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Installs the process-wide Prometheus recorder and starts its upkeep task (which
/// must run inside the tokio runtime).
pub fn install_prometheus() -> Result<PrometheusHandle, CliError> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| CliError::Metrics(Box::new(e)))?;
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
