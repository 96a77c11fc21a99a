//! Medians, the printed table and the JSON report.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::BenchError;
use crate::pools::PoolKind;
use crate::runner::Measurement;
use crate::scenario::Scenario;

/// One repetition's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RepFigures {
    /// Checkout + return cycles per second.
    pub ops_per_sec: f64,
    /// Median checkout wait, microseconds.
    pub p50_wait_us: f64,
    /// 99th percentile checkout wait, microseconds.
    pub p99_wait_us: f64,
    /// Longest checkout wait, microseconds.
    pub max_wait_us: f64,
}

impl From<&Measurement> for RepFigures {
    fn from(m: &Measurement) -> Self {
        RepFigures {
            ops_per_sec: m.ops_per_sec(),
            p50_wait_us: m.wait_us(0.50),
            p99_wait_us: m.wait_us(0.99),
            max_wait_us: m.max_wait_us(),
        }
    }
}

/// One row: a (scenario, pool) pair, medians over the repetitions. The first four keys
/// (`name`, `pool`, `ops_per_sec`, `p99_wait_us`) are the stable interface other tools
/// read; the rest may grow.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name.
    pub name: &'static str,
    /// Pool name.
    pub pool: &'static str,
    /// Median ops/s over the repetitions.
    pub ops_per_sec: f64,
    /// Median (over repetitions) of the 99th percentile checkout wait, µs.
    pub p99_wait_us: f64,
    /// Median of the median checkout wait, µs.
    pub p50_wait_us: f64,
    /// Median of the longest checkout wait, µs.
    pub max_wait_us: f64,
    /// `ops_per_sec` divided by deadpool's in the same scenario (absent if deadpool did
    /// not run).
    pub ops_vs_deadpool: Option<f64>,
    /// `p99_wait_us` divided by deadpool's (below 1: shorter waits than deadpool).
    pub p99_vs_deadpool: Option<f64>,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Maximum pool size.
    pub pool_size: u32,
    /// Runtime worker threads (0: current-thread runtime).
    pub workers: usize,
    /// Fastest repetition's ops/s over the slowest's (1: all alike).
    pub ops_spread: f64,
    /// Each repetition's ops/s over deadpool's of the same round (absent if deadpool
    /// did not run).
    pub paired_ops_vs_deadpool: Option<Paired>,
    /// Every repetition, in run order.
    pub reps: Vec<RepFigures>,
}

/// Per-round ratios of one pool against the baseline (deadpool, deadpool-postgres).
/// On a shared machine the load drifts between rounds by more than the pools differ;
/// a round's two measurements ran close together, so their ratio cancels most of that
/// drift, and the spread of the ratios shows how far one run's median can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paired {
    /// Median of the per-round ratios.
    pub median: f64,
    /// Smallest per-round ratio.
    pub min: f64,
    /// Largest per-round ratio.
    pub max: f64,
    /// Rounds whose ratio was >= 1.
    pub at_least_1: usize,
    /// Rounds compared.
    pub rounds: usize,
}

/// The per-round ratios `mine[i] / base[i]` (`None` without rounds to compare).
pub fn paired(mine: &[f64], base: &[f64]) -> Option<Paired> {
    let mut ratios: Vec<f64> = mine.iter().zip(base).map(|(m, b)| m / b).collect();
    if ratios.is_empty() {
        return None;
    }
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let at_least_1 = ratios.iter().filter(|&&r| r >= 1.0).count();
    let rounds = ratios.len();
    Some(Paired {
        median: median(&mut ratios),
        min,
        max,
        at_least_1,
        rounds,
    })
}

/// Above this spread between a row's repetitions, the table warns that its median
/// (and a ratio between two medians) depends on which repetitions fell where.
pub const SPREAD_WARNING: f64 = 1.5;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The code measured.
    pub code: crate::code::Code,
    /// One row per (scenario, pool).
    pub scenarios: Vec<Row>,
    /// Repetitions per row.
    pub reps: usize,
    /// Measured seconds per repetition.
    pub secs: f64,
    /// Warm-up seconds before each repetition.
    pub warmup_secs: f64,
    /// Hardware threads available to the process.
    pub available_parallelism: usize,
    /// One checkout in this many is timed in the single-task scenario.
    pub single_task_sample_every: u64,
}

/// The median of `values` (mean of the two middle values for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Largest over smallest of `values` (1 for fewer than two, or a zero).
fn spread(values: impl Iterator<Item = f64>) -> f64 {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > 0.0 && lo.is_finite() {
        hi / lo
    } else {
        1.0
    }
}

