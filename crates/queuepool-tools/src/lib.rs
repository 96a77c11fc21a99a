//! The tools that show a [`queuepool`] pool at work and size it: the `verify`, `bench`,
//! `tune` and `status` subcommands of the `queuepool` binary. (The live page that
//! `queuepool serve` mounts at `GET /dashboard` is `queuepool_axum::dashboard`.)
//!
//! * [`verify`]: builds a pool tagged with a unique `application_name` and compares the
//!   pool's intended connections with the server's own view (`pg_stat_activity`,
//!   MySQL's process list, SQLite's open handles) at idle, under a full burst, at the
//!   limit (one checkout must time out) and after release. PASS/FAIL per row.
//! * [`bench`]: pooled against unpooled (a new connection per query) at several
//!   concurrencies, optionally next to `pgbench`; table, JSON and an SVG plot.
//! * [`tune`]: the workload at increasing pool sizes; recommends the smallest pool
//!   within 5 % of the best throughput, capped by `max_connections / instances`; with
//!   `--via-pgbouncer`, PgBouncer's server pool for the whole fleet and each instance's
//!   pool as its client. `verify` checks both layers through PgBouncer ([`pgbouncer`]).
//! * [`status`]: a running service's `GET /pool`, once or refreshed.
//!
//! The binary parses [`Command`] (clap) and calls [`main`]; everything here can also be
//! called as a library (tests do). Progress goes to stderr, results to stdout. Like
//! every library of the workspace it logs through `tracing` and installs nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), queuepool_tools::ToolsError> {
//! use clap::Parser;
//! #[derive(Parser)]
//! struct Cli { #[command(subcommand)] command: queuepool_tools::Command }
//! let cli = Cli::parse_from(["queuepool", "verify", "--database-url", "sqlite::memory:"]);
//! let queuepool_tools::Command::Verify(args) = cli.command else { unreachable!() };
//! let report = queuepool_tools::verify::run(&args).await?;
//! assert!(report.passed, "{}", report.render());
//! # Ok(()) }
//! ```

use std::path::Path;
use std::process::ExitCode;

pub mod args;
pub mod bench;
mod error;
pub mod pgbench;
pub mod pgbouncer;
pub mod plot;
pub mod progress;
pub mod sizes;
pub mod status;
pub mod table;
pub mod target;
pub mod tune;
pub mod verify;
pub mod workload;

pub use error::{BoxError, ToolsError, chain};

/// The tools' subcommands; the binary flattens them next to `serve`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check the pool against the database's own view (pg_stat_activity, MySQL's
    /// process list, SQLite's open handles): idle, full burst, one checkout past the
    /// limit that must time out, and after release. Exits 1 if any check fails.
    Verify(verify::VerifyArgs),
    /// Load your database: pooled against unpooled (a new connection per query)
    /// throughput and latency at several concurrencies, optionally next to pgbench
    /// (the pool's own micro-benchmarks are the queuepool-bench crate)
    Bench(bench::BenchArgs),
    /// Measure the workload at increasing pool sizes and recommend pool_size,
    /// max_overflow and pool_timeout
    Tune(tune::TuneArgs),
    /// Print a running service's pool status (GET /pool); --watch refreshes it
    Status(status::StatusArgs),
}

/// The runtime a subcommand runs on: `threads` workers. One client thread for `bench`
/// (pgbench's `-j 1`) is one thread: a current-thread runtime. A one-worker
/// multi-thread runtime would run the load on its worker and the measuring future on
/// the main thread, and pay a cross-thread wake-up between them (6-8 points of
/// pgbench's rate in docs/TOOLS.md's comparison).
fn runtime_for(threads: u32, bench: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if bench && threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut multi = tokio::runtime::Builder::new_multi_thread();
        multi.worker_threads(threads as usize);
        multi
    };
    builder.enable_all().build()
}

/// Runs a subcommand on a new runtime (multi-threaded, except `bench` with one client
/// thread) and returns the exit status:
/// 0 on success, 1 when a check fails or the run fails, 2 for a bad argument. Errors
/// are printed on stderr as one line starting with `error: `.
pub fn main(command: Command) -> ExitCode {
    let (threads, bench) = match &command {
        Command::Bench(args) => match args.threads() {
            Ok(n) => (n, true),
            Err(e) => return fail(&e),
        },
        _ => (bench::client_threads(), false),
    };
    let runtime = match runtime_for(threads, bench) {
        Ok(rt) => rt,
        Err(e) => return fail(&ToolsError::Runtime(e)),
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Verify(args) => {
                let report = verify::run(&args).await?;
                if args.json {
                    let text = serde_json::to_string_pretty(&report).map_err(ToolsError::Json)?;
                    println!("{text}");
                } else {
                    print!("{}", report.render());
                }
                Ok(report.passed)
            }
            Command::Bench(args) => {
                if let Some(sizes) = &args.sizes {
                    let report = sizes::run(&args, sizes).await?;
                    print!("{}", report.render());
                } else {
                    let report = bench::run(&args).await?;
                    print!("{}", report.render());
                }
                for (flag, path) in [("json", &args.json), ("plot", &args.plot)] {
                    if let Some(path) = path {
                        println!("{flag}: wrote {}", path.display());
                    }
                }
                Ok(true)
            }
            Command::Tune(args) => {
                let current = args::build(args.pool.builder()?)?;
                let report = tune::run(&args).await?;
                if args.json {
                    let text = serde_json::to_string_pretty(&report).map_err(ToolsError::Json)?;
                    println!("{text}");
                } else {
                    print!("{}", report.render());
                    println!(
                        "now:   pool_size {}, max_overflow {}, pool_timeout {} s (flags, POOL_* \
                         variables, else the {} preset)",
                        current.pool_size,
                        current.max_overflow,
                        current.pool_timeout.as_secs_f64(),
                        args.pool.preset()?,
                    );
                }
                Ok(true)
            }
            Command::Status(args) => status::run(&args).await.map(|()| true),
        }
    });
    // Pool maintenance tasks and a pending pgbench are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}

fn fail(error: &ToolsError) -> ExitCode {
    eprintln!("error: {}", chain(error));
    if error.is_usage() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`, so
/// a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ToolsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |what, source| ToolsError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("cannot write", e))?;
    std::io::Write::write_all(&mut file, bytes).map_err(|e| io("cannot write", e))?;
    file.persist(path)
        .map_err(|e| io("cannot write", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::runtime_for;

    fn flavor(threads: u32, bench: bool) -> RuntimeFlavor {
        let rt = runtime_for(threads, bench).expect("runtime");
        rt.handle().runtime_flavor()
    }

    #[test]
    fn one_bench_client_thread_is_a_current_thread_runtime() {
        assert_eq!(flavor(1, true), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2, true), RuntimeFlavor::MultiThread);
        // Other subcommands keep a multi-thread runtime even with one worker.
        assert_eq!(flavor(1, false), RuntimeFlavor::MultiThread);
    }
}
