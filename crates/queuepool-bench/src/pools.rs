//! The three pools under test, each behind the same tiny [`BenchPool`] interface, with
//! the same no-op manager: `connect` returns a unit struct, every check and reset does
//! nothing. What is left is the pool's own bookkeeping, which is what we measure.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::BenchError;

/// The connection every manager hands out: nothing at all.
#[derive(Debug)]
pub struct NoopConn;

/// A pool as the benchmark sees it: check a connection out; dropping the guard returns it.
pub trait BenchPool: Clone + Send + Sync + 'static {
    /// The pool's guard; dropping it returns the connection.
    type Guard<'a>: Send
    where
        Self: 'a;
    /// Checks a connection out (the timed operation).
    fn checkout(&self) -> impl Future<Output = Result<Self::Guard<'_>, BenchError>> + Send;
}

/// Which pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// This project's pool, with a manager that reports returned connections as clean
    /// (`needs_reset` false), as the PostgreSQL, MySQL and SQLite managers do when no
    /// transaction is open.
    Queuepool,
    /// queuepool with a manager that asks for a (no-op, async) reset on every return:
    /// what a borrower that leaves a transaction open costs.
    QueuepoolReset,
    /// deadpool 0.12, `managed`.
    Deadpool,
    /// bb8 0.9.
    Bb8,
    /// Diagnostic, only with `--pool`: a bare `tokio::sync::Semaphore` with `size`
    /// permits and no connections at all. The fair-handoff ceiling: no pool that lends
    /// in arrival order through tokio wakers can do much better.
    TokioSemaphore,
    /// Diagnostic, only with `--pool` and the one-task scenario: no pool at all, only the
    /// primitives every queuepool loan pays whatever its logic (see [`Floor`]). The
    /// ceiling of the one-task row for a pool with queuepool's rules.
    Floor,
}

impl PoolKind {
    /// The pools of a default run, in the order they are interleaved and printed.
    pub const ALL: [PoolKind; 4] = [
        PoolKind::Queuepool,
        PoolKind::QueuepoolReset,
        PoolKind::Deadpool,
        PoolKind::Bb8,
    ];

    /// Every pool `--pool` accepts.
    pub const SELECTABLE: [PoolKind; 6] = [
        PoolKind::Queuepool,
        PoolKind::QueuepoolReset,
        PoolKind::Deadpool,
        PoolKind::Bb8,
        PoolKind::TokioSemaphore,
        PoolKind::Floor,
    ];

    /// The name used in the table, the JSON (`pool` key) and `--pool`.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Queuepool => "queuepool",
            PoolKind::Deadpool => "deadpool",
            PoolKind::Bb8 => "bb8",
            PoolKind::QueuepoolReset => "queuepool-reset",
            PoolKind::TokioSemaphore => "tokio-semaphore",
            PoolKind::Floor => "floor",
        }
    }

    /// Parses a `--pool` name.
    pub fn parse(name: &str) -> Option<PoolKind> {
        PoolKind::SELECTABLE.into_iter().find(|k| k.name() == name)
    }
}

/// No pool in this benchmark ever waits out a timeout: the peers have none (deadpool)
/// or a large default (bb8, 30 s); queuepool requires one, so it gets its maximum.
const NEVER: Duration = Duration::from_secs(24 * 3600);

fn pool_error(pool: PoolKind, err: impl std::fmt::Display) -> BenchError {
    BenchError::Pool {
        pool: pool.name(),
        message: err.to_string(),
    }
}

// ---------------------------------------------------------------------------- queuepool

/// queuepool's no-op manager. With `clean: true` (the `queuepool` row) it reports every
/// returned connection as clean, as the real managers do when no transaction is open,
/// and no reset runs. With `clean: false` (`queuepool-reset`) `needs_reset` keeps its
/// default (`true`): the reset hook runs on every return, the counterpart of deadpool's
/// `recycle` on every checkout and bb8's `is_valid` (`test_on_check_out`, on by
/// default).
#[derive(Debug)]
pub struct QueuepoolNoop {
    clean: bool,
}

