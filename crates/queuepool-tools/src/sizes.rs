//! `queuepool bench --sizes 2,4,8,auto --workload W`: fixed pool sizes against
//! `pool_size = auto` on workloads whose best size differs, against PostgreSQL. The
//! command sets up what a workload needs (the fault proxy adding latency, the hot-row
//! table) and removes it afterwards.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use queuepool::{Pool, PooledConn};
use queuepool_postgres::PgManager;
use queuepool_testkit::{FaultMode, FaultProxy};
use serde::Serialize;

use crate::args::{build, parse_duration, redact_url};
use crate::bench::BenchArgs;
use crate::error::ToolsError;
use crate::plot::{self, Series};
use crate::progress::Progress;
use crate::table::{Table, millis, thousands};
use crate::target::{Protocol, Query, Target};

/// Latency the proxy adds in each direction in the `latency` and `switch` workloads.
pub const PROXY_DELAY: Duration = Duration::from_millis(5);

/// The CPU-bound query: an aggregate over a series, a few ms on a small server.
pub const CPU_QUERY: &str = "SELECT sum(i) FROM generate_series(1, 20000) AS s(i)";

/// Default floor of `auto` in this command (the ceiling defaults to the largest fixed size).
const AUTO_FLOOR: u32 = 2;

/// One pool size to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// A fixed pool: `pool_size = n`, no overflow.
    Fixed(u32),
    /// `pool_size = auto` between a floor and a ceiling.
    Auto {
        /// Lowest limit.
        floor: u32,
        /// Highest limit.
        ceiling: u32,
    },
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Fixed(n) => write!(f, "{n}"),
            Size::Auto { .. } => f.write_str("auto"),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Size::Fixed(n) => s.serialize_u32(*n),
            Size::Auto { .. } => s.serialize_str("auto"),
        }
    }
}

/// Parses `--sizes`: whole numbers and `auto` or `auto:FLOOR..CEILING`, comma-separated.
/// `auto` alone runs between 2 and the largest fixed size (64 if there is none).
pub fn parse_sizes(raw: &str) -> Result<Vec<Size>, ToolsError> {
    let bad = |why: &str| {
        ToolsError::arg(
            "--sizes",
            format!(
                "{why} in {raw:?}: expected sizes from 1 to 1000 and auto or auto:FLOOR..CEILING, like 2,4,8,auto"
            ),
        )
    };
    let mut fixed = Vec::new();
    let mut auto: Vec<Option<(u32, u32)>> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.eq_ignore_ascii_case("auto") {
            auto.push(None);
        } else if let Some(range) = part.strip_prefix("auto:") {
            let (lo, hi) = queuepool::autosize::parse_bounds(range)
                .ok_or_else(|| bad(&format!("invalid bounds {range:?}")))?;
            auto.push(Some((lo, hi)));
        } else {
            match part.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => fixed.push(n),
                _ => return Err(bad(&format!("invalid size {part:?}"))),
            }
        }
    }
    if fixed.is_empty() && auto.is_empty() {
        return Err(bad("no size"));
    }
    let largest = fixed.iter().copied().max().unwrap_or(64).max(AUTO_FLOOR);
    let mut out: Vec<Size> = fixed.into_iter().map(Size::Fixed).collect();
    out.extend(auto.into_iter().map(|b| {
        let (floor, ceiling) = b.unwrap_or((AUTO_FLOOR, largest));
        Size::Auto { floor, ceiling }
    }));
    Ok(out)
}

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// [`CPU_QUERY`] straight to the server: the server's cores are the limit.
    Cpu,
    /// `SELECT 1` through the fault proxy adding [`PROXY_DELAY`] each way: the round
    /// trip is the limit (Little's law: more connections help).
    Latency,
    /// Every client increments the same row and sleeps 1 ms before its commit: the row
    /// lock is the limit.
    HotRow,
    /// `cpu` for the first half, `latency` for the second.
    Switch,
}

impl Workload {
    /// Every workload, in the order `all` runs them.
    pub const ALL: [Workload; 4] = [
        Workload::Cpu,
        Workload::Latency,
        Workload::HotRow,
        Workload::Switch,
    ];

    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Cpu => "cpu",
            Workload::Latency => "latency",
            Workload::HotRow => "hot-row",
            Workload::Switch => "switch",
        }
    }
}

