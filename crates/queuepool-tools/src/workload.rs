//! The measured loop shared by `bench` and `tune`: `concurrency` tasks run one query
//! after another for a fixed time, either through a pool or on a new connection each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use queuepool::{Pool, PooledConn};

use crate::error::{ToolsError, chain};
use crate::progress::Progress;
use crate::target::{Query, Target};

/// What one run measured. Latencies are in microseconds.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Queries that succeeded.
    pub queries: u64,
    /// Queries (or checkouts, or connects) that failed.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Time from asking for a connection to having read the result.
    pub latency: Histogram<u64>,
    /// Time waiting for the pool (pooled runs) or opening the connection (unpooled).
    pub wait: Histogram<u64>,
    /// Sum of the time connections were held for the query, in microseconds.
    pub hold_sum_us: u64,
    /// Connections opened: unpooled, one per query; pooled, every connection the pool
    /// (built for the run) opened, its prefill included.
    pub connections_opened: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("proven invariant: 1 µs to 1 h at 3 significant digits are valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl RunResult {
    fn empty() -> RunResult {
        RunResult {
            queries: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            latency: histogram(),
            wait: histogram(),
            hold_sum_us: 0,
            connections_opened: 0,
        }
    }

    /// Records a successful query: it waited `wait` for its connection (none without a
    /// pool) and held it from `held_from` to `end`, out of a latency from `t0` to `end`.
    fn record_ok(
        &mut self,
        done: &AtomicU64,
        t0: Instant,
        held_from: Instant,
        end: Instant,
        wait: bool,
    ) {
        self.queries += 1;
        done.fetch_add(1, Relaxed);
        let _ = self.latency.record(micros(end - t0));
        if wait {
            let _ = self.wait.record(micros(held_from - t0));
        }
        self.hold_sum_us += micros(end - held_from);
    }

    /// Records a failed checkout, connect or query; the first error is kept.
    fn record_err(&mut self, error: &dyn std::error::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| chain(error));
    }

    fn merge(&mut self, other: RunResult) {
        self.queries += other.queries;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        let _ = self.latency.add(&other.latency);
        let _ = self.wait.add(&other.wait);
        self.hold_sum_us += other.hold_sum_us;
        self.connections_opened += other.connections_opened;
    }

    /// Successful queries per second.
    pub fn qps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.queries as f64 / secs
        } else {
            0.0
        }
    }

    /// A latency quantile in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// A quantile of the wait for a connection, in milliseconds.
    pub fn wait_ms(&self, q: f64) -> f64 {
        if self.wait.is_empty() {
            return 0.0;
        }
        self.wait.value_at_quantile(q) as f64 / 1000.0
    }

    /// Mean time a connection was held per query, in milliseconds.
    pub fn hold_mean_ms(&self) -> f64 {
        if self.queries == 0 {
            0.0
        } else {
            self.hold_sum_us as f64 / self.queries as f64 / 1000.0
        }
    }
}

/// Runs `query` once on a new connection, so a bad query or URL fails before the runs.
pub async fn check_query<T: Target>(manager: &T, query: &Query) -> Result<(), ToolsError> {
    let mut conn = tokio::time::timeout(Duration::from_secs(15), manager.connect())
        .await
        .map_err(|_| ToolsError::Db {
            context: "cannot connect to the database".into(),
            source: "no answer within 15 s".into(),
        })?
        .map_err(|e| ToolsError::db("cannot connect to the database", e))?;
    let result = T::run(&mut conn, query).await;
    manager.close(conn).await;
    result.map_err(|e| ToolsError::db(format!("the query {:?} failed", &*query.sql), e))
}

/// Shows the live rate on the progress bar until `end`.
async fn tick(progress: &Progress, label: &str, done: &AtomicU64, started: Instant, end: Instant) {
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if now >= end {
            progress.advance(
                u64::try_from(end.saturating_duration_since(last).as_millis()).unwrap_or(0),
            );
            return;
        }
        progress.advance(u64::try_from(now.duration_since(last).as_millis()).unwrap_or(0));
        last = now;
        let secs = now.duration_since(started).as_secs_f64().max(0.001);
        progress.status(format!(
            "{label}: {} queries/s",
            crate::table::thousands(done.load(Relaxed) as f64 / secs)
        ));
        tokio::time::sleep(Duration::from_millis(200).min(end.saturating_duration_since(now)))
            .await;
    }
}

