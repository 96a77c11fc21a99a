//! MySQL and MariaDB backend for [`queuepool`]: a [`Manager`](queuepool::Manager) over
//! [`mysql_async`] (TLS through rustls).
//!
//! Each pooled connection is one `mysql_async::Conn`; mysql_async's own pool is not
//! used. [`MySqlConnection`] derefs to `mysql_async::Conn`, so the whole
//! [`Queryable`](mysql_async::prelude::Queryable) API is available on a checked-out
//! connection. See [`MySqlManager`] for the URL parameters, the reset on return, and how
//! to find the pool's connections on the server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mysql_async::prelude::Queryable;
//! use queuepool::{Pool, PoolConfig};
//! use queuepool_mysql::MySqlManager;
//!
//! let manager = MySqlManager::from_url("mysql://root@127.0.0.1:3306/test")?;
//! let pool = Pool::new(manager, PoolConfig::builder().pool_size(5).build()?).await?;
//! let mut conn = pool.get().await?;
//! let answer: Option<i64> = conn.query_first("SELECT 40 + 2").await?;
//! assert_eq!(answer, Some(42));
//! # Ok(())
//! # }
//! ```

mod connection;
mod error;
mod manager;

pub use connection::MySqlConnection;
pub use error::MySqlError;
pub use manager::{DEFAULT_PROGRAM_NAME, MySqlManager, ResetMode, SslMode};
pub use mysql_async;
