//! Scenario 3: the network path to the database goes silent (blackhole) for a while,
//! under load; every request must end within its timeouts, and the pool must recover.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use queuepool_testkit::{FaultMode, FaultProxy, TestDb};

use crate::Ctx;
use crate::error::ChaosError;
use crate::fixtures::{PoolView, pool_json, server_addr, settle};
use crate::load::{self, Sample, Tally};
use crate::report::{Report, opt_ms, secs};
use crate::scenarios::SERVICE_CONNECT_TIMEOUT;
use crate::service::Service;

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Load before the blackhole.
    pub before: Duration,
    /// Length of the blackhole.
    pub blackhole: Duration,
    /// Load after the blackhole, beyond the longest allowed request.
    pub after: Duration,
    /// `POOL_SIZE`.
    pub pool_size: u32,
    /// `POOL_TIMEOUT`.
    pub pool_timeout: Duration,
    /// The service's `QUERY_TIMEOUT` (the library variant bounds its queries at 1 s).
    pub query_timeout: Duration,
}

impl Params {
    /// The form: a 10 s blackhole.
    pub fn full() -> Params {
        Params {
            concurrency: 32,
            before: Duration::from_secs(3),
            blackhole: Duration::from_secs(10),
            after: Duration::from_secs(5),
            pool_size: 5,
            pool_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(3),
        }
    }

    /// For tests: a 3 s blackhole.
    pub fn short() -> Params {
        Params {
            concurrency: 16,
            before: Duration::from_millis(1500),
            blackhole: Duration::from_secs(3),
            after: Duration::from_secs(3),
            pool_size: 5,
            pool_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(2),
        }
    }
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The parameters.
    pub params: Params,
    /// Requests by outcome.
    pub tally: Tally,
    /// `pool_timeout + connect_timeout + query_timeout`.
    pub bound: Duration,
    /// The slowest request that got an answer.
    pub slowest_answer: Option<Duration>,
    /// Requests sent during the blackhole or in flight when it began.
    pub affected: usize,
    /// From the end of the blackhole to the first success sent after it.
    pub first_success: Option<Duration>,
    /// Successful requests per second before the blackhole.
    pub baseline_rps: f64,
    /// Successful requests per second in the last `after` seconds.
    pub final_rps: f64,
    /// `/pool` at the end.
    pub pool_after: PoolView,
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "blackhole";
    let db = TestDb::create().await?;
    let proxy = FaultProxy::start(server_addr(&db)?).await?;
    let env = [
        ("DATABASE_URL", db.url_via("127.0.0.1", proxy.port())?),
        ("POOL_SIZE", p.pool_size.to_string()),
        ("MAX_OVERFLOW", "0".to_owned()),
        ("POOL_TIMEOUT", format!("{}ms", p.pool_timeout.as_millis())),
        (
            "QUERY_TIMEOUT",
            format!("{}ms", p.query_timeout.as_millis()),
        ),
    ];
    let service = Service::start(&ctx.serve_bin, &env, &[]).await?;
    let base = service.base_url();
    // A request waits for a slot, then for a connection, then for its query.
    let bound = p.pool_timeout + SERVICE_CONNECT_TIMEOUT + p.query_timeout;
    let limit = bound + Duration::from_secs(2);
    let client = load::client(p.concurrency, limit)?;
    // The load lasts until every request sent during the blackhole has had its full
    // bound, then `after` more to see the recovery.
    let duration = p.before + p.blackhole + limit + p.after;
    ctx.phase(
        NAME,
        format!(
            "{} clients on GET /health through the fault proxy for {}",
            p.concurrency,
            secs(duration)
        ),
    );
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run_get(
        client.clone(),
        format!("{base}/health"),
        p.concurrency,
        t0,
        duration,
        stop,
    ));
    tokio::time::sleep(p.before).await;
    ctx.phase(NAME, format!("blackhole for {}", secs(p.blackhole)));
    let hole_at = t0.elapsed();
    proxy.set_mode(FaultMode::Blackhole);
    tokio::time::sleep(p.blackhole).await;
    proxy.set_mode(FaultMode::PassThrough);
    let hole_end = t0.elapsed();
    ctx.phase(
        NAME,
        "network back; load continues until every request had its bound",
    );
    let samples: Vec<Sample> = load
        .await
        .map_err(|e| ChaosError::Unexpected(format!("load task: {e}")))?;
    let end = t0.elapsed();
    let affected = samples
        .iter()
        .filter(|s| s.ended() >= hole_at && s.sent < hole_end)
        .count();
    // The recovery is measured from the moment every request of the blackhole is over.
    let first_success = load::first_success_after(&samples, hole_end);
    let pool_after = PoolView::from_json(
        &settle(Duration::from_secs(5), 0, || async {
            Ok(PoolView::from_json(&pool_json(&client, &base).await?).checked_out)
        })
        .await
        .and(pool_json(&client, &base).await)?,
    );
    let _ = service.stop(Duration::from_secs(15)).await?;
    let answered = samples
        .iter()
        .filter(|s| s.outcome != load::Outcome::Hang)
        .map(|s| s.took)
        .max();
    Ok(Figures {
        params: p.clone(),
        tally: load::tally(&samples),
        bound,
        slowest_answer: answered,
        affected,
        first_success,
        baseline_rps: load::ok_rate(&samples, Duration::from_millis(300), hole_at),
        final_rps: load::ok_rate(&samples, end.saturating_sub(p.after), end),
        pool_after,
    })
}