/// Parses `--workload`: a name, several comma-separated, or `all`.
pub fn parse_workloads(raw: &str) -> Result<Vec<Workload>, ToolsError> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.eq_ignore_ascii_case("all") {
            return Ok(Workload::ALL.to_vec());
        }
        match Workload::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(part))
        {
            Some(w) if !out.contains(&w) => out.push(w),
            Some(_) => {}
            None => {
                return Err(ToolsError::arg(
                    "--workload",
                    format!(
                        "unknown workload {part:?}: expected cpu, latency, hot-row, switch or all"
                    ),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(ToolsError::arg("--workload", "no workload given"));
    }
    Ok(out)
}

/// One measured run (the median of `--repeat` runs, by throughput).
#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    /// The workload.
    pub name: &'static str,
    /// The pool size, or `"auto"`.
    pub size: Size,
    /// Queries per second over the whole run.
    pub ops_per_sec: f64,
    /// 99th percentile latency (asking for a connection to reading the result), ms.
    pub p99_ms: f64,
    /// The limit at the end of the run (a fixed size's is its size).
    pub limit_final: u32,
    /// Failed queries.
    pub errors: u64,
    /// `switch` with `auto`: seconds from the switch until the limit stayed within
    /// ±20 % of where it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle_s: Option<f64>,
    /// `(seconds since the start, limit)` every 250 ms (`auto` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limit_timeline: Vec<(f64, u32)>,
    /// The controller's moves as the 250 ms sampler saw them (`auto` only): the last
    /// move before each sample that followed one or more.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limit_changes: Vec<TracedChange>,
    /// Queries per second in each second of the run.
    pub per_second: Vec<f64>,
    /// Queries per second of each repetition, in the order they ran.
    pub runs_ops_per_sec: Vec<f64>,
}

/// One move of the limit, as `stats().auto_size` reported it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TracedChange {
    /// Seconds since the start of the run, when the sampler saw it.
    pub t: f64,
    /// Moves since the previous sample (only the last is described).
    pub moves: u64,
    /// The limit before and after the last move.
    pub from: usize,
    /// The limit after it.
    pub to: usize,
    /// `headroom` or `queueing`.
    pub reason: &'static str,
    /// Mean held time of the window that decided, ms.
    pub held_ms: f64,
    /// The baseline it was compared with, ms.
    pub baseline_ms: f64,
    /// Mean connections in use in that window.
    pub in_use: f64,
}

impl TracedChange {
    /// The last move, if the controller made any since `seen` of its `changes`.
    fn traced(
        t: f64,
        seen: &mut u64,
        changes: u64,
        last: Option<queuepool::autosize::LimitChange>,
    ) -> Option<Self> {
        let moves = changes.checked_sub(*seen).filter(|n| *n > 0)?;
        *seen = changes;
        let c = last?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Some(TracedChange {
            t,
            moves,
            from: c.from,
            to: c.to,
            reason: c.reason.name(),
            held_ms: ms(c.held),
            baseline_ms: ms(c.baseline),
            in_use: c.in_use,
        })
    }
}

/// The report: `{"workloads": [...]}` plus how it was measured.
#[derive(Debug, Clone, Serialize)]
pub struct SizesReport {
    /// The database URL without its password.
    pub database: String,
    /// Concurrent clients (each runs one query after another).
    pub clients: u32,
    /// Seconds per run.
    pub duration_s: f64,
    /// Runs per cell.
    pub repeat: u32,
    /// One row per workload and size.
    pub workloads: Vec<SizeRow>,
}

impl SizesReport {
    /// The row of the fixed size with the best throughput in `workload`.
    pub fn best_fixed(&self, workload: &str) -> Option<&SizeRow> {
        self.workloads
            .iter()
            .filter(|r| r.name == workload && matches!(r.size, Size::Fixed(_)))
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
    }

