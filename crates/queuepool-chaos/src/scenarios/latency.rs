//! Scenario 4: +50 ms on every packet between pool and database. Throughput must
//! follow Little's law (connections in use = throughput x hold time), and no checkout
//! may time out before `pool_timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use queuepool::{Pool, PoolConfig, PoolError, ResetOnReturn};
use queuepool_postgres::PgManager;
use queuepool_testkit::{FaultMode, FaultProxy, TestDb};

use crate::Ctx;
use crate::error::ChaosError;
use crate::fixtures::server_addr;
use crate::report::{Report, ms, secs};

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Delay the proxy adds to every chunk, each direction.
    pub latency: Duration,
    /// `pool_size` (and as many overflow connections).
    pub pool_size: u32,
    /// Tasks checking out in a loop (more than the pool holds: it is saturated).
    pub workers: usize,
    /// Length of the throughput phase.
    pub duration: Duration,
    /// `pool_timeout` of the timeout phase (short, so that checkouts time out).
    pub short_timeout: Duration,
    /// Length of the timeout phase.
    pub timeout_phase: Duration,
}

impl Params {
    /// The form: +50 ms, 20 s.
    pub fn full() -> Params {
        Params {
            latency: Duration::from_millis(50),
            pool_size: 4,
            workers: 24,
            duration: Duration::from_secs(20),
            short_timeout: Duration::from_millis(300),
            timeout_phase: Duration::from_secs(5),
        }
    }

    /// For tests: +50 ms, 4 s.
    pub fn short() -> Params {
        Params {
            duration: Duration::from_secs(4),
            timeout_phase: Duration::from_secs(3),
            ..Params::full()
        }
    }
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The parameters.
    pub params: Params,
    /// `pool_size + max_overflow`: the connections in use when saturated (L).
    pub max_connections: usize,
    /// Checkouts completed per second (λ).
    pub throughput: f64,
    /// Mean time a connection was held by a borrower (W).
    pub mean_hold: Duration,
    /// λ x W: the connections in use according to Little's law.
    pub littles_l: f64,
    /// Checkouts that failed in the throughput phase (pool_timeout 30 s).
    pub failures: usize,
    /// Timeouts in the timeout phase.
    pub timeouts: usize,
    /// The shortest wait that ended in a timeout.
    pub min_timeout_wait: Option<Duration>,
    /// The longest wait that ended in a timeout.
    pub max_timeout_wait: Option<Duration>,
    /// Checkouts that failed otherwise in the timeout phase.
    pub other_errors: usize,
}

async fn pool_for(url: &str, p: &Params, timeout: Duration) -> Result<Pool<PgManager>, ChaosError> {
    let config = PoolConfig::builder()
        .pool_size(p.pool_size)
        .max_overflow(p.pool_size)
        .pool_timeout(timeout)
        .overflow_idle(Duration::from_secs(60))
        // The slot is held exactly as long as the borrower holds the guard, so W is the
        // hold time the pool reports.
        .reset_on_return(ResetOnReturn::None)
        .name("chaos-latency")
        .build()?;
    Ok(Pool::new(PgManager::from_url(url)?, config).await?)
}

/// Checkout outcome: (waited, result is Ok, error is a timeout).
type Op = (Duration, bool, bool);

