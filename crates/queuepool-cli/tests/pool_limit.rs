//! At the pool's limit (pool_size 5 + max_overflow 10), 15 slow requests hold 15
//! connections and the 16th gets `503` with `Retry-After` after `pool_timeout`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::routing::get as route_get;
use common::*;
use queuepool::Pool;
use queuepool_axum::Db;
use queuepool_cli::serve::{AppState, routes};
use queuepool_cli::store::Store;
use tokio::sync::Semaphore;

const POOL_TIMEOUT: Duration = Duration::from_secs(1);

/// The service's app plus `GET /slow`, whose handler counts itself in `holding` and
/// holds its connection until the test adds a permit to `gate`.
fn app_with_slow_route<M: Store>(
    pool: Pool<M>,
    gate: Arc<Semaphore>,
    holding: Arc<AtomicUsize>,
) -> axum::Router {
    routes::<M>(None)
        .route(
            "/slow",
            route_get(move |db: Db<M>| {
                let gate = gate.clone();
                let holding = holding.clone();
                async move {
                    holding.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await;
                    drop(db);
                    StatusCode::OK
                }
            }),
        )
        .with_state(AppState { pool })
}

/// Returns once 15 connections are held; runs the 16th request and checks it.
async fn sixteenth_request_times_out<M: Store>(pool: Pool<M>, on_saturated: impl AsyncFnOnce()) {
    let gate = Arc::new(Semaphore::new(0));
    let holding = Arc::new(AtomicUsize::new(0));
    let app = app_with_slow_route(pool.clone(), gate.clone(), holding.clone());
    let slow: Vec<_> = (0..15)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get(&app, "/slow").await.status })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while holding.load(Ordering::SeqCst) < 15 {
        assert!(
            Instant::now() < deadline,
            "15 checkouts never happened: {}",
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = pool.status();
    assert_eq!(status.checked_out, 15, "{status}");
    assert_eq!(status.overflow, 10, "{status}");
    on_saturated().await;

    let started = Instant::now();
    let reply = get(&app, "/health").await;
    let waited = started.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    assert!(reply.is_json());
    assert_eq!(reply.body["error"], "pool_timeout");
    assert!(
        waited >= POOL_TIMEOUT - Duration::from_millis(50),
        "{waited:?}"
    );
    assert!(waited < POOL_TIMEOUT * 3, "{waited:?}");
    assert_eq!(pool.stats().timeouts, 1);

    gate.add_permits(15);
    for handle in slow {
        assert_eq!(handle.await.expect("slow request"), StatusCode::OK);
    }
    all_returned(&pool).await;
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn postgres_15_slow_requests_hold_15_connections_and_the_16th_gets_503() {
    let db = pg_db().await;
    let pool = pg_pool(&db, config(5, 10, POOL_TIMEOUT)).await;
    let app_name = db.application_name().to_owned();
    let db_ref = &db;
    sixteenth_request_times_out(pool.clone(), async || {
        // The server agrees: 15 connections of this pool are open.
        let open = db_ref.count_connections(&app_name).await.expect("count");
        assert_eq!(open, 15);
    })
    .await;
    pool.close(Duration::from_secs(5)).await;
    db.drop_database().await.expect("drop test database");
}

#[tokio::test]
async fn sqlite_15_slow_requests_hold_15_connections_and_the_16th_gets_503() {
    let db = SqliteDb::new();
    let pool = db.pool(config(5, 10, POOL_TIMEOUT)).await;
    sixteenth_request_times_out(pool.clone(), async || {}).await;
    pool.close(Duration::from_secs(5)).await;
}
