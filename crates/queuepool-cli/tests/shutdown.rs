//! Graceful shutdown in-process: stop accepting, let the running request finish
//! (bounded), close the pool so the database sees none of its connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get as route_get;
use common::*;
use queuepool::Pool;
use queuepool_axum::Db;
use queuepool_cli::serve::{AppState, routes, serve_app};
use queuepool_cli::store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};

struct Running {
    url: String,
    gate: Arc<Semaphore>,
    holding: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), queuepool_cli::CliError>>,
}

async fn start<M: Store>(pool: Pool<M>, grace: Duration) -> Running {
    let gate = Arc::new(Semaphore::new(0));
    let holding = Arc::new(AtomicUsize::new(0));
    let (g, h) = (gate.clone(), holding.clone());
    let app = routes::<M>(None)
        .route(
            "/slow",
            route_get(move |db: Db<M>| {
                let (gate, holding) = (g.clone(), h.clone());
                async move {
                    holding.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await;
                    drop(db);
                    "done"
                }
            }),
        )
        .with_state(AppState { pool: pool.clone() });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_app(
        listener,
        app,
        pool,
        async move {
            let _ = stopped.await;
        },
        grace,
    ));
    Running {
        url,
        gate,
        holding,
        stop,
        server,
    }
}

async fn wait_holding(holding: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while holding.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "request never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn postgres_shutdown_finishes_the_running_request_and_closes_every_connection() {
    let db = pg_db().await;
    let pool = pg_pool(&db, config(3, 2, Duration::from_secs(5))).await;
    let app_name = db.application_name().to_owned();
    let running = start(pool.clone(), Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/health", running.url))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    let slow = tokio::spawn(client.get(format!("{}/slow", running.url)).send());
    wait_holding(&running.holding, 1).await;
    assert!(db.count_connections(&app_name).await.expect("count") >= 3);

    running.stop.send(()).expect("server running");
    // New connections are refused once shutdown began.
    let addr = running.url.trim_start_matches("http://").to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !running.server.is_finished(),
        "did not wait for the running request"
    );

    // The running request completes normally.
    running.gate.add_permits(1);
    let reply = slow.await.expect("task").expect("slow request completed");
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.text().await.expect("body"), "done");
    tokio::time::timeout(Duration::from_secs(10), running.server)
        .await
        .expect("serve returned")
        .expect("task")
        .expect("serve ok");

    // The database sees none of the pool's connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = db.count_connections(&app_name).await.expect("count");
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections still open after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool.get().await.unwrap_err().is_closed());
    db.drop_database().await.expect("drop test database");
}

#[tokio::test]
async fn shutdown_is_bounded_when_a_request_never_finishes() {
    let db = SqliteDb::new();
    let pool = db.pool(config(2, 0, Duration::from_secs(5))).await;
    let running = start(pool.clone(), Duration::from_millis(500)).await;
    let stuck = tokio::spawn(reqwest::get(format!("{}/slow", running.url)));
    wait_holding(&running.holding, 1).await;
    let started = Instant::now();
    running.stop.send(()).expect("server running");
    tokio::time::timeout(Duration::from_secs(10), running.server)
        .await
        .expect("serve returned")
        .expect("task")
        .expect("serve ok");
    let took = started.elapsed();
    // grace (0.5 s) for requests, then at least 1 s for lent connections.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(pool.get().await.unwrap_err().is_closed());
    stuck.abort();
}
