//! `bench` and `tune` with small sizes and short runs, against real PostgreSQL (a
//! database of its own) and SQLite.

use queuepool_tools::args::PoolArgs;
use queuepool_tools::bench::{self, BenchArgs};
use queuepool_tools::tune::{self, TuneArgs};

fn bench_args(url: &str, dir: &std::path::Path) -> BenchArgs {
    BenchArgs {
        database_url: url.to_owned(),
        concurrency: "1,2".into(),
        query: "SELECT 1".into(),
        duration: "500ms".into(),
        protocol: "prepared".into(),
        reset_on_return: "rollback".into(),
        pool: PoolArgs::default(),
        no_unpooled: false,
        direct: false,
        compare_pgbench: false,
        json: Some(dir.join("bench.json")),
        plot: Some(dir.join("bench.svg")),
        client_threads: None,
        repeat: "1".into(),
        sizes: None,
        workload: None,
        clients: None,
        quiet: true,
    }
}

fn tune_args(url: &str) -> TuneArgs {
    TuneArgs {
        database_url: url.to_owned(),
        instances: "1".into(),
        target_p99: None,
        concurrency: "4".into(),
        sizes: Some("1,2".into()),
        query: "SELECT 1".into(),
        duration: "500ms".into(),
        reserve: "5".into(),
        via_pgbouncer: false,
        pool: PoolArgs::default(),
        json: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bench_writes_table_json_and_plot_with_pgbench_alongside() {
    let db = queuepool_testkit::TestDb::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let dir = tempfile::tempdir().unwrap();
    let mut args = bench_args(db.url(), dir.path());
    args.compare_pgbench = true;
    let report = bench::run(&args).await.expect("bench runs");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{json}"); // 2 concurrencies x pooled, unpooled, pgbench
    for c in [1, 2] {
        let qps = |mode: &str| {
            rows.iter()
                .find(|r| r["mode"] == mode && r["concurrency"] == c)
                .and_then(|r| r["qps"].as_f64())
                .unwrap_or_else(|| panic!("{mode} c={c} in {json}"))
        };
        assert!(qps("pooled") > qps("unpooled"), "c={c}: {json}");
        assert!(qps("pgbench") > 0.0);
        let unpooled = rows
            .iter()
            .find(|r| r["mode"] == "unpooled" && r["concurrency"] == c)
            .unwrap();
        // Unpooled opens one connection per query (plus failed ones, none here).
        assert_eq!(unpooled["connections_opened"], unpooled["queries"]);
        let pooled = rows
            .iter()
            .find(|r| r["mode"] == "pooled" && r["concurrency"] == c)
            .unwrap();
        assert_eq!(
            pooled["connections_opened"], c,
            "pool_size = concurrency, prefilled"
        );
        assert_eq!(pooled["errors"], 0);
    }
    assert!(report.speedup(2).unwrap() > 1.0);
    // Next to pgbench, both clients default to pgbench's own default: one thread.
    assert_eq!(report.client_threads, 1);
    let command = report.pgbench_command.as_deref().expect("pgbench ran");
    assert!(command.contains(" -j 1 "), "{command}");
    let text = report.render();
    assert!(
        text.contains("pooled / unpooled") && text.contains("pooled / pgbench"),
        "{text}"
    );
    assert!(!json.to_string().contains("password"));

    let svg = std::fs::read_to_string(dir.path().join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("throughput") && svg.contains("p99 latency"));
    assert!(svg.contains("pooled") && svg.contains("unpooled") && svg.contains("pgbench"));
    db.drop_database().await.unwrap();
}

#[test]
fn client_threads_default_to_pgbench_s_default_only_next_to_pgbench() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = bench_args("postgres://u@127.0.0.1/db", dir.path());
    assert_eq!(args.threads().unwrap(), bench::client_threads());
    args.compare_pgbench = true;
    assert_eq!(args.threads().unwrap(), 1);
    args.client_threads = Some("3".into());
    assert_eq!(args.threads().unwrap(), 3);
    args.client_threads = Some("0".into());
    assert!(args.threads().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bench_runs_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let report = bench::run(&bench_args(&url, dir.path()))
        .await
        .expect("bench runs");
    assert_eq!(report.rows.len(), 4);
    assert!(
        report.rows.iter().all(|r| r.queries > 0 && r.errors == 0),
        "{}",
        report.render()
    );
    assert!(dir.path().join("bench.svg").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_refuses_a_bad_query_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut args = bench_args(&url, dir.path());
    args.query = "SELEC nonsense".into();
    let err = queuepool_tools::chain(&bench::run(&args).await.unwrap_err());
    assert!(err.contains("the query \"SELEC nonsense\" failed"), "{err}");
    assert!(!dir.path().join("bench.json").exists());
    args.query = "SELECT 1".into();
    args.concurrency = "0,8".into();
    let err = bench::run(&args).await.unwrap_err();
    assert!(
        err.is_usage() && err.to_string().starts_with("--concurrency"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tune_measures_each_size_and_recommends_within_the_server_cap() {
    let db = queuepool_testkit::TestDb::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let report = tune::run(&tune_args(db.url())).await.expect("tune runs");
    assert_eq!(
        report.curve.iter().map(|p| p.pool_size).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(report.curve.iter().all(|p| p.qps > 0.0 && p.hold_ms > 0.0));
    let best = report.curve.iter().map(|p| p.qps).fold(0.0, f64::max);
    let chosen = report
        .curve
        .iter()
        .find(|p| p.pool_size == report.pool_size)
        .unwrap();
    assert!(chosen.qps >= 0.95 * best);
    let max = report.max_connections.expect("SHOW max_connections");
    assert!(max >= 10);
    assert!(report.pool_size + report.max_overflow <= report.per_instance_cap.unwrap());
    let text = report.render();
    for needle in [
        "Little's law",
        "POOL_SIZE=",
        "pool_size = ",
        "--pool-size",
        "closest preset",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }

    // Many instances share the server: the cap, not the curve, decides.
    let mut crowded = tune_args(db.url());
    crowded.instances = max.to_string();
    let capped = tune::run(&crowded).await.expect("tune runs");
    assert_eq!(capped.per_instance_cap, Some(1));
    assert_eq!((capped.pool_size, capped.max_overflow), (1, 0));
    assert_eq!(capped.curve.len(), 1, "sizes above the cap are not tried");
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tune_via_pgbouncer_sizes_both_layers_from_the_servers_curve() {
    let db = queuepool_testkit::TestDb::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let mut args = tune_args(db.url());
    args.via_pgbouncer = true;
    args.instances = "4".into();
    args.concurrency = "2".into();
    let report = tune::run(&args).await.expect("tune runs");
    // The server is measured with every instance's load.
    assert_eq!(report.concurrency, 8);
    assert_eq!(report.curve.len(), 2);
    assert!(report.curve.iter().all(|p| p.qps > 0.0 && p.errors == 0));
    let b = report.pgbouncer.as_ref().expect("two layers");
    let knee = b.default_pool_size;
    assert!([1, 2].contains(&knee), "{knee}");
    assert_eq!(report.pool_size + report.max_overflow, knee);
    assert_eq!(b.max_client_conn, 4 * knee + 5);
    let max = report.max_connections.unwrap();
    assert!(knee <= max);
    assert!(report.render().contains("pgbouncer.ini"));

    // Pointed at PgBouncer itself, it refuses: the curve would be PgBouncer's.
    let m = db.manager().unwrap();
    let host = match m.pg_config().get_hosts().first() {
        Some(queuepool_postgres::tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = m.pg_config().get_ports().first().copied().unwrap_or(5432);
    let bouncer = queuepool_testkit::PgBouncer::start(&host, port, 2)
        .await
        .expect("pgbouncer starts");
    args.database_url = bouncer.url(db.name(), "tune");
    let err = tune::run(&args).await.unwrap_err();
    assert!(err.is_usage(), "{err}");
    assert!(
        err.to_string()
            .starts_with("--database-url: leads to PgBouncer"),
        "{err}"
    );
    drop(bouncer);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tune_has_no_server_cap() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tune.db").display());
    let report = tune::run(&tune_args(&url)).await.expect("tune runs");
    assert_eq!(report.max_connections, None);
    assert_eq!(report.curve.len(), 2);
    assert!(report.render().contains("SQLite has no connection limit"));
}