    /// The tables printed on the terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "queuepool bench --sizes: {}, {} clients, {:.0} s per run, median of {}\n\
             cpu: {CPU_QUERY}; latency: SELECT 1 through a proxy adding {} ms each way;\n\
             hot-row: every client updates one row and sleeps 1 ms holding its lock; switch: cpu, then latency from half-time\n\n",
            self.database,
            self.clients,
            self.duration_s,
            self.repeat,
            PROXY_DELAY.as_millis(),
        );
        let mut table = Table::new(&[
            "workload",
            "size",
            "queries/s",
            "p99 ms",
            "limit at end",
            "vs best fixed",
            "errors",
        ]);
        for r in &self.workloads {
            let versus = match (r.size, self.best_fixed(r.name)) {
                (Size::Auto { .. }, Some(best)) if best.ops_per_sec > 0.0 => format!(
                    "{:.0}% qps, {:.2}x p99 (size {})",
                    100.0 * r.ops_per_sec / best.ops_per_sec,
                    r.p99_ms / best.p99_ms.max(1e-9),
                    best.size
                ),
                _ => String::new(),
            };
            table.row(vec![
                r.name.to_owned(),
                r.size.to_string(),
                thousands(r.ops_per_sec),
                millis(r.p99_ms),
                r.limit_final.to_string(),
                versus,
                r.errors.to_string(),
            ]);
        }
        out.push_str(&table.render());
        for r in &self.workloads {
            if let Some(s) = r.settle_s {
                out.push_str(&format!(
                    "\n{} auto: the limit settled {s:.1} s after the switch",
                    r.name
                ));
            }
        }
        out.push('\n');
        out
    }
}

/// What one run measured.
struct Measured {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latency: Histogram<u64>,
    limit_final: u32,
    timeline: Vec<(f64, u32)>,
    changes: Vec<TracedChange>,
    per_second: Vec<f64>,
}

/// Everything a workload runs against: the URLs, and the proxy when it needs one.
struct Setup {
    direct_url: String,
    proxy_url: Option<String>,
    proxy: Option<FaultProxy>,
    hot_table: Option<String>,
}

/// The `host:port` of a `postgres://` URL, and the URL with them replaced.
fn through(url: &str, addr: SocketAddr) -> Result<(SocketAddr, String), ToolsError> {
    let bad = |why: &str| ToolsError::arg("--database-url", why.to_owned());
    let mut parsed = url::Url::parse(url).map_err(|_| {
        bad("the latency and switch workloads need a postgres:// URL (not key=value) to route it through the proxy")
    })?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("the URL names no host: the proxy needs a TCP address"))?
        .to_owned();
    let port = parsed.port().unwrap_or(5432);
    let target = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|_| bad("cannot resolve the URL's host"))?
        .next()
        .ok_or_else(|| bad("the URL's host has no address"))?;
    parsed
        .set_host(Some(&addr.ip().to_string()))
        .map_err(|_| bad("cannot rewrite the URL's host"))?;
    parsed
        .set_port(Some(addr.port()))
        .map_err(|_| bad("cannot rewrite the URL's port"))?;
    Ok((target, parsed.to_string()))
}

async fn simple(manager: &PgManager, sql: &str) -> Result<(), ToolsError> {
    let query = Query {
        sql: Arc::from(sql),
        protocol: Protocol::Simple,
    };
    crate::workload::check_query(manager, &query).await
}

