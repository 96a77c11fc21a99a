//! `queuepool bench`: pooled against unpooled (a new connection per query), at several
//! concurrencies, optionally next to `pgbench` on the same query.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use queuepool::{Pool, ResetOnReturn};
use serde::Serialize;

use crate::args::{PoolArgs, build, parse_duration, parse_list, redact_url};
use crate::error::ToolsError;
use crate::pgbench::{self, PgbenchResult};
use crate::plot::{self, Series};
use crate::progress::Progress;
use crate::table::{Table, millis, thousands};
use crate::target::{Kind, Protocol, Query, Target};
use crate::workload::{self, RunResult};

/// Options of `queuepool bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Database to load: postgres://, mysql:// or sqlite:// URL
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,
    /// Concurrent clients, comma-separated; one run per value and mode
    #[arg(long, value_name = "LIST", default_value = "1,8,32")]
    pub concurrency: String,
    /// The statement each client runs in a loop
    #[arg(long, value_name = "SQL", default_value = "SELECT 1")]
    pub query: String,
    /// Length of each run, in seconds or with a unit (500ms, 10s)
    #[arg(long, value_name = "SECONDS", default_value = "5")]
    pub duration: String,
    /// PostgreSQL protocol: simple, extended or prepared (pgbench's -M)
    #[arg(long, value_name = "MODE", default_value = "prepared")]
    pub protocol: String,
    /// What the pool does with a returned connection: rollback (the default, a round
    /// trip when the connection was used) or none (as pgbench, which never resets)
    #[arg(long, value_name = "MODE", default_value = "rollback")]
    pub reset_on_return: String,
    /// Pool sizes [default: pool_size = concurrency, max_overflow 0]
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Skip the unpooled runs
    #[arg(long)]
    pub no_unpooled: bool,
    /// Also run "direct": one connection per client held for the whole run, no pool
    /// (what pgbench does), to tell the pool's cost from the driver's
    #[arg(long)]
    pub direct: bool,
    /// Also run pgbench (PostgreSQL) with the same connections and query
    #[arg(long)]
    pub compare_pgbench: bool,
    /// Write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw throughput and p99 against concurrency to FILE.svg
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Runs of each cell, interleaved (pooled, unpooled, pgbench, then again); the
    /// table shows the median run, so that a noisy machine affects every mode alike
    #[arg(long, value_name = "N", default_value = "1")]
    pub repeat: String,
    /// Worker threads of the client runtime; pgbench gets as many (-j) [default: 1 with
    /// --compare-pgbench, pgbench's own default; else the number of CPUs]
    #[arg(long, value_name = "N")]
    pub client_threads: Option<String>,
    /// Compare pool sizes instead of pooled/unpooled: whole numbers and `auto` (between
    /// 2 and the largest size) or `auto:FLOOR..CEILING`, like 2,4,8,16,32,64,auto;
    /// PostgreSQL only. Each size runs every --workload for --duration
    #[arg(long, value_name = "LIST")]
    pub sizes: Option<String>,
    /// With --sizes: cpu (an aggregate over generate_series), latency (SELECT 1
    /// through a proxy adding 5 ms each way), hot-row (every client updates one row),
    /// switch (cpu, then latency from half-time), several comma-separated, or all;
    /// --plot F.svg then writes F-<workload>.svg for each [default: all]
    #[arg(long, value_name = "W", requires = "sizes")]
    pub workload: Option<String>,
    /// With --sizes: concurrent clients, each running one query after another
    /// [default: the largest size, at least 64]
    #[arg(long, value_name = "N", requires = "sizes")]
    pub clients: Option<String>,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// `--client-threads`; else, next to pgbench, pgbench's own default (`-j 1`), so
    /// that the comparison is with pgbench as its users run it and both clients leave
    /// the same cores to a server on the same machine; else the number of CPUs.
    pub fn threads(&self) -> Result<u32, ToolsError> {
        match &self.client_threads {
            Some(raw) => crate::args::parse_positive("--client-threads", raw),
            None if self.compare_pgbench => Ok(1),
            None => Ok(client_threads()),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `pooled`, `unpooled` or `pgbench`.
    pub mode: &'static str,
    /// Concurrent clients.
    pub concurrency: u32,
    /// Successful queries.
    pub queries: u64,
    /// Failed queries.
    pub errors: u64,
    /// Queries per second.
    pub qps: f64,
    /// Median latency, ms (pgbench: its mean).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// Largest latency, ms.
    pub max_ms: Option<f64>,
    /// Connections opened.
    pub connections_opened: Option<u64>,
    /// The first error, if any.
    pub first_error: Option<String>,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The backend.
    pub backend: Kind,
    /// The database URL without its password.
    pub database: String,
    /// The query.
    pub query: String,
    /// PostgreSQL protocol used by the pooled and unpooled runs, and by pgbench.
    pub protocol: Protocol,
    /// `rollback` or `none`.
    pub reset_on_return: String,
    /// Seconds per run.
    pub duration_s: f64,
    /// Worker threads of the client runtime (pgbench gets as many threads).
    pub client_threads: u32,
    /// Runs per cell.
    pub repeat: u32,
    /// The median run of each cell (mode and concurrency), by throughput.
    pub rows: Vec<BenchRow>,
    /// Every run, in the order they ran.
    pub runs: Vec<BenchRow>,
    /// pgbench's command line, if it ran.
    pub pgbench_command: Option<String>,
}

impl BenchReport {
    fn find(&self, mode: &str, concurrency: u32) -> Option<&BenchRow> {
        self.rows
            .iter()
            .find(|r| r.mode == mode && r.concurrency == concurrency)
    }

    /// Throughput of mode `a` over mode `b` at `concurrency`.
    pub fn ratio(&self, a: &str, b: &str, concurrency: u32) -> Option<f64> {
        let x = self.find(a, concurrency)?.qps;
        let y = self.find(b, concurrency)?.qps;
        (y > 0.0).then(|| x / y)
    }

    /// pooled / unpooled throughput at `concurrency`.
    pub fn speedup(&self, concurrency: u32) -> Option<f64> {
        let p = self.find("pooled", concurrency)?.qps;
        let u = self.find("unpooled", concurrency)?.qps;
        (u > 0.0).then(|| p / u)
    }

    /// pooled / pgbench throughput at `concurrency`.
    pub fn vs_pgbench(&self, concurrency: u32) -> Option<f64> {
        let p = self.find("pooled", concurrency)?.qps;
        let g = self.find("pgbench", concurrency)?.qps;
        (g > 0.0).then(|| p / g)
    }

    /// The tables printed on the terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "queuepool bench: {} ({}), query {:?}, {:.1} s per run, {} client thread{}{}\n\
             pooled: reset_on_return {}; unpooled: a new connection per query\n\n",
            self.database,
            self.backend,
            self.query,
            self.duration_s,
            self.client_threads,
            if self.client_threads == 1 { "" } else { "s" },
            if self.backend == Kind::Postgres {
                format!(", protocol {}", self.protocol.name())
            } else {
                String::new()
            },
            self.reset_on_return,
        );
        let mut table = Table::new(&[
            "concurrency",
            "mode",
            "queries/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "conns opened",
            "errors",
        ]);
        let opt = |v: Option<f64>| v.map(millis).unwrap_or_else(|| "-".into());
        for r in &self.rows {
            table.row(vec![
                r.concurrency.to_string(),
                r.mode.to_owned(),
                thousands(r.qps),
                opt(r.p50_ms),
                opt(r.p99_ms),
                opt(r.max_ms),
                r.connections_opened
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.errors.to_string(),
            ]);
        }
        out.push_str(&table.render());
        let mut levels: Vec<u32> = self.rows.iter().map(|r| r.concurrency).collect();
        levels.dedup();
        // Only the ratios whose two modes ran.
        let pairs: Vec<(&str, &str, &str, bool)> = [
            ("pooled / unpooled", "pooled", "unpooled", false),
            ("pooled / pgbench", "pooled", "pgbench", true),
            ("pooled / direct", "pooled", "direct", true),
        ]
        .into_iter()
        .filter(|(_, a, b, _)| levels.iter().any(|&c| self.ratio(a, b, c).is_some()))
        .collect();
        if !pairs.is_empty() {
            let mut header = vec!["concurrency"];
            header.extend(pairs.iter().map(|p| p.0));
            let mut ratios = Table::new(&header);
            for &c in &levels {
                let mut cells = vec![c.to_string()];
                for (_, a, b, percent) in &pairs {
                    cells.push(match self.ratio(a, b, c) {
                        Some(v) if *percent => format!("{:.1}%", v * 100.0),
                        Some(v) => format!("{v:.1}x"),
                        None => "-".into(),
                    });
                }
                ratios.row(cells);
            }
            out.push('\n');
            out.push_str(&ratios.render());
        }
        if self.repeat > 1 {
            out.push_str(&format!(
                "\nmedian of {} interleaved runs per cell; each run's queries/s:\n",
                self.repeat
            ));
            for row in &self.rows {
                let all: Vec<String> = self
                    .runs
                    .iter()
                    .filter(|r| r.mode == row.mode && r.concurrency == row.concurrency)
                    .map(|r| thousands(r.qps))
                    .collect();
                out.push_str(&format!(
                    "  c={} {}: {}\n",
                    row.concurrency,
                    row.mode,
                    all.join(", ")
                ));
            }
        }
        if let Some(cmd) = &self.pgbench_command {
            out.push_str(&format!(
                "\npgbench (p50 column: its mean latency): {cmd}\n"
            ));
        }
        for r in &self.rows {
            if let Some(e) = &r.first_error {
                out.push_str(&format!(
                    "errors in {} c={}: {} (first: {e})\n",
                    r.mode, r.concurrency, r.errors
                ));
            }
        }
        out
    }
}

