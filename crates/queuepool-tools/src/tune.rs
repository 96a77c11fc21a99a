//! `queuepool tune`: measures the workload at increasing pool sizes and recommends the
//! smallest pool within 5 % of the best throughput, capped by what the server allows
//! each instance.
//!
//! With `--via-pgbouncer` it sizes two layers. The curve is measured on the server
//! itself (the URL must not lead to PgBouncer, whose pool would cap it), with the load
//! of every instance (`--concurrency` x `--instances` clients) and unnamed statements
//! (what works in transaction mode). The knee is PgBouncer's `default_pool_size` (and
//! `max_db_connections`), capped by `max_connections` - superuser reserved - `--reserve`
//! for the whole fleet; each instance's pool gets `ceil(N / instances)` steady and up to
//! N in all, so one busy instance can use every server connection while the others
//! idle; `max_client_conn` admits every instance's pool plus `--reserve`.

use std::sync::Arc;
use std::time::Duration;

use queuepool::{Pool, PoolConfig, Preset};
use serde::Serialize;

use crate::args::{parse_duration, parse_list, parse_millis, parse_positive, redact_url};
use crate::error::ToolsError;
use crate::progress::Progress;
use crate::table::{Table, millis, thousands};
use crate::target::{Kind, Observer, Protocol, Query, Target};
use crate::workload;

/// Options of `queuepool tune`.
#[derive(Debug, Clone, clap::Args)]
pub struct TuneArgs {
    /// Database to size the pool for
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,
    /// How many app instances share the database (each gets its own pool)
    #[arg(long, value_name = "K", default_value = "1")]
    pub instances: String,
    /// Latency goal: only sizes whose p99 (wait + query) is at most this qualify, in ms
    #[arg(long, value_name = "MS")]
    pub target_p99: Option<String>,
    /// Concurrent clients of the workload (requests in flight in one instance)
    #[arg(long, value_name = "N", default_value = "32")]
    pub concurrency: String,
    /// Pool sizes to try [default: 1, 2, 4, ... up to the concurrency and the cap]
    #[arg(long, value_name = "LIST")]
    pub sizes: Option<String>,
    /// The statement the workload runs
    #[arg(long, value_name = "SQL", default_value = "SELECT 1")]
    pub query: String,
    /// Length of the run at each size
    #[arg(long, value_name = "SECONDS", default_value = "3")]
    pub duration: String,
    /// Connections kept free for admin tools and migrations, besides the server's own
    /// superuser reserve
    #[arg(long, value_name = "N", default_value = "5")]
    pub reserve: String,
    /// Size two layers: PgBouncer (transaction mode) in front of the server, shared by
    /// the instances. --database-url must then be the server itself
    #[arg(long)]
    pub via_pgbouncer: bool,
    /// The pool as configured now (flags or the POOL_* variables `serve` reads): shown
    /// beside the recommendation, not used for the measurement
    #[command(flatten, next_help_heading = "Current pool (for comparison)")]
    pub pool: crate::args::PoolArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// PgBouncer's settings, as `--via-pgbouncer` recommends them.
#[derive(Debug, Clone, Serialize)]
pub struct BouncerSizing {
    /// `pool_mode`.
    pub pool_mode: &'static str,
    /// `default_pool_size`: server connections per database/user pair (the knee).
    pub default_pool_size: u32,
    /// `max_db_connections`: the same bound across every user of the database.
    pub max_db_connections: u32,
    /// `reserve_pool_size`: 0, the cap leaves no room for more.
    pub reserve_pool_size: u32,
    /// `max_client_conn`: every instance's pool at its limit, plus the reserve.
    pub max_client_conn: u32,
    /// `query_wait_timeout`, seconds: a client waits for a server no longer than a
    /// checkout waits for the pool.
    pub query_wait_timeout_s: u64,
}

/// The measurement at one pool size.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// `pool_size` (no overflow during the measurement).
    pub pool_size: u32,
    /// Queries per second.
    pub qps: f64,
    /// p99 of wait + query, ms.
    pub p99_ms: f64,
    /// p99 of the wait for a connection, ms.
    pub wait_p99_ms: f64,
    /// Mean time a connection was held per query, ms.
    pub hold_ms: f64,
    /// Failed queries.
    pub errors: u64,
}

