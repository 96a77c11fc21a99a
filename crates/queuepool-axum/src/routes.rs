//! `GET /pool`, `GET /metrics`, `GET /health/live`, `GET /health/ready`, and the HTTP
//! request metrics.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use queuepool::{Manager, Overflow, Pool};
use serde_json::{Value, json};

use crate::{Db, RETRY_AFTER_SECS, json_error};

/// Routes that show what the pool is doing:
///
/// * `GET /pool`: JSON from [`pool_report`].
/// * `GET /metrics`: Prometheus text exposition, rendered from `prometheus` (not
///   mounted when `None`). The binary installs the recorder
///   (`PrometheusBuilder::install_recorder`) and passes its handle; the pool's
///   `queuepool_*` metrics then appear here.
///
/// Merge it into an app whose state gives a `Pool<M>` through [`FromRef`].
pub fn pool_routes<M, S>(prometheus: Option<PrometheusHandle>) -> Router<S>
where
    M: Manager,
    Pool<M>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    let router = Router::new().route("/pool", get(pool_status::<M>));
    match prometheus {
        Some(handle) => router.route(
            "/metrics",
            get(move || {
                let text = handle.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        ),
        None => router,
    }
}

async fn pool_status<M: Manager>(State(pool): State<Pool<M>>) -> impl IntoResponse {
    axum::Json(pool_report(&pool))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn histogram(h: &queuepool::HistogramSummary) -> Value {
    json!({
        "count": h.count,
        "mean_ms": ms(h.mean),
        "p50_ms": ms(h.p50),
        "p99_ms": ms(h.p99),
        "max_ms": ms(h.max),
    })
}

/// The pool's state as JSON: the SQLAlchemy status line (`status`), every field of
/// [`queuepool::Status`] at the top level (with `pool_size = auto`, `auto_size` says
/// the adaptive limit's bounds and why it last moved), every counter of [`queuepool::Stats`] under
/// `stats` (durations in milliseconds), and the sizing options under `config`.
///
/// ```json
/// {"name": "default",
///  "status": "Pool size: 5  Connections in pool: 5 Current Overflow: 0 Current Checked out connections: 0",
///  "pool_size": 5, "idle": 5, "checked_out": 0, "overflow": 0, "connecting": 0, "waiting": 0,
///  "limit": 15, "auto_size": null,
///  "stats": {"checkouts": 12, "timeouts": 0, ..., "wait": {"count": 12, "p99_ms": 0.03, ...}},
///  "config": {"pool_size": 5, "max_overflow": 10, "pool_timeout_s": 30.0, ...}}
/// ```
pub fn pool_report<M: Manager>(pool: &Pool<M>) -> Value {
    let status = pool.status();
    let stats = pool.stats();
    let config = pool.config();
    let (max_overflow, max_connections) = match config.max_overflow {
        Overflow::Limited(n) => (json!(n), json!(config.max_connections())),
        _ => (json!("unlimited"), Value::Null),
    };
    json!({
        "name": config.name,
        "status": status.to_string(),
        "pool_size": status.pool_size,
        "idle": status.idle,
        "checked_out": status.checked_out,
        "overflow": status.overflow,
        "connecting": status.connecting,
        "waiting": status.waiting,
        // Connections that may be lent at once (null: unlimited overflow).
        "limit": if config.auto_size.is_none() && max_connections.is_null() {
            Value::Null
        } else {
            json!(status.limit)
        },
        "auto_size": stats.auto_size.map(|a| json!({
            "limit": a.limit,
            "floor": a.floor,
            "ceiling": a.ceiling,
            "reason": a.reason.name(),
            "last_change": a.last_change.map(|c| c.to_string()),
            "baseline_ms": a.baseline.map(ms),
            "changes": a.changes,
        })),
        "stats": {
            "checkouts": stats.checkouts,
            "timeouts": stats.timeouts,
            "connections_created": stats.connections_created,
            "connect_errors": stats.connect_errors,
            "recycled": stats.recycled,
            "invalidated": stats.invalidated,
            "closed": stats.closed,
            "pool_invalidations": stats.pool_invalidations,
            "leaks": stats.leaks,
            "wait": histogram(&stats.wait),
            "usage": histogram(&stats.usage),
        },
        "config": {
            "pool_size": config.pool_size,
            "max_overflow": max_overflow,
            "pool_timeout_s": config.pool_timeout.as_secs_f64(),
            "pool_recycle_s": config.pool_recycle.map(|d| d.as_secs_f64()),
            "pre_ping": config.pre_ping,
            "max_connections": max_connections,
            "auto_size": config.auto_size.map(|(floor, ceiling)| json!([floor, ceiling])),
        },
    })
}

/// How long `GET /health/ready` waits for the pool to lend a connection.
///
/// Shorter than a probe's usual timeout (Kubernetes: 1 s), so that a saturated pool
/// answers 503 instead of leaving the probe to time out.
pub const READY_TIMEOUT: Duration = Duration::from_millis(900);

/// `GET /health/live` and `GET /health/ready`:
///
/// * live ([`live`]): 200 whenever the process answers HTTP; never touches the database,
///   so an orchestrator does not restart the service because the database is down.
/// * ready ([`ready`]): 200 when the pool lends a connection within [`READY_TIMEOUT`]
///   (an idle one, pre-pinged if idle for more than a second, or a new one), else 503
///   with the reason (`database_unavailable`, `pool_timeout`, `shutting_down`,
///   `not_ready`): take the instance out of rotation, do not restart it.
pub fn health_routes<M, S>() -> Router<S>
where
    M: Manager,
    Pool<M>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready::<M>))
}

