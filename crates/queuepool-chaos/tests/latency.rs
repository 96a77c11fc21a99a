//! Scenario 4, short form: +50 ms per packet.

mod common;

use queuepool_chaos::scenarios::latency;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_throughput_follows_littles_law_and_no_timeout_comes_early() {
    let ctx = common::ctx();
    let f = latency::run(&ctx, &latency::Params::short()).await.unwrap();
    common::show(f.report());
    assert!(
        f.littles_error() <= 0.15,
        "λ·W = {:.2} for {} connections",
        f.littles_l,
        f.max_connections
    );
    // Each hold is at least one round trip through the proxy (2 x 50 ms).
    assert!(f.mean_hold >= 2 * f.params.latency, "{:?}", f.mean_hold);
    assert_eq!(f.failures, 0);
    assert!(f.timeouts > 0, "the short pool_timeout must be reached");
    assert!(
        f.min_timeout_wait
            .is_some_and(|d| d >= f.params.short_timeout),
        "{:?}",
        f.min_timeout_wait
    );
    assert!(
        f.max_timeout_wait
            .is_some_and(|d| d <= f.params.short_timeout + std::time::Duration::from_millis(100)),
        "{:?}",
        f.max_timeout_wait
    );
    assert_eq!(f.other_errors, 0);
}
