//! Scenario 9: the password never appears.

mod common;

use queuepool_chaos::scenarios::secrets;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_never_appears_in_logs_errors_status_metrics_help_or_panics() {
    assert!(queuepool_chaos::capture::install());
    let ctx = common::ctx();
    let f = secrets::run(&ctx).await.unwrap();
    common::show(f.report());
    assert!(f.places.len() >= 10, "{:?}", f.places);
    for (place, size, n) in &f.places {
        assert!(*size > 0, "{place}: nothing was read");
        assert_eq!(*n, 0, "{place}: the password appears {n} times");
    }
}
