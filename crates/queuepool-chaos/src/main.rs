//! `queuepool-chaos`: runs the reliability and security scenarios of issue 7 against
//! the real `queuepool serve` binary and the library, prints their figures, and writes
//! them as Markdown (`--markdown docs/RELIABILITY.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use queuepool_chaos::error::chain;
use queuepool_chaos::scenarios::{
    bad_input, blackhole, cancel, latency, leak, pgbouncer, restart, secrets, soak, terminate,
    writes,
};
use queuepool_chaos::{ChaosError, Ctx, Report};

/// Reliability and security suite of queuepool: database restarts, killed backends,
/// blackholes, latency, cancellation storms, leaks, write safety, bad input, secrets.
#[derive(Debug, Parser)]
#[command(name = "queuepool-chaos", version)]
struct Args {
    /// Scenarios to run, as with --scenario (e.g. `queuepool-chaos pgbouncer --json out.json`)
    #[arg(value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// Scenarios to run, by number or name, comma separated (1,restart,2,terminate,3,
    /// blackhole,4,latency,5,cancel,6,leak,7,writes,8,bad-input,9,secrets,10,soak,11,
    /// pgbouncer) [default: 1-9]
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// The full durations (20 s loads, 5 s outage, 10 s blackhole, 10,000
    /// cancellations each); without it the short forms of `cargo test`
    #[arg(long)]
    full: bool,
    /// Also run scenario 10, the 10-minute soak
    #[arg(long)]
    soak: bool,
    /// Also run scenario 11 (`pgbouncer`): 4 instances on a server with max_connections
    /// = 50, straight and through PgBouncer (2 x --seconds)
    #[arg(long)]
    pgbouncer: bool,
    /// Length of each phase of the pgbouncer scenario, in seconds [default: 60]
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// PgBouncer's default_pool_size in the pgbouncer scenario (server connections)
    /// [default: 40]
    #[arg(long, value_name = "N")]
    pgbouncer_pool: Option<usize>,
    /// Write the pgbouncer scenario's figures as JSON to this file:
    /// {"pgbouncer": {...}, "direct": {...}, "params": {...}}
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the tables as Markdown to this file
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The `queuepool` binary to test [default: built now with cargo, release profile]
    #[arg(long, value_name = "PATH")]
    serve_bin: Option<PathBuf>,
}

const ALL: [(&str, &str); 9] = [
    ("1", "restart"),
    ("2", "terminate"),
    ("3", "blackhole"),
    ("4", "latency"),
    ("5", "cancel"),
    ("6", "leak"),
    ("7", "writes"),
    ("8", "bad-input"),
    ("9", "secrets"),
];

