//! The `pg` group (issue 10 §4): the PostgreSQL pools side by side against a real
//! server. 32 tasks share a pool of 8; each checks a connection out (timed), runs
//! `SELECT 1` over the simple protocol and returns it. Plain TCP only (`sslmode=disable`
//! for every pool); TLS and sqlx are not measured yet.

use std::future::Future;
use std::io::Read as _;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use queuepool_postgres::tokio_postgres::{self, NoTls};
use serde::Serialize;

use crate::args::PgArgs;
use crate::error::BenchError;
use crate::report::{self, median};
use crate::runner::histogram;

/// Pool size of every pool in the group.
pub const POOL_SIZE: u32 = 8;
/// Concurrent tasks.
pub const TASKS: usize = 32;
/// Scenario name in the table and the JSON.
pub const SCENARIO: &str = "select1-32-tasks-pool-8";
/// Runtime worker threads (the machine the figures come from has two cores).
const WORKERS: usize = 2;
/// Longest wait a pool may impose before the run is declared broken.
const CHECKOUT_LIMIT: Duration = Duration::from_secs(30);

/// Which pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgPoolKind {
    /// queuepool + `PgManager`, defaults (pre_ping on, rollback on return).
    Queuepool,
    /// deadpool-postgres, `RecyclingMethod::Fast`.
    Deadpool,
    /// bb8-postgres with `test_on_check_out(false)`.
    Bb8NoTest,
    /// bb8-postgres with its defaults (`SELECT` round trip on every checkout).
    Bb8Default,
}

impl PgPoolKind {
    /// The pools of a run, in the order they are interleaved and printed.
    pub const ALL: [PgPoolKind; 4] = [
        PgPoolKind::Queuepool,
        PgPoolKind::Deadpool,
        PgPoolKind::Bb8NoTest,
        PgPoolKind::Bb8Default,
    ];

    /// The name used in the table and the JSON (`pool` key).
    pub fn name(self) -> &'static str {
        match self {
            PgPoolKind::Queuepool => "queuepool",
            PgPoolKind::Deadpool => "deadpool-postgres",
            PgPoolKind::Bb8NoTest => "bb8-postgres",
            PgPoolKind::Bb8Default => "bb8-postgres-test-on-checkout",
        }
    }
}

/// The connection string every pool gets: the user's, with `sslmode=disable` added when
/// it names no `sslmode` (PostgreSQL's default `prefer` would give queuepool TLS and the
/// `NoTls` peers plain TCP). Any other `sslmode` is refused: this group measures plain
/// connections only.
pub fn plain_url(url: &str) -> Result<String, BenchError> {
    let lower = url.to_ascii_lowercase();
    if let Some(at) = lower.find("sslmode=") {
        let value: String = lower[at + "sslmode=".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if value == "disable" {
            return Ok(url.to_owned());
        }
        return Err(BenchError::Args(format!(
            "`--database-url`: sslmode={value}: the pg group measures plain connections only \
             (--tls is not implemented yet); use sslmode=disable or leave it out"
        )));
    }
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}sslmode=disable"))
    } else {
        Ok(format!("{url} sslmode=disable"))
    }
}

fn pool_error(kind: PgPoolKind, err: impl std::fmt::Display) -> BenchError {
    BenchError::Pool {
        pool: kind.name(),
        message: err.to_string(),
    }
}

/// One operation as the bench sees it: check out (returning how long that waited), run
/// `SELECT 1` over the simple protocol, return the connection.
trait PgBench: Clone + Send + Sync + 'static {
    fn op(&self) -> impl Future<Output = Result<Duration, BenchError>> + Send;
    fn prefill(&self) -> impl Future<Output = Result<(), BenchError>> + Send;
}

const QUERY: &str = "SELECT 1";

