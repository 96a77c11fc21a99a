//! Scenario 2: every backend of the pool is killed with `pg_terminate_backend` every
//! 2 s while the service is under load, with pre-ping on.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use queuepool_testkit::TestDb;

use crate::Ctx;
use crate::error::ChaosError;
use crate::fixtures::{PoolView, pool_json};
use crate::load::{self, Tally};
use crate::report::{Report, opt_ms, secs};
use crate::scenarios::SERVICE_CONNECT_TIMEOUT;
use crate::service::Service;

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Length of the load.
    pub duration: Duration,
    /// Time between two rounds of `pg_terminate_backend`.
    pub every: Duration,
    /// `POOL_SIZE`.
    pub pool_size: u32,
    /// Pause of each client between two requests (0: back to back).
    pub think: Duration,
}

impl Params {
    /// The form: 20 s of load, 64 clients.
    pub fn full() -> Params {
        Params {
            concurrency: 64,
            duration: Duration::from_secs(20),
            every: Duration::from_secs(2),
            pool_size: 10,
            think: Duration::ZERO,
        }
    }

    /// For tests: 7 s, 3 rounds of kills.
    pub fn short() -> Params {
        Params {
            concurrency: 32,
            duration: Duration::from_secs(7),
            every: Duration::from_secs(2),
            pool_size: 10,
            think: Duration::ZERO,
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
    /// Rounds of kills.
    pub rounds: usize,
    /// Backends terminated in total.
    pub terminated: usize,
    /// The slowest failed request.
    pub slowest_failure: Option<Duration>,
    /// `/pool` after the load.
    pub pool_after: PoolView,
    /// `stats.invalidated` and `stats.pool_invalidations` of `/pool`.
    pub invalidated: (i64, i64),
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "terminate";
    let db = TestDb::create().await?;
    let env = [
        ("DATABASE_URL", db.url().to_owned()),
        ("POOL_SIZE", p.pool_size.to_string()),
        ("MAX_OVERFLOW", "0".to_owned()),
        ("POOL_TIMEOUT", "5".to_owned()),
        ("POOL_PRE_PING", "true".to_owned()),
    ];
    let service = Service::start(&ctx.serve_bin, &env, &[]).await?;
    let base = service.base_url();
    let client = load::client(
        p.concurrency,
        Duration::from_secs(5) + SERVICE_CONNECT_TIMEOUT,
    )?;
    ctx.phase(
        NAME,
        format!(
            "{} clients on GET /health for {}, killing every backend every {}",
            p.concurrency,
            secs(p.duration),
            secs(p.every)
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
    let (mut rounds, mut terminated) = (0, 0);
    let mut next = p.every;
    while next + Duration::from_millis(500) < p.duration {
        tokio::time::sleep(next.saturating_sub(t0.elapsed())).await;
        let n = db.terminate_all(db.application_name()).await?;
        rounds += 1;
        terminated += n;
        ctx.phase(NAME, format!("round {rounds}: terminated {n} backends"));
        next += p.every;
    }
    let samples = load
        .await
        .map_err(|e| ChaosError::Unexpected(format!("load task: {e}")))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let json = pool_json(&client, &base).await?;
    let invalidated = (
        json["stats"]["invalidated"].as_i64().unwrap_or(-1),
        json["stats"]["pool_invalidations"].as_i64().unwrap_or(-1),
    );
    let _ = service.stop(Duration::from_secs(15)).await?;
    Ok(Figures {
        params: p.clone(),
        tally: load::tally(&samples),
        rounds,
        terminated,
        slowest_failure: load::slowest_failure(&samples),
        pool_after: PoolView::from_json(&json),
        invalidated,
    })
}

impl Figures {
    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = &self.params;
        let t = &self.tally;
        let mut r = Report::new(
            "2. Backends killed every 2 s under load (pre-ping on)",
            format!(
                "`queuepool serve` on the shared PostgreSQL server (POOL_SIZE={} MAX_OVERFLOW=0 POOL_PRE_PING=true), \
                 {} clients looping on `GET /health` for {}; every {} `pg_terminate_backend` on every connection of the pool.",
                p.pool_size,
                p.concurrency,
                secs(p.duration),
                secs(p.every)
            ),
        );
        r.info("requests", t.total)
            .info("ok", t.ok)
            .info("rounds of kills", self.rounds)
            .info("backends terminated", self.terminated)
            .check("failed requests", t.failed(), "0", t.failed() == 0)
            .check(
                "failed without a JSON 503",
                t.failed_other,
                "0",
                t.failed_other == 0,
            )
            .info("slowest failure", opt_ms(self.slowest_failure))
            .info(
                "connections invalidated / pool-wide invalidations",
                format!("{} / {}", self.invalidated.0, self.invalidated.1),
            )
            .info("connections opened in total", self.pool_after.created)
            .check(
                "slots leaked afterwards",
                self.pool_after.checked_out,
                "0",
                self.pool_after.checked_out == 0,
            );
        for (kind, n) in &t.kinds {
            r.note(format!("{n} x {kind}"));
        }
        r
    }
}
