//! SQLite backend for [`queuepool`]: a [`Manager`](queuepool::Manager) over
//! [`rusqlite`] (SQLite bundled, nothing to install).
//!
//! SQLite is a blocking library. A [`SqliteConnection`] therefore never runs SQL on the
//! async runtime's threads: [`SqliteConnection::interact`] moves the
//! `rusqlite::Connection` onto tokio's blocking pool, runs a closure there and moves
//! the connection back. If the `interact` future is dropped mid-operation the
//! connection does not come back in time, and the pool discards it when it is returned.
//!
//! Each connection opens in WAL mode with a `busy_timeout` (5 s by default), so several
//! pooled connections share one file: readers run alongside the writer, and writers
//! queue for the lock instead of failing with "database is locked". See
//! [`SqliteManager`] for every setting and for `sqlite::memory:`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use queuepool::{Pool, PoolConfig};
//! use queuepool_sqlite::SqliteManager;
//!
//! let manager = SqliteManager::from_url("sqlite://app.db")?;
//! let pool = Pool::new(manager, PoolConfig::builder().pool_size(5).build()?).await?;
//! let mut conn = pool.get().await?;
//! let answer: i64 = conn
//!     .interact(|c| c.query_row("SELECT 40 + 2", [], |row| row.get(0)))
//!     .await?;
//! assert_eq!(answer, 42);
//! # Ok(())
//! # }
//! ```

mod connection;
mod error;
mod manager;

pub use connection::SqliteConnection;
pub use error::SqliteError;
pub use manager::{DEFAULT_BUSY_TIMEOUT, SqliteManager};
pub use rusqlite;
