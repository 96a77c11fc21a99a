//! Command-line parsing, by hand: the bench takes a handful of flags and a bad one must
//! be reported on one line (clap prints a multi-line usage block).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::BenchError;
use crate::pg::PgPoolKind;
use crate::pools::PoolKind;
use crate::scenario::Scenario;

/// Usage text printed by `--help`.
pub const USAGE: &str = "\
usage: queuepool-bench core [--json FILE] [--reps N] [--secs S] [--warmup S]
                            [--pool NAME[,NAME..]] [--scenario NAME[,NAME..]]

  --json FILE     also write the results as JSON to FILE (atomically: temp file + rename)
  --reps N        repetitions per (scenario, pool), interleaved; median reported (default 3)
  --secs S        measured duration of one repetition, seconds (default 2)
  --warmup S      warm-up before each repetition, seconds (default 0.5)
  --pool LIST     pools to run: queuepool (manager reports returned connections clean),
                  queuepool-reset (manager asks for a no-op reset on every return),
                  deadpool, bb8 (default: these four), or the diagnostic
                  tokio-semaphore (bare semaphore, no connections: the fair-handoff ceiling),
                  floor (1-task only: the clock reads, locks and reference count every
                  queuepool loan pays, and nothing else: the one-task ceiling)
  --scenario LIST scenarios to run: 1-task, 64-tasks-pool-8, 8-tasks-pool-8 (default all)

usage: queuepool-bench pg [--json FILE] [--database-url URL] [--reps N] [--seconds S]
                          [--warmup S] [--tls] [--pool NAME[,NAME..]]

  PostgreSQL pools side by side: 32 tasks, pool of 8, SELECT 1 (simple protocol):
  queuepool + PgManager (defaults), the diagnostic queuepool-core-bare-manager
  (queuepool's core over deadpool-postgres's connector and recycling, without
  PgManager), deadpool-postgres (Fast), bb8-postgres (test_on_check_out false, then its
  default true), sqlx PgPool (test_before_acquire false, then its default true)
  --pool LIST         pools to run, by their names in the table (default all); the
                      ratios need deadpool-postgres among them
  --database-url URL  server to use (default postgres://postgres@127.0.0.1:5432/test);
                      sslmode=disable is added, any other sslmode is refused
  --tls               every pool over TLS (certificate verified, SCRAM) against an
                      ephemeral cluster of queuepool-testkit instead of --database-url
  --reps N            interleaved repetitions per pool; median reported (default 3)
  --seconds S         measured duration of one repetition (default 3; --secs too)
  --warmup S          warm-up before each repetition (default 0.5)";

/// Default server of the `pg` group.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// What the `pg` group runs.
#[derive(Debug, Clone)]
pub struct PgArgs {
    /// Where to write the JSON report, if anywhere.
    pub json: Option<PathBuf>,
    /// Connection string, as given.
    pub database_url: String,
    /// Repetitions per pool.
    pub reps: usize,
    /// Measured duration of one repetition.
    pub secs: Duration,
    /// Warm-up before each repetition.
    pub warmup: Duration,
    /// `--tls`: against an ephemeral TLS cluster instead of `database_url`.
    pub tls: bool,
    /// Pools to compare, in the interleaving order.
    pub pools: Vec<PgPoolKind>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CoreArgs {
    /// Where to write the JSON report, if anywhere.
    pub json: Option<PathBuf>,
    /// Repetitions of each (scenario, pool) measurement.
    pub reps: usize,
    /// Measured duration of one repetition.
    pub secs: Duration,
    /// Warm-up before each repetition.
    pub warmup: Duration,
    /// Pools to compare, in the interleaving order.
    pub pools: Vec<PoolKind>,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
}

/// The parsed command line.
#[derive(Debug, Clone)]
pub enum Command {
    /// `core`: the core pool benchmark.
    Core(CoreArgs),
    /// `pg`: the PostgreSQL pools against a real server.
    Pg(PgArgs),
    /// `--help` / `-h` / `help`.
    Help,
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, BenchError> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("core") => parse_core(args).map(Command::Core),
        Some("pg") => parse_pg(args).map(Command::Pg),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some(other) => Err(BenchError::Args(format!(
            "unknown subcommand `{other}` (expected `core` or `pg`; try --help)"
        ))),
        None => Err(BenchError::Args(
            "missing subcommand (expected `core` or `pg`; try --help)".to_owned(),
        )),
    }
}

fn parse_core(mut args: impl Iterator<Item = String>) -> Result<CoreArgs, BenchError> {
    let mut out = CoreArgs {
        json: None,
        reps: 3,
        secs: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        pools: PoolKind::ALL.to_vec(),
        scenarios: Scenario::ALL.to_vec(),
    };
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(BenchError::Help);
        }
        let known = [
            "--json",
            "--reps",
            "--secs",
            "--warmup",
            "--pool",
            "--scenario",
        ];
        if !known.contains(&flag.as_str()) {
            return Err(BenchError::Args(format!(
                "unknown argument `{arg}` (try --help)"
            )));
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| BenchError::Args(format!("`{flag}` needs a value")))?,
        };
        match flag.as_str() {
            "--json" => {
                if value.is_empty() {
                    return Err(BenchError::Args("`--json` needs a file name".to_owned()));
                }
                out.json = Some(PathBuf::from(value));
            }
            "--reps" => {
                out.reps = match value.parse::<usize>() {
                    Ok(n) if (1..=100).contains(&n) => n,
                    _ => {
                        return Err(BenchError::Args(format!(
                            "`--reps {value}`: expected an integer from 1 to 100"
                        )));
                    }
                }
            }
            "--secs" => out.secs = parse_secs(&flag, &value, 0.01)?,
            "--warmup" => out.warmup = parse_secs(&flag, &value, 0.0)?,
            "--pool" => out.pools = parse_list(&flag, &value, PoolKind::parse)?,
            "--scenario" => out.scenarios = parse_list(&flag, &value, Scenario::parse)?,
            _ => unreachable!("flag checked against `known` above"),
        }
    }
    // The floor never waits: beside a limit it would measure nothing a pool does.
    if out.pools.contains(&PoolKind::Floor) && out.scenarios != [Scenario::Single] {
        return Err(BenchError::Args(
            "`--pool floor` runs only the one-task scenario: add `--scenario 1-task`".to_owned(),
        ));
    }
    Ok(out)
}

