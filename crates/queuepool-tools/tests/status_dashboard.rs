//! `status` against a live service's `/pool`, and the dashboard's routes, in-process
//! on SQLite.

use std::time::{Duration, Instant};

use axum::Router;
use queuepool::{Pool, PoolConfig};
use queuepool_sqlite::SqliteManager;
use queuepool_tools::status;

async fn sqlite_pool(size: u32) -> (tempfile::TempDir, Pool<SqliteManager>) {
    let dir = tempfile::tempdir().unwrap();
    let manager = SqliteManager::file(dir.path().join("app.db"));
    let config = PoolConfig::builder()
        .pool_size(size)
        .max_overflow(2)
        .name("svc")
        .build()
        .unwrap();
    (dir, Pool::new(manager, config).await.unwrap())
}

fn app(pool: Pool<SqliteManager>) -> Router {
    queuepool_axum::pool_routes::<SqliteManager, Pool<SqliteManager>>(None)
        .merge(queuepool_tools::dashboard::routes::<
            SqliteManager,
            Pool<SqliteManager>,
        >())
        .with_state(pool)
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_services_pool_figures() {
    let (_dir, pool) = sqlite_pool(3).await;
    let base = serve(app(pool.clone())).await;
    let held = pool.get().await.unwrap();
    let client = reqwest::Client::new();
    let url = status::pool_url(&base).unwrap();
    let report = status::fetch(&client, &url).await.unwrap();
    assert_eq!(report["checked_out"], 1);
    assert_eq!(report["idle"], 2);
    let text = status::render(&report, None);
    assert!(
        text.contains("pool svc: Pool size: 3  Connections in pool: 2"),
        "{text}"
    );
    assert!(text.contains("idle 2  in use 1  waiting 0"), "{text}");
    assert!(text.contains("max 5"), "{text}");
    drop(held);

    // Not a queuepool service, and nothing listening: clear errors.
    let wrong = status::fetch(&client, &format!("{base}/dashboard/samples"))
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("is this a queuepool service?"),
        "{wrong}"
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = status::fetch(&client, &format!("http://127.0.0.1:{port}/pool"))
        .await
        .unwrap_err();
    let line = queuepool_tools::chain(&down);
    assert!(
        line.starts_with(&format!("cannot reach http://127.0.0.1:{port}/pool")),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_serves_its_assets_and_records_a_burst() {
    let (_dir, pool) = sqlite_pool(2).await;
    let base = serve(app(pool.clone())).await;
    let client = reqwest::Client::new();
    let page = client
        .get(format!("{base}/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<canvas id=\"chart-connections\"") && html.contains("id=\"in-use\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    for (asset, kind) in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
    ] {
        let r = client
            .get(format!("{base}/dashboard/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }

    // Hold 3 connections (one overflow) for 1.5 s, then give them back.
    let held: Vec<_> = futures_hold(&pool, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let body: serde_json::Value = client
            .get(format!("{base}/dashboard/samples"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let samples = body["samples"].as_array().cloned().unwrap_or_default();
        let rose = samples.iter().any(|s| s["in_use_peak"] == 3);
        let fell = samples.last().is_some_and(|s| s["in_use"] == 0);
        if rose && fell {
            assert_eq!(body["pool"]["pool_size"], 2);
            assert_eq!(body["pool"]["max_connections"], 4);
            break samples;
        }
        assert!(Instant::now() < deadline, "no rise and fall in {samples:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let last_seq = samples.last().unwrap()["seq"].as_u64().unwrap();
    let newer: serde_json::Value = client
        .get(format!("{base}/dashboard/samples?after={last_seq}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        newer["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["seq"].as_u64().unwrap() > last_seq)
    );
    assert!(
        samples
            .iter()
            .any(|s| s["checkouts_per_s"].as_f64().unwrap() > 0.0)
    );
}

async fn futures_hold(
    pool: &Pool<SqliteManager>,
    n: usize,
) -> Vec<queuepool::PooledConn<SqliteManager>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    held
}
