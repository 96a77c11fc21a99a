//! Shared by the scenario tests: one service binary, built once per test process.

#![allow(dead_code)]

use std::sync::OnceLock;

use queuepool_chaos::Ctx;

/// A context with the debug `queuepool` binary (built by cargo on first use).
pub fn ctx() -> Ctx {
    static BIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        queuepool_chaos::service::find_or_build_serve_bin(false)
            .unwrap_or_else(|e| panic!("{}", queuepool_chaos::error::chain(&e)))
    });
    Ctx::new(bin.clone())
}

/// Prints the report (visible with `--nocapture`) and returns it.
pub fn show(report: queuepool_chaos::Report) -> queuepool_chaos::Report {
    eprintln!("{}", report.text());
    report
}
