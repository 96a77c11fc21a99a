//! `GET /metrics` renders the pool's metrics from the handle the binary passes in.
//! Its own test binary: it installs the process-wide recorder.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use metrics_exporter_prometheus::PrometheusBuilder;
use queuepool::{Manager, Pool, PoolConfig};
use queuepool_axum::{Db, pool_routes};
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

struct Fake;

impl Manager for Fake {
    type Connection = ();
    type Error = Never;

    async fn connect(&self) -> Result<(), Never> {
        Ok(())
    }
    async fn is_valid(&self, _conn: &mut ()) -> Result<(), Never> {
        Ok(())
    }
    async fn reset(&self, _conn: &mut ()) -> Result<(), Never> {
        Ok(())
    }
    fn is_disconnect(&self, _error: &Never) -> bool {
        false
    }
}

async fn handler(_db: Db<Fake>) -> &'static str {
    "ok"
}

#[tokio::test]
async fn metrics_route_renders_the_pool_metrics_in_prometheus_text() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let config = PoolConfig::builder()
        .pool_size(2)
        .pool_timeout(Duration::from_secs(1))
        .name("metrics_test")
        .build()
        .unwrap();
    let pool = Pool::new(Fake, config).await.unwrap();
    let app = Router::new()
        .route("/x", axum::routing::get(handler))
        .merge(pool_routes::<Fake, Pool<Fake>>(Some(handle)))
        .with_state(pool);
    for _ in 0..3 {
        let response = app
            .clone()
            .oneshot(Request::get("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        text.contains("queuepool_connections_created_total"),
        "{text}"
    );
    assert!(text.contains("queuepool_acquire_seconds"), "{text}");
    assert!(text.contains("metrics_test"), "{text}");
}