/// The handler of `GET /health/live`: `{"status": "alive"}`.
pub async fn live() -> Response {
    axum::Json(json!({ "status": "alive" })).into_response()
}

/// The handler of `GET /health/ready`: `{"status": "ready", "pool": "<status line>"}`,
/// or a 503 JSON error.
///
/// # Cancel safety
/// Cancel safe: the checkout it awaits is.
pub async fn ready<M: Manager>(State(pool): State<Pool<M>>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, Db::checkout(&pool)).await {
        Ok(Ok(db)) => {
            drop(db);
            axum::Json(json!({ "status": "ready", "pool": pool.status().to_string() }))
                .into_response()
        }
        Ok(Err(error)) => error.into_response(),
        Err(_) => {
            let mut response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!(
                    "the pool could not lend a connection within {} ms",
                    READY_TIMEOUT.as_millis()
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            response
        }
    }
}

/// A middleware (`axum::middleware::from_fn(record_http_metrics)`, added with
/// `Router::layer` so that it sees the matched route) that records every request in
/// `http_requests_total` and `http_request_duration_seconds`, labelled `method`,
/// `route` (the route pattern, `/items/{id}`, or `unmatched` for a path no route
/// matched, so a scan cannot create series without bound) and `status`.
pub async fn record_http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Registers the `# HELP` text and unit of every metric of the pool and of
/// [`record_http_metrics`] with the installed recorder. Call it once, after installing
/// the recorder (a library never installs one).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "queuepool_connections",
        Unit::Count,
        "Connections of the pool by state: idle (in the pool), in_use (lent), pending (being opened)"
    );
    describe_histogram!(
        "queuepool_acquire_seconds",
        Unit::Seconds,
        "Time a checkout waited for a connection"
    );
    describe_histogram!(
        "queuepool_usage_seconds",
        Unit::Seconds,
        "Time a connection was held between checkout and return"
    );
    describe_histogram!(
        "queuepool_connect_seconds",
        Unit::Seconds,
        "Time to open a new database connection"
    );
    describe_counter!(
        "queuepool_timeouts_total",
        Unit::Count,
        "Checkouts that gave up after pool_timeout"
    );
    describe_counter!(
        "queuepool_connections_created_total",
        Unit::Count,
        "Database connections opened"
    );
    describe_counter!(
        "queuepool_connections_closed_total",
        Unit::Count,
        "Database connections closed, by reason (recycled, invalidated, overflow, pool_closed)"
    );
    describe_counter!(
        "http_requests_total",
        Unit::Count,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time to produce an HTTP response, by method, route and status"
    );
}