impl Figures {
    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = &self.params;
        let t = &self.tally;
        let mut r = Report::new(
            "3. Network blackhole",
            format!(
                "`queuepool serve` → fault proxy → PostgreSQL (POOL_SIZE={} MAX_OVERFLOW=0 POOL_TIMEOUT={} QUERY_TIMEOUT={}), {} clients on `GET /health`; \
                 after {} the proxy drops every byte in both directions (open and new connections) for {}, then forwards again.",
                p.pool_size,
                secs(p.pool_timeout),
                secs(p.query_timeout),
                p.concurrency,
                secs(p.before),
                secs(p.blackhole)
            ),
        );
        r.info("requests", t.total)
            .info("ok", t.ok)
            .info(
                "requests in flight or sent during the blackhole",
                self.affected,
            )
            .info("failed: 503 with JSON body", t.failed_503_json)
            .check(
                "hangs (no answer within bound + 2 s)",
                t.hangs,
                "0",
                t.hangs == 0,
            )
            .check(
                "slowest answered request",
                opt_ms(self.slowest_answer),
                format!(
                    "<= pool_timeout + connect_timeout + query_timeout = {}",
                    secs(self.bound)
                ),
                self.slowest_answer.is_some_and(|d| d <= self.bound),
            )
            .check(
                "other failures (500, no body, transport)",
                t.failed_other - t.hangs,
                "0",
                t.failed_other == t.hangs,
            )
            .info("network back -> first success", opt_ms(self.first_success))
            .info(
                "throughput before",
                format!("{:.0} req/s", self.baseline_rps),
            )
            .check(
                "throughput at the end",
                format!("{:.0} req/s", self.final_rps),
                ">= 50 % of before",
                self.final_rps >= 0.5 * self.baseline_rps,
            )
            .check(
                "slots leaked afterwards",
                self.pool_after.checked_out,
                "0",
                self.pool_after.checked_out == 0,
            )
            .info("connections opened in total", self.pool_after.created);
        for (kind, n) in &t.kinds {
            r.note(format!("{n} x {kind}"));
        }
        r
    }
}

/// What the library variant measured: the same blackhole, with the pool used directly
/// and each query bounded by `PgConnection::timeout`.
#[derive(Debug, Clone)]
pub struct LibraryFigures {
    /// Operations (checkout + query) attempted.
    pub total: usize,
    /// Operations that succeeded.
    pub ok: usize,
    /// The slowest operation, success or failure.
    pub slowest: Duration,
    /// `pool_timeout + connect_timeout + query timeout`.
    pub bound: Duration,
    /// From the end of the blackhole to the first success that started after it.
    pub first_success: Option<Duration>,
    /// Checked out after the load.
    pub checked_out_after: usize,
    /// Connections a fresh burst of `pool_size` checkouts could get after the load.
    pub capacity_after: usize,
}