/// What `tune` recommends, and why.
#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    /// The backend.
    pub backend: Kind,
    /// The database URL without its password.
    pub database: String,
    /// The workload's query.
    pub query: String,
    /// Concurrent clients of the workload.
    pub concurrency: u32,
    /// App instances.
    pub instances: u32,
    /// The server's `max_connections` (none for SQLite).
    pub max_connections: Option<u32>,
    /// Connections one instance may open: `(max_connections - reserved) / instances`.
    pub per_instance_cap: Option<u32>,
    /// The measured curve.
    pub curve: Vec<Point>,
    /// Recommended `pool_size`.
    pub pool_size: u32,
    /// Recommended `max_overflow`.
    pub max_overflow: u32,
    /// Recommended `pool_timeout`, seconds.
    pub pool_timeout_s: u64,
    /// The preset closest to the recommendation.
    pub closest_preset: String,
    /// The reasoning, one sentence a line.
    pub reasoning: Vec<String>,
    /// With `--via-pgbouncer`: PgBouncer's settings (the pool sizes above are then each
    /// instance's, as a client of PgBouncer).
    pub pgbouncer: Option<BouncerSizing>,
}

impl TuneReport {
    /// The curve, the recommendation, the snippets and the reasoning.
    pub fn render(&self) -> String {
        let mut out = format!(
            "queuepool tune: {} ({}), query {:?}, {} concurrent clients, {} instance(s)\n\n",
            self.database, self.backend, self.query, self.concurrency, self.instances
        );
        let best = self.curve.iter().map(|p| p.qps).fold(0.0, f64::max);
        // Through PgBouncer the curve is of server connections, PgBouncer's pool.
        let (size_column, marked) = match &self.pgbouncer {
            Some(b) => ("server conns", b.default_pool_size),
            None => ("pool_size", self.pool_size),
        };
        let mut table = Table::new(&[
            size_column,
            "queries/s",
            "p99 ms",
            "wait p99 ms",
            "hold ms",
            "errors",
            "",
        ]);
        for p in &self.curve {
            let width = if best > 0.0 {
                (p.qps / best * 30.0).round() as usize
            } else {
                0
            };
            let mark = if p.pool_size == marked {
                " <- recommended"
            } else {
                ""
            };
            table.row(vec![
                p.pool_size.to_string(),
                thousands(p.qps),
                millis(p.p99_ms),
                millis(p.wait_p99_ms),
                millis(p.hold_ms),
                p.errors.to_string(),
                format!("{}{mark}", "#".repeat(width)),
            ]);
        }
        out.push_str(&table.render());
        if let Some(b) = &self.pgbouncer {
            out.push_str(&format!(
                "\nrecommended: PgBouncer default_pool_size {}; each instance pool_size {}, \
                 max_overflow {}, pool_timeout {} s (closest preset: {})\n\n",
                b.default_pool_size,
                self.pool_size,
                self.max_overflow,
                self.pool_timeout_s,
                self.closest_preset
            ));
        } else {
            out.push_str(&format!(
                "\nrecommended: pool_size {}, max_overflow {}, pool_timeout {} s (closest preset: {})\n\n",
                self.pool_size, self.max_overflow, self.pool_timeout_s, self.closest_preset
            ));
        }
        out.push_str("why:\n");
        for line in &self.reasoning {
            out.push_str(&format!("  - {line}\n"));
        }
        if let Some(b) = &self.pgbouncer {
            out.push_str(&format!(
                "\npgbouncer.ini ([pgbouncer] section), shared by the {} instance(s):\n  \
                 pool_mode = {}\n  default_pool_size = {}\n  max_db_connections = {}\n  \
                 reserve_pool_size = {}\n  max_client_conn = {}\n  query_wait_timeout = {}\n\n\
                 each instance, connecting to PgBouncer:",
                self.instances,
                b.pool_mode,
                b.default_pool_size,
                b.max_db_connections,
                b.reserve_pool_size,
                b.max_client_conn,
                b.query_wait_timeout_s
            ));
        }
        out.push_str(&format!(
            "\nflags: queuepool serve --pool-size {} --max-overflow {} --pool-timeout {}\n",
            self.pool_size, self.max_overflow, self.pool_timeout_s
        ));
        out.push_str(&format!(
            "env:   POOL_SIZE={} MAX_OVERFLOW={} POOL_TIMEOUT={}\n",
            self.pool_size, self.max_overflow, self.pool_timeout_s
        ));
        out.push_str(&format!(
            "TOML:  pool_size = {}\n       max_overflow = {}\n       pool_timeout = {}\n",
            self.pool_size, self.max_overflow, self.pool_timeout_s
        ));
        out
    }
}

