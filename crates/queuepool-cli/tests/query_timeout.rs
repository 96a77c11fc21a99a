//! `query_timeout` and the request backstop: a query whose network path goes silent
//! (the testkit's fault proxy in blackhole mode) ends in a 503 `query_timeout` after
//! `query_timeout`, its connection is discarded, and the service recovers; a backend
//! without a client-side timeout (SQLite waiting on a lock) is bounded by the handler;
//! a request that never completes is ended by the request timeout.

mod common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::{SqliteDb, config, get, send};
use queuepool::{Pool, PoolConfig};
use queuepool_cli::serve::{QUERY_GRACE, Timeouts, open_pool, router_with};
use queuepool_postgres::PgManager;
use queuepool_testkit::{FaultMode, FaultProxy};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUERY: Duration = Duration::from_millis(600);

fn timeouts(pool: &PoolConfig) -> Timeouts {
    Timeouts::new(QUERY, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_queries_end_in_503_after_query_timeout_and_the_pool_recovers() {
    let db = common::pg_db().await;
    let port = db.manager().unwrap().pg_config().get_ports()[0];
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    let url = db.url_via("127.0.0.1", proxy.port()).unwrap();
    let cfg = PoolConfig::builder()
        .pool_size(1)
        .max_overflow(0)
        .pool_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2))
        .prefill(true)
        .build()
        .unwrap();
    let pool: Pool<PgManager> = open_pool(&url, cfg.clone()).await.unwrap();
    let app = router_with(pool.clone(), None, timeouts(&cfg));
    let created = send(
        &app,
        Method::POST,
        "/items",
        Some(json!({"name": "w", "price": 1.0})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_i64().unwrap();
    let opened_before = pool.stats().connections_created;

    // The connection was used just now (no pre-ping): the query goes into the hole.
    common::all_returned(&pool).await;
    proxy.set_mode(FaultMode::Blackhole);
    let started = Instant::now();
    let reply = get(&app, &format!("/items/{id}")).await;
    let took = started.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert!(reply.is_json());
    assert_eq!(reply.body["error"], "query_timeout", "{}", reply.body);
    assert!(took >= QUERY, "answered before query_timeout: {took:?}");
    assert!(
        took < QUERY + QUERY_GRACE,
        "PgConnection::timeout ends it at query_timeout, before the handler's grace: {took:?}"
    );
    // The connection was discarded, not returned to be lent into the hole again.
    common::all_returned(&pool).await;
    assert_eq!(pool.status().idle, 0, "{}", pool.status());

    // The network is back: new connections, and the data is intact. A replacement
    // connection the pool began to open inside the hole fails at connect_timeout (2 s),
    // so recovery is bounded by that, not immediate.
    proxy.set_mode(FaultMode::PassThrough);
    let back = Instant::now();
    let again = loop {
        let reply = get(&app, &format!("/items/{id}")).await;
        if reply.status == StatusCode::OK || back.elapsed() > Duration::from_secs(5) {
            break reply;
        }
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["id"], id);
    assert!(pool.stats().connections_created > opened_before);
    pool.close(Duration::from_secs(2)).await;
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_without_a_driver_timeout_is_dropped_by_the_handler_and_its_connection_discarded() {
    let sqlite = SqliteDb::new();
    let cfg = config(1, 0, Duration::from_secs(1));
    let pool = sqlite.pool(cfg.clone()).await;
    let app = router_with(pool.clone(), None, timeouts(&cfg));
    // Another connection holds the write lock: the insert waits on SQLite's
    // busy_timeout (5 s) on the blocking pool, far beyond query_timeout.
    let path = sqlite.dir.path().join("items.db");
    let locker = rusqlite_lock(&path);
    let started = Instant::now();
    let reply = send(
        &app,
        Method::POST,
        "/items",
        Some(json!({"name": "w", "price": 1.0})),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"], "query_timeout");
    assert!(
        took >= QUERY && took < QUERY + QUERY_GRACE + Duration::from_millis(500),
        "{took:?}"
    );
    drop(locker);
    common::all_returned(&pool).await;
    // The abandoned connection was discarded, not lent again; the service goes on.
    assert_eq!(pool.stats().invalidated, 1);
    let reply = get(&app, "/items").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

/// Holds SQLite's write lock on `path` until dropped.
fn rusqlite_lock(path: &std::path::Path) -> queuepool_sqlite::rusqlite::Connection {
    let conn = queuepool_sqlite::rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_completes_ends_with_503_at_the_request_timeout() {
    let sqlite = SqliteDb::new();
    let pool = sqlite.pool(config(1, 0, Duration::from_secs(1))).await;
    let bounds = Timeouts {
        query: QUERY,
        request: Duration::from_millis(800),
    };
    let app = router_with(pool.clone(), None, bounds);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // A body announced but never sent: the handler waits for it forever.
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Before the write: the server's timer starts when the request arrives, which can
    // be before this task runs again after `write_all` (measured 799 ms against 800 ms
    // under load when the clock was read after the write).
    let started = Instant::now();
    socket
        .write_all(
            b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"name\":",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
        .await
        .expect("an answer before the client gives up")
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert!(
        took >= bounds.request && took < bounds.request + Duration::from_secs(1),
        "{took:?}"
    );
    server.abort();
}

#[test]
fn the_request_timeout_covers_checkout_connect_and_query() {
    let cfg = PoolConfig::builder()
        .pool_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let t = Timeouts::new(Duration::from_secs(10), &cfg);
    assert_eq!(t.query, Duration::from_secs(10));
    assert!(t.request > Duration::from_secs(50) + QUERY_GRACE, "{t:?}");
    assert!(t.request <= Duration::from_secs(52), "{t:?}");
}