/// Splits `--flag=value` / `--flag value`; `Ok(None)` at the end of the arguments.
/// Flags that take no value (only where a subcommand lists them in `known`).
const SWITCHES: [&str; 1] = ["--tls"];

fn next_flag(
    args: &mut impl Iterator<Item = String>,
    known: &[&str],
) -> Result<Option<(String, String)>, BenchError> {
    let Some(arg) = args.next() else {
        return Ok(None);
    };
    let (flag, inline) = match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
        _ => (arg.clone(), None),
    };
    if flag == "-h" || flag == "--help" {
        return Err(BenchError::Help);
    }
    if !known.contains(&flag.as_str()) {
        return Err(BenchError::Args(format!(
            "unknown argument `{arg}` (try --help)"
        )));
    }
    if SWITCHES.contains(&flag.as_str()) {
        if inline.is_some() {
            return Err(BenchError::Args(format!("`{flag}` takes no value")));
        }
        return Ok(Some((flag, String::new())));
    }
    let value = match inline {
        Some(v) => v,
        None => args
            .next()
            .ok_or_else(|| BenchError::Args(format!("`{flag}` needs a value")))?,
    };
    Ok(Some((flag, value)))
}

fn parse_reps(value: &str) -> Result<usize, BenchError> {
    match value.parse::<usize>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(BenchError::Args(format!(
            "`--reps {value}`: expected an integer from 1 to 100"
        ))),
    }
}

fn parse_pg(mut args: impl Iterator<Item = String>) -> Result<PgArgs, BenchError> {
    let mut out = PgArgs {
        json: None,
        database_url: DEFAULT_DATABASE_URL.to_owned(),
        reps: 3,
        secs: Duration::from_secs(3),
        warmup: Duration::from_millis(500),
        tls: false,
        pools: PgPoolKind::ALL.to_vec(),
    };
    let known = [
        "--json",
        "--database-url",
        "--reps",
        "--seconds",
        "--secs",
        "--warmup",
        "--tls",
        "--pool",
    ];
    while let Some((flag, value)) = next_flag(&mut args, &known)? {
        match flag.as_str() {
            "--json" => {
                if value.is_empty() {
                    return Err(BenchError::Args("`--json` needs a file name".to_owned()));
                }
                out.json = Some(PathBuf::from(value));
            }
            "--database-url" => {
                if value.trim().is_empty() {
                    return Err(BenchError::Args(
                        "`--database-url` needs a connection string".to_owned(),
                    ));
                }
                out.database_url = value;
            }
            "--reps" => out.reps = parse_reps(&value)?,
            "--seconds" | "--secs" => out.secs = parse_secs(&flag, &value, 0.01)?,
            "--warmup" => out.warmup = parse_secs(&flag, &value, 0.0)?,
            "--tls" => out.tls = true,
            "--pool" => out.pools = parse_list(&flag, &value, PgPoolKind::parse)?,
            _ => unreachable!("flag checked against `known` above"),
        }
    }
    Ok(out)
}

fn parse_secs(flag: &str, value: &str, min: f64) -> Result<Duration, BenchError> {
    const MAX: f64 = 600.0;
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= min && s <= MAX => Ok(Duration::from_secs_f64(s)),
        _ => Err(BenchError::Args(format!(
            "`{flag} {value}`: expected seconds from {min} to {MAX}"
        ))),
    }
}

