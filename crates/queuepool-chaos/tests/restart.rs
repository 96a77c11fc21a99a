//! Scenario 1, short form: the database restarts under 64 concurrent clients.

mod common;

use std::time::Duration;

use queuepool_chaos::scenarios::restart;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_fails_only_with_json_503_and_recovers_within_a_second() {
    let ctx = common::ctx();
    let p = restart::Params::short();
    let f = restart::run(&ctx, &p).await.unwrap();
    common::show(f.report());
    let t = &f.tally;
    assert!(t.ok > 0 && t.failed_503_json > 0, "{t:?}");
    assert_eq!(t.failed_other, 0, "only 503 JSON failures: {:?}", t.kinds);
    assert!(
        f.slowest_failure.is_none_or(|d| d <= f.failure_bound),
        "slowest failure {:?} > {:?}",
        f.slowest_failure,
        f.failure_bound
    );
    let first = f.first_success.expect("a success after the restart");
    assert!(
        first <= Duration::from_secs(1),
        "first success {first:?} after the database was back"
    );
    let full = f.full_rate.expect("full throughput after the restart");
    assert!(
        full <= Duration::from_secs(1),
        "full throughput {full:?} after the database was back"
    );
    assert_eq!(f.connections_after, p.pool_size as usize);
    assert_eq!(f.pool_after.checked_out, 0, "leaked slots");
    assert_eq!(f.pool_after.idle, i64::from(p.pool_size));
    assert_eq!(f.exit.code, Some(0));
    assert_eq!(f.connections_after_shutdown, 0);
}
