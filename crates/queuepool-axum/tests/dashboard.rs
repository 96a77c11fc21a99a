//! `GET /dashboard` over a no-op manager: the page and its assets are served from the
//! crate (no CDN), the sampler records a burst of checkouts second by second, and with
//! `pool_size = auto` the adaptive limit of every second.
//! Virtual time: the sampler's ticks and the held connections follow the paused clock.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use queuepool::{Manager, Pool, PoolConfig, PooledConn};
use serde_json::Value;
use tower::ServiceExt;

struct Noop;

impl Manager for Noop {
    type Connection = ();
    type Error = Infallible;
    async fn connect(&self) -> Result<(), Infallible> {
        Ok(())
    }
    async fn is_valid(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }
    async fn reset(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }
    fn is_disconnect(&self, _: &Infallible) -> bool {
        false
    }
    fn needs_reset(&self, _: &()) -> bool {
        false
    }
}

async fn pool() -> Pool<Noop> {
    let config = PoolConfig::builder()
        .pool_size(2)
        .max_overflow(2)
        .name("svc")
        .build()
        .unwrap();
    Pool::new(Noop, config).await.unwrap()
}

fn app(pool: Pool<Noop>) -> Router {
    queuepool_axum::dashboard::routes::<Noop, Pool<Noop>>().with_state(pool)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let kind = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, kind, String::from_utf8(body.to_vec()).unwrap())
}

async fn samples(app: &Router, after: Option<u64>) -> Value {
    let uri = match after {
        Some(seq) => format!("/dashboard/samples?after={seq}"),
        None => "/dashboard/samples".to_owned(),
    };
    let (status, _, body) = get(app, &uri).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(start_paused = true)]
async fn dashboard_serves_its_assets_without_a_cdn() {
    let app = app(pool().await);
    let (status, kind, html) = get(&app, "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(html.contains("<canvas id=\"chart-connections\"") && html.contains("id=\"in-use\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    for (asset, expected) in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
    ] {
        let (status, kind, _) = get(&app, &format!("/dashboard/{asset}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(kind.starts_with(expected), "{asset}: {kind}");
    }
}

#[tokio::test(start_paused = true)]
async fn dashboard_records_a_burst_second_by_second() {
    let pool = pool().await;
    let app = app(pool.clone());
    // The first request starts the sampler.
    assert_eq!(samples(&app, None).await["samples"], Value::Array(vec![]));
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Hold 3 connections (one overflow) for 2 s, then give them back.
    let mut held: Vec<PooledConn<Noop>> = Vec::new();
    for _ in 0..3 {
        held.push(pool.get().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(2000)).await;

    let body = samples(&app, None).await;
    assert_eq!(body["pool"]["pool_size"], 2);
    assert_eq!(body["pool"]["max_connections"], 4);
    let list = body["samples"].as_array().unwrap().clone();
    assert!(list.len() >= 3, "{list:?}");
    assert!(list.iter().any(|s| s["in_use_peak"] == 3), "{list:?}");
    assert_eq!(list.last().unwrap()["in_use"], 0, "{list:?}");
    assert!(
        list.iter()
            .any(|s| s["checkouts_per_s"].as_f64().unwrap() > 0.0)
    );
    // `after` returns only newer samples.
    let last_seq = list.last().unwrap()["seq"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = samples(&app, Some(last_seq)).await;
    let newer = newer["samples"].as_array().unwrap();
    assert!(!newer.is_empty());
    assert!(newer.iter().all(|s| s["seq"].as_u64().unwrap() > last_seq));
}

#[tokio::test(start_paused = true)]
async fn dashboard_samples_carry_the_auto_limit_as_it_moves() {
    // Two idle seconds at the floor, then 30 clients, each holding a connection 20 ms
    // (a database far away: the held time does not grow with concurrency), against
    // auto between 2 and 8: the controller doubles 2 -> 4 -> 8 within the next
    // second, and every sample says where it was.
    let config = PoolConfig::builder()
        .pool_size(2)
        .auto_size(2, 8)
        .name("svc")
        .build()
        .unwrap();
    let auto_pool = Pool::new(Noop, config).await.unwrap();
    let auto_app = app(auto_pool.clone());
    assert_eq!(
        samples(&auto_app, None).await["samples"],
        Value::Array(vec![])
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let clients: Vec<_> = (0..30)
        .map(|_| {
            let pool = auto_pool.clone();
            tokio::spawn(async move {
                let end = tokio::time::Instant::now() + Duration::from_secs(4);
                while tokio::time::Instant::now() < end {
                    let conn = pool.get().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    drop(conn);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let body = samples(&auto_app, None).await;
    let auto = &body["pool"]["auto_size"];
    assert_eq!(
        (auto["floor"].as_u64(), auto["ceiling"].as_u64()),
        (Some(2), Some(8))
    );
    assert_eq!(auto["limit"], 8, "{auto}");
    assert_eq!(auto["reason"], "headroom");
    let limits: Vec<u64> = body["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["limit"]
                .as_u64()
                .unwrap_or_else(|| panic!("no limit in {s}"))
        })
        .collect();
    assert!(limits.len() >= 4, "{limits:?}");
    // It rose from the floor to the ceiling, and never above it.
    assert_eq!(limits[..2], [2, 2], "{limits:?}");
    assert_eq!(*limits.last().unwrap(), 8, "{limits:?}");
    assert!(limits.iter().all(|l| (2..=8).contains(l)), "{limits:?}");
    // What the page draws for the last second is what the pool says now.
    assert_eq!(auto_pool.status().limit, 8);

    // A fixed pool has no adaptive limit: the samples say null, the page draws no line.
    let fixed_app = app(pool().await);
    samples(&fixed_app, None).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = samples(&fixed_app, None).await;
    assert_eq!(body["pool"]["auto_size"], Value::Null);
    let list = body["samples"].as_array().unwrap();
    assert!(!list.is_empty());
    assert!(list.iter().all(|s| s["limit"].is_null()), "{list:?}");
}
