//! `status` against a live service's `/pool`, in-process on SQLite.

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
        .merge(queuepool_axum::dashboard::routes::<
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
