//! The `Db` extractor and `DbError` over a fake manager: one connection per request,
//! returned on success, panic and client disconnect; errors mapped to safe responses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use queuepool::{Manager, Pool, PoolConfig};
use queuepool_axum::{Db, DbError, pool_routes};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
enum FakeError {
    #[error("connection refused by db.internal:5432 (password=hunter2)")]
    Refused,
    #[error("server closed the connection unexpectedly")]
    Gone,
    #[error("relation \"secret_table\" does not exist in SELECT * FROM secret_table")]
    Sql,
}

#[derive(Default)]
struct FakeManager {
    refuse: bool,
    opened: AtomicUsize,
    closed: AtomicUsize,
}

struct FakeConn(#[allow(dead_code)] usize);

impl Manager for FakeManager {
    type Connection = FakeConn;
    type Error = FakeError;

    async fn connect(&self) -> Result<FakeConn, FakeError> {
        if self.refuse {
            return Err(FakeError::Refused);
        }
        Ok(FakeConn(self.opened.fetch_add(1, Ordering::SeqCst)))
    }

    async fn is_valid(&self, _conn: &mut FakeConn) -> Result<(), FakeError> {
        Ok(())
    }

    async fn reset(&self, _conn: &mut FakeConn) -> Result<(), FakeError> {
        Ok(())
    }

    fn is_disconnect(&self, error: &FakeError) -> bool {
        matches!(error, FakeError::Gone)
    }

    async fn close(&self, _conn: FakeConn) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pool(
    manager: FakeManager,
    size: u32,
    overflow: u32,
    timeout: Duration,
) -> Pool<FakeManager> {
    let config = PoolConfig::builder()
        .pool_size(size)
        .max_overflow(overflow)
        .pool_timeout(timeout)
        .prefill(false)
        .build()
        .unwrap();
    Pool::new(manager, config).await.unwrap()
}

/// Waits until no connection is checked out (the return may finish in a spawned task).
async fn all_returned(pool: &Pool<FakeManager>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.status().checked_out != 0 {
        assert!(
            Instant::now() < deadline,
            "connection never returned: {}",
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn json(response: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn hold(db: Db<FakeManager>) -> &'static str {
    let _: &FakeConn = &db;
    tokio::time::sleep(Duration::from_secs(60)).await;
    "late"
}

async fn ok(db: Db<FakeManager>) -> &'static str {
    let _: &FakeConn = &db;
    "ok"
}

async fn boom(db: Db<FakeManager>) -> &'static str {
    let _: &FakeConn = &db;
    panic!("handler panicked while holding a connection");
}

async fn sql_error(mut db: Db<FakeManager>) -> Result<&'static str, DbError> {
    Err(Db::error(&mut db, FakeError::Sql))
}

async fn abandoned(mut db: Db<FakeManager>) -> &'static str {
    Db::invalidate(&mut db);
    "abandoned"
}

async fn lost(mut db: Db<FakeManager>) -> Result<&'static str, DbError> {
    Err(Db::error(&mut db, FakeError::Gone))
}

fn app(pool: Pool<FakeManager>) -> Router {
    Router::new()
        .route("/ok", get(ok))
        .route("/hold", get(hold))
        .route("/boom", get(boom))
        .route("/sql", get(sql_error))
        .route("/lost", get(lost))
        .route("/abandoned", get(abandoned))
        .merge(pool_routes::<FakeManager, Pool<FakeManager>>(None))
        .with_state(pool)
}

#[tokio::test]
async fn connection_is_returned_when_the_handler_ends() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_secs(1)).await;
    for _ in 0..3 {
        let response = app(pool.clone()).oneshot(get_req("/ok")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        all_returned(&pool).await;
    }
    // One connection served all three requests: it was returned and reused each time.
    assert_eq!(pool.manager().opened.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().checkouts, 3);
}

#[tokio::test]
async fn connection_is_returned_when_the_handler_panics() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_secs(1)).await;
    let app = app(pool.clone());
    let joined = tokio::spawn(app.oneshot(get_req("/boom"))).await;
    assert!(joined.unwrap_err().is_panic());
    all_returned(&pool).await;
    // The pool still lends: a leaked slot would make this time out with pool_size 1.
    let response = app_ok(&pool).await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn app_ok(pool: &Pool<FakeManager>) -> Response {
    app(pool.clone()).oneshot(get_req("/ok")).await.unwrap()
}

#[tokio::test]
async fn connection_is_returned_when_the_client_disconnects() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_secs(1)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app(pool.clone())).into_future());

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /hold HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.status().checked_out != 1 {
        assert!(Instant::now() < deadline, "handler never checked out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(client);
    // The handler sleeps 60 s; the connection comes back because hyper drops it.
    all_returned(&pool).await;
    server.abort();
}

#[tokio::test]
async fn pool_timeout_is_503_with_retry_after_and_json() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_millis(300)).await;
    let holder = tokio::spawn(app(pool.clone()).oneshot(get_req("/hold")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.status().checked_out != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let response = app_ok(&pool).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body = json(response).await;
    assert_eq!(body["error"], "pool_timeout");
    assert!(body["message"].as_str().unwrap().contains("busy"));
    holder.abort();
    let _ = holder.await;
    all_returned(&pool).await;
}

#[tokio::test]
async fn unreachable_database_is_503_without_secrets() {
    let manager = FakeManager {
        refuse: true,
        ..FakeManager::default()
    };
    let pool = pool(manager, 1, 0, Duration::from_secs(1)).await;
    let response = app_ok(&pool).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let body = json(response).await;
    assert_eq!(body["error"], "database_unavailable");
    let text = body.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("db.internal"),
        "{text}"
    );
}

