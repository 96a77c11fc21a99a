//! Scenario 1: the database restarts under load. 64 clients against the service; the
//! database is stopped in the middle and started again.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::error::ChaosError;
use crate::fixtures::{Cluster, PoolView, pool_json, settle};
use crate::load::{self, Sample, Tally};
use crate::report::{Report, opt_ms, secs};
use crate::scenarios::SERVICE_CONNECT_TIMEOUT;
use crate::service::{Exit, Service};

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Length of the load.
    pub duration: Duration,
    /// When the database is stopped, after the start of the load.
    pub stop_at: Duration,
    /// How long it stays down.
    pub outage: Duration,
    /// `POOL_SIZE`.
    pub pool_size: u32,
    /// `MAX_OVERFLOW`.
    pub max_overflow: u32,
    /// `POOL_TIMEOUT`.
    pub pool_timeout: Duration,
    /// How long to wait after the load for the pool to shrink back to `pool_size`
    /// (overflow connections close after 10 s idle).
    pub settle: Duration,
}

impl Params {
    /// The form: 20 s of load, 5 s outage.
    pub fn full() -> Params {
        Params {
            concurrency: 64,
            duration: Duration::from_secs(20),
            stop_at: Duration::from_millis(7500),
            outage: Duration::from_secs(5),
            pool_size: 10,
            max_overflow: 5,
            pool_timeout: Duration::from_secs(5),
            settle: Duration::from_secs(15),
        }
    }