fn parse_list<T: PartialEq>(
    flag: &str,
    value: &str,
    parse_one: fn(&str) -> Option<T>,
) -> Result<Vec<T>, BenchError> {
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim) {
        let item = parse_one(name).ok_or_else(|| {
            BenchError::Args(format!("`{flag}`: unknown name `{name}` (try --help)"))
        })?;
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(args: &[&str]) -> Result<CoreArgs, BenchError> {
        let all = std::iter::once("core")
            .chain(args.iter().copied())
            .map(str::to_owned);
        match parse(all)? {
            Command::Core(c) => Ok(c),
            _ => panic!("expected core"),
        }
    }

    fn pg(args: &[&str]) -> Result<PgArgs, BenchError> {
        let all = std::iter::once("pg")
            .chain(args.iter().copied())
            .map(str::to_owned);
        match parse(all)? {
            Command::Pg(c) => Ok(c),
            _ => panic!("expected pg"),
        }
    }

    #[test]
    fn pg_defaults_to_the_local_test_database_three_reps_of_three_seconds() {
        let c = pg(&[]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.reps, 3);
        assert_eq!(c.secs, Duration::from_secs(3));
        assert!(c.json.is_none());
        assert!(!c.tls);
        assert_eq!(c.pools, PgPoolKind::ALL.to_vec());
    }

    #[test]
    fn pg_flags_are_parsed_and_bad_ones_are_one_line_errors() {
        let c = pg(&[
            "--json",
            "pg.json",
            "--database-url=postgres://u@h/db",
            "--reps",
            "5",
            "--seconds",
            "1.5",
            "--tls",
            "--pool",
            "deadpool-postgres,queuepool,deadpool-postgres",
        ])
        .unwrap();
        assert_eq!(c.pools, [PgPoolKind::Deadpool, PgPoolKind::Queuepool]);
        assert!(c.tls, "--tls takes no value");
        assert_eq!(c.json, Some(PathBuf::from("pg.json")));
        assert_eq!(c.database_url, "postgres://u@h/db");
        assert_eq!(c.reps, 5);
        assert_eq!(c.secs, Duration::from_millis(1_500));
        for bad in [
            vec!["--reps", "0"],
            vec!["--seconds", "x"],
            vec!["--database-url", ""],
            vec!["--database-url"],
            vec!["--pool", "bb8"],
            vec!["--tls=yes"],
        ] {
            let err = pg(&bad).unwrap_err().to_string();
            assert!(!err.contains('\n') && !err.is_empty(), "{bad:?}: {err}");
        }
    }

    #[test]
    fn defaults_are_three_reps_of_two_seconds_for_all_pools() {
        let c = core(&[]).unwrap();
        assert_eq!(c.reps, 3);
        assert_eq!(c.secs, Duration::from_secs(2));
        assert_eq!(c.pools, PoolKind::ALL.to_vec());
        assert_eq!(c.scenarios, Scenario::ALL.to_vec());
        assert!(c.json.is_none());
    }

    #[test]
    fn flags_accept_separate_and_inline_values() {
        let c = core(&["--json", "out.json", "--reps=5", "--secs", "0.5"]).unwrap();
        assert_eq!(c.json, Some(PathBuf::from("out.json")));
        assert_eq!(c.reps, 5);
        assert_eq!(c.secs, Duration::from_millis(500));
    }

    #[test]
    fn pool_and_scenario_lists_are_parsed_and_deduplicated() {
        let c = core(&["--pool", "bb8,queuepool,bb8", "--scenario", "1-task"]).unwrap();
        assert_eq!(c.pools, vec![PoolKind::Bb8, PoolKind::Queuepool]);
        assert_eq!(c.scenarios, vec![Scenario::Single]);
        // The diagnostic pool is selectable but not part of a default run.
        let c = core(&["--pool", "tokio-semaphore,deadpool"]).unwrap();
        assert_eq!(c.pools, vec![PoolKind::TokioSemaphore, PoolKind::Deadpool]);
        assert!(!PoolKind::ALL.contains(&PoolKind::TokioSemaphore));
        let c = core(&["--pool", "floor,queuepool", "--scenario", "1-task"]).unwrap();
        assert_eq!(c.pools, vec![PoolKind::Floor, PoolKind::Queuepool]);
        assert!(!PoolKind::ALL.contains(&PoolKind::Floor));
    }

    #[test]
    fn bad_arguments_are_one_line_errors() {
        for bad in [
            vec!["--reps", "0"],
            vec!["--reps", "x"],
            vec!["--secs", "-1"],
            vec!["--secs", "nan"],
            vec!["--json"],
            vec!["--frobnicate"],
            vec!["--pool", "r2d2"],
            vec!["--tls"],
            // The floor never waits: only the one-task scenario.
            vec!["--pool", "floor"],
            vec!["--pool", "floor", "--scenario", "1-task,8-tasks-pool-8"],
        ] {
            let err = core(&bad).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{bad:?}: {err}");
            assert!(!err.is_empty(), "{bad:?}");
        }
        let err = parse(vec!["bogus".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("unknown subcommand"), "{err}");
        assert!(parse(Vec::<String>::new()).is_err());
    }
}
