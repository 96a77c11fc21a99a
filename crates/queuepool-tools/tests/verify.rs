//! `verify` against real PostgreSQL (a database of its own per test) and SQLite.

use std::time::Duration;

use queuepool::{Overflow, Preset};
use queuepool_tools::args::PoolArgs;
use queuepool_tools::verify::{self, VerifyArgs};

fn args(url: &str, app: Option<&str>) -> VerifyArgs {
    VerifyArgs {
        database_url: url.to_owned(),
        pool: PoolArgs {
            pool_preset: Some(Preset::Dev),
            pool_size: Some(queuepool_tools::args::PoolSize::Fixed(2)),
            max_overflow: Some(Overflow::Limited(3)),
            pool_timeout: Some(Duration::from_millis(500)),
            ..PoolArgs::default()
        },
        overflow_idle: Some("500ms".into()),
        application_name: app.map(str::to_owned),
        pgbouncer_admin: None,
        server_url: None,
        json: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pool_matches_pg_stat_activity_at_every_step() {
    let db = queuepool_testkit::TestDb::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let report = verify::run(&args(db.url(), None))
        .await
        .expect("verify runs");
    assert!(report.passed, "{}", report.render());
    assert!(
        report.pgbouncer.is_none(),
        "no PgBouncer in front of the server"
    );
    let burst = report
        .rows
        .iter()
        .find(|r| r.step == "burst" && r.check == "connections in pg_stat_activity")
        .expect("burst row");
    assert_eq!(
        (burst.expected.as_str(), burst.observed.as_str()),
        ("5", "5")
    );
    let timeout = report
        .rows
        .iter()
        .find(|r| r.step == "at limit")
        .expect("timeout row");
    assert!(
        timeout
            .observed
            .contains("QueuePool limit of size 2 overflow 3"),
        "{}",
        timeout.observed
    );
    // Closed at the end: nothing of the check is left on the server.
    assert_eq!(
        db.count_connections(&report.application_name)
            .await
            .unwrap(),
        0
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["rows"].as_array().unwrap().len(), report.rows.len());
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_fails_when_the_pools_connections_are_killed() {
    let db = queuepool_testkit::TestDb::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let app = db.unique_application_name();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let killer = {
        let app = app.clone();
        let db = &db;
        async move {
            let mut killed = 0;
            loop {
                killed += db.terminate_all(&app).await.unwrap_or(0);
                tokio::select! {
                    _ = &mut stop_rx => return killed,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    };
    let check = async {
        let report = verify::run(&args(db.url(), Some(&app))).await;
        let _ = stop_tx.send(());
        report
    };
    let (report, killed) = tokio::join!(check, killer);
    let report = report.expect("verify runs to its report even while connections die");
    assert!(killed > 0, "the killer never found a connection");
    assert!(!report.passed, "{}", report.render());
    let text = report.render();
    assert!(text.contains("FAIL"), "{text}");
    // A failed row shows what the server (or the pool's counters) saw instead: fewer
    // connections than the pool holds, or more opened than the limit.
    let failed: Vec<_> = report.rows.iter().filter(|r| !r.pass).collect();
    assert!(
        failed.iter().any(|r| {
            (r.check.contains("pg_stat_activity")
                && r.observed.parse::<usize>().unwrap() < r.expected.parse::<usize>().unwrap())
                || (r.check.starts_with("connections opened")
                    && r.observed.parse::<usize>().unwrap() > 5)
        }),
        "{text}"
    );
    db.drop_database().await.unwrap();
}

/// The shared test server's host and port, for a PgBouncer in front of it.
fn server_of(db: &queuepool_testkit::TestDb) -> (String, u16) {
    let m = db.manager().unwrap();
    let host = match m.pg_config().get_hosts().first() {
        Some(queuepool_postgres::tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    (
        host,
        m.pg_config().get_ports().first().copied().unwrap_or(5432),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_clients_and_server_backends_are_checked_as_two_layers() {
    let db = queuepool_testkit::TestDb::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let (host, port) = server_of(&db);
    // 2 server connections for a pool of 2 + 3 overflow: the burst's 5 clients share them.
    let bouncer = queuepool_testkit::PgBouncer::start(&host, port, 2)
        .await
        .expect("pgbouncer (Debian package) starts");
    let url = bouncer.url(db.name(), "ignored");
    // Detected without a flag: the server's port is not the URL's.
    let report = verify::run(&args(&url, None)).await.expect("verify runs");
    let text = report.render();
    assert!(report.passed, "{text}");
    let view = report.pgbouncer.as_ref().expect("PgBouncer detected");
    assert!(view.version.starts_with("PgBouncer"), "{text}");
    assert_eq!(
        (view.pool_mode.as_str(), view.pool_size),
        ("transaction", 2)
    );
    let at = |step: &str| {
        view.snapshots
            .iter()
            .find(|s| s.step == step)
            .unwrap_or_else(|| panic!("{step} in {text}"))
    };
    let burst = at("burst");
    assert_eq!((burst.pool_connections, burst.clients), (5, 5), "{text}");
    assert!((1..=2).contains(&burst.servers), "{text}");
    assert_eq!(burst.backends, burst.servers, "{text}");
    assert_eq!(at("idle").clients, 2, "{text}");
    assert_eq!(at("released").clients, 2, "{text}");
    assert_eq!(at("closed").clients, 0, "{text}");
    for needle in [
        "SHOW CLIENTS",
        "pg_stat_activity",
        "sv_active/sv_idle/sv_used",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }

    // Named explicitly, with the server's URL: the same.
    let mut explicit = args(&url, None);
    explicit.pgbouncer_admin = Some(bouncer.admin_url());
    explicit.server_url = Some(db.url().to_owned());
    let report = verify::run(&explicit).await.expect("verify runs");
    assert!(report.passed, "{}", report.render());
    assert!(report.pgbouncer.is_some());

    // A console that is not PgBouncer's is refused, naming the flag.
    let mut wrong = args(&url, None);
    wrong.pgbouncer_admin = Some(db.url().to_owned());
    let err = verify::run(&wrong).await.unwrap_err();
    assert!(
        err.to_string().contains("--pgbouncer-admin")
            || queuepool_tools::chain(&err).contains("SHOW VERSION"),
        "{}",
        queuepool_tools::chain(&err)
    );
    drop(bouncer);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pool_open_handles_follow_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("verify.db").display());
    let report = verify::run(&args(&url, None)).await.expect("verify runs");
    assert!(report.passed, "{}", report.render());
    assert_eq!(report.server_view, "open handles");
    let released = report
        .rows
        .iter()
        .find(|r| r.step == "released" && r.check.starts_with("open handles"))
        .expect("released row");
    assert_eq!(released.observed, "2");
}

#[tokio::test]
async fn bad_arguments_name_the_flag() {
    let mut a = args("sqlite::memory:", None);
    a.pool.pool_timeout = Some(Duration::ZERO);
    let err = verify::run(&a).await.unwrap_err();
    assert!(err.is_usage());
    assert!(err.to_string().starts_with("--pool-timeout: "), "{err}");
    let c = args("redis://localhost", None);
    assert!(
        verify::run(&c)
            .await
            .unwrap_err()
            .to_string()
            .starts_with("--database-url: unsupported")
    );
}
