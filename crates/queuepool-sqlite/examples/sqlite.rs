//! A pool of SQLite connections on one file (WAL mode): writers queue for the lock,
//! readers run beside them, and every statement runs on tokio's blocking pool through
//! `interact`, never on the async threads.
//!
//! ```text
//! cargo run -p queuepool-sqlite --example sqlite [FILE]     # default: a temporary file
//! ```

use std::time::Duration;

use queuepool::{Pool, PoolConfig};
use queuepool_sqlite::SqliteManager;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let path = std::env::args()
        .nth(1)
        .map_or_else(|| dir.path().join("example.db"), Into::into);
    let pool = Pool::new(
        SqliteManager::file(&path),
        PoolConfig::builder().pool_size(4).max_overflow(0).build()?,
    )
    .await?;
    pool.get()
        .await?
        .interact(|c| {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS hits (worker INTEGER NOT NULL, n INTEGER NOT NULL)",
            )
        })
        .await?;

    // Eight writers on four connections: each inserts 100 rows in one transaction.
    let mut tasks = Vec::new();
    for worker in 0..8_i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get().await?;
            conn.interact(move |c| {
                let tx = c.transaction()?;
                for n in 0..100_i64 {
                    tx.execute("INSERT INTO hits (worker, n) VALUES (?1, ?2)", (worker, n))?;
                }
                tx.commit()
            })
            .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let (rows, workers): (i64, i64) = pool
        .get()
        .await?
        .interact(|c| {
            c.query_row(
                "SELECT count(*), count(DISTINCT worker) FROM hits",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await?;
    println!("{rows} rows from {workers} writers in {}", path.display());
    println!("{}", pool.status());
    pool.close(Duration::from_secs(5)).await;
    Ok(())
}
