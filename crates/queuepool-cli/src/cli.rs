//! The command line: `queuepool <COMMAND>`.

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

/// queuepool: an async database connection pool with SQLAlchemy QueuePool semantics,
/// and the tools to see it work.
#[derive(Debug, Parser)]
#[command(name = "queuepool", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands: `serve` here, `verify`, `bench`, `tune` and `status` from
/// `queuepool-tools`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the items web service (the tutorial's FastAPI app) on a pooled database:
    /// CRUD on /items, /health, /pool, /metrics, /dashboard, Swagger UI at /docs
    Serve(ServeArgs),
    /// `verify`, `bench`, `tune`, `status`.
    #[command(flatten)]
    Tools(queuepool_tools::Command),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn serve_help_documents_precedence_env_and_defaults() {
        let mut command = Cli::command();
        let serve = command.find_subcommand_mut("serve").unwrap();
        let help = serve.render_long_help().to_string();
        assert!(
            help.contains("flags > environment variables > --config TOML file > pool preset > built-in defaults"),
            "{help}"
        );
        for needle in [
            "DATABASE_URL",
            "POOL_PRESET",
            "POOL_SIZE",
            "MAX_OVERFLOW",
            "POOL_TIMEOUT",
            "POOL_RECYCLE",
            "BIND",
            "sqlite://queuepool.db",
            "127.0.0.1:8000",
            "--echo-pool",
            "QUERY_TIMEOUT",
            "--query-timeout",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }
}
