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
            pool_size: Some(2),
            max_overflow: Some(Overflow::Limited(3)),
            pool_timeout: Some(Duration::from_millis(500)),
            ..PoolArgs::default()
        },
        overflow_idle: Some("500ms".into()),
        application_name: app.map(str::to_owned),
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
