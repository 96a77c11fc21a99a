//! Reads are retried on another connection while their connection is lost mid-query
//! (its backend killed with `pg_terminate_backend`), at most the pool's
//! `max_connections` times; writes never are.
//!
//! The deterministic tests hold `ACCESS EXCLUSIVE` on the items table from an observer
//! connection, so the service's query waits on the lock where the test can see it
//! (`pg_stat_activity.wait_event_type = 'Lock'`) and kill its backend mid-query.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{Method, StatusCode};
use common::{Reply, get, send};
use queuepool::{Pool, PoolConfig};
use queuepool_cli::serve::{Timeouts, router_with};
use queuepool_postgres::{PgConnection, PgManager};
use queuepool_testkit::TestDb;
use serde_json::{Value, json};

/// Long enough that a query waiting on the test's lock never times out.
const QUERY: Duration = Duration::from_secs(10);

async fn service(db: &TestDb) -> (Pool<PgManager>, Router) {
    let cfg = PoolConfig::builder()
        .pool_size(2)
        .max_overflow(0)
        .pool_timeout(Duration::from_secs(5))
        .pre_ping(true)
        .prefill(true)
        .name("read_retry")
        .build()
        .unwrap();
    let pool = common::pg_pool(db, cfg.clone()).await;
    let app = router_with(pool.clone(), None, Timeouts::new(QUERY, &cfg));
    (pool, app)
}

async fn create(app: &Router, name: &str) -> i64 {
    let reply = send(
        app,
        Method::POST,
        "/items",
        Some(json!({"name": name, "price": 1.0})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["id"].as_i64().unwrap()
}

/// The pids of the service's backends waiting on a lock, polled until there is one
/// not in `not` (bounded).
async fn waiting_backend(obs: &PgConnection, db: &TestDb, not: &[i32]) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = obs
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
                 AND wait_event_type = 'Lock'",
                &[&db.name(), &db.application_name()],
            )
            .await
            .unwrap();
        if let Some(pid) = rows
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .find(|p| !not.contains(p))
        {
            return pid;
        }
        if Instant::now() >= deadline {
            let all = obs
                .query(
                    "SELECT pid, state, wait_event_type, query FROM pg_stat_activity \
                     WHERE datname = $1",
                    &[&db.name()],
                )
                .await
                .unwrap();
            let all: Vec<(i32, Option<String>, Option<String>, String)> = all
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
            panic!("no backend of the service (other than {not:?}) waits on the lock: {all:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn kill(obs: &PgConnection, pid: i32) {
    let row = obs
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "backend {pid} was not terminated");
}

/// An observer connection holding `ACCESS EXCLUSIVE` on the items table (in a
/// transaction: look at `pg_stat_activity` from another connection, a transaction
/// keeps its first snapshot of it).
async fn lock_items(db: &TestDb) -> PgConnection {
    let obs = db.observer().await.unwrap();
    obs.batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    obs
}

fn spawn_request(
    app: &Router,
    method: Method,
    uri: String,
    body: Option<Value>,
) -> tokio::task::JoinHandle<Reply> {
    let app = app.clone();
    tokio::spawn(async move { send(&app, method, &uri, body).await })
}

/// The request was answered 503 `database_unavailable` (`what`: which request).
fn assert_database_unavailable(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        reply.body
    );
    assert_eq!(
        reply.body["error"], "database_unavailable",
        "{what}: {}",
        reply.body
    );
}

