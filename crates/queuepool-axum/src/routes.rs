//! `GET /pool` and `GET /metrics`.

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use queuepool::{Manager, Overflow, Pool};
use serde_json::{Value, json};

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
