//! The background task: closes expired, suspect and surplus overflow idle connections,
//! and refills the pool to `pool_size`, backing off while the database refuses.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::inner::{Inner, LOG};
use crate::manager::Manager;
use crate::pool::open;

/// How often the task looks at the pool when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs until the pool is dropped or closed. Holds only a weak reference between
/// rounds, so dropping every `Pool` handle and guard frees the pool.
pub(crate) async fn run<M: Manager>(pool: Weak<Inner<M>>, wake: Arc<Notify>) {
    let mut backoff: Option<Duration> = None;
    loop {
        let pause = {
            let Some(inner) = pool.upgrade() else { return };
            if inner.is_closed() {
                return;
            }
            // The manager's methods are contained where they are called; this is the
            // last line of defence, so that no panic ends the refill for good.
            match AssertUnwindSafe(round(&inner, &mut backoff))
                .catch_unwind()
                .await
            {
                Ok(pause) => pause,
                Err(panic) => {
                    inner.note_panic("maintenance", &*panic);
                    BACKOFF_MAX
                }
            }
        };
        if backoff.is_some() {
            // Backing off: a wake-up (a freed slot, a checkout) must not cut it short.
            tokio::time::sleep(pause).await;
        } else {
            let _ = tokio::time::timeout(pause, wake.notified()).await;
        }
    }
}

/// One round; returns how long to sleep before the next one.
async fn round<M: Manager>(inner: &Arc<Inner<M>>, backoff: &mut Option<Duration>) -> Duration {
    for (conn, reason) in inner.take_for_maintenance(Instant::now()) {
        inner.close_conn(conn, reason);
    }
    while let Some(lease) = inner.refill_slot() {
        match open(inner, Instant::now() + inner.config.connect_timeout).await {
            Ok(conn) => {
                *backoff = None;
                lease.put_back(conn);
            }
            Err(e) => {
                drop(lease);
                // 10 ms doubling to 5 s, with ±25 % jitter so pools do not retry in step.
                let next = backoff.map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
                *backoff = Some(next);
                let jittered = next.mul_f64(rand::random_range(0.75..=1.25));
                tracing::debug!(target: LOG, pool = %inner.config.name, error = %e, retry_ms = jittered.as_millis() as u64, "Refill failed; backing off");
                return jittered;
            }
        }
    }
    TICK
}