/// The smallest size within 5 % of the best throughput (and under the latency goal
/// when there is one); `None` when no point qualifies for the goal.
pub fn smallest_within_5_percent(curve: &[Point], target_p99_ms: Option<f64>) -> Option<&Point> {
    let best = curve.iter().map(|p| p.qps).fold(0.0, f64::max);
    let mut sorted: Vec<&Point> = curve.iter().collect();
    sorted.sort_by_key(|p| p.pool_size);
    sorted.into_iter().find(|p| {
        p.qps >= 0.95 * best && target_p99_ms.is_none_or(|t| p.p99_ms <= t) && p.errors == 0
    })
}

/// The preset whose `(pool_size, max_overflow)` is nearest.
pub fn closest_preset(pool_size: u32, max_overflow: u32) -> Preset {
    let distance = |p: &Preset| {
        let (s, o, _) = p.sizes();
        s.abs_diff(pool_size) + o.abs_diff(max_overflow)
    };
    Preset::ALL
        .into_iter()
        .min_by_key(distance)
        .unwrap_or(Preset::Dev)
}

/// Sizes 1, 2, 4, ... up to `limit`, plus `limit` itself.
fn default_sizes(limit: u32) -> Vec<u32> {
    let mut sizes = Vec::new();
    let mut s = 1;
    while s < limit {
        sizes.push(s);
        s *= 2;
    }
    sizes.push(limit.max(1));
    sizes
}

/// Runs `tune` and returns its report.
pub async fn run(args: &TuneArgs) -> Result<TuneReport, ToolsError> {
    match Kind::from_url(&args.database_url)? {
        Kind::Postgres => run_with::<queuepool_postgres::PgManager>(args).await,
        Kind::MySql => run_with::<queuepool_mysql::MySqlManager>(args).await,
        Kind::Sqlite => run_with::<queuepool_sqlite::SqliteManager>(args).await,
    }
}

