//! Scenario 5, short form: 10,000 cancelled checkouts, and clients disconnecting.

mod common;

use queuepool_chaos::scenarios::cancel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_storm_leaves_nothing_checked_out_and_full_capacity() {
    let ctx = common::ctx();
    let p = cancel::Params::short();
    let f = cancel::run(&ctx, &p).await.unwrap();
    common::show(f.report());
    assert!(f.lib_cancelled >= 10_000, "{}", f.lib_cancelled);
    assert_eq!(f.lib_checked_out_after, 0);
    assert!(f.lib_open_after <= f.max_connections);
    assert_eq!(f.lib_capacity_after, f.max_connections);
    assert!(f.svc_cancelled >= p.service_cancels, "{}", f.svc_cancelled);
    assert_eq!(f.svc_pool_after.checked_out, 0);
    assert_eq!(f.svc_capacity_after, f.max_connections);
}