fn row(mode: &'static str, concurrency: u32, r: &RunResult) -> BenchRow {
    BenchRow {
        mode,
        concurrency,
        queries: r.queries,
        errors: r.errors,
        qps: r.qps(),
        p50_ms: Some(r.latency_ms(0.5)),
        p99_ms: Some(r.latency_ms(0.99)),
        max_ms: Some(r.max_ms()),
        connections_opened: Some(r.connections_opened),
        first_error: r.first_error.clone(),
    }
}

/// For each concurrency and mode, the run with the median throughput.
fn medians(runs: &[BenchRow], levels: &[u32]) -> Vec<BenchRow> {
    let mut out = Vec::new();
    for &c in levels {
        for mode in ["pooled", "unpooled", "direct", "pgbench"] {
            let mut cell: Vec<&BenchRow> = runs
                .iter()
                .filter(|r| r.mode == mode && r.concurrency == c)
                .collect();
            cell.sort_by(|a, b| a.qps.total_cmp(&b.qps));
            if let Some(median) = cell.get(cell.len() / 2) {
                out.push((*median).clone());
            }
        }
    }
    out
}

/// Threads of the runtime the binary builds for the tools.
pub fn client_threads() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
}

/// Parsed options.
struct Plan {
    repeat: u32,
    levels: Vec<u32>,
    duration: Duration,
    query: Query,
    reset: ResetOnReturn,
    pgbench: Option<PathBuf>,
}