/// The library variant: 16 tasks doing `pool.get()` + `SELECT 1` bounded by
/// `PgConnection::timeout`, through the proxy, with a blackhole in the middle.
pub async fn run_library(ctx: &Ctx, p: &Params) -> Result<LibraryFigures, ChaosError> {
    use queuepool::{Pool, PoolConfig, PooledConn};
    use queuepool_postgres::PgManager;
    const NAME: &str = "blackhole-lib";
    let db = TestDb::create().await?;
    let proxy = FaultProxy::start(server_addr(&db)?).await?;
    let connect_timeout = Duration::from_secs(2);
    let query_timeout = Duration::from_secs(1);
    let config = PoolConfig::builder()
        .pool_size(p.pool_size)
        .max_overflow(0)
        .pool_timeout(p.pool_timeout)
        .connect_timeout(connect_timeout)
        .name("chaos-blackhole")
        .build()?;
    let pool = Pool::new(
        PgManager::from_url(&db.url_via("127.0.0.1", proxy.port())?)?,
        config,
    )
    .await?;
    let bound = p.pool_timeout + connect_timeout + query_timeout;
    let t0 = Instant::now();
    let duration = p.before + p.blackhole + bound + p.after;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..p.concurrency {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            while t0.elapsed() < duration {
                let sent = t0.elapsed();
                let ok = match pool.get().await {
                    Ok(mut conn) => {
                        let r = conn
                            .timeout(query_timeout, conn.simple_query("SELECT 1"))
                            .await;
                        match r {
                            Ok(_) => true,
                            Err(e) => {
                                PooledConn::report_error(&mut conn, &e);
                                false
                            }
                        }
                    }
                    Err(_) => false,
                };
                out.push((sent, t0.elapsed() - sent, ok));
                if !ok {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            out
        });
    }
    tokio::time::sleep(p.before).await;
    ctx.phase(NAME, format!("blackhole for {}", secs(p.blackhole)));
    proxy.set_mode(FaultMode::Blackhole);
    tokio::time::sleep(p.blackhole).await;
    proxy.set_mode(FaultMode::PassThrough);
    let hole_end = t0.elapsed();
    let mut ops = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ops.extend(r.map_err(|e| ChaosError::Unexpected(format!("load task: {e}")))?);
    }
    // A guard dropped a moment ago may still be resetting its connection: that slot
    // comes back by itself; a leaked one never does.
    let checked_out_after = settle(Duration::from_secs(3), 0, || async {
        Ok(pool.status().checked_out)
    })
    .await?;
    let mut burst = Vec::new();
    for _ in 0..p.pool_size {
        if let Ok(c) = pool.get().await {
            burst.push(c);
        }
    }
    let capacity_after = burst.len();
    drop(burst);
    pool.close(Duration::from_secs(2)).await;
    Ok(LibraryFigures {
        total: ops.len(),
        ok: ops.iter().filter(|o| o.2).count(),
        slowest: ops.iter().map(|o| o.1).max().unwrap_or_default(),
        bound,
        first_success: ops
            .iter()
            .filter(|o| o.2 && o.0 >= hole_end)
            .map(|o| o.0 + o.1 - hole_end)
            .min(),
        checked_out_after,
        capacity_after,
    })
}

impl LibraryFigures {
    /// Every operation ended within `pool_timeout + connect_timeout + query timeout`,
    /// with a scheduling margin.
    pub fn slowest_within_bound(&self) -> bool {
        self.slowest <= self.bound + Duration::from_millis(250)
    }

    /// The first success after the network came back came within `connect_timeout`
    /// (2 s) plus one connect: an attempt sent just before the network came back hangs
    /// for its whole connect_timeout; the next one then needs a connect of its own, and
    /// the scheduling margin the slowest-operation check allows.
    pub fn first_success_within_bound(&self) -> bool {
        self.first_success
            .is_some_and(|d| d <= Duration::from_secs(2) + Duration::from_millis(250))
    }

    /// The figures as a table.
    pub fn report(&self, p: &Params) -> Report {
        let mut r = Report::new(
            "3b. Network blackhole, library with bounded queries",
            format!(
                "`Pool<PgManager>` → fault proxy → PostgreSQL (pool_size={} max_overflow=0 pool_timeout={} connect_timeout=2 s), \
                 {} tasks doing `get()` + `conn.timeout(1 s, SELECT 1)`; blackhole for {}.",
                p.pool_size,
                secs(p.pool_timeout),
                p.concurrency,
                secs(p.blackhole)
            ),
        );
        r.info("operations", self.total)
            .info("ok", self.ok)
            .check(
                "slowest operation",
                crate::report::ms(self.slowest),
                format!(
                    "<= pool_timeout + connect_timeout + query timeout = {}",
                    secs(self.bound)
                ),
                self.slowest_within_bound(),
            )
            .check(
                "network back -> first success",
                opt_ms(self.first_success),
                "<= connect_timeout = 2 s + one connect (attempts caught in the blackhole time out first)",
                self.first_success_within_bound(),
            )
            .check(
                "checked out after the load",
                self.checked_out_after,
                "0",
                self.checked_out_after == 0,
            )
            .check(
                "pool_size checkouts possible afterwards",
                self.capacity_after,
                p.pool_size.to_string(),
                self.capacity_after == p.pool_size as usize,
            );
        r
    }
}