impl PgBench for queuepool::Pool<queuepool_postgres::PgManager> {
    async fn op(&self) -> Result<Duration, BenchError> {
        let t0 = Instant::now();
        let conn = self
            .get()
            .await
            .map_err(|e| pool_error(PgPoolKind::Queuepool, e))?;
        let waited = t0.elapsed();
        conn.simple_query(QUERY)
            .await
            .map_err(|e| pool_error(PgPoolKind::Queuepool, e))?;
        Ok(waited)
    }
    async fn prefill(&self) -> Result<(), BenchError> {
        // `Pool::new` already opened `pool_size` connections.
        Ok(())
    }
}

impl PgBench for deadpool_postgres::Pool {
    async fn op(&self) -> Result<Duration, BenchError> {
        let t0 = Instant::now();
        let conn = self
            .get()
            .await
            .map_err(|e| pool_error(PgPoolKind::Deadpool, e))?;
        let waited = t0.elapsed();
        conn.simple_query(QUERY)
            .await
            .map_err(|e| pool_error(PgPoolKind::Deadpool, e))?;
        Ok(waited)
    }
    async fn prefill(&self) -> Result<(), BenchError> {
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            held.push(
                self.get()
                    .await
                    .map_err(|e| pool_error(PgPoolKind::Deadpool, e))?,
            );
        }
        Ok(())
    }
}

type Bb8Pool = bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>;

impl PgBench for Bb8Pool {
    async fn op(&self) -> Result<Duration, BenchError> {
        let t0 = Instant::now();
        let conn = self
            .get()
            .await
            .map_err(|e| pool_error(PgPoolKind::Bb8NoTest, e))?;
        let waited = t0.elapsed();
        conn.simple_query(QUERY)
            .await
            .map_err(|e| pool_error(PgPoolKind::Bb8NoTest, e))?;
        Ok(waited)
    }
    async fn prefill(&self) -> Result<(), BenchError> {
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            held.push(
                self.get()
                    .await
                    .map_err(|e| pool_error(PgPoolKind::Bb8NoTest, e))?,
            );
        }
        Ok(())
    }
}

/// One repetition's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PgRep {
    /// Completed operations per second.
    pub ops_per_sec: f64,
    /// Process CPU time (user + system, all threads) per operation, µs.
    pub cpu_us_per_op: f64,
    /// 99th percentile checkout wait, µs.
    pub p99_wait_us: f64,
}

/// Process CPU time (user + system, every thread, including exited ones) from
/// `/proc/self/stat`, in clock ticks of 10 ms (Linux's fixed `USER_HZ` of 100).
fn process_cpu() -> Result<Duration, BenchError> {
    let mut stat = String::new();
    std::fs::File::open("/proc/self/stat")
        .and_then(|mut f| f.read_to_string(&mut stat))
        .map_err(|e| pool_error_io("/proc/self/stat", e))?;
    parse_cpu(&stat).ok_or_else(|| BenchError::Pool {
        pool: "cpu clock",
        message: "cannot parse /proc/self/stat".to_owned(),
    })
}