impl queuepool::Manager for QueuepoolNoop {
    type Connection = NoopConn;
    type Error = Infallible;

    async fn connect(&self) -> Result<NoopConn, Infallible> {
        Ok(NoopConn)
    }

    async fn is_valid(&self, _: &mut NoopConn) -> Result<(), Infallible> {
        Ok(())
    }

    async fn reset(&self, _: &mut NoopConn) -> Result<(), Infallible> {
        Ok(())
    }

    fn needs_reset(&self, _: &NoopConn) -> bool {
        !self.clean
    }

    fn is_disconnect(&self, _: &Infallible) -> bool {
        false
    }
}

/// Builds a queuepool of `size` connections, no overflow, with every other option at its
/// default (pre_ping on: connections used within the last second are not pinged;
/// reset-on-return rollback; FIFO; prefill). `clean`: see [`QueuepoolNoop`].
pub async fn queuepool(
    size: u32,
    clean: bool,
) -> Result<queuepool::Pool<QueuepoolNoop>, BenchError> {
    let config = queuepool::PoolConfig::builder()
        .pool_size(size)
        .max_overflow(0)
        .pool_timeout(NEVER)
        .name("bench")
        .build()
        .map_err(|e| pool_error(PoolKind::Queuepool, e))?;
    queuepool::Pool::new(QueuepoolNoop { clean }, config)
        .await
        .map_err(|e| pool_error(PoolKind::Queuepool, e))
}

impl BenchPool for queuepool::Pool<QueuepoolNoop> {
    type Guard<'a> = queuepool::PooledConn<QueuepoolNoop>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, BenchError> {
        self.get()
            .await
            .map_err(|e| pool_error(PoolKind::Queuepool, e))
    }
}

// ----------------------------------------------------------------------------- deadpool

/// deadpool's no-op manager: `recycle` (run on every checkout) does nothing.
#[derive(Debug)]
pub struct DeadpoolNoop;

impl deadpool::managed::Manager for DeadpoolNoop {
    type Type = NoopConn;
    type Error = Infallible;

    async fn create(&self) -> Result<NoopConn, Infallible> {
        Ok(NoopConn)
    }

    async fn recycle(
        &self,
        _: &mut NoopConn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

/// Builds a deadpool of `size` objects (defaults: no timeouts, FIFO) and fills it.
pub async fn deadpool(size: u32) -> Result<deadpool::managed::Pool<DeadpoolNoop>, BenchError> {
    let pool = deadpool::managed::Pool::builder(DeadpoolNoop)
        .max_size(size as usize)
        .build()
        .map_err(|e| pool_error(PoolKind::Deadpool, e))?;
    prefill(&pool, size).await?;
    Ok(pool)
}

impl BenchPool for deadpool::managed::Pool<DeadpoolNoop> {
    type Guard<'a> = deadpool::managed::Object<DeadpoolNoop>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, BenchError> {
        self.get()
            .await
            .map_err(|e| pool_error(PoolKind::Deadpool, format!("{e:?}")))
    }
}

// ---------------------------------------------------------------------------------- bb8

/// bb8's no-op manager: `is_valid` (run on every checkout by default) does nothing.
#[derive(Debug)]
pub struct Bb8Noop;

impl bb8::ManageConnection for Bb8Noop {
    type Connection = NoopConn;
    type Error = Infallible;

    async fn connect(&self) -> Result<NoopConn, Infallible> {
        Ok(NoopConn)
    }

    async fn is_valid(&self, _: &mut NoopConn) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut NoopConn) -> bool {
        false
    }
}

/// Builds a bb8 pool of `size` connections, `min_idle = size` (its prefill), other
/// options at their defaults (FIFO, test_on_check_out, 30 s connection timeout).
pub async fn bb8(size: u32) -> Result<bb8::Pool<Bb8Noop>, BenchError> {
    let pool = bb8::Pool::builder()
        .max_size(size)
        .min_idle(Some(size))
        .build(Bb8Noop)
        .await
        .map_err(|e| pool_error(PoolKind::Bb8, format!("{e:?}")))?;
    prefill(&pool, size).await?;
    Ok(pool)
}

