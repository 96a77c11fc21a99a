//! Scenario 11, short form: 4 instances on a server with `max_connections = 50`,
//! straight at it and through PgBouncer in transaction mode.

mod common;

use queuepool_chaos::scenarios::pgbouncer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_through_pgbouncer_fail_nothing_and_stay_under_max_connections() {
    let ctx = common::ctx();
    let p = pgbouncer::Params::short();
    let f = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        pgbouncer::run(&ctx, &p),
    )
    .await
    .expect("the scenario ends within 180 s")
    .unwrap();
    common::show(f.report());
    let (d, b) = (&f.direct, &f.pgbouncer);
    assert_eq!(b.server_max_connections, 50);
    // Straight at the server, 4 x 15 connections do not fit in 50: the server refuses
    // some (what PgBouncer is there for). If this stops holding, the scenario no longer
    // shows anything.
    assert!(
        d.too_many_clients_errors > 0,
        "direct: no `too many clients`; peak {} server connections",
        d.server_connections_peak
    );
    assert!(b.ok > 1000, "through PgBouncer only {} requests ok", b.ok);
    assert_eq!(b.failed_requests, 0, "failures: {:?}", b.failure_kinds);
    assert_eq!(b.prepared_statement_errors, 0);
    assert_eq!(b.too_many_clients_errors, 0);
    assert!(
        b.server_connections_peak <= p.default_pool_size,
        "{} server connections through PgBouncer, default_pool_size {}",
        b.server_connections_peak,
        p.default_pool_size
    );
    assert!(b.server_connections_peak as u32 <= b.server_max_connections);
    assert!(b.server_connections_peak > 0, "the sampler saw nothing");
    let json = f.json();
    for key in [
        "failed_requests",
        "prepared_statement_errors",
        "too_many_clients_errors",
        "server_connections_peak",
        "server_max_connections",
        "ops_per_sec",
        "p99_ms",
    ] {
        assert!(json["pgbouncer"][key].is_number(), "{key} in {json}");
        assert!(json["direct"][key].is_number(), "{key} in {json}");
    }
}