fn pool_error_io(what: &'static str, e: std::io::Error) -> BenchError {
    BenchError::Pool {
        pool: what,
        message: e.to_string(),
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// field 2 may contain spaces, so fields are counted after its closing parenthesis.
fn parse_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn run<P: PgBench>(
    rt: &tokio::runtime::Runtime,
    pool: P,
    warmup: Duration,
    secs: Duration,
) -> Result<PgRep, BenchError> {
    rt.block_on(pool.prefill())?;
    let warm_end = Instant::now() + warmup;
    let end = warm_end + secs;
    let handles: Vec<_> = (0..TASKS)
        .map(|_| rt.spawn(worker(pool.clone(), warm_end, end)))
        .collect();
    rt.block_on(async move {
        tokio::time::sleep_until(warm_end.into()).await;
        let cpu0 = process_cpu()?;
        tokio::time::sleep_until(end.into()).await;
        let cpu1 = process_cpu()?;
        let mut ops = 0u64;
        let mut waits = histogram();
        for handle in handles {
            let (n, w) = handle.await.map_err(|e| BenchError::Pool {
                pool: "bench task",
                message: e.to_string(),
            })??;
            ops += n;
            // Same bounds on both sides: adding cannot fail.
            waits
                .add(&w)
                .expect("histograms built with identical bounds");
        }
        let ops_f = ops.max(1) as f64;
        Ok(PgRep {
            ops_per_sec: ops as f64 / secs.as_secs_f64(),
            cpu_us_per_op: (cpu1.saturating_sub(cpu0)).as_secs_f64() * 1e6 / ops_f,
            p99_wait_us: waits.value_at_quantile(0.99) as f64 / 1_000.0,
        })
    })
}

async fn worker<P: PgBench>(
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
        let waited = pool.op().await?;
        if t0 >= warm_end {
            ops += 1;
            waits.saturating_record(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok((ops, waits))
}

/// One measurement: a fresh runtime and a fresh, full pool of `kind`.
fn measure(
    kind: PgPoolKind,
    url: &str,
    warmup: Duration,
    secs: Duration,
) -> Result<PgRep, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let pg_config = || tokio_postgres::Config::from_str(url).map_err(|e| pool_error(kind, e));
    let rep = match kind {
        PgPoolKind::Queuepool => {
            let manager =
                queuepool_postgres::PgManager::from_url(url).map_err(|e| pool_error(kind, e))?;
            let config = queuepool::PoolConfig::builder()
                .pool_size(POOL_SIZE)
                .max_overflow(0)
                .pool_timeout(CHECKOUT_LIMIT)
                .name("bench-pg")
                .build()
                .map_err(|e| pool_error(kind, e))?;
            let pool = rt
                .block_on(queuepool::Pool::new(manager, config))
                .map_err(|e| pool_error(kind, e))?;
            run(&rt, pool, warmup, secs)
        }
        PgPoolKind::Deadpool => {
            let manager = deadpool_postgres::Manager::from_config(
                pg_config()?,
                NoTls,
                deadpool_postgres::ManagerConfig {
                    recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                },
            );
            let pool = deadpool_postgres::Pool::builder(manager)
                .max_size(POOL_SIZE as usize)
                .build()
                .map_err(|e| pool_error(kind, e))?;
            run(&rt, pool, warmup, secs)
        }
        PgPoolKind::Bb8NoTest | PgPoolKind::Bb8Default => {
            let manager = bb8_postgres::PostgresConnectionManager::new(pg_config()?, NoTls);
            let mut builder = bb8::Pool::builder()
                .max_size(POOL_SIZE)
                .connection_timeout(CHECKOUT_LIMIT);
            if kind == PgPoolKind::Bb8NoTest {
                builder = builder.test_on_check_out(false);
            }
            let pool = rt
                .block_on(builder.build(manager))
                .map_err(|e| pool_error(kind, e))?;
            run(&rt, pool, warmup, secs)
        }
    };
    rt.shutdown_timeout(Duration::from_secs(5));
    rep
}

/// One row: medians over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct PgRow {
    /// Scenario name.
    pub name: &'static str,
    /// Pool name.
    pub pool: &'static str,
    /// Median ops/s.
    pub ops_per_sec: f64,
    /// Median client CPU per operation, µs.
    pub cpu_us_per_op: f64,
    /// Median of the 99th percentile checkout wait, µs.
    pub p99_wait_us: f64,
    /// `ops_per_sec` / deadpool-postgres's.
    pub ops_vs_deadpool: Option<f64>,
    /// `cpu_us_per_op` / deadpool-postgres's.
    pub cpu_vs_deadpool: Option<f64>,
    /// Every repetition, in run order.
    pub reps: Vec<PgRep>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct PgReport {
    /// One row per pool.
    pub scenarios: Vec<PgRow>,
    /// Repetitions per row.
    pub reps: usize,
    /// Measured seconds per repetition.
    pub secs: f64,
    /// Warm-up seconds before each repetition.
    pub warmup_secs: f64,
    /// Pool size and tasks.
    pub pool_size: u32,
    /// Concurrent tasks.
    pub tasks: usize,
}

/// Runs the group.
pub fn run_group(a: &PgArgs) -> Result<(), BenchError> {
    let url = plain_url(&a.database_url)?;
    let mut results: Vec<(PgPoolKind, Vec<PgRep>)> =
        PgPoolKind::ALL.iter().map(|&k| (k, Vec::new())).collect();
    for rep in 0..a.reps {
        for (kind, reps) in &mut results {
            let r = measure(*kind, &url, a.warmup, a.secs)?;
            eprintln!(
                "{:<30} rep {}/{}: {:>9.0} ops/s  {:>6.1} µs CPU/op  p99 wait {:>9.1} µs",
                kind.name(),
                rep + 1,
                a.reps,
                r.ops_per_sec,
                r.cpu_us_per_op,
                r.p99_wait_us
            );
            reps.push(r);
        }
    }
    let med =
        |reps: &[PgRep], f: fn(&PgRep) -> f64| median(&mut reps.iter().map(f).collect::<Vec<_>>());
    let base = results
        .iter()
        .find(|(k, _)| *k == PgPoolKind::Deadpool)
        .map(|(_, r)| (med(r, |x| x.ops_per_sec), med(r, |x| x.cpu_us_per_op)));
    let rows: Vec<PgRow> = results
        .iter()
        .map(|(kind, reps)| {
            let ops = med(reps, |x| x.ops_per_sec);
            let cpu = med(reps, |x| x.cpu_us_per_op);
            PgRow {
                name: SCENARIO,
                pool: kind.name(),
                ops_per_sec: ops,
                cpu_us_per_op: cpu,
                p99_wait_us: med(reps, |x| x.p99_wait_us),
                ops_vs_deadpool: base.map(|(o, _)| ops / o),
                cpu_vs_deadpool: base.map(|(_, c)| cpu / c),
                reps: reps.clone(),
            }
        })
        .collect();
    let report = PgReport {
        scenarios: rows,
        reps: a.reps,
        secs: a.secs.as_secs_f64(),
        warmup_secs: a.warmup.as_secs_f64(),
        pool_size: POOL_SIZE,
        tasks: TASKS,
    };
    print!("{}", table(&report));
    if let Some(path) = &a.json {
        report::write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn table(r: &PgReport) -> String {
    let mut out = format!(
        "pg group: {} tasks, pool {}, SELECT 1 (simple protocol), plain TCP; median of {} reps x {:.1} s (warm-up {:.1} s)\n",
        r.tasks, r.pool_size, r.reps, r.secs, r.warmup_secs
    );
    out.push_str(
        "| pool | ops/s | CPU µs/op | p99 wait µs | ops vs deadpool | CPU vs deadpool |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|\n");
    let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}×"));
    for row in &r.scenarios {
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.0} | {} | {} |\n",
            row.pool,
            row.ops_per_sec,
            row.cpu_us_per_op,
            row.p99_wait_us,
            ratio(row.ops_vs_deadpool),
            ratio(row.cpu_vs_deadpool)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url_adds_sslmode_disable_to_urls_and_key_value_strings() {
        assert_eq!(
            plain_url("postgres://postgres@127.0.0.1:5432/test").unwrap(),
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
        );
        assert_eq!(
            plain_url("postgresql://u@h/db?application_name=x").unwrap(),
            "postgresql://u@h/db?application_name=x&sslmode=disable"
        );
        assert_eq!(
            plain_url("host=127.0.0.1 user=postgres").unwrap(),
            "host=127.0.0.1 user=postgres sslmode=disable"
        );
        assert_eq!(
            plain_url("postgres://h/db?sslmode=disable").unwrap(),
            "postgres://h/db?sslmode=disable"
        );
    }

    #[test]
    fn plain_url_refuses_a_tls_sslmode_on_one_line() {
        for url in ["postgres://h/db?sslmode=require", "host=h sslmode=prefer"] {
            let err = plain_url(url).unwrap_err().to_string();
            assert!(err.contains("sslmode="), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn cpu_time_is_utime_plus_stime_after_the_command_name() {
        let stat = "1234 (a) b c) S 1 1 1 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 5";
        assert_eq!(parse_cpu(stat), Some(Duration::from_millis(2_870)));
        assert_eq!(parse_cpu("garbage"), None);
    }
}
