//! Shared helpers of the HTTP tests: a per-test database on each backend, a request
//! helper over `tower::ServiceExt::oneshot`, and the CRUD specification every backend
//! must pass.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::middleware::{self, Next};
use mysql_async::prelude::Queryable;
use queuepool::{Pool, PoolConfig};
use queuepool_cli::serve::{open_pool, router};
use queuepool_cli::store::Store;
use queuepool_mysql::MySqlManager;
use queuepool_postgres::PgManager;
use queuepool_sqlite::SqliteManager;
use queuepool_testkit::TestDb;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A response: status, headers and the body parsed as JSON (`Value::String` if it is
/// not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn is_json(&self) -> bool {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    }

    /// The field names of a 422 body.
    pub fn fields(&self) -> Vec<String> {
        self.body["fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub async fn send_raw(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn send(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let builder = Request::builder().method(method).uri(uri);
    let request = match body {
        Some(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("request");
    send_raw(app, request).await
}

pub async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Method::GET, uri, None).await
}

pub fn config(size: u32, overflow: u32, timeout: Duration) -> PoolConfig {
    PoolConfig::builder()
        .pool_size(size)
        .max_overflow(overflow)
        .pool_timeout(timeout)
        .name("test")
        .build()
        .expect("valid config")
}

/// Waits (bounded) until every connection is back in the pool.
pub async fn all_returned<M: Store>(pool: &Pool<M>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.status().checked_out != 0 {
        assert!(
            Instant::now() < deadline,
            "connections still checked out: {}",
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An SQLite database in a temporary directory.
pub struct SqliteDb {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl SqliteDb {
    pub fn new() -> SqliteDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("items.db").display());
        SqliteDb { dir, url }
    }

    pub async fn pool(&self, config: PoolConfig) -> Pool<SqliteManager> {
        open_pool::<SqliteManager>(&self.url, config)
            .await
            .expect("sqlite pool")
    }
}

/// A PostgreSQL database of its own (testkit), dropped by the caller.
pub async fn pg_db() -> TestDb {
    TestDb::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (or DATABASE_URL) must be running")
}

pub async fn pg_pool(db: &TestDb, config: PoolConfig) -> Pool<PgManager> {
    open_pool::<PgManager>(db.url(), config)
        .await
        .expect("postgres pool")
}

/// The MariaDB server of the tests: `MYSQL_URL` or root on 127.0.0.1:3306.
pub fn mysql_base_url() -> String {
    std::env::var("MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A MariaDB database of its own, dropped by [`MySqlDb::drop_database`].
pub struct MySqlDb {
    pub name: String,
    pub url: String,
}

impl MySqlDb {
    pub async fn create() -> MySqlDb {
        let name = format!("qp_test_{:016x}", rand::random::<u64>());
        let base = mysql_base_url();
        let mut admin = mysql_async::Conn::from_url(base.as_str())
            .await
            .expect("MariaDB on 127.0.0.1:3306 (or MYSQL_URL) must be running");
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create database");
        let _ = admin.disconnect().await;
        let mut url = url::Url::parse(&base).expect("MYSQL_URL is a URL");
        url.set_path(&format!("/{name}"));
        MySqlDb {
            name,
            url: url.to_string(),
        }
    }

    pub async fn pool(&self, config: PoolConfig) -> Pool<MySqlManager> {
        open_pool::<MySqlManager>(&self.url, config)
            .await
            .expect("mysql pool")
    }

    pub async fn drop_database(self) {
        // Drop does it, on its own thread and runtime.
        drop(self);
    }
}

impl Drop for MySqlDb {
    /// Drops the database even when the test panicked.
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = mysql_async::Conn::from_url(mysql_base_url().as_str()).await
                {
                    let _ = admin
                        .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await;
                    let _ = admin.disconnect().await;
                }
            });
        })
        .join();
        let _ = dropped;
    }
}

fn item_id(reply: &Reply) -> i64 {
    reply.body["id"].as_i64().expect("id")
}

async fn count(app: &Router) -> usize {
    let reply = get(app, "/items?limit=100").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body.as_array().expect("array").len()
}

/// `(method, route pattern, status)` of every response an app gave.
pub type Seen = Arc<Mutex<BTreeSet<(String, String, u16)>>>;

/// `app` with a layer that records each response's route and status in the result.
pub fn recording(app: Router) -> (Router, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let app = app.layer(middleware::from_fn(
        move |request: axum::extract::Request, next: Next| {
            let log = log.clone();
            async move {
                let method = request.method().to_string();
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(|p| p.as_str().to_owned());
                let response = next.run(request).await;
                if let Some(route) = route {
                    log.lock()
                        .expect("seen")
                        .insert((method, route, response.status().as_u16()));
                }
                response
            }
        },
    ));
    (app, seen)
}

/// Asserts that `/openapi.json` lists, for each operation it documents, every status
/// the app was seen to answer; returns how many responses were checked.
pub async fn assert_documented(app: &Router, seen: &Seen) -> usize {
    let doc = get(app, "/openapi.json").await.body;
    let mut checked = 0;
    let seen = seen.lock().expect("seen").clone();
    for (method, route, status) in seen {
        let operation = &doc["paths"][&route][method.to_ascii_lowercase()];
        if operation.is_null() {
            continue;
        }
        assert!(
            !operation["responses"][status.to_string()].is_null(),
            "{method} {route} answered {status}, which /openapi.json does not list: {}",
            operation["responses"]
        );
        checked += 1;
    }
    checked
}

/// The error messages of a 422 body: in a client's words, never a Rust type's.
fn assert_plain_messages(reply: &Reply) {
    for field in reply.body["fields"].as_array().into_iter().flatten() {
        let message = field["message"].as_str().unwrap_or_default();
        for word in [
            "struct",
            "i64",
            "f64",
            "invalid type",
            "Cannot parse",
            "ItemIn",
        ] {
            assert!(!message.contains(word), "{word:?} in {}", reply.body);
        }
    }
}

/// The items API specification, run against every backend: each endpoint, each error,
/// and that a rejected write writes nothing.
pub async fn crud_spec<M: Store>(pool: Pool<M>, backend: &str) {
    let (app, seen) = recording(router(pool.clone(), None));

    let health = get(&app, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, json!({"status": "ok", "database": backend}));
    let live = get(&app, "/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.body["status"], "alive");
    let ready = get(&app, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["status"], "ready");

    assert_eq!(get(&app, "/items").await.body, json!([]));

    // Create.
    let created = send(
        &app,
        Method::POST,
        "/items",
        Some(json!({"name": "Widget", "description": "small", "price": 9.5})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert!(created.is_json());
    let id = item_id(&created);
    assert_eq!(created.headers[header::LOCATION], format!("/items/{id}"));
    assert_eq!(created.body["name"], "Widget");
    assert_eq!(created.body["description"], "small");
    assert_eq!(created.body["price"], 9.5);
    let created_at = created.body["created_at"]
        .as_str()
        .expect("created_at")
        .to_owned();
    assert!(created_at.ends_with('Z'), "{created_at}");

    // Read back: exactly what POST returned, timestamp included.
    let read = get(&app, &format!("/items/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created.body);

    // description is optional; 200 characters (not bytes) fit; price 0 is allowed.
    let long_name = "é".repeat(200);
    let second = send(
        &app,
        Method::POST,
        "/items",
        Some(json!({"name": long_name, "price": 0})),
    )
    .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body["description"], Value::Null);
    assert_eq!(
        get(&app, &format!("/items/{}", item_id(&second)))
            .await
            .body["name"],
        long_name
    );

    // Validation: 422 naming each field, nothing written.
    let before = count(&app).await;
    for (body, fields) in [
        (json!({"name": "", "price": 1.0}), vec!["name"]),
        (json!({"name": "x".repeat(201), "price": 1.0}), vec!["name"]),
        (json!({"name": "ok", "price": -0.5}), vec!["price"]),
        (json!({"name": "", "price": -1}), vec!["name", "price"]),
        (json!({"price": 1.0}), vec!["name"]),
        (json!({"name": "ok"}), vec!["price"]),
        (json!({"name": 5, "price": 1.0}), vec!["name"]),
        (json!({"name": "ok", "price": "cheap"}), vec!["price"]),
        // A NUL: PostgreSQL cannot store it, so no backend takes it.
        (json!({"name": "a\u{0}b", "price": 1}), vec!["name"]),
        (
            json!({"name": "ok", "description": "x\u{0}", "price": 1}),
            vec!["description"],
        ),
        // Every bad field at once, each once.
        (
            json!({"name": 5, "description": 7, "price": "x"}),
            vec!["name", "description", "price"],
        ),
        (json!({}), vec!["name", "price"]),
        (json!(["Widget", 1.0, null]), vec!["body"]),
    ] {
        let reply = send(&app, Method::POST, "/items", Some(body.clone())).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.body
        );
        assert!(reply.is_json());
        assert_eq!(reply.body["error"], "validation_error");
        assert_eq!(reply.fields(), fields, "{body}: {}", reply.body);
        assert_plain_messages(&reply);
    }
    // A number no double holds is the field's error, not a syntax error.
    let huge_price = send_raw(
        &app,
        Request::post("/items")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"name": "x", "price": 1e400}"#))
            .expect("request"),
    )
    .await;
    assert_eq!(
        huge_price.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        huge_price.body
    );
    assert_eq!(huge_price.fields(), ["price"]);
    assert_eq!(count(&app).await, before, "a rejected POST wrote a row");

    // Malformed bodies are JSON 4xx too.
    let bad_json = send_raw(
        &app,
        Request::post("/items")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"name\": "))
            .expect("request"),
    )
    .await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_json.body["error"], "invalid_json");
    let no_type = send_raw(
        &app,
        Request::post("/items")
            .body(Body::from("{\"name\":\"a\",\"price\":1}"))
            .expect("request"),
    )
    .await;
    assert_eq!(no_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(no_type.body["error"], "unsupported_media_type");
    let huge = json!({"name": "big", "description": "x".repeat(100 * 1024), "price": 1});
    let too_large = send(&app, Method::POST, "/items", Some(huge)).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.body["error"], "payload_too_large");
    assert!(too_large.is_json());
    assert_eq!(count(&app).await, before);

    // Update: replaces the fields, keeps id and created_at.
    let updated = send(
        &app,
        Method::PUT,
        &format!("/items/{id}"),
        Some(json!({"name": "Gadget", "price": 12.25})),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["id"], id);
    assert_eq!(updated.body["name"], "Gadget");
    assert_eq!(updated.body["description"], Value::Null);
    assert_eq!(updated.body["price"], 12.25);
    assert_eq!(updated.body["created_at"], created_at.as_str());
    assert_eq!(get(&app, &format!("/items/{id}")).await.body, updated.body);

    // A rejected update changes nothing.
    let rejected = send(
        &app,
        Method::PUT,
        &format!("/items/{id}"),
        Some(json!({"name": "Nope", "price": -3})),
    )
    .await;
    assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(rejected.fields(), ["price"]);
    let nul = send(
        &app,
        Method::PUT,
        &format!("/items/{id}"),
        Some(json!({"name": "N\u{0}pe", "description": "\u{0}", "price": 1})),
    )
    .await;
    assert_eq!(nul.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", nul.body);
    assert_eq!(nul.fields(), ["name", "description"]);
    assert_eq!(get(&app, &format!("/items/{id}")).await.body, updated.body);

    // Missing items: 404 JSON for read, update, delete.
    let missing = 987_654_321;
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"name": "x", "price": 1}))),
        (Method::DELETE, None),
    ] {
        let reply = send(&app, method.clone(), &format!("/items/{missing}"), body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(reply.body["error"], "not_found");
    }
    let not_a_number = get(&app, "/items/abc").await;
    assert_eq!(not_a_number.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(not_a_number.fields(), ["id"]);
    assert_plain_messages(&not_a_number);

    // Listing: order by id, limit/offset, bounds.
    for n in 0..3 {
        let reply = send(
            &app,
            Method::POST,
            "/items",
            Some(json!({"name": format!("page {n}"), "price": n})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let all = get(&app, "/items").await.body;
    let ids: Vec<i64> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let page = get(&app, "/items?limit=2&offset=1").await.body;
    let page_ids: Vec<i64> = page
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(page_ids, ids[1..3]);
    assert_eq!(
        get(&app, "/items?limit=100")
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    for (query, field) in [
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
    ] {
        let reply = get(&app, &format!("/items?{query}")).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(reply.fields(), [field], "{query}: {}", reply.body);
        assert_plain_messages(&reply);
    }
    let both = get(&app, "/items?limit=abc&offset=-1").await;
    assert_eq!(both.fields(), ["limit", "offset"], "{}", both.body);

    // Delete.
    let deleted = send(&app, Method::DELETE, &format!("/items/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app, &format!("/items/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(count(&app).await, 4);

    // Unknown routes are JSON 404s too.
    let unknown = get(&app, "/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.is_json());
    let wrong_method = send(&app, Method::PATCH, "/items/1", None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.body["error"], "method_not_allowed");

    // Every status seen is in the OpenAPI document.
    let checked = assert_documented(&app, &seen).await;
    assert!(checked >= 15, "only {checked} route statuses checked");

    // No request kept a connection.
    all_returned(&pool).await;
}