async fn saturate(pool: &Pool<PgManager>, workers: usize, duration: Duration) -> Vec<Op> {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut ops = Vec::new();
            while t0.elapsed() < duration {
                let started = Instant::now();
                match pool.get().await {
                    Ok(conn) => {
                        let waited = started.elapsed();
                        let ok = conn.simple_query("SELECT 1").await.is_ok();
                        ops.push((waited, ok, false));
                    }
                    Err(e) => {
                        let timeout = matches!(e, PoolError::Timeout { .. });
                        ops.push((started.elapsed(), false, timeout));
                    }
                }
            }
            ops
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(ops) = r {
            all.extend(ops);
        }
    }
    all
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "latency";
    let db = TestDb::create().await?;
    let proxy = Arc::new(FaultProxy::start(server_addr(&db)?).await?);
    let url = db.url_via("127.0.0.1", proxy.port())?;
    let pool = pool_for(&url, p, Duration::from_secs(30)).await?;
    // Open the overflow connections before the latency starts, then measure.
    drop(saturate(&pool, p.workers, Duration::from_millis(300)).await);
    proxy.set_mode(FaultMode::Latency(p.latency));
    ctx.phase(
        NAME,
        format!(
            "+{} per packet, {} workers on {} connections for {}",
            ms(p.latency),
            p.workers,
            2 * p.pool_size,
            secs(p.duration)
        ),
    );
    let before = pool.stats();
    let t0 = Instant::now();
    let ops = saturate(&pool, p.workers, p.duration).await;
    let elapsed = t0.elapsed();
    let after = pool.stats();
    let checkouts = after.checkouts - before.checkouts;
    let held = after.usage.mean.as_secs_f64() * after.usage.count as f64
        - before.usage.mean.as_secs_f64() * before.usage.count as f64;
    let mean_hold =
        Duration::from_secs_f64(held / (after.usage.count - before.usage.count).max(1) as f64);
    let throughput = checkouts as f64 / elapsed.as_secs_f64();
    let failures = ops.iter().filter(|o| !o.1).count();
    pool.close(Duration::from_secs(2)).await;

    ctx.phase(
        NAME,
        format!("timeout phase: pool_timeout {}", ms(p.short_timeout)),
    );
    proxy.set_mode(FaultMode::PassThrough);
    let pool = pool_for(&url, p, p.short_timeout).await?;
    drop(saturate(&pool, 2 * p.pool_size as usize, Duration::from_millis(300)).await);
    proxy.set_mode(FaultMode::Latency(p.latency));
    let ops = saturate(&pool, p.workers * 2, p.timeout_phase).await;
    pool.close(Duration::from_secs(2)).await;
    let timed_out: Vec<Duration> = ops.iter().filter(|o| o.2).map(|o| o.0).collect();
    Ok(Figures {
        params: p.clone(),
        max_connections: 2 * p.pool_size as usize,
        throughput,
        mean_hold,
        littles_l: throughput * mean_hold.as_secs_f64(),
        failures,
        timeouts: timed_out.len(),
        min_timeout_wait: timed_out.iter().min().copied(),
        max_timeout_wait: timed_out.iter().max().copied(),
        other_errors: ops.iter().filter(|o| !o.1 && !o.2).count(),
    })
}

impl Figures {
    /// The relative gap between λ x W and the connections in use.
    pub fn littles_error(&self) -> f64 {
        (self.littles_l - self.max_connections as f64).abs() / self.max_connections as f64
    }

    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = &self.params;
        let mut r = Report::new(
            "4. Latency injection",
            format!(
                "`Pool<PgManager>` → fault proxy adding {} to every chunk each way → PostgreSQL; pool_size={} max_overflow={} \
                 (reset on return off, so a slot is held exactly as long as the guard); {} tasks loop on `get()` + `SELECT 1` for {}. \
                 Then pool_timeout={} with {} tasks for {}.",
                ms(p.latency),
                p.pool_size,
                p.pool_size,
                p.workers,
                secs(p.duration),
                ms(p.short_timeout),
                2 * p.workers,
                secs(p.timeout_phase)
            ),
        );
        let floor = p.short_timeout;
        r.info(
            "throughput λ",
            format!("{:.1} checkouts/s", self.throughput),
        )
        .info("mean hold time W", ms(self.mean_hold))
        .check(
            "λ x W (connections in use, Little's law)",
            format!("{:.2}", self.littles_l),
            format!("= {} connections ± 15 %", self.max_connections),
            self.littles_error() <= 0.15,
        )
        .check(
            "failed checkouts at pool_timeout 30 s",
            self.failures,
            "0",
            self.failures == 0,
        )
        .info("timeouts at the short pool_timeout", self.timeouts)
        .check(
            "shortest wait ending in a timeout",
            crate::report::opt_ms(self.min_timeout_wait),
            format!(">= pool_timeout = {}", ms(floor)),
            self.min_timeout_wait.is_none_or(|d| d >= floor),
        )
        .check(
            "longest wait ending in a timeout",
            crate::report::opt_ms(self.max_timeout_wait),
            format!(
                "<= pool_timeout + 100 ms = {}",
                ms(floor + Duration::from_millis(100))
            ),
            self.max_timeout_wait
                .is_none_or(|d| d <= floor + Duration::from_millis(100)),
        )
        .check(
            "other checkout errors",
            self.other_errors,
            "0",
            self.other_errors == 0,
        );
        r
    }
}
