//! The reliability and security suite of queuepool (issue 7): it does on purpose what
//! production does to a pool, and reports figures.
//!
//! Each scenario in [`scenarios`] sets up its database (the shared test server through
//! [`queuepool_testkit::TestDb`], or an [`queuepool_testkit::EphemeralCluster`] when the
//! server itself must stop), puts the testkit's [`queuepool_testkit::FaultProxy`] in
//! between when the network must misbehave, drives the real `queuepool serve` binary
//! ([`service::Service`]) or the library directly, and returns typed figures that
//! render as a [`report::Report`]. The binary `queuepool-chaos` runs them and writes
//! the tables of `docs/RELIABILITY.md`; `cargo test -p queuepool-chaos` runs short
//! forms and asserts on the figures.
//!
//! Every scenario is bounded in time and talks to 127.0.0.1 only.
//!
//! ```no_run
//! # async fn f() -> Result<(), queuepool_chaos::ChaosError> {
//! use queuepool_chaos::{Ctx, scenarios::restart};
//! let ctx = Ctx::new(queuepool_chaos::service::find_or_build_serve_bin(false)?);
//! let figures = restart::run(&ctx, &restart::Params::short()).await?;
//! println!("{}", figures.report().text());
//! # Ok(()) }
//! ```

pub mod capture;
pub mod error;
pub mod fixtures;
pub mod load;
pub mod report;
pub mod scenarios;
pub mod service;

use std::path::PathBuf;
use std::time::Instant;

pub use error::ChaosError;
pub use report::Report;

/// What every scenario needs: the service binary, and a progress printer.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The `queuepool` binary (`queuepool serve`).
    pub serve_bin: PathBuf,
    started: Instant,
}

impl Ctx {
    /// A context for `serve_bin`.
    pub fn new(serve_bin: PathBuf) -> Ctx {
        Ctx {
            serve_bin,
            started: Instant::now(),
        }
    }

    /// Prints one progress line to stderr: `[  12.3 s] restart: stopping the database`.
    pub fn phase(&self, scenario: &str, message: impl std::fmt::Display) {
        eprintln!(
            "[{:7.1} s] {scenario}: {message}",
            self.started.elapsed().as_secs_f64()
        );
    }
}
