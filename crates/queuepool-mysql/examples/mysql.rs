//! A pool of MySQL/MariaDB connections: eight tasks share three connections (plus
//! overflow), each running a query; the server's connection ids show the reuse.
//!
//! ```text
//! MYSQL_URL=mysql://root@127.0.0.1:3306/test cargo run -p queuepool-mysql --example mysql
//! ```

use std::time::Duration;

use mysql_async::prelude::Queryable;
use queuepool::{Pool, PoolConfig};
use queuepool_mysql::MySqlManager;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    // `program_name` tags the pool's connections in SHOW PROCESSLIST's program column.
    let manager = MySqlManager::from_url(&format!("{url}?program_name=queuepool-example"))?;
    let config = PoolConfig::builder()
        .pool_size(3)
        .max_overflow(2)
        .pool_timeout(Duration::from_secs(5))
        .build()?;
    let pool = Pool::new(manager, config).await?;
    println!("before: {}", pool.status());

    let mut tasks = Vec::new();
    for i in 0..8_i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            // The connection derefs to mysql_async::Conn: the whole Queryable API.
            let mut conn = pool.get().await?;
            let (square, id): (i64, u64) = conn
                .query_first(format!("SELECT {i} * {i}, CONNECTION_ID()"))
                .await?
                .unwrap_or_default();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((i, square, id))
        })); // the connection goes back to the pool here, rolled back if needed
    }
    for task in tasks {
        let (i, square, id) = task.await??;
        println!("{i}^2 = {square} on server connection {id}");
    }
    pool.close(Duration::from_secs(5)).await;
    Ok(())
}
