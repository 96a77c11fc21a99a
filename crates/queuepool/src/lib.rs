//! An async database connection pool with SQLAlchemy's `QueuePool` semantics and
//! HikariCP's operational care.
//!
//! A [`Pool`] keeps `pool_size` connections open and lends them out; under load it
//! opens up to `max_overflow` more, and at that limit a checkout waits in arrival
//! order for at most `pool_timeout`, then fails with the message SQLAlchemy users know:
//! `QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00`.
//!
//! The pool knows no database: a [`Manager`] opens, pings, resets and closes
//! connections (crates `queuepool-postgres`, `queuepool-mysql`, `queuepool-sqlite`).
//! Around it the pool does the care: connections are recycled after `pool_recycle`
//! (with jitter), pinged before lending when idle for a second (`pre_ping`), rolled back
//! when returned, replaced as a whole after a disconnect, refilled in the background
//! with backoff, and never leaked by a cancelled future. It logs through `tracing`
//! (target `queuepool::pool`) and reports through `metrics`, without installing either.
//!
//! ```
//! use std::convert::Infallible;
//! use queuepool::{Manager, Pool, PoolConfig, Preset};
//!
//! struct Numbers;
//!
//! impl Manager for Numbers {
//!     type Connection = u32;
//!     type Error = Infallible;
//!     async fn connect(&self) -> Result<u32, Infallible> { Ok(42) }
//!     async fn is_valid(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
//!     async fn reset(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
//!     fn is_disconnect(&self, _: &Infallible) -> bool { false }
//!     // Nothing to roll back: returned connections go straight back to the pool.
//!     fn needs_reset(&self, _: &u32) -> bool { false }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PoolConfig::builder().preset(Preset::Dev).pool_size(2).build()?;
//! let pool = Pool::new(Numbers, config).await?;
//! {
//!     let conn = pool.get().await?;
//!     assert_eq!(*conn, 42);
//!     println!("{}", pool.status());
//! } // returned here
//! assert_eq!(
//!     pool.status().to_string(),
//!     "Pool size: 2  Connections in pool: 2 Current Overflow: 0 Current Checked out connections: 0"
//! );
//! pool.close(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```

pub mod autosize;
mod config;
mod contain;
mod error;
mod guard;
mod home;
mod inner;
mod lease;
// The model check has no timer: it runs the state machine without the background task.
#[cfg(not(feature = "model-check"))]
mod maintenance;
mod manager;
mod pool;
mod rt;
mod stats;
#[cfg(all(test, not(feature = "model-check")))]
mod test_unit;
pub mod text;
pub mod url;

pub use config::{
    ConfigBuilder, MAX_POOL_SIZE, Order, Overflow, PoolConfig, Preset, ResetOnReturn,
};
pub use error::{BoxError, ConfigError, PoolError};
pub use guard::PooledConn;
pub use manager::{Health, Manager};
pub use pool::Pool;
pub use stats::{AutoSizeStats, HistogramSummary, Stats, Status};
