//! A transaction helper over the pool: `in_transaction` checks a connection out, runs
//! the work inside `BEGIN`, commits when the work returns `Ok` and rolls back when it
//! returns `Err`. If the caller is cancelled half-way (a timeout, a client that went
//! away), the connection goes back with its transaction open and the pool rolls it back
//! before lending it again: nothing half-done is ever committed or seen by the next
//! borrower.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p queuepool-postgres --example transaction
//! ```

use std::time::Duration;

use queuepool::{Pool, PoolConfig};
use queuepool_postgres::{PgManager, PgTransaction};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `work` in a transaction on a connection of `pool`; commits on `Ok`, rolls back
/// on `Err` (and returns that error).
///
/// # Cancel safety
/// Cancel safe: dropped at any point, nothing is committed unless `COMMIT` was sent;
/// the pool rolls the connection back on return (or discards it mid-query).
async fn in_transaction<T>(
    pool: &Pool<PgManager>,
    work: impl AsyncFnOnce(&PgTransaction<'_>) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    match work(&tx).await {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(error) => {
            tx.rollback().await?;
            Err(error)
        }
    }
}

/// Moves `amount` from account `from` to account `to`; refuses an overdraft.
async fn transfer(pool: &Pool<PgManager>, from: i32, to: i32, amount: i64) -> Result<(), BoxError> {
    in_transaction(pool, async |tx| {
        tx.execute("UPDATE example_accounts SET balance = balance + $2 WHERE id = $1", &[&to, &amount])
            .await?;
        let left: i64 = tx
            .query_one(
                "UPDATE example_accounts SET balance = balance - $2 WHERE id = $1 RETURNING balance",
                &[&from, &amount],
            )
            .await?
            .get(0);
        if left < 0 {
            return Err(format!("account {from} would be overdrawn ({left})").into());
        }
        Ok(())
    })
    .await
}

async fn balances(pool: &Pool<PgManager>) -> Result<Vec<(i32, i64)>, BoxError> {
    let conn = pool.get().await?;
    let rows = conn
        .query("SELECT id, balance FROM example_accounts ORDER BY id", &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = Pool::new(
        PgManager::from_url(&url)?,
        PoolConfig::builder().pool_size(2).build()?,
    )
    .await?;
    pool.get()
        .await?
        .batch_execute(
            "DROP TABLE IF EXISTS example_accounts;
             CREATE TABLE example_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO example_accounts VALUES (1, 100), (2, 0);",
        )
        .await?;

    transfer(&pool, 1, 2, 30).await?;
    println!("after moving 30:            {:?}", balances(&pool).await?);
    let refused = transfer(&pool, 1, 2, 500).await.unwrap_err();
    println!("moving 500 is refused:      {refused}");
    println!("and nothing of it remains:  {:?}", balances(&pool).await?);

    // Cancelled half-way: the transfer's future is dropped while it waits on a lock
    // held here, after its first UPDATE ran. The pool rolls that connection back.
    let mut blocker = pool.get().await?;
    let lock = blocker.transaction().await?;
    lock.execute(
        "SELECT 1 FROM example_accounts WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await?;
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), transfer(&pool, 1, 2, 10)).await;
    println!(
        "a transfer cancelled after 300 ms: {}",
        if cancelled.is_err() {
            "timed out"
        } else {
            "finished?"
        }
    );
    lock.rollback().await?;
    drop(blocker);
    println!("and nothing of it remains:  {:?}", balances(&pool).await?);

    pool.get()
        .await?
        .batch_execute("DROP TABLE example_accounts")
        .await?;
    pool.close(Duration::from_secs(5)).await;
    Ok(())
}
