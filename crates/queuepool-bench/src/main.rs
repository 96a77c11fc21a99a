//! `queuepool-bench`: queuepool side by side with deadpool 0.12 and bb8 0.9, in one
//! process and one run, with the same no-op manager (`core`), and with deadpool-postgres,
//! bb8-postgres and sqlx against a real PostgreSQL server (`pg`). See README.md for how to run
//! it and how to read the figures.

mod args;
mod code;
mod error;
#[cfg(test)]
mod git;
mod pg;
mod pools;
mod report;
mod runner;
mod scenario;

use std::process::ExitCode;

use args::{Command, CoreArgs};
use error::BenchError;
use report::{RepFigures, Report};

fn main() -> ExitCode {
    let result = args::parse(std::env::args().skip(1)).and_then(|cmd| {
        if !matches!(cmd, Command::Help) {
            // Every run names the code it measures before it starts.
            eprintln!("queuepool-bench: {}", code::CODE);
        }
        match cmd {
            Command::Core(a) => core(&a),
            Command::Pg(a) => pg::run_group(&a),
            Command::Help => Err(BenchError::Help),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(BenchError::Help) => {
            println!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Err(BenchError::Args(msg)) => {
            eprintln!("queuepool-bench: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("queuepool-bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn core(a: &CoreArgs) -> Result<(), BenchError> {
    let mut rows = Vec::new();
    for &scenario in &a.scenarios {
        let mut results: Vec<(pools::PoolKind, Vec<RepFigures>)> =
            a.pools.iter().map(|&k| (k, Vec::new())).collect();
        // Interleave the pools (A, B, C, A, B, C, ...) so slow drifts of a shared
        // machine spread over all of them instead of hitting one.
        for rep in 0..a.reps {
            for (kind, reps) in &mut results {
                let m = runner::measure(*kind, scenario, a.warmup, a.secs)?;
                let fig = RepFigures::from(&m);
                eprintln!(
                    "{:<16} {:<17} rep {}/{}: {:>12.0} ops/s  p99 {:>8.2} µs",
                    scenario.name(),
                    kind.name(),
                    rep + 1,
                    a.reps,
                    fig.ops_per_sec,
                    fig.p99_wait_us
                );
                reps.push(fig);
            }
        }
        rows.extend(report::rows(scenario, &results));
    }
    let report = Report {
        code: code::CODE,
        scenarios: rows,
        reps: a.reps,
        secs: a.secs.as_secs_f64(),
        warmup_secs: a.warmup.as_secs_f64(),
        available_parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
        single_task_sample_every: runner::SAMPLE_EVERY,
    };
    print!("{}", report::table(&report));
    if let Some(path) = &a.json {
        report::write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