/// Builds the rows of one scenario from each pool's repetitions.
pub fn rows(scenario: Scenario, results: &[(PoolKind, Vec<RepFigures>)]) -> Vec<Row> {
    let med = |reps: &[RepFigures], f: fn(&RepFigures) -> f64| {
        median(&mut reps.iter().map(f).collect::<Vec<_>>())
    };
    let mut rows: Vec<Row> = results
        .iter()
        .map(|(kind, reps)| Row {
            name: scenario.name(),
            pool: kind.name(),
            ops_per_sec: med(reps, |r| r.ops_per_sec),
            p99_wait_us: med(reps, |r| r.p99_wait_us),
            p50_wait_us: med(reps, |r| r.p50_wait_us),
            max_wait_us: med(reps, |r| r.max_wait_us),
            ops_vs_deadpool: None,
            p99_vs_deadpool: None,
            tasks: scenario.tasks(),
            pool_size: scenario.pool_size(),
            workers: scenario.workers(),
            ops_spread: spread(reps.iter().map(|r| r.ops_per_sec)),
            paired_ops_vs_deadpool: None,
            reps: reps.clone(),
        })
        .collect();
    let ops = |reps: &[RepFigures]| reps.iter().map(|r| r.ops_per_sec).collect::<Vec<_>>();
    // `rows` is built from `results` in order: one index serves both.
    let base = results
        .iter()
        .position(|(kind, _)| *kind == PoolKind::Deadpool)
        .map(|i| (rows[i].ops_per_sec, rows[i].p99_wait_us, ops(&results[i].1)));
    if let Some((median_ops, p99, base)) = base {
        for (row, (kind, reps)) in rows.iter_mut().zip(results) {
            row.ops_vs_deadpool = Some(row.ops_per_sec / median_ops);
            row.p99_vs_deadpool = (p99 > 0.0).then(|| row.p99_wait_us / p99);
            if *kind != PoolKind::Deadpool {
                row.paired_ops_vs_deadpool = paired(&ops(reps), &base);
            }
        }
    }
    rows
}

/// A table cell for per-round ratios: `1.02x 6/11` (median, rounds >= 1 of all).
fn per_round(p: Option<Paired>) -> String {
    p.map_or_else(
        || "-".to_owned(),
        |p| format!("{:.2}x {}/{}", p.median, p.at_least_1, p.rounds),
    )
}

/// The table printed on stdout.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", report.code);
    let _ = writeln!(
        out,
        "median of {} reps x {:.1} s (warm-up {:.1} s), {} hardware threads; waits = time of get().await",
        report.reps, report.secs, report.warmup_secs, report.available_parallelism
    );
    let _ = writeln!(
        out,
        "{:<16} {:<17} {:>12} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7} {:>12}",
        "scenario",
        "pool",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "ops/dp",
        "p99/dp",
        "spread",
        "per round"
    );
    for row in &report.scenarios {
        let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
        let _ = writeln!(
            out,
            "{:<16} {:<17} {:>12.0} {:>9.2} {:>9.2} {:>10.1} {:>9} {:>9} {:>6.2}x {:>12}",
            row.name,
            row.pool,
            row.ops_per_sec,
            row.p50_wait_us,
            row.p99_wait_us,
            row.max_wait_us,
            ratio(row.ops_vs_deadpool),
            ratio(row.p99_vs_deadpool),
            row.ops_spread,
            per_round(row.paired_ops_vs_deadpool),
        );
    }
    if report
        .scenarios
        .iter()
        .any(|r| r.paired_ops_vs_deadpool.is_some())
    {
        let _ = writeln!(
            out,
            "per round: each repetition's ops/s over deadpool's of the same round (the pools \
             run in turn, round by round): median, and in how many rounds >= 1"
        );
    }
    let mut noisy: Vec<&str> = report
        .scenarios
        .iter()
        .filter(|r| r.ops_spread > SPREAD_WARNING)
        .map(|r| r.name)
        .collect();
    noisy.dedup();
    if !noisy.is_empty() {
        let _ = writeln!(
            out,
            "note: in {}, repetitions of one pool differ by more than {SPREAD_WARNING}x in ops/s \
             (spread: fastest over slowest); a median, and a ratio of two medians, then \
             depends on where the repetitions fell: run more of them (--reps 11) and \
             compare several runs",
            noisy.join(", ")
        );
    }
    out
}