async fn run_one(ctx: &Ctx, name: &str, args: &Args) -> Result<Vec<Report>, ChaosError> {
    let full = args.full;
    Ok(match name {
        "restart" => {
            let p = if full {
                restart::Params::full()
            } else {
                restart::Params::short()
            };
            vec![restart::run(ctx, &p).await?.report()]
        }
        "terminate" => {
            let p = if full {
                terminate::Params::full()
            } else {
                terminate::Params::short()
            };
            vec![terminate::run(ctx, &p).await?.report()]
        }
        "blackhole" => {
            let p = if full {
                blackhole::Params::full()
            } else {
                blackhole::Params::short()
            };
            let service = blackhole::run(ctx, &p).await?.report();
            let library = blackhole::run_library(ctx, &p).await?.report(&p);
            vec![service, library]
        }
        "latency" => {
            let p = if full {
                latency::Params::full()
            } else {
                latency::Params::short()
            };
            vec![latency::run(ctx, &p).await?.report()]
        }
        "cancel" => {
            let p = if full {
                cancel::Params::full()
            } else {
                cancel::Params::short()
            };
            vec![cancel::run(ctx, &p).await?.report()]
        }
        "leak" => vec![leak::run(ctx, &leak::Params::full()).await?.report()],
        "writes" => {
            let p = if full {
                writes::Params::full()
            } else {
                writes::Params::short()
            };
            vec![writes::run(ctx, &p).await?.report()]
        }
        "bad-input" => {
            let p = if full {
                bad_input::Params::full()
            } else {
                bad_input::Params::short()
            };
            vec![bad_input::run(ctx, &p).await?.report()]
        }
        "secrets" => vec![secrets::run(ctx).await?.report()],
        "soak" => vec![soak::run(ctx, &soak::Params::full()).await?.report()],
        "pgbouncer" => {
            let mut p = pgbouncer::Params::full();
            if let Some(s) = args.seconds {
                p.duration = std::time::Duration::from_secs(s);
            }
            if let Some(n) = args.pgbouncer_pool {
                p.default_pool_size = n;
            }
            let figures = pgbouncer::run(ctx, &p).await?;
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&figures.json())
                    .map_err(|e| ChaosError::Unexpected(format!("JSON: {e}")))?;
                std::fs::write(path, text + "\n").map_err(|source| ChaosError::Io {
                    what: format!("writing {}", path.display()),
                    source,
                })?;
                eprintln!("wrote {}", path.display());
            }
            vec![figures.report()]
        }
        other => {
            return Err(ChaosError::Unexpected(format!(
                "unknown scenario {other:?}"
            )));
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    queuepool_chaos::capture::install();
    let mut names: Vec<&str> = Vec::new();
    let asked: Vec<&String> = args.scenarios.iter().chain(&args.scenario).collect();
    if asked.is_empty() && !args.pgbouncer {
        names.extend(ALL.iter().map(|(_, n)| *n));
    }
    let mut pgbouncer_asked = args.pgbouncer;
    for s in asked {
        match ALL.iter().find(|(num, name)| s == num || s == name) {
            Some((_, name)) => names.push(name),
            None if s == "10" || s == "soak" => {}
            None if s == "11" || s == "pgbouncer" => pgbouncer_asked = true,
            None => {
                eprintln!("error: unknown scenario {s:?}; see --help");
                return ExitCode::from(2);
            }
        }
    }
    if args.soak {
        names.push("soak");
    }
    if pgbouncer_asked {
        names.push("pgbouncer");
    } else if args.json.is_some() || args.seconds.is_some() || args.pgbouncer_pool.is_some() {
        eprintln!(
            "error: --json, --seconds and --pgbouncer-pool belong to the pgbouncer scenario (11); add `pgbouncer`"
        );
        return ExitCode::from(2);
    }
    if args.seconds == Some(0) {
        eprintln!("error: --seconds: expected a whole number >= 1");
        return ExitCode::from(2);
    }
    if args.pgbouncer_pool.is_some_and(|n| n == 0 || n > 1000) {
        eprintln!("error: --pgbouncer-pool: expected a whole number from 1 to 1000");
        return ExitCode::from(2);
    }
    let serve_bin = match args
        .serve_bin
        .clone()
        .map(Ok)
        .unwrap_or_else(|| queuepool_chaos::service::find_or_build_serve_bin(true))
    {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Ctx::new(serve_bin);
    let started = chrono::Utc::now();
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for name in &names {
        ctx.phase(name, "start");
        match runtime.block_on(run_one(&ctx, name, &args)) {
            Ok(rs) => {
                for r in rs {
                    println!("{}", r.text());
                    reports.push(r);
                }
            }
            Err(e) => {
                eprintln!("{name}: could not run: {}", chain(&e));
                errors.push(format!("{name}: {}", chain(&e)));
            }
        }
    }
    let missed: usize = reports.iter().map(|r| r.failures().len()).sum();
    println!(
        "{} tables, {missed} figures missed their target, {} scenarios could not run",
        reports.len(),
        errors.len()
    );
    if let Some(path) = &args.markdown {
        let mut md = String::new();
        md.push_str(&format!(
            "<!-- written by queuepool-chaos {} on {} -->\n\n",
            std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            started.format("%Y-%m-%d %H:%M UTC")
        ));
        for r in &reports {
            md.push_str(&r.markdown());
            md.push('\n');
        }
        for e in &errors {
            md.push_str(&format!("- could not run: {e}\n"));
        }
        if let Err(e) = std::fs::write(path, md) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if missed == 0 && errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