fn plan(args: &BenchArgs, kind: Kind) -> Result<Plan, ToolsError> {
    let levels = parse_list("--concurrency", &args.concurrency, 1000)?;
    let duration = parse_duration("--duration", &args.duration)?;
    let protocol = Protocol::parse(&args.protocol)?;
    let reset = match args.reset_on_return.trim() {
        "rollback" => ResetOnReturn::Rollback,
        "none" => ResetOnReturn::None,
        other => {
            return Err(ToolsError::arg(
                "--reset-on-return",
                format!("invalid value {other:?}: expected rollback or none"),
            ));
        }
    };
    if args.query.trim().is_empty() {
        return Err(ToolsError::arg("--query", "empty query"));
    }
    // Validate the pool flags now, even though sizes default per concurrency.
    build(args.pool.builder()?)?;
    let pgbench = if args.compare_pgbench {
        if kind != Kind::Postgres {
            return Err(ToolsError::arg(
                "--compare-pgbench",
                "pgbench only runs against PostgreSQL",
            ));
        }
        Some(pgbench::find().ok_or_else(|| {
            ToolsError::arg(
                "--compare-pgbench",
                "pgbench not found on PATH or under /usr/lib/postgresql/*/bin",
            )
        })?)
    } else {
        None
    };
    Ok(Plan {
        repeat: crate::args::parse_positive("--repeat", &args.repeat)?,
        levels,
        duration,
        query: Query {
            sql: Arc::from(args.query.trim()),
            protocol,
        },
        reset,
        pgbench,
    })
}

/// Runs the benchmark, writes `--json` and `--plot`, and returns the report.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, ToolsError> {
    let kind = Kind::from_url(&args.database_url)?;
    match kind {
        Kind::Postgres => run_with::<queuepool_postgres::PgManager>(args).await,
        Kind::MySql => run_with::<queuepool_mysql::MySqlManager>(args).await,
        Kind::Sqlite => run_with::<queuepool_sqlite::SqliteManager>(args).await,
    }
}

