//! Scenario 6: one leak warning naming the source location.

mod common;

use queuepool_chaos::scenarios::leak;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connection_gives_one_warning_naming_the_checkout_location() {
    assert!(
        queuepool_chaos::capture::install(),
        "the capture subscriber must be the global one"
    );
    let ctx = common::ctx();
    let f = leak::run(&ctx, &leak::Params::short()).await.unwrap();
    common::show(f.report());
    assert_eq!(f.warnings.len(), 1, "{:#?}", f.warnings);
    assert!(
        f.names_location(),
        "{:?} does not name {}",
        f.warnings,
        f.expected_location
    );
    assert_eq!(f.leaks_counted, 1);
    assert_eq!(f.quick_ok, f.params.quick_requests);
    assert_eq!(f.extractor_warnings.len(), 1, "{:#?}", f.extractor_warnings);
}

/// Fixed in 6982b66: the warning names the extractor's file and the request's route.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_db_extractor_warning_names_the_handler() {
    assert!(queuepool_chaos::capture::install());
    let ctx = common::ctx();
    let f = leak::run(&ctx, &leak::Params::short()).await.unwrap();
    common::show(f.report());
    assert!(f.extractor_names_handler(), "{:#?}", f.extractor_warnings);
}
