//! The scenarios of issue 7, and scenario 11 of issue 13 ([`pgbouncer`]). Each has `Params::short()` (for `cargo test`, well under a
//! minute) and `Params::full()` (the durations), a `run` function returning
//! typed figures, and `Figures::report()`.

pub mod bad_input;
pub mod blackhole;
pub mod cancel;
pub mod latency;
pub mod leak;
pub mod pgbouncer;
pub mod restart;
pub mod secrets;
pub mod soak;
pub mod terminate;
pub mod writes;

use std::time::Duration;

/// The pool's `connect_timeout` in the service (not configurable there: the crate's
/// default).
pub const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