async fn run_with<T: Target>(args: &BenchArgs) -> Result<BenchReport, ToolsError> {
    let plan = plan(args, T::KIND)?;
    let tag = format!("queuepool_bench_{:08x}", rand::random::<u32>());
    let unpooled_manager = Arc::new(T::open(&args.database_url, &tag)?);
    workload::check_query(&*unpooled_manager, &plan.query).await?;

    let modes = 1
        + u64::from(!args.no_unpooled)
        + u64::from(args.direct)
        + u64::from(plan.pgbench.is_some());
    let total_ms = u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX)
        * plan.levels.len() as u64
        * modes
        * u64::from(plan.repeat);
    let progress = Progress::timed(total_ms, args.quiet);
    let threads = args.threads()?;
    let mut rows = Vec::new();
    let mut pgbench_command = None;
    for rep in 0..plan.repeat {
        for &c in &plan.levels {
            let label = if plan.repeat > 1 {
                format!("pooled c={c} run {}/{}", rep + 1, plan.repeat)
            } else {
                format!("pooled c={c}")
            };
            progress.step(format!(
                "bench: {label} for {:.1} s",
                plan.duration.as_secs_f64()
            ));
            let mut builder = args.pool.builder()?.pool_timeout(Duration::from_secs(30));
            builder = builder.name("bench").reset_on_return(plan.reset);
            if args.pool.pool_size()?.is_none() {
                // `--pool-size auto` keeps its own bounds; without it, one per client.
                builder = builder.pool_size(c);
            }
            if args.pool.max_overflow()?.is_none() {
                builder = builder.max_overflow(0);
            }
            let config = build(builder)?;
            let pool = Pool::new(T::open(&args.database_url, &tag)?, config)
                .await
                .map_err(|e| ToolsError::pool("could not start the pool", e))?;
            let r = workload::pooled(
                &pool,
                &plan.query,
                c as usize,
                plan.duration,
                &progress,
                &label,
            )
            .await;
            pool.close(Duration::from_secs(5)).await;
            progress.println(format!("{label}: {} queries/s", thousands(r.qps())));
            rows.push(row("pooled", c, &r));

            if !args.no_unpooled {
                let label = label.replacen("pooled", "unpooled", 1);
                progress.step(format!(
                    "bench: {label} for {:.1} s",
                    plan.duration.as_secs_f64()
                ));
                let r = workload::unpooled(
                    unpooled_manager.clone(),
                    &plan.query,
                    c as usize,
                    plan.duration,
                    &progress,
                    &label,
                )
                .await;
                progress.println(format!("{label}: {} queries/s", thousands(r.qps())));
                rows.push(row("unpooled", c, &r));
            }

            if args.direct {
                let label = label.replacen("pooled", "direct", 1);
                progress.step(format!(
                    "bench: {label} for {:.1} s",
                    plan.duration.as_secs_f64()
                ));
                let r = workload::direct(
                    unpooled_manager.clone(),
                    &plan.query,
                    c as usize,
                    plan.duration,
                    &progress,
                    &label,
                )
                .await;
                progress.println(format!("{label}: {} queries/s", thousands(r.qps())));
                rows.push(row("direct", c, &r));
            }

            if let Some(binary) = &plan.pgbench {
                progress.step(format!(
                    "bench: pgbench c={c} for {:.0} s",
                    plan.duration.as_secs_f64().ceil()
                ));
                let g: PgbenchResult = pgbench::run(
                    binary,
                    &args.database_url,
                    &plan.query.sql,
                    plan.query.protocol,
                    c,
                    threads,
                    plan.duration,
                )
                .await?;
                progress.advance(u64::try_from(plan.duration.as_millis()).unwrap_or(0));
                progress.println(format!("pgbench c={c}: {} tps", thousands(g.tps)));
                rows.push(BenchRow {
                    mode: "pgbench",
                    concurrency: c,
                    queries: (g.tps * plan.duration.as_secs_f64()).round() as u64,
                    errors: 0,
                    qps: g.tps,
                    p50_ms: g.latency_avg_ms,
                    p99_ms: None,
                    max_ms: None,
                    connections_opened: Some(u64::from(c)),
                    first_error: None,
                });
                pgbench_command = Some(g.command);
            }
        }
    }
    progress.finish();
    let runs = rows;
    let rows = medians(&runs, &plan.levels);
    let report = BenchReport {
        backend: T::KIND,
        database: redact_url(&args.database_url),
        query: plan.query.sql.to_string(),
        protocol: plan.query.protocol,
        reset_on_return: args.reset_on_return.trim().to_owned(),
        duration_s: plan.duration.as_secs_f64(),
        client_threads: threads,
        repeat: plan.repeat,
        rows,
        runs,
        pgbench_command,
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&report).map_err(ToolsError::Json)?;
        crate::write_atomic(path, &text)?;
    }
    if let Some(path) = &args.plot {
        let series = |mode: &str, pick: &dyn Fn(&BenchRow) -> Option<f64>| Series {
            label: mode.to_owned(),
            points: report
                .rows
                .iter()
                .filter(|r| r.mode == mode)
                .filter_map(|r| pick(r).map(|v| (f64::from(r.concurrency), v)))
                .collect(),
        };
        let modes = ["pooled", "unpooled", "direct", "pgbench"];
        let throughput: Vec<Series> = modes
            .iter()
            .map(|m| series(m, &|r| Some(r.qps)))
            .filter(|s| !s.points.is_empty())
            .collect();
        let p99: Vec<Series> = modes
            .iter()
            .map(|m| series(m, &|r| r.p99_ms))
            .filter(|s| !s.points.is_empty())
            .collect();
        let title = format!("queuepool bench: {} on {}", report.query, report.backend);
        plot::write_svg(path, &title, &throughput, &p99)?;
    }
    Ok(report)
}
