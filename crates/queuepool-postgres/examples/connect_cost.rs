//! What a connection costs: SELECT 1 throughput pooled (pool 8, 32 tasks) against a new
//! connection per query (8 tasks), over SCRAM + TLS (verify-full) on an ephemeral
//! cluster and over trust on the local server (`DATABASE_URL`, default 127.0.0.1:5432),
//! side by side in one run, median of 3 rounds. A fixed, reproducible figure for the
//! docs; `queuepool bench` is the general tool for your own database and query.
//!
//! ```text
//! cargo run --release -p queuepool-postgres --example connect_cost [seconds-per-run]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use queuepool::{Manager, Pool, PoolConfig};
use queuepool_postgres::PgManager;
use queuepool_testkit::{EphemeralCluster, database_url};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ROUNDS: usize = 3;

async fn pooled(manager: PgManager, secs: f64) -> Result<f64, BoxError> {
    let config = PoolConfig::builder()
        .pool_size(8)
        .max_overflow(0)
        .pool_timeout(Duration::from_secs(30))
        .build()?;
    let pool = Pool::new(manager, config).await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (pool, done, stop) = (pool.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let conn = pool.get().await?;
                    conn.query_typed_one("SELECT 1", &[]).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), BoxError>(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    pool.close(Duration::from_secs(2)).await;
    Ok(rate)
}

async fn unpooled(manager: PgManager, secs: f64) -> Result<f64, BoxError> {
    let manager = Arc::new(manager);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (manager, done, stop) = (manager.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let conn = manager.connect_one().await?;
                    conn.query_typed_one("SELECT 1", &[]).await?;
                    manager.close(conn).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), BoxError>(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3.0);
    let cluster = EphemeralCluster::new().await?;
    let targets = [
        (
            "SCRAM+TLS verify-full (ephemeral cluster)",
            PgManager::from_url(&cluster.url("verify-full"))?,
        ),
        (
            "trust, plaintext (DATABASE_URL / 127.0.0.1:5432)",
            PgManager::from_url(&database_url())?,
        ),
    ];
    println!("SELECT 1 throughput, {secs} s per run, median of {ROUNDS} rounds");
    println!("pooled: pool_size 8, 32 tasks; unpooled: new connection per query, 8 tasks\n");
    let mut results = Vec::new();
    for (name, manager) in &targets {
        let (mut p, mut u) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate the order so drift on a shared machine hits both sides alike.
            if round % 2 == 0 {
                p.push(pooled(manager.clone(), secs).await?);
                u.push(unpooled(manager.clone(), secs).await?);
            } else {
                u.push(unpooled(manager.clone(), secs).await?);
                p.push(pooled(manager.clone(), secs).await?);
            }
        }
        println!("{name}");
        println!("  pooled   runs: {}", fmt_runs(&p));
        println!("  unpooled runs: {}", fmt_runs(&u));
        results.push((name, median(p), median(u)));
    }
    println!(
        "\n{:<50} {:>12} {:>12} {:>8}",
        "target", "pooled/s", "unpooled/s", "ratio"
    );
    for (name, p, u) in &results {
        println!("{name:<50} {p:>12.0} {u:>12.0} {:>7.1}x", p / u);
    }
    Ok(())
}

fn fmt_runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}/s"))
        .collect::<Vec<_>>()
        .join(", ")
}
