//! The tools without the `queuepool` binary: `cargo run -p queuepool-tools --example
//! tools -- verify --database-url ...` (same subcommands and flags).

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "queuepool")]
struct Cli {
    #[command(subcommand)]
    command: queuepool_tools::Command,
}

fn main() -> ExitCode {
    queuepool_tools::main(Cli::parse().command)
}