impl Setup {
    async fn new(url: &str, workloads: &[Workload], tag: &str) -> Result<Setup, ToolsError> {
        let mut setup = Setup {
            direct_url: url.to_owned(),
            proxy_url: None,
            proxy: None,
            hot_table: None,
        };
        if workloads
            .iter()
            .any(|w| matches!(w, Workload::Latency | Workload::Switch))
        {
            // Resolve the server first, then put the proxy in front of it.
            let (target, _) = through(url, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let proxy = FaultProxy::start(target)
                .await
                .map_err(|e| ToolsError::Db {
                    context: "cannot start the latency proxy".into(),
                    source: Box::new(e),
                })?;
            let (_, proxied) = through(url, proxy.addr())?;
            setup.proxy_url = Some(proxied);
            setup.proxy = Some(proxy);
        }
        if workloads.contains(&Workload::HotRow) {
            let table = format!("{tag}_hot");
            let manager = PgManager::open(url, tag)?;
            simple(
                &manager,
                &format!("CREATE TABLE {table} (id int PRIMARY KEY, n bigint NOT NULL)"),
            )
            .await?;
            setup.hot_table = Some(table.clone());
            simple(&manager, &format!("INSERT INTO {table} VALUES (1, 0)")).await?;
        }
        Ok(setup)
    }

    /// Drops the hot-row table (the proxy stops when dropped).
    async fn teardown(&self, tag: &str) {
        if let Some(table) = &self.hot_table {
            let dropped = match PgManager::open(&self.direct_url, tag) {
                Ok(m) => simple(&m, &format!("DROP TABLE IF EXISTS {table}")).await,
                Err(e) => Err(e),
            };
            if let Err(e) = dropped {
                tracing::warn!(table, error = %e, "could not drop the bench table");
            }
        }
    }

    fn set_delay(&self, on: bool) {
        if let Some(p) = &self.proxy {
            p.set_mode(if on {
                FaultMode::Latency(PROXY_DELAY)
            } else {
                FaultMode::PassThrough
            });
        }
    }

    /// The URL a workload's pool connects to, and its query (before and after the
    /// switch, for `switch`).
    fn plan(&self, w: Workload) -> (String, Query, Query) {
        let q = |sql: &str| Query {
            sql: Arc::from(sql),
            protocol: Protocol::Prepared,
        };
        let proxied = self.proxy_url.clone().unwrap_or_default();
        match w {
            Workload::Cpu => (self.direct_url.clone(), q(CPU_QUERY), q(CPU_QUERY)),
            Workload::Latency => (proxied, q("SELECT 1"), q("SELECT 1")),
            Workload::HotRow => {
                // The row lock is held for the update and a 1 ms sleep, until commit:
                // a transaction that works while holding a hot row.
                let sql = format!(
                    "WITH u AS (UPDATE {} SET n = n + 1 WHERE id = 1 RETURNING n) \
                     SELECT n FROM u, pg_sleep(0.001)",
                    self.hot_table.as_deref().unwrap_or_default()
                );
                (self.direct_url.clone(), q(&sql), q(&sql))
            }
            Workload::Switch => (proxied, q(CPU_QUERY), q("SELECT 1")),
        }
    }
}

/// Runs one workload at one size: `clients` tasks, one query after another, for
/// `duration`; for `switch`, the proxy's delay and the query change at half-time.
async fn measure(
    setup: &Setup,
    w: Workload,
    size: Size,
    clients: u32,
    duration: Duration,
    tag: &str,
    progress: &Progress,
) -> Result<Measured, ToolsError> {
    let (url, before, after) = setup.plan(w);
    setup.set_delay(w == Workload::Latency);
    let builder = queuepool::PoolConfig::builder()
        .name("bench")
        .pool_timeout(Duration::from_secs(30))
        .max_overflow(0);
    let builder = match size {
        Size::Fixed(n) => builder.pool_size(n),
        Size::Auto { floor, ceiling } => builder.pool_size(floor).auto_size(floor, ceiling),
    };
    let config = build(builder)?;
    let pool = Pool::new(PgManager::open(&url, tag)?, config)
        .await
        .map_err(|e| ToolsError::pool("could not start the pool", e))?;

    let started = Instant::now();
    let end = started + duration;
    let half = started + duration / 2;
    let switched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let pool = pool.clone();
        let (before, after) = (before.clone(), after.clone());
        let switched = switched.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            while Instant::now() < end {
                let query = if switched.load(Relaxed) {
                    &after
                } else {
                    &before
                };
                let t0 = Instant::now();
                let mut conn = match pool.get().await {
                    Ok(c) => c,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| crate::error::chain(&e));
                        continue;
                    }
                };
                match PgManager::run(&mut conn, query).await {
                    Ok(()) => {
                        ops += 1;
                        done.fetch_add(1, Relaxed);
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = latency.record(us.max(1));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| crate::error::chain(&e));
                        PooledConn::report_error(&mut conn, &e);
                    }
                }
            }
            (ops, errors, first_error, latency)
        }));
    }
    // The sampler: the limit every 250 ms, completions every second, the switch.
    let mut timeline = Vec::new();
    let mut changes = Vec::new();
    let mut seen_changes = 0;
    let mut per_second = Vec::new();
    let mut last_count = 0;
    let mut next_second = started + Duration::from_secs(1);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = Instant::now();
        if w == Workload::Switch && now >= half && !switched.swap(true, Relaxed) {
            setup.set_delay(true);
        }
        if matches!(size, Size::Auto { .. }) {
            let t = now.duration_since(started).as_secs_f64();
            timeline.push((t, pool.status().limit as u32));
            if let Some(a) = pool.stats().auto_size {
                changes.extend(TracedChange::traced(
                    t,
                    &mut seen_changes,
                    a.changes,
                    a.last_change,
                ));
            }
        }
        if now >= next_second {
            let count = done.load(Relaxed);
            per_second.push((count - last_count) as f64);
            last_count = count;
            next_second += Duration::from_secs(1);
        }
        progress.advance(250);
        if now >= end {
            break;
        }
    }
    let mut m = Measured {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency: histogram(),
        limit_final: pool.status().limit as u32,
        timeline,
        changes,
        per_second,
    };
    for t in tasks {
        let (ops, errors, first, latency) = t.await.map_err(|e| ToolsError::Db {
            context: "a bench client failed".into(),
            source: Box::new(e),
        })?;
        m.ops += ops;
        m.errors += errors;
        if m.first_error.is_none() {
            m.first_error = first;
        }
        let _ = m.latency.add(&latency);
    }
    m.elapsed = started.elapsed();
    pool.close(Duration::from_secs(5)).await;
    setup.set_delay(false);
    Ok(m)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("proven invariant: 1 µs to 1 h at 3 significant digits are valid bounds")
}