async fn run_with<T: Target>(args: &TuneArgs) -> Result<TuneReport, ToolsError> {
    let instances = parse_positive("--instances", &args.instances)?;
    let concurrency = parse_positive("--concurrency", &args.concurrency)?;
    let reserve = crate::args::parse_count("--reserve", &args.reserve)?;
    let duration = parse_duration("--duration", &args.duration)?;
    let target = args
        .target_p99
        .as_deref()
        .map(|raw| parse_millis("--target-p99", raw))
        .transpose()?
        .map(|d| d.as_secs_f64() * 1000.0);
    let requested = args
        .sizes
        .as_deref()
        .map(|raw| parse_list("--sizes", raw, 10_000))
        .transpose()?;
    if args.query.trim().is_empty() {
        return Err(ToolsError::arg("--query", "empty query"));
    }
    if args.via_pgbouncer {
        if T::KIND != Kind::Postgres {
            return Err(ToolsError::arg(
                "--via-pgbouncer",
                "PgBouncer sits in front of PostgreSQL only",
            ));
        }
        if let Some(admin) = crate::pgbouncer::detect(&args.database_url, None).await? {
            return Err(ToolsError::arg(
                "--database-url",
                format!(
                    "leads to {} ({}): with --via-pgbouncer give the server's own URL; \
                     through PgBouncer its pool would cap the curve at its default_pool_size",
                    admin.version().await?,
                    admin.url
                ),
            ));
        }
    }
    // The server sees the load of every instance through PgBouncer.
    let clients = if args.via_pgbouncer {
        concurrency.saturating_mul(instances).min(1000)
    } else {
        concurrency
    };
    let query = Query {
        sql: Arc::from(args.query.trim()),
        // Named statements do not survive transaction mode (PgBouncer 1.18).
        protocol: if args.via_pgbouncer {
            Protocol::Extended
        } else {
            Protocol::Prepared
        },
    };
    let tag = format!("queuepool_tune_{:08x}", rand::random::<u32>());
    let probe = T::open(&args.database_url, &tag)?;
    workload::check_query(&probe, &query).await?;
    let mut observer = Observer::connect(T::KIND, &args.database_url, &tag).await?;
    let limits = observer.max_connections().await?;
    observer.close().await;
    // Through PgBouncer the server connections are PgBouncer's, for the whole fleet.
    let sharing = if args.via_pgbouncer { 1 } else { instances };
    let cap = limits.map(|(max, reserved)| {
        (max.saturating_sub(reserved).saturating_sub(reserve) / sharing).max(1)
    });

    let limit = clients.min(cap.unwrap_or(u32::MAX));
    let sizes: Vec<u32> = match requested {
        Some(list) => list
            .into_iter()
            .filter(|s| *s <= cap.unwrap_or(u32::MAX))
            .collect(),
        None => default_sizes(limit),
    };
    if sizes.is_empty() {
        return Err(ToolsError::arg(
            "--sizes",
            "every size is above the per-instance cap",
        ));
    }
    let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX) * sizes.len() as u64;
    let progress = Progress::timed(total_ms, args.json);
    let mut curve = Vec::new();
    for &size in &sizes {
        let label = format!("pool_size {size}");
        progress.step(format!(
            "tune: {label}, {clients} clients, {:.1} s",
            duration.as_secs_f64()
        ));
        let config = PoolConfig::builder()
            .name("tune")
            .pool_size(size)
            .max_overflow(0)
            .pool_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ToolsError::arg("--sizes", e.to_string()))?;
        let pool = Pool::new(T::open(&args.database_url, &tag)?, config)
            .await
            .map_err(|e| ToolsError::pool("could not start the pool", e))?;
        let r =
            workload::pooled(&pool, &query, clients as usize, duration, &progress, &label).await;
        pool.close(Duration::from_secs(5)).await;
        progress.println(format!(
            "{label}: {} queries/s, p99 {} ms",
            thousands(r.qps()),
            millis(r.latency_ms(0.99))
        ));
        curve.push(Point {
            pool_size: size,
            qps: r.qps(),
            p99_ms: r.latency_ms(0.99),
            wait_p99_ms: r.wait_ms(0.99),
            hold_ms: r.hold_mean_ms(),
            errors: r.errors,
        });
    }
    progress.finish();
    if args.via_pgbouncer {
        return Ok(recommend_via_pgbouncer(
            args, clients, instances, reserve, limits, cap, target, curve,
        ));
    }
    Ok(recommend(
        args,
        T::KIND,
        concurrency,
        instances,
        limits,
        cap,
        target,
        curve,
    ))
}

/// The point `tune` settles on: the smallest size within 5 % of the best (under the
/// latency goal when one is met), with the reasoning of that choice.
fn choose(curve: &[Point], target: Option<f64>, reasoning: &mut Vec<String>) -> Point {
    let best = curve.iter().max_by(|a, b| a.qps.total_cmp(&b.qps)).cloned();
    let chosen = match smallest_within_5_percent(curve, target) {
        Some(p) => p.clone(),
        None => {
            let fallback = smallest_within_5_percent(curve, None)
                .or(best.as_ref())
                .cloned()
                .unwrap_or(Point {
                    pool_size: 1,
                    qps: 0.0,
                    p99_ms: 0.0,
                    wait_p99_ms: 0.0,
                    hold_ms: 0.0,
                    errors: 0,
                });
            if let Some(t) = target {
                let lowest = curve.iter().map(|p| p.p99_ms).fold(f64::MAX, f64::min);
                reasoning.push(format!(
                    "no size met the p99 goal of {t:.1} ms (lowest measured: {lowest:.2} ms): \
                     the database or the query, not the pool size, sets that latency"
                ));
            }
            fallback
        }
    };
    if let Some(b) = &best {
        reasoning.push(format!(
            "best throughput: {} queries/s at pool_size {}; pool_size {} reaches {} queries/s \
             ({:.0} % of it), the smallest size within 5 %{}",
            thousands(b.qps),
            b.pool_size,
            chosen.pool_size,
            thousands(chosen.qps),
            if b.qps > 0.0 {
                chosen.qps / b.qps * 100.0
            } else {
                0.0
            },
            target
                .map(|t| format!(" with p99 <= {t:.1} ms"))
                .unwrap_or_default()
        ));
    }
    let busy = chosen.qps * chosen.hold_ms / 1000.0;
    reasoning.push(format!(
        "Little's law: L = lambda x W = {} queries/s x {} ms held per query = {busy:.1} \
         connections busy on average; more connections than that only queue inside the \
         database (its CPUs and locks), so throughput stops growing",
        thousands(chosen.qps),
        millis(chosen.hold_ms)
    ));
    chosen
}