/// Awaits a spawned request, bounded: a retried write would wait on the lock forever.
async fn reply_of(task: tokio::task::JoinHandle<Reply>) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("no reply while the lock is held: the request was run again")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_backend_is_killed_mid_query_is_answered_from_a_second_connection() {
    let db = common::pg_db().await;
    let (pool, app) = service(&db).await;
    let id = create(&app, "kept").await;
    let obs = db.observer().await.unwrap();

    for uri in [format!("/items/{id}"), "/items".to_owned()] {
        let lock = lock_items(&db).await;
        let task = spawn_request(&app, Method::GET, uri.clone(), None);
        let first = waiting_backend(&obs, &db, &[]).await;
        kill(&obs, first).await;
        // The retry: another backend of the service waits on the lock (this fails
        // after 10 s if none does).
        waiting_backend(&obs, &db, &[first]).await;
        lock.batch_execute("COMMIT").await.unwrap();
        let reply = reply_of(task).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        let item = if uri == "/items" {
            reply.body[0].clone()
        } else {
            reply.body.clone()
        };
        assert_eq!(item["id"], id, "{uri}: {}", reply.body);
        assert_eq!(item["name"], "kept");
    }
    common::all_returned(&pool).await;
    assert!(pool.stats().invalidated >= 2, "{:?}", pool.stats());
    drop(pool);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_retry_is_killed_too_is_retried_again() {
    let db = common::pg_db().await;
    let (pool, app) = service(&db).await;
    let id = create(&app, "kept").await;

    let obs = db.observer().await.unwrap();
    let lock = lock_items(&db).await;
    let task = spawn_request(&app, Method::GET, format!("/items/{id}"), None);
    let first = waiting_backend(&obs, &db, &[]).await;
    kill(&obs, first).await;
    let second = waiting_backend(&obs, &db, &[first]).await;
    kill(&obs, second).await;
    // A third attempt, on a third backend: the answer once the lock is gone.
    waiting_backend(&obs, &db, &[first, second]).await;
    lock.batch_execute("COMMIT").await.unwrap();
    let reply = reply_of(task).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["id"], id, "{}", reply.body);
    common::all_returned(&pool).await;
    drop(pool);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_retried_at_most_max_connections_times() {
    let db = common::pg_db().await;
    let (pool, app) = service(&db).await;
    // pool_size 2, max_overflow 0: two retries, three attempts.
    assert_eq!(pool.config().max_connections(), 2);
    let id = create(&app, "x").await;

    let obs = db.observer().await.unwrap();
    for uri in ["/items".to_owned(), format!("/items/{id}")] {
        let lock = lock_items(&db).await;
        let task = spawn_request(&app, Method::GET, uri.clone(), None);
        let mut killed = Vec::new();
        for _ in 0..3 {
            let pid = waiting_backend(&obs, &db, &killed).await;
            kill(&obs, pid).await;
            killed.push(pid);
        }
        // Answered while the lock is still held: no fourth attempt.
        let reply = reply_of(task).await;
        assert_database_unavailable(&reply, &uri);
        lock.batch_execute("COMMIT").await.unwrap();
    }
    common::all_returned(&pool).await;
    drop(pool);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_backend_is_killed_mid_query_is_not_retried() {
    let db = common::pg_db().await;
    let (pool, app) = service(&db).await;
    let id = create(&app, "original").await;
    let changed = json!({"name": "changed", "price": 2.0});
    let cases = [
        (
            Method::POST,
            "/items".to_owned(),
            Some(json!({"name": "new", "price": 3.0})),
        ),
        (Method::PUT, format!("/items/{id}"), Some(changed)),
        (Method::DELETE, format!("/items/{id}"), None),
    ];
    let obs = db.observer().await.unwrap();
    for (method, uri, body) in cases {
        let lock = lock_items(&db).await;
        let task = spawn_request(&app, method.clone(), uri.clone(), body);
        let first = waiting_backend(&obs, &db, &[]).await;
        kill(&obs, first).await;
        // Answered while the lock is still held: a retry would wait on it, and time
        // out `reply_of`.
        let reply = reply_of(task).await;
        assert_database_unavailable(&reply, &format!("{method} {uri}"));
        lock.batch_execute("COMMIT").await.unwrap();
    }
    // Nothing was written: no second insert, the item neither changed nor deleted.
    let obs = db.observer().await.unwrap();
    let rows = obs
        .query("SELECT id, name FROM items ORDER BY id", &[])
        .await
        .unwrap();
    let items: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(items, [(id, "original".to_owned())]);
    common::all_returned(&pool).await;
    drop(pool);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_under_repeated_backend_kills_all_succeed() {
    let db = common::pg_db().await;
    let (pool, app) = service(&db).await;
    let id = create(&app, "steady").await;
    let app_name = db.application_name().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for n in 0..6 {
        let (app, stop, ok) = (app.clone(), stop.clone(), ok.clone());
        let uri = match n % 3 {
            0 => "/health".to_owned(),
            1 => "/items".to_owned(),
            _ => format!("/items/{id}"),
        };
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = get(&app, &uri).await;
                if reply.status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(format!("GET {uri}: {} {}", reply.status, reply.body));
                }
            }
            failures
        }));
    }
    let mut terminated = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        terminated += db.terminate_all(&app_name).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "{ok} GETs succeeded, {} failed, {terminated} backends terminated; {:?}",
        failures.len(),
        pool.stats()
    );
    assert!(terminated >= 20, "only {terminated} backends terminated");
    assert!(ok > 100, "only {ok} GETs");
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    common::all_returned(&pool).await;
    drop(pool);
    db.drop_database().await.unwrap();
}