#[tokio::test]
async fn query_error_is_500_without_sql_and_keeps_the_connection() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_secs(1)).await;
    let response = app(pool.clone()).oneshot(get_req("/sql")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = json(response).await.to_string();
    assert!(
        !text.contains("secret_table") && !text.contains("SELECT"),
        "{text}"
    );
    all_returned(&pool).await;
    assert_eq!(pool.stats().invalidated, 0);
}

#[tokio::test]
async fn disconnect_error_is_503_and_discards_the_connection() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_secs(1)).await;
    let response = app(pool.clone()).oneshot(get_req("/lost")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(response).await["error"], "database_unavailable");
    all_returned(&pool).await;
    // Discarded (hard-closed: dropped without a polite close), not put back.
    assert_eq!(pool.stats().invalidated, 1);
    assert_eq!(pool.status().idle, 0);
    // The next request gets a fresh connection.
    assert_eq!(app_ok(&pool).await.status(), StatusCode::OK);
    assert_eq!(pool.manager().opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn pool_route_reports_status_line_and_every_counter() {
    let pool = pool(FakeManager::default(), 2, 3, Duration::from_secs(1)).await;
    app_ok(&pool).await;
    all_returned(&pool).await;
    let response = app(pool.clone()).oneshot(get_req("/pool")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = json(response).await;
    let status = pool.status();
    assert_eq!(body["status"], status.to_string());
    assert!(
        body["status"]
            .as_str()
            .unwrap()
            .starts_with("Pool size: 2  Connections in pool: ")
    );
    for (key, value) in [
        ("pool_size", 2),
        ("idle", status.idle as i64),
        ("checked_out", 0),
        ("overflow", status.overflow),
        ("connecting", 0),
        ("waiting", 0),
    ] {
        assert_eq!(body[key], value, "{key}");
    }
    let stats = &body["stats"];
    assert_eq!(stats["checkouts"], 1);
    // The first checkout opened one; the background refill may have opened the second
    // of pool_size 2.
    let created = stats["connections_created"].as_u64().unwrap();
    assert!((1..=2).contains(&created), "{created}");
    for key in [
        "timeouts",
        "connect_errors",
        "recycled",
        "invalidated",
        "closed",
        "pool_invalidations",
        "leaks",
    ] {
        assert_eq!(stats[key], 0, "{key}");
    }
    assert_eq!(stats["wait"]["count"], 1);
    assert_eq!(stats["usage"]["count"], 1);
    assert_eq!(body["config"]["max_overflow"], 3);
    assert_eq!(body["config"]["max_connections"], 5);
    // No /metrics route without a Prometheus handle.
    let response = app(pool.clone())
        .oneshot(get_req("/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manual_checkout_works_like_the_extractor() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_millis(200)).await;
    let db = Db::checkout(&pool).await.unwrap();
    assert_eq!(pool.status().checked_out, 1);
    let err = Db::checkout(&pool).await.unwrap_err();
    assert!(
        matches!(err, DbError::Pool(ref e) if e.is_timeout()),
        "{err}"
    );
    drop(db);
    all_returned(&pool).await;
}

/// A `tracing` writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn leak_warnings(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains("Connection leak detection triggered"))
            .map(str::to_owned)
            .collect()
    }
}

async fn leak_warning_for(router: Router<Pool<FakeManager>>, uri: &str) -> Vec<String> {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // current_thread runtime: the leak watch task runs on this thread, under this default.
    let _guard = tracing::subscriber::set_default(subscriber);
    let config = PoolConfig::builder()
        .pool_size(1)
        .max_overflow(0)
        .prefill(false)
        .leak_threshold(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let pool = Pool::new(FakeManager::default(), config).await.unwrap();
    let request = router.with_state(pool).oneshot(get_req(uri));
    let held = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.abort();
    captured.leak_warnings()
}

#[tokio::test(start_paused = true)]
async fn leak_warning_names_the_method_and_matched_route_of_the_handler() {
    let router = Router::new().route("/users/{id}/orders", get(hold));
    let warnings = leak_warning_for(router, "/users/42/orders").await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains(" by GET /users/{id}/orders held longer than leak_threshold"),
        "{}",
        warnings[0]
    );
}

#[tokio::test(start_paused = true)]
async fn leak_warning_names_the_request_path_outside_a_route() {
    let router = Router::new().fallback(hold);
    let warnings = leak_warning_for(router, "/no/route/here").await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains(" by GET /no/route/here held"),
        "{}",
        warnings[0]
    );
}

#[tokio::test]
async fn an_invalidated_connection_is_discarded_not_lent_again() {
    let pool = pool(FakeManager::default(), 1, 0, Duration::from_secs(1)).await;
    let response = app(pool.clone())
        .oneshot(get_req("/abandoned"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    all_returned(&pool).await;
    // Discarded (dropped, as a broken connection is), not put back.
    assert_eq!(pool.stats().invalidated, 1);
    assert_eq!(pool.status().idle, 0);
    assert_eq!(app_ok(&pool).await.status(), StatusCode::OK);
    assert_eq!(pool.manager().opened.load(Ordering::SeqCst), 2);
}