    /// For tests: 7 s of load, 2 s outage, no overflow (so nothing has to age out).
    pub fn short() -> Params {
        Params {
            concurrency: 64,
            duration: Duration::from_secs(7),
            stop_at: Duration::from_secs(2),
            outage: Duration::from_secs(2),
            pool_size: 10,
            max_overflow: 0,
            pool_timeout: Duration::from_secs(2),
            settle: Duration::from_secs(3),
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
    /// The slowest failed request.
    pub slowest_failure: Option<Duration>,
    /// `pool_timeout + connect_timeout`: the bound for any request.
    pub failure_bound: Duration,
    /// Successful requests per second before the outage.
    pub baseline_rps: f64,
    /// From `pg_ctl start` returning to the first success.
    pub first_success: Option<Duration>,
    /// From `pg_ctl start` being called (the server still starting) to the first
    /// success: an upper bound of the recovery that includes the server's startup.
    pub first_success_from_start: Option<Duration>,
    /// From `pg_ctl start` returning to the first 250 ms window at >= 80 % of the
    /// baseline rate.
    pub full_rate: Option<Duration>,
    /// How long the database was actually down (stop called to start returned).
    pub downtime: Duration,
    /// The pool's connections on the server after the load.
    pub connections_after: usize,
    /// `/pool` after the load.
    pub pool_after: PoolView,
    /// The pool's connections on the server after the service stopped.
    pub connections_after_shutdown: usize,
    /// How the service exited on SIGTERM.
    pub exit: Exit,
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "restart";
    ctx.phase(NAME, "starting an ephemeral PostgreSQL cluster");
    let mut db = Cluster::start().await?;
    let env = [
        ("DATABASE_URL", db.url()),
        ("POOL_SIZE", p.pool_size.to_string()),
        ("MAX_OVERFLOW", p.max_overflow.to_string()),
        ("POOL_TIMEOUT", format!("{}ms", p.pool_timeout.as_millis())),
    ];
    let service = Service::start(&ctx.serve_bin, &env, &[]).await?;
    let base = service.base_url();
    let bound = p.pool_timeout + SERVICE_CONNECT_TIMEOUT;
    let client = load::client(p.concurrency, bound + Duration::from_secs(2))?;
    ctx.phase(
        NAME,
        format!(
            "service on {base}; {} clients on GET /health for {}",
            p.concurrency,
            secs(p.duration)
        ),
    );
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run_get(
        client.clone(),
        format!("{base}/health"),
        p.concurrency,
        t0,
        p.duration,
        stop,
    ));
    tokio::time::sleep(p.stop_at.saturating_sub(t0.elapsed())).await;
    ctx.phase(NAME, "stopping the database (pg_ctl stop -m fast)");
    let down_at = t0.elapsed();
    db.cluster.stop().await?;
    tokio::time::sleep((p.stop_at + p.outage).saturating_sub(t0.elapsed())).await;
    ctx.phase(NAME, "starting the database again");
    let start_called = t0.elapsed();
    db.cluster.start().await?;
    let back = t0.elapsed();
    ctx.phase(
        NAME,
        format!("database back after {}", secs(back - down_at)),
    );
    let samples: Vec<Sample> = load
        .await
        .map_err(|e| ChaosError::Unexpected(format!("load task: {e}")))?;
    let end = t0.elapsed();
    ctx.phase(NAME, format!("load done: {} requests", samples.len()));

    let baseline_rps = load::ok_rate(&samples, Duration::from_millis(500), down_at);
    let first_success = load::first_success_after(&samples, back);
    let first_success_from_start = load::first_success_after(&samples, start_called);
    let full_rate = load::full_rate_after(
        &samples,
        back,
        end.min(p.duration),
        baseline_rps,
        0.8,
        Duration::from_millis(250),
    );
    let want = p.pool_size as usize;
    let connections_after = settle(p.settle, want, || db.count_connections()).await?;
    let pool_after = PoolView::from_json(&pool_json(&client, &base).await?);
    ctx.phase(
        NAME,
        format!("after the load: {connections_after} connections on the server, {pool_after:?}"),
    );
    let exit = service.stop(Duration::from_secs(15)).await?;
    let connections_after_shutdown =
        settle(Duration::from_secs(3), 0, || db.count_connections()).await?;
    Ok(Figures {
        params: p.clone(),
        tally: load::tally(&samples),
        slowest_failure: load::slowest_failure(&samples),
        failure_bound: bound,
        baseline_rps,
        first_success,
        first_success_from_start,
        full_rate,
        downtime: back - down_at,
        connections_after,
        pool_after,
        connections_after_shutdown,
        exit,
    })
}

impl Figures {
    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = &self.params;
        let t = &self.tally;
        let mut r = Report::new(
            "1. Database restart under load",
            format!(
                "`queuepool serve` (PostgreSQL 15, ephemeral cluster, POOL_SIZE={} MAX_OVERFLOW={} POOL_TIMEOUT={}), \
                 {} clients looping on `GET /health` for {}; `pg_ctl stop -m fast` at {}, `pg_ctl start` {} later.",
                p.pool_size,
                p.max_overflow,
                secs(p.pool_timeout),
                p.concurrency,
                secs(p.duration),
                secs(p.stop_at),
                secs(p.outage)
            ),
        );
        let one_second = Duration::from_secs(1);
        r.info("requests", t.total)
            .info("ok (200)", t.ok)
            .info("failed: 503 with JSON body", t.failed_503_json)
            .check(
                "failed otherwise (500, no body, transport, hang)",
                t.failed_other,
                "0",
                t.failed_other == 0,
            )
            .check(
                "slowest failure",
                opt_ms(self.slowest_failure),
                format!(
                    "<= pool_timeout + connect_timeout = {}",
                    secs(self.failure_bound)
                ),
                self.slowest_failure.is_none_or(|d| d <= self.failure_bound),
            )
            .info("database down for", secs(self.downtime))
            .info(
                "throughput before the outage",
                format!("{:.0} req/s", self.baseline_rps),
            )
            .check(
                "database back (`pg_ctl start -w` returned) -> first success",
                opt_ms(self.first_success),
                "<= 1 s",
                self.first_success.is_some_and(|d| d <= one_second),
            )
            .info(
                "`pg_ctl start` called -> first success (includes the server's startup)",
                opt_ms(self.first_success_from_start),
            )
            .check(
                "database back -> full throughput (250 ms window >= 80 % of before)",
                opt_ms(self.full_rate),
                "<= 1 s",
                self.full_rate.is_some_and(|d| d <= one_second),
            )
            .check(
                "connections on the server afterwards",
                self.connections_after,
                format!("= pool_size = {}", p.pool_size),
                self.connections_after == p.pool_size as usize,
            )
            .check(
                "slots leaked (checked out after the load)",
                self.pool_after.checked_out,
                "0",
                self.pool_after.checked_out == 0,
            )
            .info("idle connections in /pool afterwards", self.pool_after.idle)
            .info("connections opened in total", self.pool_after.created)
            .check(
                "service exit on SIGTERM",
                format!("{:?}", self.exit.code),
                "Some(0)",
                self.exit.code == Some(0),
            )
            .check(
                "connections left after shutdown",
                self.connections_after_shutdown,
                "0",
                self.connections_after_shutdown == 0,
            );
        for (kind, n) in &t.kinds {
            r.note(format!("{n} x {kind}"));
        }
        r
    }
}
