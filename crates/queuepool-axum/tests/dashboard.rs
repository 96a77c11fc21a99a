//! `GET /dashboard` over a no-op manager: the page and its assets are served from the
//! crate (no CDN), and the sampler records a burst of checkouts second by second.
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
