//! HTTP-level tests of `queuepool serve`'s app, in-process (`tower::oneshot`), on
//! SQLite (temporary file), PostgreSQL (a database per test) and MariaDB.

mod common;

use std::time::Duration;

use axum::http::{StatusCode, header};
use common::*;
use queuepool::{Pool, PoolConfig};
use queuepool_cli::serve::router;
use queuepool_postgres::PgManager;

#[tokio::test]
async fn sqlite_items_api_follows_the_spec() {
    let db = SqliteDb::new();
    let pool = db.pool(config(2, 2, Duration::from_secs(5))).await;
    crud_spec(pool.clone(), "sqlite").await;
    pool.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn postgres_items_api_follows_the_spec() {
    let db = pg_db().await;
    let pool = pg_pool(&db, config(2, 2, Duration::from_secs(5))).await;
    crud_spec(pool.clone(), "postgres").await;
    pool.close(Duration::from_secs(5)).await;
    db.drop_database().await.expect("drop test database");
}

#[tokio::test]
async fn mariadb_items_api_follows_the_spec() {
    let db = MySqlDb::create().await;
    let pool = db.pool(config(2, 2, Duration::from_secs(5))).await;
    crud_spec(pool.clone(), "mysql").await;
    pool.close(Duration::from_secs(5)).await;
    db.drop_database().await;
}

#[tokio::test]
async fn table_is_created_once_and_data_survives_a_restart() {
    let db = SqliteDb::new();
    let pool = db.pool(config(1, 0, Duration::from_secs(5))).await;
    let app = router(pool.clone(), None);
    let reply = send(
        &app,
        axum::http::Method::POST,
        "/items",
        Some(serde_json::json!({"name": "kept", "price": 1})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    pool.close(Duration::from_secs(5)).await;
    // A second start runs CREATE TABLE IF NOT EXISTS again and sees the row.
    let pool = db.pool(config(1, 0, Duration::from_secs(5))).await;
    let items = get(&router(pool.clone(), None), "/items").await;
    assert_eq!(items.body[0]["name"], "kept");
    pool.close(Duration::from_secs(5)).await;
}

async fn check_docs_and_pool<M: queuepool_cli::store::Store>(pool: &Pool<M>) {
    let app = &router(pool.clone(), None);
    let docs = get(app, "/docs/").await;
    assert_eq!(docs.status, StatusCode::OK);
    let html = docs.body.as_str().expect("html").to_owned();
    assert!(html.contains("swagger"), "{html}");
    // Served from the binary: no CDN.
    for cdn in ["unpkg.com", "cdn.jsdelivr", "cdnjs"] {
        assert!(!html.contains(cdn), "{cdn} in /docs");
    }
    let init = get(app, "/docs/swagger-initializer.js").await;
    assert_eq!(init.status, StatusCode::OK);
    assert!(
        init.body
            .as_str()
            .unwrap_or_default()
            .contains("/openapi.json")
    );
    let bundle = get(app, "/docs/swagger-ui-bundle.js").await;
    assert_eq!(bundle.status, StatusCode::OK);

    let spec = get(app, "/openapi.json").await;
    assert_eq!(spec.status, StatusCode::OK);
    let paths = &spec.body["paths"];
    for (path, methods) in [
        ("/health", &["get"][..]),
        ("/items", &["get", "post"][..]),
        ("/items/{id}", &["get", "put", "delete"][..]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
    }
    assert!(spec.body["components"]["schemas"]["Item"].is_object());
    assert!(paths["/items"]["post"]["responses"]["422"].is_object());

    // A returned connection may still be resetting in the background.
    all_returned(pool).await;
    let status = get(app, "/pool").await;
    assert_eq!(status.status, StatusCode::OK);
    let line = status.body["status"].as_str().expect("status line");
    assert!(
        line.starts_with("Pool size: 3  Connections in pool: "),
        "{line}"
    );
    assert_eq!(status.body["pool_size"], 3);
    assert_eq!(status.body["checked_out"], 0);
    assert!(status.body["stats"]["checkouts"].as_u64().is_some());
}

#[tokio::test]
async fn sqlite_serves_docs_openapi_and_pool_status() {
    let db = SqliteDb::new();
    let pool = db.pool(config(3, 1, Duration::from_secs(5))).await;
    check_docs_and_pool(&pool).await;
    pool.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn postgres_serves_docs_openapi_and_pool_status() {
    let db = pg_db().await;
    let pool = pg_pool(&db, config(3, 1, Duration::from_secs(5))).await;
    check_docs_and_pool(&pool).await;
    // /pool agrees with the server: prefill opened pool_size connections.
    assert_eq!(
        db.count_connections(db.application_name())
            .await
            .expect("count"),
        3
    );
    pool.close(Duration::from_secs(5)).await;
    db.drop_database().await.expect("drop test database");
}

#[tokio::test]
async fn unreachable_database_is_503_json_with_retry_after_without_the_password() {
    // Nothing listens on port 1; prefill off so the service starts anyway.
    let manager = PgManager::from_url("postgres://app:s3cret@127.0.0.1:1/shop?connect_timeout=2")
        .expect("valid url");
    let config = PoolConfig::builder()
        .pool_size(1)
        .max_overflow(0)
        .prefill(false)
        .pool_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("config");
    let pool = Pool::new(manager, config)
        .await
        .expect("pool without prefill");
    let app = router(pool.clone(), None);
    for uri in ["/health", "/items", "/items/1"] {
        let reply = get(&app, uri).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert!(reply.is_json());
        assert_eq!(reply.body["error"], "database_unavailable", "{uri}");
        let text = reply.body.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("127.0.0.1"),
            "{text}"
        );
        // Like pool_timeout: a client should come back, not hammer a restarting server.
        assert_eq!(reply.headers[header::RETRY_AFTER], "1", "{uri}");
    }
    // Not ready, but alive: take it out of rotation, do not restart it.
    let ready = get(&app, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["error"], "database_unavailable");
    assert_eq!(ready.headers[header::RETRY_AFTER], "1");
    assert_eq!(get(&app, "/health/live").await.status, StatusCode::OK);
    // A validation error is reported before any checkout: no database needed.
    let reply = get(&app, "/items?limit=1000").await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    pool.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn ready_is_503_within_a_second_when_the_pool_cannot_lend_and_after_close() {
    let db = SqliteDb::new();
    let pool = db.pool(config(1, 0, Duration::from_secs(30))).await;
    let app = router(pool.clone(), None);
    assert_eq!(get(&app, "/health/ready").await.status, StatusCode::OK);
    let held = pool.get().await.expect("the only connection");
    let started = std::time::Instant::now();
    let busy = get(&app, "/health/ready").await;
    let took = started.elapsed();
    assert_eq!(
        busy.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        busy.body
    );
    assert_eq!(busy.body["error"], "not_ready");
    // Well inside a probe's usual 1 s timeout, not the pool's 30 s pool_timeout.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(get(&app, "/health/live").await.status, StatusCode::OK);
    drop(held);
    assert_eq!(get(&app, "/health/ready").await.status, StatusCode::OK);
    pool.close(Duration::from_secs(5)).await;
    let closed = get(&app, "/health/ready").await;
    assert_eq!(closed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(closed.body["error"], "shutting_down");
}

#[tokio::test]
async fn sql_errors_are_500_without_sql_detail() {
    let db = SqliteDb::new();
    let pool = db.pool(config(1, 0, Duration::from_secs(5))).await;
    // Break the table behind the service's back.
    {
        let mut conn = pool.get().await.expect("conn");
        conn.interact(|c| c.execute_batch("DROP TABLE items"))
            .await
            .expect("drop");
    }
    all_returned(&pool).await;
    let reply = get(&router(pool.clone(), None), "/items/1").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body["error"], "internal_error");
    let text = reply.body.to_string();
    assert!(
        !text.contains("items") && !text.contains("SELECT"),
        "{text}"
    );
    pool.close(Duration::from_secs(5)).await;
}
