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

/// The subcommands. `bench`, `verify`, `tune` and `status` are planned; they are added
/// here when they exist, not before.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the items web service (the tutorial's FastAPI app) on a pooled database:
    /// CRUD on /items, /health, /pool, /metrics, Swagger UI at /docs
    Serve(ServeArgs),
}