impl BenchPool for bb8::Pool<Bb8Noop> {
    type Guard<'a> = bb8::PooledConnection<'a, Bb8Noop>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, BenchError> {
        self.get().await.map_err(|e| pool_error(PoolKind::Bb8, e))
    }
}

// ---------------------------------------------------------------------- tokio-semaphore

/// The ceiling: a semaphore's permits stand for connections; nothing is stored.
#[derive(Debug, Clone)]
pub struct SemaphoreCeiling(Arc<tokio::sync::Semaphore>);

/// Builds the ceiling "pool" of `size` permits.
pub fn tokio_semaphore(size: u32) -> SemaphoreCeiling {
    SemaphoreCeiling(Arc::new(tokio::sync::Semaphore::new(size as usize)))
}

impl BenchPool for SemaphoreCeiling {
    type Guard<'a> = tokio::sync::SemaphorePermit<'a>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, BenchError> {
        self.0
            .acquire()
            .await
            .map_err(|e| pool_error(PoolKind::TokioSemaphore, e))
    }
}

// -------------------------------------------------------------------------------- floor

/// The floor of a queuepool loan: the primitives that every checkout and return of
/// queuepool pays whatever its logic, and nothing else (no connection, no queue, no
/// check, no statistics). A checkout reads the clock (`tokio::time::Instant`, as
/// queuepool does, so that `tokio::time::pause()` drives its rules), locks and unlocks a
/// `parking_lot` mutex (queuepool's lock; the count under it stands for the pool's
/// state) and takes a counted reference to the pool (an `Arc` clone: an owned guard
/// must keep the pool alive, and safe Rust has no cheaper way); the return reads the
/// clock (the exact usage time and the connection's last use), locks and unlocks, and
/// drops the reference. It never waits, so it means something only with one task.
#[derive(Debug, Clone)]
pub struct Floor(Arc<parking_lot::Mutex<u64>>);

/// The floor's "guard": the reference and the instant of the checkout.
#[derive(Debug)]
pub struct FloorLoan {
    pool: Arc<parking_lot::Mutex<u64>>,
    at: tokio::time::Instant,
}

/// Builds the floor.
pub fn floor() -> Floor {
    Floor(Arc::new(parking_lot::Mutex::new(0)))
}

impl Drop for FloorLoan {
    fn drop(&mut self) {
        let now = tokio::time::Instant::now();
        *self.pool.lock() -= 1;
        std::hint::black_box((self.at, now));
    }
}

impl BenchPool for Floor {
    type Guard<'a> = FloorLoan;

    async fn checkout(&self) -> Result<FloorLoan, BenchError> {
        let at = tokio::time::Instant::now();
        *self.0.lock() += 1;
        Ok(FloorLoan {
            pool: self.0.clone(),
            at,
        })
    }
}

/// Opens `size` connections by holding `size` checkouts at once, so every pool starts
/// full, like queuepool's prefill.
pub async fn prefill<P: BenchPool>(pool: &P, size: u32) -> Result<(), BenchError> {
    let mut held = Vec::with_capacity(size as usize);
    for _ in 0..size {
        held.push(pool.checkout().await?);
    }
    drop(held);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor pays what it claims on every loan: the lock (its count moves), the
    /// guard's counted reference to the pool, and both clock reads (the instants it keeps).
    #[tokio::test]
    async fn a_floor_loan_takes_the_lock_and_a_reference_and_gives_both_back() {
        let pool = floor();
        let loan = pool.checkout().await.unwrap();
        assert_eq!(*pool.0.lock(), 1);
        assert_eq!(Arc::strong_count(&pool.0), 2);
        assert!(loan.at <= tokio::time::Instant::now());
        drop(loan);
        assert_eq!(*pool.0.lock(), 0);
        assert_eq!(Arc::strong_count(&pool.0), 1);
    }
}
