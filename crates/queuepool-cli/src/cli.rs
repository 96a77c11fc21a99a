//! The command line: `queuepool <COMMAND>`.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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

/// Parses the process's arguments and environment, or exits with clap's message (status
/// 2) as [`Parser::parse`] does; a bad value is one `error: ` line, like every other
/// error of the binary. The matches tell a flag from an environment variable
/// (`ServeConfig::load` tags each value with its source).
pub fn parse() -> (Cli, ArgMatches) {
    match try_parse_from(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(error) if error.kind() == ErrorKind::ValueValidation => {
            let text = error.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or_default());
            std::process::exit(2);
        }
        Err(error) => error.exit(),
    }
}

/// [`parse`] on given arguments (the environment is still the process's).
pub fn try_parse_from<I, T>(argv: I) -> Result<(Cli, ArgMatches), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut command = empty_variables_unset(Cli::command());
    let parsed = command
        .try_get_matches_from_mut(&argv)
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    parsed.map_err(|error| name_the_variable(error, &command, &argv))
}

/// An environment variable set to the empty string counts as unset (`POOL_SIZE=` in a
/// compose file leaves the preset's value), as shells and most tools treat it.
fn empty_variables_unset(command: clap::Command) -> clap::Command {
    fn unset_empty(arg: clap::Arg) -> clap::Arg {
        let empty = arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some_and(|v| v.is_empty()));
        if empty { arg.env(None::<&str>) } else { arg }
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    names
        .iter()
        .fold(command.mut_args(unset_empty), |command, name| {
            command.mut_subcommand(name, |c| c.mut_args(unset_empty))
        })
}

/// clap names the flag of a bad value even when the value came from the flag's
/// environment variable (`POOL_SIZE=many queuepool verify` would say `--pool-size`):
/// say which variable to fix instead.
fn name_the_variable(
    error: clap::Error,
    command: &clap::Command,
    argv: &[OsString],
) -> clap::Error {
    if error.kind() != ErrorKind::ValueValidation {
        return error;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let long = shown.split_whitespace().next().unwrap_or_default();
    let given_as_flag = argv.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
    });
    let owner = std::iter::once(command)
        .chain(command.get_subcommands())
        .find_map(|c| {
            c.get_arguments()
                .find(|a| a.get_long().is_some_and(|l| long == format!("--{l}")))
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str())
                .map(|variable| (c, variable))
        });
    match owner {
        Some((owner, variable)) if !given_as_flag => {
            let reason = std::error::Error::source(&error)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            let value = match error.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(v)) => format!(" {v:?}"),
                _ => String::new(),
            };
            let mut owner = owner
                .clone()
                .bin_name(format!("queuepool {}", owner.get_name()));
            owner.error(
                ErrorKind::ValueValidation,
                format!(
                    "environment variable {variable} (for {long}): invalid value{value}{reason}"
                ),
            )
        }
        _ => error,
    }
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
            "--print-config",
            "localhost:8000",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }
}
