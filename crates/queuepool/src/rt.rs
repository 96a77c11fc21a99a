//! The few runtime services the pool uses, in one place so that the model check can
//! run the same state machine under shuttle's scheduler (feature `model-check`).

use std::future::Future;

use tokio::time::Instant;

#[cfg(not(feature = "model-check"))]
pub(crate) use parking_lot::{Mutex, MutexGuard};

#[cfg(feature = "model-check")]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};

/// Locks a mutex. `parking_lot`'s: no poisoning to check on every lock and unlock
/// (measured in docs/BENCHMARKS.md, commit `bdc7320`); a panic under the lock
/// (a manager's `health`) unlocks it on unwind, as std's did for us, since we ignored
/// poisoning anyway: every critical section leaves the state consistent before it
/// calls out.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(not(feature = "model-check"))]
    {
        m.lock()
    }
    #[cfg(feature = "model-check")]
    {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether [`spawn`] has a runtime to run on.
pub(crate) fn can_spawn() -> bool {
    #[cfg(feature = "model-check")]
    {
        true
    }
    #[cfg(not(feature = "model-check"))]
    {
        // Inside a task (the common case) the task id answers without cloning the
        // runtime handle; `block_on`'s own future has no id but does have a handle.
        tokio::task::try_id().is_some() || tokio::runtime::Handle::try_current().is_ok()
    }
}

/// Runs `fut` in the background; without a runtime ([`can_spawn`] is false) `fut` is
/// dropped.
pub(crate) fn spawn<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    #[cfg(feature = "model-check")]
    shuttle::future::spawn(fut);
    #[cfg(not(feature = "model-check"))]
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    }
}

/// Bounds `fut` by `deadline`. Under the model check, time does not exist and the
/// future runs to completion.
pub(crate) async fn deadline<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    #[cfg(feature = "model-check")]
    {
        let _ = deadline;
        Ok(fut.await)
    }
    #[cfg(not(feature = "model-check"))]
    {
        tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| Elapsed)
    }
}

/// Under the model check, where time does not exist, a waiting checkout's timeout
/// (kept by the reaper or its own timer outside the model): the scheduler's random
/// source decides at each pending poll whether the deadline has passed, so the model
/// explores timeouts racing with hand-overs, cancellations and `close()`.
#[cfg(feature = "model-check")]
pub(crate) async fn wait_deadline<F: Future>(
    deadline: Instant,
    fut: F,
) -> Result<F::Output, Elapsed> {
    use shuttle::rand::RngCore;
    let _ = deadline;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Ok(v)),
        std::task::Poll::Pending if shuttle::rand::thread_rng().next_u32().is_multiple_of(4) => {
            std::task::Poll::Ready(Err(Elapsed))
        }
        std::task::Poll::Pending => {
            // Come back: the next poll may be the one that times out.
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// The message of a caught panic, for the log line.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// A deadline passed.
#[derive(Debug)]
pub(crate) struct Elapsed;
