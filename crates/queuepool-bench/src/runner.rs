//! Measurement loops. One measurement = a fresh runtime and a fresh, full pool; a
//! warm-up; then a fixed duration during which operations are counted and checkout
//! waits recorded.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::BenchError;
use crate::pools::{self, BenchPool, PoolKind};
use crate::scenario::Scenario;

/// In the single-task scenario one checkout in this many is timed: reading the clock
/// twice per operation would cost about as much as the operation itself and flatten
/// the ratios between pools.
pub const SAMPLE_EVERY: u64 = 64;

/// Highest recordable wait, nanoseconds (values above are clamped).
const MAX_WAIT_NS: u64 = 60_000_000_000;

/// What one measurement produced.
#[derive(Debug)]
pub struct Measurement {
    /// Completed checkout + return cycles in the measured window.
    pub ops: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Checkout waits (time of `get().await`), nanoseconds.
    pub waits: Histogram<u64>,
}

impl Measurement {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// A wait quantile in microseconds.
    pub fn wait_us(&self, quantile: f64) -> f64 {
        self.waits.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// The longest wait in microseconds.
    pub fn max_wait_us(&self) -> f64 {
        self.waits.max() as f64 / 1_000.0
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits (low >= 1, high >= 2 * low,
    // sigfig <= 5), so construction cannot fail.
    Histogram::new_with_bounds(1, MAX_WAIT_NS, 3).expect("constant valid histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs one measurement of `pool` in `scenario`.
pub fn measure(
    kind: PoolKind,
    scenario: Scenario,
    warmup: Duration,
    secs: Duration,
) -> Result<Measurement, BenchError> {
    // Counting instructions (scripts/instr-per-op): one thread schedules the tasks the
    // same way in every run, so the count of a contended scenario repeats.
    let workers = if std::env::var_os("QUEUEPOOL_BENCH_CURRENT_THREAD").is_some() {
        0
    } else {
        scenario.workers()
    };
    let rt = match workers {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .map_err(BenchError::Runtime)?;
    let size = scenario.pool_size();
    match kind {
        PoolKind::Queuepool | PoolKind::QueuepoolReset => {
            let clean = kind == PoolKind::Queuepool;
            let pool = rt.block_on(pools::queuepool(size, clean))?;
            run(&rt, pool, scenario, warmup, secs)
        }
        PoolKind::TokioSemaphore => run(&rt, pools::tokio_semaphore(size), scenario, warmup, secs),
        PoolKind::Floor => run(&rt, pools::floor(), scenario, warmup, secs),
        PoolKind::Deadpool => {
            let pool = rt.block_on(pools::deadpool(size))?;
            run(&rt, pool, scenario, warmup, secs)
        }
        PoolKind::Bb8 => {
            let pool = rt.block_on(pools::bb8(size))?;
            run(&rt, pool, scenario, warmup, secs)
        }
    }
}

fn run<P: BenchPool>(
    rt: &tokio::runtime::Runtime,
    pool: P,
    scenario: Scenario,
    warmup: Duration,
    secs: Duration,
) -> Result<Measurement, BenchError> {
    if scenario.tasks() == 1 {
        // A spawned task, as a request handler is: a pool may do less inside a task
        // than in `block_on`'s future (queuepool's return asks tokio whether it may
        // spawn a reset: a task-id read in a task, a runtime-handle clone outside one).
        let task = rt.spawn(single(pool, warmup, secs));
        return rt.block_on(task).map_err(task_error)?;
    }
    let warm_end = Instant::now() + warmup;
    let end = warm_end + secs;
    let handles: Vec<_> = (0..scenario.tasks())
        .map(|_| rt.spawn(worker(pool.clone(), warm_end, end)))
        .collect();
    rt.block_on(async move {
        let mut total = Measurement {
            ops: 0,
            elapsed: secs,
            waits: histogram(),
        };
        for handle in handles {
            let (ops, waits) = handle.await.map_err(task_error)??;
            total.ops += ops;
            // Same bounds on both sides: adding cannot fail.
            total
                .waits
                .add(&waits)
                .expect("histograms built with identical bounds");
        }
        Ok(total)
    })
}

/// A bench task that panicked or was cancelled.
fn task_error(e: tokio::task::JoinError) -> BenchError {
    BenchError::Pool {
        pool: "bench task",
        message: e.to_string(),
    }
}

/// One of the tasks of a multi-task scenario: checkout (timed), yield, return, until
/// `end`; operations that start before `warm_end` are warm-up and not counted.
async fn worker<P: BenchPool>(
    pool: P,
    warm_end: Instant,
    end: Instant,
) -> Result<(u64, Histogram<u64>), BenchError> {
    let mut waits = histogram();
    let mut ops = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let conn = pool.checkout().await?;
        let waited = t0.elapsed();
        tokio::task::yield_now().await;
        drop(conn);
        if t0 >= warm_end {
            ops += 1;
            waits.saturating_record(nanos(waited));
        }
    }
    Ok((ops, waits))
}

/// The single-task scenario, in one spawned task: no clock read on most iterations
/// (see [`SAMPLE_EVERY`]).
async fn single<P: BenchPool>(
    pool: P,
    warmup: Duration,
    secs: Duration,
) -> Result<Measurement, BenchError> {
    let mut scratch = histogram();
    single_loop(&pool, Instant::now() + warmup, &mut scratch).await?;
    let mut waits = histogram();
    let start = Instant::now();
    let ops = single_loop(&pool, start + secs, &mut waits).await?;
    Ok(Measurement {
        ops,
        elapsed: start.elapsed(),
        waits,
    })
}

async fn single_loop<P: BenchPool>(
    pool: &P,
    end: Instant,
    waits: &mut Histogram<u64>,
) -> Result<u64, BenchError> {
    let mut ops = 0u64;
    loop {
        for _ in 1..SAMPLE_EVERY {
            let conn = pool.checkout().await?;
            drop(std::hint::black_box(conn));
        }
        let t0 = Instant::now();
        let conn = pool.checkout().await?;
        let waited = t0.elapsed();
        drop(std::hint::black_box(conn));
        waits.saturating_record(nanos(waited));
        ops += SAMPLE_EVERY;
        if t0 >= end {
            return Ok(ops);
        }
    }
}