/// `pool_timeout`: 10x the measured p99 (2x the goal), at least 1 s, at most 30 s.
fn pool_timeout_for(chosen: &Point, target: Option<f64>) -> u64 {
    let p99_s = chosen.p99_ms / 1000.0;
    ((p99_s * 10.0)
        .max(target.unwrap_or(0.0) / 1000.0 * 2.0)
        .ceil() as u64)
        .clamp(1, 30)
}

/// Two layers: the knee is PgBouncer's server pool; each instance's pool is a client
/// of PgBouncer (see the module documentation).
#[allow(clippy::too_many_arguments)]
fn recommend_via_pgbouncer(
    args: &TuneArgs,
    clients: u32,
    instances: u32,
    reserve: u32,
    limits: Option<(u32, u32)>,
    cap: Option<u32>,
    target: Option<f64>,
    curve: Vec<Point>,
) -> TuneReport {
    let mut reasoning = vec![format!(
        "measured on the server with {clients} clients ({} per instance x {instances} \
         instance(s)): the load PgBouncer funnels into its server connections",
        args.concurrency.trim()
    )];
    let chosen = choose(&curve, target, &mut reasoning);
    let mut servers = chosen.pool_size.max(1);
    if let (Some((max, reserved)), Some(cap)) = (limits, cap) {
        reasoning.push(format!(
            "server limit: max_connections {max} - {reserved} superuser reserved - {reserve} \
             kept free = {cap} server connections for PgBouncer, whatever the number of \
             instances"
        ));
        if servers > cap {
            reasoning.push(format!(
                "default_pool_size lowered from {servers} to the cap {cap}"
            ));
            servers = cap;
        }
    }
    let pool_size = servers.div_ceil(instances.max(1));
    let max_overflow = servers - pool_size;
    let pool_timeout_s = pool_timeout_for(&chosen, target);
    let max_client_conn = instances * (pool_size + max_overflow) + reserve;
    reasoning.push(format!(
        "PgBouncer: default_pool_size = max_db_connections = {servers} (the knee), \
         reserve_pool_size 0 (the cap leaves no room); the server never sees more"
    ));
    reasoning.push(format!(
        "each instance: pool_size {pool_size} = {servers} / {instances} rounded up (the steady \
         share), max_overflow {max_overflow} so that one busy instance may use all {servers} \
         server connections while the others idle; more would only wait inside PgBouncer, \
         where the pool's timeout and metrics do not see it"
    ));
    reasoning.push(format!(
        "max_client_conn {max_client_conn} = {instances} x {} + {reserve} for admin tools and \
         the console: client connections are cheap (PgBouncer holds no backend for them)",
        pool_size + max_overflow
    ));
    reasoning.push(format!(
        "pool_timeout {pool_timeout_s} s (10x the measured p99, at least 1 s) and \
         query_wait_timeout {pool_timeout_s} s: a client waiting in PgBouncer for a server \
         gives up within the same bound as a checkout (PgBouncer's default is 120 s)"
    ));
    reasoning.push(
        "transaction mode: no session state across transactions (SET, advisory locks, \
         LISTEN, named prepared statements in PgBouncer 1.18); see docs/DEPLOY.md"
            .to_owned(),
    );
    let preset = closest_preset(pool_size, max_overflow);
    let (ps, po, pt) = preset.sizes();
    TuneReport {
        backend: Kind::Postgres,
        database: redact_url(&args.database_url),
        query: args.query.trim().to_owned(),
        concurrency: clients,
        instances,
        max_connections: limits.map(|l| l.0),
        per_instance_cap: Some(pool_size + max_overflow),
        curve,
        pool_size,
        max_overflow,
        pool_timeout_s,
        closest_preset: format!("{} ({ps}/{po}/{} s)", preset.name(), pt.as_secs()),
        reasoning,
        pgbouncer: Some(BouncerSizing {
            pool_mode: "transaction",
            default_pool_size: servers,
            max_db_connections: servers,
            reserve_pool_size: 0,
            max_client_conn,
            query_wait_timeout_s: pool_timeout_s,
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn recommend(
    args: &TuneArgs,
    backend: Kind,
    concurrency: u32,
    instances: u32,
    limits: Option<(u32, u32)>,
    cap: Option<u32>,
    target: Option<f64>,
    curve: Vec<Point>,
) -> TuneReport {
    let mut reasoning = Vec::new();
    let chosen = choose(&curve, target, &mut reasoning);
    let mut pool_size = chosen.pool_size;
    let mut max_overflow = pool_size;
    match (limits, cap) {
        (Some((max, reserved)), Some(cap)) => {
            reasoning.push(format!(
                "server limit: max_connections {max} - {reserved} superuser reserved - {} kept \
                 free = {} for {instances} instance(s): at most {cap} connections each \
                 (pool_size + max_overflow)",
                args.reserve.trim(),
                max.saturating_sub(reserved).saturating_sub(args.reserve.trim().parse().unwrap_or(0)),
            ));
            if pool_size > cap {
                reasoning.push(format!("pool_size lowered from {pool_size} to the cap {cap}"));
                pool_size = cap;
            }
            max_overflow = max_overflow.min(cap - pool_size);
        }
        _ => reasoning.push("SQLite has no connection limit; its writers serialize on one lock, so few connections serve best".to_owned()),
    }
    reasoning.push(format!(
        "max_overflow {max_overflow}: lets a burst up to {:.1}x the steady load through without \
         waiting, within the per-instance cap",
        if pool_size > 0 {
            f64::from(pool_size + max_overflow) / f64::from(pool_size)
        } else {
            1.0
        }
    ));
    let pool_timeout_s = pool_timeout_for(&chosen, target);
    reasoning.push(format!(
        "pool_timeout {pool_timeout_s} s: at least 10x the measured p99 ({} ms){} and at least \
         1 s, so ordinary bursts wait instead of failing, but a saturated pool answers 503 \
         within seconds instead of piling requests up (the presets' 30 s is the ceiling)",
        millis(chosen.p99_ms),
        target
            .map(|t| format!(" and 2x the goal ({t:.1} ms)"))
            .unwrap_or_default()
    ));
    if concurrency <= pool_size {
        reasoning.push(format!(
            "the workload had only {concurrency} clients: run with --concurrency set to the \
             requests one instance serves at once at peak, or larger sizes cannot show a gain"
        ));
    }
    let preset = closest_preset(pool_size, max_overflow);
    let (ps, po, pt) = preset.sizes();
    TuneReport {
        backend,
        database: redact_url(&args.database_url),
        query: args.query.trim().to_owned(),
        concurrency,
        instances,
        max_connections: limits.map(|l| l.0),
        per_instance_cap: cap,
        curve,
        pool_size,
        max_overflow,
        pool_timeout_s,
        closest_preset: format!("{} ({ps}/{po}/{} s)", preset.name(), pt.as_secs()),
        reasoning,
        pgbouncer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(pool_size: u32, qps: f64, p99_ms: f64) -> Point {
        Point {
            pool_size,
            qps,
            p99_ms,
            wait_p99_ms: 0.0,
            hold_ms: 0.1,
            errors: 0,
        }
    }

    #[test]
    fn recommends_the_smallest_size_within_5_percent_of_the_best() {
        let curve = vec![
            point(1, 5000.0, 9.0),
            point(2, 9600.0, 5.0),
            point(4, 10000.0, 4.0),
            point(8, 9900.0, 4.5),
        ];
        assert_eq!(
            smallest_within_5_percent(&curve, None).map(|p| p.pool_size),
            Some(2)
        );
        // A latency goal can push it up.
        assert_eq!(
            smallest_within_5_percent(&curve, Some(4.2)).map(|p| p.pool_size),
            Some(4)
        );
        assert!(smallest_within_5_percent(&curve, Some(1.0)).is_none());
    }

    #[test]
    fn closest_preset_by_sizes() {
        assert_eq!(closest_preset(4, 4), Preset::Dev);
        assert_eq!(closest_preset(10, 15), Preset::ProdLow);
        assert_eq!(closest_preset(30, 20), Preset::HighLoad);
    }

    #[test]
    fn cap_limits_the_recommendation() {
        let args = TuneArgs {
            database_url: "postgres://x@h/db".into(),
            instances: "4".into(),
            target_p99: None,
            concurrency: "64".into(),
            sizes: None,
            query: "SELECT 1".into(),
            duration: "1".into(),
            reserve: "5".into(),
            via_pgbouncer: false,
            pool: crate::args::PoolArgs::default(),
            json: false,
        };
        let curve = vec![point(8, 5000.0, 9.0), point(32, 10000.0, 4.0)];
        // (100 - 3 - 5) / 4 = 23 per instance.
        let r = recommend(
            &args,
            Kind::Postgres,
            64,
            4,
            Some((100, 3)),
            Some(23),
            None,
            curve,
        );
        assert_eq!(r.pool_size, 23);
        assert_eq!(r.max_overflow, 0);
        assert!(
            r.reasoning
                .iter()
                .any(|l| l.contains("lowered from 32 to the cap 23")),
            "{:?}",
            r.reasoning
        );
        assert!(r.render().contains("POOL_SIZE=23 MAX_OVERFLOW=0"));
    }

    fn via_args() -> TuneArgs {
        TuneArgs {
            database_url: "postgres://x@h/db".into(),
            instances: "4".into(),
            target_p99: None,
            concurrency: "16".into(),
            sizes: None,
            query: "SELECT 1".into(),
            duration: "1".into(),
            reserve: "5".into(),
            via_pgbouncer: true,
            pool: crate::args::PoolArgs::default(),
            json: false,
        }
    }

    #[test]
    fn via_pgbouncer_the_knee_is_pgbouncers_pool_and_each_instance_may_reach_it() {
        let curve = vec![
            point(4, 6000.0, 9.0),
            point(8, 9700.0, 4.0),
            point(16, 10000.0, 4.0),
        ];
        // (50 - 3 - 5) = 42 server connections for PgBouncer, not divided by instances.
        let r =
            recommend_via_pgbouncer(&via_args(), 64, 4, 5, Some((50, 3)), Some(42), None, curve);
        let b = r.pgbouncer.as_ref().expect("two layers");
        assert_eq!((b.default_pool_size, b.max_db_connections), (8, 8));
        assert_eq!((r.pool_size, r.max_overflow), (2, 6));
        assert_eq!(b.max_client_conn, 4 * 8 + 5);
        assert_eq!(b.query_wait_timeout_s, r.pool_timeout_s);
        let text = r.render();
        let marked: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("<- recommended"))
            .collect();
        assert_eq!(marked.len(), 1, "{text}");
        assert!(marked[0].trim_start().starts_with("8 "), "{text}");
        for needle in [
            "default_pool_size = 8",
            "max_client_conn = 37",
            "pool_mode = transaction",
            "POOL_SIZE=2 MAX_OVERFLOW=6",
            "recommended: PgBouncer default_pool_size 8; each instance pool_size 2",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }

    #[test]
    fn via_pgbouncer_the_server_limit_caps_the_knee() {
        let curve = vec![point(32, 5000.0, 9.0), point(64, 10000.0, 4.0)];
        let r =
            recommend_via_pgbouncer(&via_args(), 64, 4, 5, Some((50, 3)), Some(42), None, curve);
        let b = r.pgbouncer.as_ref().expect("two layers");
        assert_eq!(b.default_pool_size, 42);
        assert_eq!((r.pool_size, r.max_overflow), (11, 31));
        assert_eq!(b.max_client_conn, 4 * 42 + 5);
        assert!(
            r.reasoning
                .iter()
                .any(|l| l.contains("lowered from 64 to the cap 42")),
            "{:?}",
            r.reasoning
        );
    }
}
