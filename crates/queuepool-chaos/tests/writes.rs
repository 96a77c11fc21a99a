//! Scenario 7, short form: writes during a restart.

mod common;

use queuepool_chaos::scenarios::writes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_restart_are_in_the_database_exactly_when_answered_ok() {
    let ctx = common::ctx();
    let f = writes::run(&ctx, &writes::Params::short()).await.unwrap();
    common::show(f.report());
    assert!(f.ok.iter().all(|&n| n > 0), "{:?}", f.ok);
    assert!(
        f.failed.iter().sum::<usize>() > 0,
        "the outage must fail some writes"
    );
    assert!(f.failed_other.is_empty(), "{:?}", f.failed_other);
    assert!(f.consistent(), "{f:#?}");
}