/// Writes the JSON report to `path` through a temporary file in the same directory and
/// a rename, so a reader never sees a half-written file.
pub fn write_json<T: Serialize>(report: &T, path: &Path) -> Result<(), BenchError> {
    let write_err = |source| BenchError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(report).map_err(BenchError::Json)?;
    json.push(b'\n');
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report.json".to_owned());
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(ops: f64, p99: f64) -> RepFigures {
        RepFigures {
            ops_per_sec: ops,
            p50_wait_us: p99 / 2.0,
            p99_wait_us: p99,
            max_wait_us: p99 * 10.0,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn rows_take_medians_and_ratios_against_deadpool() {
        let results = vec![
            (
                PoolKind::Queuepool,
                vec![rep(300.0, 1.0), rep(100.0, 9.0), rep(200.0, 2.0)],
            ),
            (
                PoolKind::Deadpool,
                vec![rep(50.0, 4.0), rep(100.0, 4.0), rep(70.0, 4.0)],
            ),
        ];
        let rows = rows(Scenario::Contended, &results);
        assert_eq!(rows[0].pool, "queuepool");
        assert_eq!(rows[0].ops_per_sec, 200.0);
        assert_eq!(rows[0].p99_wait_us, 2.0);
        assert_eq!(rows[0].ops_vs_deadpool, Some(200.0 / 70.0));
        assert_eq!(rows[0].p99_vs_deadpool, Some(0.5));
        assert_eq!(rows[1].ops_vs_deadpool, Some(1.0));
        assert_eq!(rows[0].reps.len(), 3);
        assert_eq!(rows[0].ops_spread, 3.0);
        assert_eq!(rows[1].ops_spread, 2.0);
        // Per round: 300/50, 100/100, 200/70.
        let p = rows[0].paired_ops_vs_deadpool.expect("deadpool ran");
        assert_eq!((p.median, p.min, p.max), (200.0 / 70.0, 1.0, 6.0));
        assert_eq!((p.at_least_1, p.rounds), (3, 3));
        assert_eq!(rows[1].paired_ops_vs_deadpool, None);
        let alone = rows_without_deadpool();
        assert_eq!(alone[0].paired_ops_vs_deadpool, None);
    }

    fn rows_without_deadpool() -> Vec<Row> {
        rows(
            Scenario::Contended,
            &[(PoolKind::Queuepool, vec![rep(1.0, 1.0)])],
        )
    }

    #[test]
    fn the_table_shows_each_row_s_spread_and_warns_only_when_one_is_wide() {
        let report = |reps: Vec<RepFigures>| Report {
            code: crate::code::CODE,
            scenarios: rows(
                Scenario::Contended,
                &[
                    (PoolKind::Queuepool, reps),
                    (PoolKind::Deadpool, vec![rep(100.0, 1.0), rep(110.0, 1.0)]),
                ],
            ),
            reps: 2,
            secs: 1.0,
            warmup_secs: 0.5,
            available_parallelism: 2,
            single_task_sample_every: 64,
        };
        let calm = table(&report(vec![rep(100.0, 1.0), rep(120.0, 1.0)]));
        assert!(
            calm.contains("  1.20x") && calm.contains("  1.10x"),
            "{calm}"
        );
        assert!(!calm.contains("note:"), "{calm}");
        // Per round: 100/100 and 120/110.
        assert!(calm.contains("1.05x 2/2"), "{calm}");
        assert!(calm.contains("per round: each repetition"), "{calm}");
        let bimodal = table(&report(vec![rep(80.0, 1.0), rep(200.0, 1.0)]));
        assert!(bimodal.contains("  2.50x"), "{bimodal}");
        assert!(
            bimodal.contains("note: in 64-tasks-pool-8, repetitions of one pool differ"),
            "{bimodal}"
        );
    }

    #[test]
    fn json_has_the_stable_keys_and_replaces_the_file_atomically() {
        let dir = std::env::temp_dir().join(format!("qp-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.json");
        std::fs::write(&path, "old").unwrap();
        let report = Report {
            code: crate::code::CODE,
            scenarios: rows(Scenario::Single, &[(PoolKind::Bb8, vec![rep(10.0, 1.5)])]),
            reps: 1,
            secs: 2.0,
            warmup_secs: 0.5,
            available_parallelism: 2,
            single_task_sample_every: 64,
        };
        write_json(&report, &path).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let row = &v["scenarios"][0];
        assert_eq!(row["name"], "1-task");
        assert_eq!(row["pool"], "bb8");
        assert_eq!(row["ops_per_sec"], 10.0);
        assert_eq!(row["p99_wait_us"], 1.5);
        // Only the target remains: the temporary file was renamed over it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
