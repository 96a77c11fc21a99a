//! `queuepool`: see `queuepool --help`.

use std::process::ExitCode;

use queuepool_cli::cli::{self, Command};
use queuepool_cli::config::ServeConfig;
use queuepool_cli::error::chain;
use queuepool_cli::{CliError, serve, telemetry};

fn main() -> ExitCode {
    let (cli, matches) = cli::parse();
    match cli.command {
        Command::Tools(command) => queuepool_tools::main(command),
        Command::Serve(args) => {
            let serve_matches = matches.subcommand_matches("serve").unwrap_or(&matches);
            let config = match ServeConfig::load(&args, serve_matches) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {}", chain(&error));
                    return ExitCode::from(2);
                }
            };
            if config.print_config {
                for line in config.describe() {
                    println!("{line}");
                }
                return ExitCode::SUCCESS;
            }
            telemetry::init_tracing(config.echo_pool, config.log_format);
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let prometheus = telemetry::install_prometheus()?;
                        serve::run(config, Some(prometheus)).await
                    })
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{}", chain(&error));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