/// `concurrency` tasks each check out a connection, run `query`, and return it, until
/// `duration` has passed.
pub async fn pooled<T: Target>(
    pool: &Pool<T>,
    query: &Query,
    concurrency: usize,
    duration: Duration,
    progress: &Progress,
    label: &str,
) -> RunResult {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let pool = pool.clone();
        let query = query.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = RunResult::empty();
            // One clock read ends a query and starts the next (see `direct`).
            let mut t0 = Instant::now();
            while t0 < end {
                let mut conn = match pool.get().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        r.record_err(&e);
                        t0 = Instant::now();
                        continue;
                    }
                };
                let t1 = Instant::now();
                let result = T::run(&mut conn, &query).await;
                let t2 = Instant::now();
                match result {
                    Ok(()) => r.record_ok(&done, t0, t1, t2, true),
                    Err(e) => {
                        r.record_err(&e);
                        PooledConn::report_error(&mut conn, &e);
                    }
                }
                t0 = t2;
            }
            r
        }));
    }
    let mut total = gather(
        tasks,
        RunResult::empty(),
        progress,
        label,
        &done,
        started,
        end,
    )
    .await;
    total.connections_opened = pool.stats().connections_created;
    total
}

/// `concurrency` tasks each open a new connection, run `query` and close it, until
/// `duration` has passed: the application without a pool.
pub async fn unpooled<T: Target>(
    manager: Arc<T>,
    query: &Query,
    concurrency: usize,
    duration: Duration,
    progress: &Progress,
    label: &str,
) -> RunResult {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let manager = manager.clone();
        let query = query.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = RunResult::empty();
            while Instant::now() < end {
                let t0 = Instant::now();
                r.connections_opened += 1;
                let mut conn =
                    match tokio::time::timeout(Duration::from_secs(10), manager.connect()).await {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(e)) => {
                            r.record_err(&e);
                            continue;
                        }
                        Err(_) => {
                            r.errors += 1;
                            r.first_error
                                .get_or_insert_with(|| "connect timed out after 10 s".into());
                            continue;
                        }
                    };
                let t1 = Instant::now();
                match T::run(&mut conn, &query).await {
                    Ok(()) => r.record_ok(&done, t0, t1, Instant::now(), true),
                    Err(e) => r.record_err(&e),
                }
                manager.close(conn).await;
            }
            r
        }));
    }
    gather(
        tasks,
        RunResult::empty(),
        progress,
        label,
        &done,
        started,
        end,
    )
    .await
}

/// `concurrency` tasks each open one connection and run `query` on it until `duration`
/// has passed, with no pool in between (what pgbench does): the driver's own cost,
/// against which the pool's is measured.
pub async fn direct<T: Target>(
    manager: Arc<T>,
    query: &Query,
    concurrency: usize,
    duration: Duration,
    progress: &Progress,
    label: &str,
) -> RunResult {
    let done = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::with_capacity(concurrency);
    let mut setup = RunResult::empty();
    for _ in 0..concurrency {
        setup.connections_opened += 1;
        match manager.connect().await {
            Ok(conn) => conns.push(conn),
            Err(e) => setup.record_err(&e),
        }
    }
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for mut conn in conns {
        let manager = manager.clone();
        let query = query.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = RunResult::empty();
            // The instant a query ends is the next one's start and the loop's check, as
            // in pgbench: one clock read per query (a query's latency then includes the
            // previous one's recording, tens of nanoseconds).
            let mut t0 = Instant::now();
            while t0 < end {
                let result = T::run(&mut conn, &query).await;
                let t1 = Instant::now();
                match result {
                    Ok(()) => r.record_ok(&done, t0, t0, t1, false),
                    Err(e) => {
                        r.record_err(&e);
                        if manager.is_disconnect(&e) {
                            break;
                        }
                    }
                }
                t0 = t1;
            }
            manager.close(conn).await;
            r
        }));
    }
    gather(tasks, setup, progress, label, &done, started, end).await
}

/// Shows progress until `end`, then adds every client's result to `total`.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<RunResult>>,
    mut total: RunResult,
    progress: &Progress,
    label: &str,
    done: &AtomicU64,
    started: Instant,
    end: Instant,
) -> RunResult {
    tick(progress, label, done, started, end).await;
    for task in tasks {
        if let Ok(r) = task.await {
            total.merge(r);
        }
    }
    total.elapsed = started.elapsed();
    total
}
