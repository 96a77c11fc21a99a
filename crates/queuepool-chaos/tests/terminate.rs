//! Scenario 2, short form: backends killed every 2 s under load.

mod common;

use queuepool_chaos::scenarios::terminate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Idle connections whose backend was killed are never lent (the pool consults
// Manager::health before lending, 60c4a0c); reads whose query was on the wire are
// retried by the service while they keep losing their connection, at most
// max_connections times (923b10c, bfe2948).
async fn killed_backends_fail_no_request_with_pre_ping() {
    let ctx = common::ctx();
    let f = terminate::run(&ctx, &terminate::Params::short())
        .await
        .unwrap();
    common::show(f.report());
    assert!(f.rounds >= 3 && f.terminated >= 3);
    assert_eq!(f.tally.failed(), 0, "failures: {:?}", f.tally.kinds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backends_fail_at_most_a_few_requests_each_a_json_503() {
    let ctx = common::ctx();
    let f = terminate::run(&ctx, &terminate::Params::short())
        .await
        .unwrap();
    common::show(f.report());
    assert!(
        f.rounds >= 3 && f.terminated >= 3,
        "{} rounds, {} terminated",
        f.rounds,
        f.terminated
    );
    assert!(f.tally.ok > 0);
    assert_eq!(f.tally.failed_other, 0, "failures: {:?}", f.tally.kinds);
    // Far fewer failures than killed connections: the pool-wide invalidation replaces
    // the others before they are lent.
    assert!(
        f.tally.failed() <= 2 * f.rounds,
        "{} failed for {} rounds: {:?}",
        f.tally.failed(),
        f.rounds,
        f.tally.kinds
    );
    assert!(
        f.invalidated.1 >= 1,
        "a pool-wide invalidation per round: {:?}",
        f.invalidated
    );
    assert_eq!(f.pool_after.checked_out, 0);
}
