//! The few runtime services the pool uses, in one place so that the model check can
//! run the same state machine under shuttle's scheduler (feature `model-check`).

use std::future::Future;

use tokio::time::Instant;

#[cfg(not(feature = "model-check"))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(feature = "model-check")]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};

/// Locks a mutex. The pool's critical sections never panic (no user code, no
/// allocation failure handling), so a poisoned lock still holds consistent state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// A deadline passed.
#[derive(Debug)]
pub(crate) struct Elapsed;