/// Seconds from `switch_at` until the limit stayed within ±20 % of its final value
/// (the median of the last quarter of the run).
pub fn settle_time(timeline: &[(f64, u32)], switch_at: f64) -> Option<f64> {
    let after: Vec<&(f64, u32)> = timeline.iter().filter(|(t, _)| *t >= switch_at).collect();
    if after.len() < 4 {
        return None;
    }
    let mut tail: Vec<u32> = after[after.len() * 3 / 4..].iter().map(|p| p.1).collect();
    tail.sort_unstable();
    let target = f64::from(tail[tail.len() / 2]);
    let inside = |v: u32| (f64::from(v) - target).abs() <= 0.2 * target;
    // The last sample outside the band; settled right after it.
    let last_out = after.iter().rposition(|p| !inside(p.1));
    Some(match last_out {
        None => 0.0,
        Some(i) if i + 1 < after.len() => after[i + 1].0 - switch_at,
        Some(_) => return None,
    })
}

/// Runs `--sizes` × `--workload`, writes `--json` and the plots, returns the report.
pub async fn run(args: &BenchArgs, sizes_raw: &str) -> Result<SizesReport, ToolsError> {
    if crate::target::Kind::from_url(&args.database_url)? != crate::target::Kind::Postgres {
        return Err(ToolsError::arg(
            "--sizes",
            "runs against PostgreSQL only (its workloads use generate_series, a proxy and a table)",
        ));
    }
    let sizes = parse_sizes(sizes_raw)?;
    let workloads = parse_workloads(args.workload.as_deref().unwrap_or("all"))?;
    let duration = parse_duration("--duration", &args.duration)?;
    let repeat = crate::args::parse_positive("--repeat", &args.repeat)?;
    let largest = sizes
        .iter()
        .map(|s| match s {
            Size::Fixed(n) => *n,
            Size::Auto { ceiling, .. } => *ceiling,
        })
        .max()
        .unwrap_or(64);
    let clients = match &args.clients {
        Some(raw) => crate::args::parse_positive("--clients", raw)?,
        None => largest.max(64),
    };
    let tag = format!("queuepool_bench_{:08x}", rand::random::<u32>());
    let setup = Setup::new(&args.database_url, &workloads, &tag).await?;
    let result = run_all(
        &setup, &sizes, &workloads, clients, duration, repeat, &tag, args.quiet,
    )
    .await;
    setup.teardown(&tag).await;
    let rows = result?;
    let report = SizesReport {
        database: redact_url(&args.database_url),
        clients,
        duration_s: duration.as_secs_f64(),
        repeat,
        workloads: rows,
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&report).map_err(ToolsError::Json)?;
        crate::write_atomic(path, &text)?;
    }
    if let Some(path) = &args.plot {
        for w in &workloads {
            let file = if workloads.len() > 1 {
                plot_path(path, w.name())
            } else {
                path.clone()
            };
            write_plot(&report, *w, &file)?;
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn run_all(
    setup: &Setup,
    sizes: &[Size],
    workloads: &[Workload],
    clients: u32,
    duration: Duration,
    repeat: u32,
    tag: &str,
    quiet: bool,
) -> Result<Vec<SizeRow>, ToolsError> {
    let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
        * (sizes.len() * workloads.len()) as u64
        * u64::from(repeat);
    let progress = Progress::timed(total_ms, quiet);
    let mut rows = Vec::new();
    for &w in workloads {
        let mut cells: Vec<Vec<(Measured, f64)>> = sizes.iter().map(|_| Vec::new()).collect();
        // Interleaved: every size once, then again, so a noisy machine affects all alike.
        for rep in 0..repeat {
            for (i, &size) in sizes.iter().enumerate() {
                let label = format!("{} size {size} run {}/{repeat}", w.name(), rep + 1);
                progress.step(format!(
                    "bench: {label} for {:.0} s",
                    duration.as_secs_f64()
                ));
                let m = measure(setup, w, size, clients, duration, tag, &progress).await?;
                let qps = m.ops as f64 / m.elapsed.as_secs_f64().max(1e-9);
                progress.println(format!(
                    "{label}: {} queries/s, p99 {} ms, limit {}",
                    thousands(qps),
                    millis(m.latency.value_at_quantile(0.99) as f64 / 1000.0),
                    m.limit_final
                ));
                cells[i].push((m, qps));
            }
        }
        for (size, mut runs) in sizes.iter().zip(cells) {
            let all: Vec<f64> = runs.iter().map(|r| r.1).collect();
            runs.sort_by(|a, b| a.1.total_cmp(&b.1));
            let mid = runs.len() / 2;
            let (m, qps) = runs.swap_remove(mid);
            let settle_s = match (w, size) {
                (Workload::Switch, Size::Auto { .. }) => {
                    settle_time(&m.timeline, duration.as_secs_f64() / 2.0)
                }
                _ => None,
            };
            if let Some(e) = &m.first_error {
                progress.println(format!(
                    "{} size {size}: {} errors, first: {e}",
                    w.name(),
                    m.errors
                ));
            }
            rows.push(SizeRow {
                name: w.name(),
                size: *size,
                ops_per_sec: qps,
                p99_ms: m.latency.value_at_quantile(0.99) as f64 / 1000.0,
                limit_final: m.limit_final,
                errors: m.errors,
                settle_s,
                limit_timeline: m.timeline,
                limit_changes: m.changes,
                per_second: m.per_second,
                runs_ops_per_sec: all,
            });
        }
    }
    progress.finish();
    Ok(rows)
}

/// `F.svg` → `F-cpu.svg`.
fn plot_path(path: &Path, workload: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bench".into());
    path.with_file_name(format!("{stem}-{workload}.svg"))
}

/// Throughput and p99 against the fixed size, with `auto` drawn as a flat line at
/// its own figure across the sizes (its limit moves; the line shows where it lands
/// among the fixed sizes).
fn write_plot(report: &SizesReport, w: Workload, path: &Path) -> Result<(), ToolsError> {
    let rows: Vec<&SizeRow> = report
        .workloads
        .iter()
        .filter(|r| r.name == w.name())
        .collect();
    let fixed: Vec<(f64, &SizeRow)> = rows
        .iter()
        .filter_map(|r| match r.size {
            Size::Fixed(n) => Some((f64::from(n), *r)),
            Size::Auto { .. } => None,
        })
        .collect();
    let (lo, hi) = fixed.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(*x), hi.max(*x))
    });
    let mut throughput = vec![Series {
        label: "fixed size".into(),
        points: fixed.iter().map(|(x, r)| (*x, r.ops_per_sec)).collect(),
    }];
    let mut p99 = vec![Series {
        label: "fixed size".into(),
        points: fixed.iter().map(|(x, r)| (*x, r.p99_ms)).collect(),
    }];
    for r in rows.iter().filter(|r| matches!(r.size, Size::Auto { .. })) {
        let label = format!("auto (limit at end {})", r.limit_final);
        let span = if lo <= hi {
            vec![lo, hi]
        } else {
            vec![1.0, 64.0]
        };
        throughput.push(Series {
            label: label.clone(),
            points: span.iter().map(|x| (*x, r.ops_per_sec)).collect(),
        });
        p99.push(Series {
            label,
            points: span.iter().map(|x| (*x, r.p99_ms)).collect(),
        });
    }
    let title = format!(
        "queuepool bench --sizes, workload {} ({} clients, {:.0} s runs)",
        w.name(),
        report.clients,
        report.duration_s
    );
    plot::write_svg(path, &title, &throughput, &p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_numbers_auto_and_bounds() {
        let s = parse_sizes("2,4, 64,auto").unwrap();
        assert_eq!(
            s,
            vec![
                Size::Fixed(2),
                Size::Fixed(4),
                Size::Fixed(64),
                Size::Auto {
                    floor: 2,
                    ceiling: 64
                }
            ]
        );
        assert_eq!(
            parse_sizes("auto:3..40").unwrap(),
            vec![Size::Auto {
                floor: 3,
                ceiling: 40
            }]
        );
        for bad in ["", "0", "2,x", "auto:9..3", "auto:0..4"] {
            let e = parse_sizes(bad).unwrap_err().to_string();
            assert!(e.contains("--sizes"), "{bad}: {e}");
        }
    }

    #[test]
    fn workloads_parse_names_and_all() {
        assert_eq!(parse_workloads("all").unwrap(), Workload::ALL.to_vec());
        assert_eq!(
            parse_workloads("hot-row,cpu").unwrap(),
            vec![Workload::HotRow, Workload::Cpu]
        );
        let e = parse_workloads("disk").unwrap_err().to_string();
        assert!(e.contains("disk") && e.contains("hot-row"), "{e}");
    }

    #[test]
    fn settle_time_is_measured_from_the_switch_to_the_last_excursion() {
        // The switch at 10 s; the limit goes 4 -> 20 -> 40 and stays near 40 from 13 s.
        let mut t = Vec::new();
        for i in 0..80 {
            let s = f64::from(i) * 0.25;
            let v = if s < 10.0 {
                4
            } else if s < 13.0 {
                20
            } else {
                40 + (i % 3) as u32
            };
            t.push((s, v));
        }
        let settle = settle_time(&t, 10.0).unwrap();
        assert!((settle - 3.0).abs() < 1e-9, "{settle}");
        assert_eq!(settle_time(&t[..41], 10.0), None);
    }

    #[test]
    fn json_names_the_size_as_a_number_or_auto() {
        let row = |size| SizeRow {
            name: "cpu",
            size,
            ops_per_sec: 1.0,
            p99_ms: 2.0,
            limit_final: 3,
            errors: 0,
            settle_s: None,
            limit_timeline: Vec::new(),
            limit_changes: Vec::new(),
            per_second: Vec::new(),
            runs_ops_per_sec: vec![1.0],
        };
        let v = serde_json::to_value(vec![
            row(Size::Fixed(8)),
            row(Size::Auto {
                floor: 2,
                ceiling: 8,
            }),
        ])
        .unwrap();
        assert_eq!(v[0]["size"], 8);
        assert_eq!(v[1]["size"], "auto");
        assert_eq!(v[1]["name"], "cpu");
        assert!(v[1].get("settle_s").is_none());
    }

    #[test]
    fn the_trace_describes_each_sample_that_followed_moves() {
        use queuepool::autosize::AutoSize;
        let epoch = tokio::time::Instant::now();
        let mut a = AutoSize::new(2, 64, 2, epoch);
        // Two connections held 10 ms while checkouts wait: slow start doubles.
        let mut i = 0u64;
        while a.last_change().is_none() {
            i += 1;
            assert!(i < 1000, "no move");
            let now = epoch + Duration::from_millis(10 + 5 * i);
            a.on_return(Duration::from_millis(10), 2, true, now);
        }
        let mut seen = 0;
        let c = TracedChange::traced(1.5, &mut seen, 1, a.last_change()).unwrap();
        assert_eq!(
            (c.t, c.moves, c.from, c.to, c.reason),
            (1.5, 1, 2, 4, "headroom")
        );
        assert!(
            (c.held_ms - 10.0).abs() < 1e-6 && (c.in_use - 2.0).abs() < 1e-9,
            "{c:?}"
        );
        assert_eq!(seen, 1);
        // Nothing new since: no entry; three more moves: one entry counting them.
        assert_eq!(
            TracedChange::traced(1.75, &mut seen, 1, a.last_change()),
            None
        );
        let c = TracedChange::traced(2.0, &mut seen, 4, a.last_change()).unwrap();
        assert_eq!((c.moves, seen), (3, 4));
    }

    #[test]
    fn plots_are_named_per_workload() {
        assert_eq!(
            plot_path(Path::new("docs/sizes.svg"), "hot-row"),
            PathBuf::from("docs/sizes-hot-row.svg")
        );
    }
}
