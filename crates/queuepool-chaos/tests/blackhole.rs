//! Scenario 3, short form: a network blackhole under load.

mod common;

use queuepool_chaos::scenarios::blackhole;

/// Fixed in c238db9 (query_timeout and a request bound in the service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_blackhole_requests_end_within_their_timeouts_and_the_pool_recovers() {
    let ctx = common::ctx();
    let f = blackhole::run(&ctx, &blackhole::Params::short())
        .await
        .unwrap();
    common::show(f.report());
    let t = &f.tally;
    assert!(t.ok > 0 && f.affected > 0, "{t:?}");
    assert_eq!(t.hangs, 0, "requests without an answer: {:?}", t.kinds);
    assert!(
        f.slowest_answer.is_some_and(|d| d <= f.bound),
        "{:?} > {:?}",
        f.slowest_answer,
        f.bound
    );
    assert_eq!(t.failed_other, 0, "{:?}", t.kinds);
    assert!(
        f.final_rps >= 0.5 * f.baseline_rps,
        "{} vs {}",
        f.final_rps,
        f.baseline_rps
    );
    assert_eq!(f.pool_after.checked_out, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_blackhole_operations_end_within_their_timeouts_and_the_pool_recovers() {
    let ctx = common::ctx();
    let p = blackhole::Params::short();
    let f = blackhole::run_library(&ctx, &p).await.unwrap();
    common::show(f.report(&p));
    assert!(f.ok > 0 && f.ok < f.total, "{f:?}");
    assert!(f.slowest_within_bound(), "{f:?}");
    // The report's own bound (see `first_success_within_bound`). (This asserted 1 s,
    // which most runs meet; a CI run on a slow machine measured 2,002 ms, the case the
    // bound describes.)
    assert!(f.first_success_within_bound(), "{f:?}");
    assert_eq!(f.checked_out_after, 0);
    assert_eq!(f.capacity_after, p.pool_size as usize);
}
